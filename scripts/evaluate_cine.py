"""Issue 21: propagation through real loops of consecutive frames, with and without temporal consistency.

    python scripts/evaluate_cine.py [--checkpoint checkpoints/panet_lite0] [--out docs/results_cine.json]

Loops: runs of consecutive frame numbers of one CVC-ClinicDB video in our multidomain sets (the only set
whose ids are frame numbers; colonoscopy, not ultrasound). The default checkpoint is PANet++ trained on
BUSI only: it never saw a polyp nor these frames (the multidomain default did train on CVC-ClinicDB).
Supports: the first 1 or 3 frames with their true masks; every later frame is predicted in order and
scored against its true mask. Configurations: frame by frame (PANet++ alone; PANet++ redrawn by the
automatic LiteMedSAM rule) and temporal (the previous frame's mask as the prompt, without and with
LiteMedSAM). Per loop: Dice per frame, its mean, its drift (least-squares slope per frame, and the last
third's mean minus the first third's), frames/s, frames flagged as abrupt.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOOPS = {"cvc_542_568": (542, 568), "cvc_154_170": (154, 170), "cvc_85_96": (85, 96)}
CONFIGS = {"frame_by_frame": (False, False), "frame_by_frame+litemedsam": (False, True),
           "temporal": (True, False), "temporal+litemedsam": (True, True)}


def load_loop(root: Path, lo: int, hi: int):
    from core.data.io import read_image, read_mask

    ids = [i for i in range(lo, hi + 1) if (root / "images" / f"{i}.jpg").exists()]
    return ids, [read_image(root / "images" / f"{i}.jpg") for i in ids], [read_mask(root / "masks" / f"{i}_mask.png") for i in ids]


def drift(d: list[float]) -> dict:
    x = np.arange(len(d), dtype=float)
    slope = float(np.polyfit(x, d, 1)[0]) if len(d) > 1 else 0.0
    third = max(1, len(d) // 3)
    return {"slope_per_frame": slope, "last_minus_first_third": float(np.mean(d[-third:]) - np.mean(d[:third]))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "panet_lite0"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results_cine.json"))
    ap.add_argument("--shots", default="1,3")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from core.annotate.cine import propagate_loop
    from core.data.multidomain import default_multidomain_dir
    from core.inference import FewShotSegmenter
    from core.metrics import dice
    from core.models.promptable import shared

    root = default_multidomain_dir() / "cvc_clinicdb_polyp"
    seg = FewShotSegmenter(args.checkpoint)
    sam = shared("cpu")
    res = {"command": "python scripts/evaluate_cine.py" + (f" --checkpoint {args.checkpoint}" if "panet_lite0" not in
                                                            args.checkpoint else ""),
           "checkpoint": Path(args.checkpoint).name, "loops": {}}
    for name, (lo, hi) in LOOPS.items():
        ids, frames, masks = load_loop(root, lo, hi)
        res["loops"][name] = {"frames": ids}
        for shots in (int(s) for s in args.shots.split(",")):
            supports = list(zip(frames[:shots], masks[:shots]))
            known = {k: masks[k] for k in range(shots)}
            for cfg, (temporal, use_sam) in CONFIGS.items():
                sam.cache.clear()
                t0 = time.perf_counter()
                out = propagate_loop(frames, seg, supports, known=known, sam=sam if use_sam else None, temporal=temporal)
                secs = time.perf_counter() - t0
                d = [float(dice(r.mask, m, empty="one")) for r, m in zip(out[shots:], masks[shots:])]
                row = {"dice_per_frame": d, "mean_dice": float(np.mean(d)), **drift(d),
                       "frames_per_s": (len(frames) - shots) / max(secs, 1e-9),
                       "abrupt_frames": int(sum(r.abrupt for r in out[shots:]))}
                res["loops"][name][f"{shots}-shot {cfg}"] = row
                print(f"{name} {shots}-shot {cfg}: Dice {row['mean_dice']:.3f}, drift {row['last_minus_first_third']:+.3f}, "
                      f"{row['frames_per_s']:.2f} frames/s", flush=True)
    summary = {}
    for key in next(iter(res["loops"].values())):
        if key == "frames":
            continue
        rows = [lp[key] for lp in res["loops"].values()]
        summary[key] = {"mean_dice": float(np.mean([r["mean_dice"] for r in rows])),
                        "last_minus_first_third": float(np.mean([r["last_minus_first_third"] for r in rows])),
                        "frames_per_s": float(np.mean([r["frames_per_s"] for r in rows]))}
    res["summary"] = summary
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
