"""Data commands: data-report (run it first on your own data) and make-split."""
from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from ..data.discover import discover
from ..data.io import DataError, read_image, read_masks_union


def register(sub) -> None:
    p = sub.add_parser("data-report", help="pairs per class, image sizes, problems and duplicate groups of a data folder")
    p.add_argument("--data", required=True, help="data folder (BUSI/Kaggle layout, images/+masks/, or images/<class>/+masks/<class>/)")
    p.add_argument("--no-duplicates", action="store_true", help="skip the near-duplicate search (faster)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.set_defaults(func=data_report)

    p = sub.add_parser("make-split", help="group near-duplicates and write the leak-free train/val/test split")
    p.add_argument("--data", required=True, help="BUSI root folder")
    p.add_argument("--out", default=None, help="split JSON (default: core/data/busi_split.json)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=make_split)

    p = sub.add_parser("make-split-multidomain",
                       help="group near-duplicates of every multidomain set and write their train/val/test splits")
    p.add_argument("--data", default=None, help="multidomain root (default: $MULTIDOMAIN_DIR or ../shared/data/multidomain)")
    p.add_argument("--out", default=None, help="split JSON (default: core/data/multidomain_split.json)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=make_split_multidomain)


def collect_report(data: str | Path, duplicates: bool = True, progress: bool = True) -> dict:
    found = discover(data)
    problems: list[str] = []
    sizes, per_class, lesion_free = [], Counter(), Counter()
    readable = []
    for s in found.samples:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = read_image(s.image_path)
                mask = read_masks_union(list(s.mask_paths), image.shape[:2], s.rel_path)
            problems += [str(w.message) for w in caught]
        except DataError as exc:
            problems.append(str(exc))
            continue
        readable.append(s)
        per_class[s.label or "(no class)"] += 1
        sizes.append(image.shape[:2])
        if not mask.any():
            lesion_free[s.label or "(no class)"] += 1
            if s.label not in ("normal", None):
                problems.append(f"{s.rel_path}: empty lesion mask in class '{s.label}'")
    problems += [f"{p.relative_to(found.root)}: image without a mask" for p in found.unmatched_images]
    problems += [f"{p.relative_to(found.root)}: mask without an image" for p in found.orphan_masks]
    report = {
        "root": str(found.root), "layout": found.layout, "pairs": len(found.samples),
        "readable_pairs": len(readable), "per_class": dict(per_class), "lesion_free": dict(lesion_free),
        "problems": problems,
    }
    if sizes:
        h, w = np.array(sizes).T
        report["image_size"] = {"width": [int(w.min()), int(np.median(w)), int(w.max())],
                                "height": [int(h.min()), int(np.median(h)), int(h.max())]}
    if duplicates and len(readable) > 1:
        from ..data.dedup import group_near_duplicates, image_signatures

        thumbs, embs = image_signatures(readable, progress=progress)
        result = group_near_duplicates(thumbs, embs)
        report["n_groups"] = result.n_groups
        report["duplicate_groups"] = [[readable[i].rel_path for i in m] for m in result.duplicate_groups().values()]
    return report


def data_report(args) -> int:
    report = collect_report(args.data, duplicates=not args.no_duplicates)
    print(f"Data folder: {report['root']}  (layout: {report['layout']})")
    print(f"Pairs found: {report['pairs']} ({report['readable_pairs']} readable)")
    for label, n in sorted(report["per_class"].items()):
        extra = f", {report['lesion_free'].get(label, 0)} without lesion" if report["lesion_free"].get(label) else ""
        print(f"  {label:<12} {n:5d}{extra}")
    if "image_size" in report:
        w, h = report["image_size"]["width"], report["image_size"]["height"]
        print(f"Image width min/median/max: {w[0]}/{w[1]}/{w[2]} px; height {h[0]}/{h[1]}/{h[2]} px")
    print(f"Problems: {len(report['problems'])}")
    for p in report["problems"][:50]:
        print(f"  - {p}")
    if len(report["problems"]) > 50:
        print(f"  ... and {len(report['problems']) - 50} more (see --json)")
    if "duplicate_groups" in report:
        dg = report["duplicate_groups"]
        print(f"Near-duplicate groups: {len(dg)} groups holding {sum(map(len, dg))} images "
              f"({report['n_groups']} groups in all)")
        for g in dg[:20]:
            print("  - " + " | ".join(g))
        if len(dg) > 20:
            print(f"  ... and {len(dg) - 20} more")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def make_split(args) -> int:
    from ..data.dedup import group_near_duplicates, image_signatures
    from ..data.split import DEFAULT_SPLIT_FILE, build_split_document

    found = discover(args.data)
    thumbs, embs = image_signatures(found.samples)
    result = group_near_duplicates(thumbs, embs)
    doc = build_split_document(found.samples, result, args.seed)
    out = Path(args.out) if args.out else DEFAULT_SPLIT_FILE
    out.write_text(json.dumps(doc, indent=1) + "\n")
    label = {s.rel_path: s.label or "none" for s in found.samples}
    print(f"{len(found.samples)} images, {result.n_groups} groups, "
          f"{len(result.duplicate_groups())} near-duplicate groups "
          f"({sum(len(m) for m in result.duplicate_groups().values())} images in them)")
    for part in ("train", "val", "test"):
        counts = Counter(label[n] for n in doc[part])
        print(f"  {part:<5} {len(doc[part]):4d}  " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"written: {out}")
    return 0


def make_split_multidomain(args) -> int:
    from ..data.multidomain import DEFAULT_MULTIDOMAIN_SPLIT, default_multidomain_dir, make_multidomain_split

    root = args.data or default_multidomain_dir()
    if root is None:
        raise DataError("no multidomain folder: pass --data DIR or set MULTIDOMAIN_DIR")
    doc = make_multidomain_split(root, args.seed)
    out = Path(args.out) if args.out else DEFAULT_MULTIDOMAIN_SPLIT
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for name, e in doc["sets"].items():
        print(f"{name:<22} {e['n_images']:4d} images, {e['n_groups']:4d} groups; train {len(e['train'])}, "
              f"val {len(e['val'])}, test {len(e['test'])}  ({e['grouping']})")
    print(f"written: {out}")
    return 0
