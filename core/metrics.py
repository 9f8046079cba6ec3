"""Metrics: per-image overlap for binary masks (below), AUC, group-bootstrap intervals, Spearman
correlation and classification metrics.

Overlap metrics for binary masks, with explicit semantics for empty masks.

`empty` decides what an image whose ground truth AND prediction are both empty scores:
"nan" (undefined: leave it out of a mean, as MONAI's ignore_empty=True) or "one" (a perfect
agreement). When only one of the two is empty the score is 0.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _as_bool(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.bool() if t.dtype == torch.bool else t > 0.5


def _overlap(pred, target) -> tuple[float, float, float]:
    p, t = _as_bool(pred), _as_bool(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
    inter = (p & t).sum().item()
    return float(inter), float(p.sum().item()), float(t.sum().item())


def _empty_value(empty: str) -> float:
    if empty not in ("nan", "one"):
        raise ValueError("empty must be 'nan' or 'one'")
    return math.nan if empty == "nan" else 1.0


def dice(pred, target, empty: str = "nan") -> float:
    """Dice = 2|P∩T| / (|P| + |T|) for one image."""
    inter, ps, ts = _overlap(pred, target)
    if ps + ts == 0:
        return _empty_value(empty)
    return 2 * inter / (ps + ts)


def iou(pred, target, empty: str = "nan") -> float:
    """IoU = |P∩T| / |P∪T| for one image."""
    inter, ps, ts = _overlap(pred, target)
    union = ps + ts - inter
    if union == 0:
        return _empty_value(empty)
    return inter / union


def mean_ci95(values) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95% confidence interval, NaNs left out."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    half = 1.96 * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else math.nan
    return m, m - half, m + half


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def bootstrap_ci(stat, groups: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of stat(index array) over resamples of whole groups."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    values = []
    for _ in range(n_boot):
        pick = rng.choice(uniq, size=len(uniq), replace=True)
        idx = np.concatenate([members[g] for g in pick])
        v = stat(idx)
        if not np.isnan(v):
            values.append(v)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x):
        x = np.asarray(x, float)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):                      # ties share their mean rank
            sel = x == v
            r[sel] = r[sel].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], n_bins: int = 10) -> dict:
    """Accuracy, macro-F1, one-vs-rest AUC per class, confusion matrix and expected calibration error."""
    pred = probs.argmax(1)
    k = len(classes)
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(labels, pred):
        cm[t, p] += 1
    f1s = []
    for c in range(k):
        tp = cm[c, c]
        prec = tp / cm[:, c].sum() if cm[:, c].sum() else 0.0
        rec = tp / cm[c].sum() if cm[c].sum() else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    aucs = {classes[c]: auc(probs[:, c], labels == c) for c in range(k)}
    conf = probs.max(1)
    correct = pred == labels
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    valid = [a for a in aucs.values() if not np.isnan(a)]
    return {"accuracy": float(correct.mean()), "macro_f1": float(np.mean(f1s)),
            "auc": aucs, "macro_auc": float(np.mean(valid)) if valid else float("nan"),
            "confusion_matrix": cm.tolist(), "classes": list(classes), "ece": float(ece), "n": int(len(labels))}


def fmt_or_blank(v) -> str:
    return "" if v is None else f"{v:.2f}"


def lesion_size(mask: np.ndarray, spacing_mm=None) -> dict:
    """Area (px, and mm^2 with a spacing) and longest diameter (the largest distance between two points
    of the outline; px, and mm with a spacing) of a mask."""
    import cv2

    out = {"area_px": int(mask.sum()), "area_mm2": None, "diameter_px": None, "diameter_mm": None}
    if not mask.any():
        return out
    pts = cv2.findNonZero(mask.astype(np.uint8))
    hull = cv2.convexHull(pts).reshape(-1, 2).astype(np.float64)
    sy, sx = spacing_mm if spacing_mm else (1.0, 1.0)
    d = hull[:, None, :] - hull[None, :, :]
    out["diameter_px"] = float(np.sqrt((d ** 2).sum(-1)).max()) + 1.0
    if spacing_mm:
        out["area_mm2"] = float(mask.sum()) * sy * sx
        out["diameter_mm"] = float(np.sqrt((d[..., 0] * sx) ** 2 + (d[..., 1] * sy) ** 2).max()) + float(min(sx, sy))
    return out
