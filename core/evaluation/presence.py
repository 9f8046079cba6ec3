"""Saying "no lesion": an image-level lesion-presence decision on top of a few-shot prediction.

PANet++ always marks something: on every one of BUSI's normal test images it predicts lesion pixels.
A presence score is read off the probability map (no retraining); when it is below a threshold the
prediction is emptied. Candidate scores:

- `mass`: the mean of p over the image where p > 0.5 (how much confident lesion there is);
- `peak`: the highest probability (smoothed: the mean of the top 1% of pixels);
- `confidence`: the mean probability inside the predicted region.

The score and its threshold are chosen on the VALIDATION split (the highest threshold, for the best
score, whose lesion-image Dice loss is at most `max_dice_drop`, then the lowest false-positive rate);
the test split only reports. The trade-off curve (false-positive rate on normal images against
lesion-image Dice, over thresholds) is drawn for both splits.
"""
from __future__ import annotations

import numpy as np

from ..data.dataset import ImageSet
from ..inference import presence_scores  # noqa: F401  (re-exported)
from ..metrics import dice
from .fewshot import make_episodes

SCORES = ("mass", "peak", "confidence")


def collect(seg, qset: ImageSet, shots: int, seed: int = 0) -> list[dict]:
    """One row per image of the set (lesion and normal), each with k supports from other groups: its
    presence scores and its Dice (lesion images)."""
    n_lesion = sum(qset.has_lesion(i) for i in range(len(qset)))
    eps = make_episodes(qset, None, shots, n_lesion, seed, normal_queries=len(qset))
    rows = []
    for ep in eps:
        supports = [(qset.images[j], qset.masks[j]) for j in ep.support]
        res = seg.predict(qset.images[ep.query], supports, heatmaps=False, presence=None)
        truth = qset.masks[ep.query]
        rows.append({"lesion": bool(truth.any()), "dice": dice(res.mask, truth) if truth.any() else None,
                     "predicted_any": bool(res.mask.any()), **presence_scores(res.probability)})
    return rows


def tradeoff(rows: list[dict], score: str, thresholds) -> list[dict]:
    lesion = [r for r in rows if r["lesion"]]
    normal = [r for r in rows if not r["lesion"]]
    base = float(np.mean([r["dice"] for r in lesion]))
    out = []
    for t in thresholds:
        kept = [r["dice"] if r[score] >= t else 0.0 for r in lesion]
        fp = float(np.mean([r["predicted_any"] and r[score] >= t for r in normal])) if normal else float("nan")
        out.append({"threshold": float(t), "fp_rate": fp, "dice": float(np.mean(kept)), "dice_drop": base - float(np.mean(kept)),
                    "missed_lesions": float(np.mean([r[score] < t for r in lesion]))})
    return out


def choose(rows: list[dict], max_dice_drop: float = 0.01) -> dict:
    """The (score, threshold) with the lowest false-positive rate whose Dice drop is within the budget."""
    best = None
    for score in SCORES:
        values = sorted({r[score] for r in rows})
        cands = [0.0] + [(a + b) / 2 for a, b in zip(values, values[1:])]
        for p in tradeoff(rows, score, cands):
            if p["dice_drop"] <= max_dice_drop and (best is None or p["fp_rate"] < best["fp_rate"] - 1e-12
                                                    or (abs(p["fp_rate"] - best["fp_rate"]) < 1e-12
                                                        and p["dice_drop"] < best["dice_drop"])):
                best = {"score": score, **p}
    return best


def plot_tradeoff(curves: dict[str, list[dict]], chosen: dict, out_png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, pts in curves.items():
        ax.plot([p["fp_rate"] for p in pts], [p["dice"] for p in pts], "-", label=name)
    ax.axvline(0.2, color="0.6", ls="--", lw=0.8)
    ax.set(xlabel="false-positive rate on normal images", ylabel="mean Dice on lesion images",
           title=f"lesion presence: score '{chosen['score']}' (threshold {chosen['threshold']:.3g} chosen on val)")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
