"""Per-image overlap metrics for binary masks, with explicit semantics for empty masks.

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
