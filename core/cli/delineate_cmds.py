"""Commands of the promptable model (LiteMedSAM): the interactive protocol through it, its speed."""
from __future__ import annotations

import itertools
import json
import sys
import time

# sets whose images LiteMedSAM's training collection (MedSAM's) probably includes: numbers on them are not
# held out for LiteMedSAM (they are for PANet++ where its checkpoint never trained on them)
MAYBE_SEEN_BY_LITEMEDSAM = {"BUSI", "kvasir_polyp", "cvc_clinicdb_polyp", "ph2_skin_lesion", "hc18_fetal_head"}


def register(sub) -> None:
    p = sub.add_parser("evaluate-delineate",
                       help="interactive protocol through LiteMedSAM: Dice after a box, box + clicks, supports + "
                            "clicks, clicks alone; NoC@85/90")
    p.add_argument("--checkpoint", default=None, help="PANet++ checkpoint for BUSI (default: the shipped one)")
    p.add_argument("--data", default=None, help="BUSI root (default: $BUSI_DIR)")
    p.add_argument("--part", default="test", choices=["test", "val"], help="val: for choosing the settings")
    p.add_argument("--episodes", type=int, default=100, help="queries per setting")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 5])
    p.add_argument("--box", choices=["yes", "no", "both"], default="both", help="start from the target's box")
    p.add_argument("--box-mode", nargs="+", default=["box"], choices=["box", "box+mask", "box+point"])
    p.add_argument("--click-start", nargs="+", default=["mask"], choices=["mask", "box", "none"])
    p.add_argument("--click-mode", nargs="+", default=["bumps"], choices=["points", "points-nomask", "bumps"])
    p.add_argument("--alone", nargs="+", default=["litemedsam"], choices=["hybrid", "litemedsam", "panet"],
                   help="clicks without supports or a box")
    p.add_argument("--max-clicks", type=int, default=10)
    p.add_argument("--sets", nargs="*", default=[], help="multidomain sets (their --part) to score as well")
    p.add_argument("--sets-checkpoint", default=None, help="PANet++ checkpoint for --sets (default: --checkpoint)")
    p.add_argument("--no-busi", action="store_true", help="score only --sets")
    p.add_argument("--encoder", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--out", default=None, help="JSON (docs/results_delineate.json also renders docs/results.md)")
    p.add_argument("--append", action="store_true")
    p.set_defaults(func=evaluate_delineate_cmd)

    register_auto(sub)
    p = sub.add_parser("benchmark-promptable", help="LiteMedSAM encoder (torch vs ONNX) and decoder latency")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.set_defaults(func=benchmark_promptable_cmd)


def _jobs(args):
    from ..data.multidomain import default_multidomain_dir, domain_set
    from ..data.sets import split_sets
    from ..inference import FewShotSegmenter
    from .fewshot_cmds import _data_dir, default_checkpoint

    busi_ck = args.checkpoint or str(default_checkpoint())
    seg = FewShotSegmenter(busi_ck)
    jobs = []
    if not args.no_busi:
        jobs.append(("BUSI " + args.part, "BUSI", seg, split_sets(_data_dir(args.data), (args.part,), seg.size)[args.part],
                     busi_ck))
    if args.sets:
        md = default_multidomain_dir()
        other = FewShotSegmenter(args.sets_checkpoint) if args.sets_checkpoint else seg
        for name in args.sets:
            jobs.append((name, name, other, domain_set(md, name, args.part, other.size),
                         args.sets_checkpoint or busi_ck))
    return jobs


def evaluate_delineate_cmd(args) -> int:
    from ..delineate import DelineateConfig, Delineator
    from ..evaluation.interactive import run_delineation_protocol
    from ..models.promptable import PromptableSegmenter

    sam = PromptableSegmenter(encoder=args.encoder, cache_size=args.episodes + 8)
    boxes = {"yes": [True], "no": [False], "both": [False, True]}[args.box]
    result = {"command": "python -m core " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["evaluate-delineate"] else "",
              "part": args.part, "episodes": args.episodes, "encoder": sam.encoder, "rows": []}
    for name, family, seg, qset, ck in _jobs(args):
        for k, box, mode, start, cm, alone in itertools.product(args.shots, boxes, args.box_mode, args.click_start,
                                                                 args.click_mode, args.alone):
            if (k or box) and alone != args.alone[0]:
                continue
            if ((not box or not k) and mode != args.box_mode[0]) or ((box or k == 0) and start != args.click_start[0]):
                continue     # the setting does not apply: score each distinct case once
            cfg = DelineateConfig(box_mode=mode, click_start=start, click_mode=cm, alone=alone)
            r = run_delineation_protocol(Delineator(seg, sam, cfg), qset, k, args.episodes, box, seed=k,
                                         max_clicks=args.max_clicks, progress=True)
            row = {"set": name, "checkpoint": ck, "box_mode": mode if box and k else None, "click_mode": cm,
                   "alone": alone if not (k or box) else None,
                   "click_start": start if k and not box else None,
                   "litemedsam_may_have_seen": family in MAYBE_SEEN_BY_LITEMEDSAM, **r}
            result["rows"].append(row)
            d = row["dice_after_clicks"]
            print(f"{name} {k}-shot{' + box (' + mode + ')' if box else ''} clicks={cm}"
                  f"{' alone=' + alone if not (k or box) else ''}"
                  f"{' start=' + start if k and not box else ''}: Dice after 0/1/3/5 clicks "
                  + "/".join(f"{d[n]:.3f}" for n in ("0", "1", "3", "5"))
                  + f", NoC@85 {row['noc85']:.2f}, NoC@90 {row['noc90']:.2f}, {row['click_ms_median']} ms per click",
                  flush=True)
    from ..evaluation.report import save_result, with_earlier_rows
    save_result(with_earlier_rows(result, args.out) if args.append else result, args.out)
    return 0


def benchmark_promptable_cmd(args) -> int:
    import numpy as np
    import torch

    from ..models.promptable import PromptableSegmenter, preprocess

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    x, _, _ = preprocess(image)
    out = {"threads": args.threads, "repeats": args.repeats, "device": "cpu"}
    torch_sam = PromptableSegmenter(encoder="torch")
    with torch.inference_mode():
        torch_sam.model.image_encoder(torch.from_numpy(x))
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            torch_sam.model.image_encoder(torch.from_numpy(x))
            ts.append(1000 * (time.perf_counter() - t))
    out["encoder_torch_ms_median"] = round(float(np.median(ts)), 1)
    onnx_sam = PromptableSegmenter(encoder="onnx", threads=args.threads)
    onnx_sam._onnx(x)
    ts = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        onnx_sam._onnx(x)
        ts.append(1000 * (time.perf_counter() - t))
    out["encoder_onnx_ms_median"] = round(float(np.median(ts)), 1)
    out["onnx_max_abs_difference"] = onnx_sam._onnx.difference
    onnx_sam.embed(image)
    box = (200, 150, 400, 330)
    ts = []
    for i in range(args.repeats):
        t = time.perf_counter()
        onnx_sam.predict(image, box=box, points=[(300 + i, 240, True)])
        ts.append(1000 * (time.perf_counter() - t))
    out["decoder_ms_median"] = round(float(np.median(ts)), 1)
    print(json.dumps(out, indent=1))
    if args.out:
        from ..evaluation.report import save_result
        save_result(out, args.out)
    return 0


def register_auto(sub) -> None:
    p = sub.add_parser("evaluate-auto", help="automatic masks: PANet++ alone vs LiteMedSAM redrawing PANet++'s "
                                             "mask under a rule chosen on validation parts")
    p.add_argument("--checkpoint", default=None, help="PANet++ checkpoint (default: the shipped one)")
    p.add_argument("--data", default=None, help="BUSI root (default: $BUSI_DIR)")
    p.add_argument("--sets", nargs="*", default=[], help="multidomain sets scored beside BUSI")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--episodes", type=int, default=100, help="queries per set and part")
    p.add_argument("--out", default=None, help="JSON (docs/results_auto.json also renders docs/results.md)")
    p.add_argument("--match-weights", dest="match_weights", nargs="*", type=float, default=[],
                   help="also few-shot matching in LiteMedSAM's feature space (issue 29), fused with PANet++'s map "
                        "at these weights of the LiteMedSAM-space map (1 = that map alone)")
    p.add_argument("--loo-weight", dest="loo_weight", type=float, default=None,
                   help="also the per-episode choice between the shipped mask and the LiteMedSAM-space match at this "
                        "weight, decided by leave-one-out among the supports (issue 29)")
    p.add_argument("--parts", nargs="+", default=["val", "test"], choices=["val", "test"],
                   help="parts scored (without val, the shipped rule is used instead of choosing one)")
    p.add_argument("--components", action="store_true",
                   help="also LiteMedSAM's redraw of every sizable component of PANet++'s mask (issue 29)")
    p.add_argument("--no-busi", dest="no_busi", action="store_true", help="the multidomain sets only")
    p.set_defaults(func=evaluate_auto_cmd)


def _auto_records(seg, sam, qset, shots, n, seed, progress=True, match_weights=(), loo_weight=None,
                  components=False):
    """Per query: PANet++'s Dice, LiteMedSAM's candidate (its Dice, predicted IoU, agreement), image side;
    with `match_weights`, the LiteMedSAM-space match at each weight (its prompted mask and its map's mask)."""
    from tqdm import tqdm

    from ..delineate import auto_candidate, auto_candidate_components
    from ..evaluation.interactive import query_jobs
    from ..models.boxes import component_boxes
    from ..metrics import dice

    out = []
    for q, supports in tqdm(query_jobs(qset, shots, n, seed), desc="auto", disable=not progress):
        image, truth = qset.images[q], qset.masks[q]
        res = seg.predict(image, supports, heatmaps=False)
        pm = res.mask
        cand = auto_candidate(sam, image, pm)
        side = _original_side(qset.samples[q], image)
        out.append({"panet": float(dice(pm, truth)), "sam": float(dice(cand[0], truth)) if cand else None,
                    "iou": cand[1] if cand else None, "agree": cand[2] if cand else None, "side": int(side)})
        if components:      # several components redrawn, one box each (issue 29)
            multi = auto_candidate_components(sam, image, pm)
            out[-1].update(multi_sam=float(dice(multi[0], truth)) if multi else None,
                           multi_iou=multi[1] if multi else None, multi_agree=multi[2] if multi else None,
                           n_components=len(component_boxes(pm)))
        for w in match_weights:
            from ..models.sam_match import match_and_prompt
            m = match_and_prompt(sam, image, supports, res.probability, weight=w)
            out[-1][f"match_{w:g}"] = float(dice(m.mask, truth))
            out[-1][f"map_{w:g}"] = float(dice(m.map_mask, truth))
            out[-1][f"match_iou_{w:g}"], out[-1][f"match_agree_{w:g}"] = m.iou, m.agreement
            b = match_and_prompt(sam, image, supports, res.probability, weight=w, points=False)
            out[-1][f"matchbox_{w:g}"] = float(dice(b.mask, truth))
            out[-1][f"matchbox_iou_{w:g}"], out[-1][f"matchbox_agree_{w:g}"] = b.iou, b.agreement
        if loo_weight is not None:
            from ..delineate import AutoRule, automatic_variants, choose_by_supports
            pick, _ = choose_by_supports(seg, sam, supports, AutoRule(), loo_weight)
            out[-1]["loo"] = float(dice(automatic_variants(seg, sam, image, supports, AutoRule(), loo_weight)[pick],
                                        truth))
            out[-1]["loo_picked_match"] = pick == "matched"
    return out


def _match_columns(records, rule, weights) -> dict:
    """Mean Dice of the LiteMedSAM-space match per weight: its prompted mask always, its map's mask, and the
    prompted mask only where the shipped rule trusts it (else the current automatic mask)."""
    import numpy as np

    out = {}
    for w in weights:
        k = f"{w:g}"
        out[f"map_{k}"] = float(np.mean([r[f"map_{k}"] for r in records]))
        current = [r["sam"] if _redrawn(r, rule) else r["panet"] for r in records]
        for kind in ("match", "matchbox"):      # box + points, the box alone
            out[f"{kind}_{k}"] = float(np.mean([r[f"{kind}_{k}"] for r in records]))
            trusted = [r[f"{kind}_{k}"] if r[f"{kind}_iou_{k}"] is not None and rule.trusts(
                r[f"{kind}_iou_{k}"], r[f"{kind}_agree_{k}"], r["side"]) else c for r, c in zip(records, current)]
            out[f"{kind}_rule_{k}"] = float(np.mean(trusted))
    return out


def _component_columns(records, rule) -> dict:
    """The shipped rule with several components redrawn (one box each) instead of the largest alone, and the
    share of queries whose PANet++ mask has more than one sizable component."""
    import numpy as np

    multi = [r["multi_sam"] if r["multi_sam"] is not None and rule.trusts(r["multi_iou"], r["multi_agree"], r["side"])
             else r["panet"] for r in records]
    return {"components_rule": float(np.mean(multi)),
            "share_several_components": float(np.mean([r["n_components"] > 1 for r in records]))}


def _original_side(sample, image) -> int:
    """The longer side of the image file (the sets are loaded at the model's size): small, low-resolution
    images are where LiteMedSAM's redraw was seen to hurt."""
    from PIL import Image

    try:
        with Image.open(sample.image_path) as im:
            return max(im.size)
    except OSError:
        return max(image.shape[:2])


def _score(records, rule) -> float:
    import numpy as np

    return float(np.mean([r["sam"] if _redrawn(r, rule) else r["panet"] for r in records]))


def _redrawn(r, rule) -> bool:
    return r["sam"] is not None and rule.trusts(r["iou"], r["agree"], r["side"])


def choose_rule(val: dict[str, list]):
    """The rule with the best mean val Dice over sets among those that lose <= 0.01 on no val set."""
    import itertools

    import numpy as np

    from ..delineate import AutoRule

    best = (None, -1.0)
    base = {k: float(np.mean([r["panet"] for r in v])) for k, v in val.items()}
    for iou, agree, side in itertools.product((0.5, 0.6, 0.7, 0.8, 0.85, 0.9), (0.0, 0.5, 0.6, 0.7, 0.8),
                                              (0, 200, 300)):
        rule = AutoRule(min_iou=iou, min_agreement=agree, min_side=side)
        per = {k: _score(v, rule) for k, v in val.items()}
        if any(per[k] < base[k] - 0.01 for k in per):
            continue
        mean = float(np.mean(list(per.values())))
        if mean > best[1]:
            best = (rule, mean)
    return best[0] or AutoRule(), base


def evaluate_auto_cmd(args) -> int:
    from dataclasses import asdict

    import numpy as np

    from ..data.multidomain import default_multidomain_dir, domain_set
    from ..data.sets import split_sets
    from ..inference import FewShotSegmenter
    from ..models.promptable import PromptableSegmenter
    from .fewshot_cmds import _data_dir, default_checkpoint

    ck = args.checkpoint or str(default_checkpoint())
    seg = FewShotSegmenter(ck)
    sam = PromptableSegmenter(cache_size=96)      # supports recur across episodes: each embedding once
    busi = {} if args.no_busi else split_sets(_data_dir(args.data), tuple(args.parts), seg.size)
    md = default_multidomain_dir() if args.sets else None
    parts = {part: {**({"BUSI": busi[part]} if busi else {}), **{n: domain_set(md, n, part, seg.size)
                                                                  for n in args.sets}}
             for part in args.parts}
    recs = {part: {name: _auto_records(seg, sam, qs, args.shots, args.episodes, seed=11 if part == "val" else 12,
                                       match_weights=args.match_weights, loo_weight=args.loo_weight,
                                       components=args.components)
                   for name, qs in sets.items()} for part, sets in parts.items()}
    from ..delineate import AutoRule
    rule = choose_rule(recs["val"])[0] if "val" in recs else AutoRule()
    rows = []
    for part in args.parts:
        for name, rs in recs[part].items():
            used = [_redrawn(r, rule) for r in rs]
            rows.append({"set": name, "part": part, "n": len(rs), "panet": float(np.mean([r["panet"] for r in rs])),
                         "litemedsam_always": float(np.mean([r["sam"] if r["sam"] is not None else r["panet"]
                                                             for r in rs])),
                         "fused": _score(rs, rule), "share_redrawn": float(np.mean(used)),
                         "litemedsam_may_have_seen": name in MAYBE_SEEN_BY_LITEMEDSAM,
                         **_match_columns(rs, rule, args.match_weights),
                         **(_component_columns(rs, rule) if args.components else {}),
                         **({"loo": float(np.mean([r["loo"] for r in rs])),
                             "share_loo_picked_match": float(np.mean([r["loo_picked_match"] for r in rs]))}
                            if args.loo_weight is not None else {})})
            r = rows[-1]
            print(f"{name} {part}: PANet++ {r['panet']:.3f}, LiteMedSAM always {r['litemedsam_always']:.3f}, "
                  f"fused {r['fused']:.3f} ({r['share_redrawn']:.0%} redrawn)", flush=True)
    test = [r for r in rows if r["part"] == "test"] or rows
    ships = all(r["fused"] >= r["panet"] - 0.01 for r in test) and \
        np.mean([r["fused"] for r in test]) > np.mean([r["panet"] for r in test])
    result = {"command": "python -m core " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["evaluate-auto"] else "",
              "checkpoint": ck, "shots": args.shots, "episodes": args.episodes, "rule": asdict(rule),
              "rows": rows, "ships_as_default": bool(ships)}
    from ..evaluation.report import save_result
    save_result(result, args.out)
    return 0
