"""Issue 18, step 1: the LiteMedSAM features of every BUSI and BUS-BRA image, cached (resumable).

    python scripts/lesion_probe_features.py [--limit N] [--out runs/lesion_probe_features]

For every image: the presence features (whole image), the type features with the ground-truth mask
(lesion images) and, on the parts that are only ever read as held-out data (BUSI test, all of BUS-BRA),
the type features with the shipped segmenter's mask, exactly as `predict` computes them. The shipped
segmenter was trained on BUSI's training split only, so its masks on BUSI test and BUS-BRA are honest.
One file per part (`<part>.npz`), written every 50 images; a rerun continues where it stopped.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parts(limit: int = 0) -> dict[str, list[dict]]:
    """part -> [{name, label, group, sample}] from the committed splits (BUSI; BUS-BRA with its labels)."""
    from core.data.lesion_sets import lesion_parts
    out = lesion_parts()
    return {k: (v[:limit] if limit else v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "lesion_probe_features"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    from core.data.dataset import load_pair
    from core.inference import SupervisedPipeline
    from core.models.lesion_probe import LESION_DIM, image_features, lesion_features
    from core.models.promptable import PromptableSegmenter

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sam = PromptableSegmenter(cache_size=4)
    seg = SupervisedPipeline(ROOT / "checkpoints" / "segmenter_deeplabv3plus_lite0", None)
    t0 = time.time()
    for part, rows in parts(args.limit).items():
        need_pred = part in ("busi_test", "bb_trainval", "bb_test")
        f = out / f"{part}.npz"
        done = dict(np.load(f, allow_pickle=False)) if f.exists() else {}
        have = set(done.get("name", np.array([], str)).tolist())
        acc = {k: list(v) for k, v in done.items()}
        todo = [r for r in rows if r["name"] not in have]
        print(f"{part}: {len(have)} cached, {len(todo)} to do", flush=True)
        for i, r in enumerate(todo):
            image, mask = load_pair(r["sample"])
            rec = {"name": r["name"], "label": r["label"], "group": r["group"],
                   "presence": image_features(sam, image),
                   "gt": lesion_features(sam, image, mask) if mask.any() else np.full(LESION_DIM, np.nan, np.float32),
                   "gt_area": float(mask.mean())}
            if need_pred:
                pm = seg.segment(image)
                rec["pred"] = lesion_features(sam, image, pm)
                rec["pred_area"] = float(pm.mean())
                inter = float((pm & mask).sum())
                rec["pred_dice"] = 2 * inter / max(float(pm.sum() + mask.sum()), 1.0) if mask.any() else float(not pm.any())
            for k, v in rec.items():
                acc.setdefault(k, []).append(v)
            if (i + 1) % 50 == 0 or i + 1 == len(todo):
                np.savez(f.with_suffix(".tmp.npz"), **{k: np.asarray(v) for k, v in acc.items()})
                Path(f.with_suffix(".tmp.npz")).replace(f)
                print(f"  {part}: {len(have) + i + 1}/{len(rows)}  {time.time() - t0:.0f} s", flush=True)
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
