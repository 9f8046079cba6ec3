"""Boxes from masks (the prompts LiteMedSAM takes): pure geometry, shared by core.delineate and the
LiteMedSAM-space matcher."""
from __future__ import annotations

import cv2
import numpy as np


def widen_box(box, margin: float, hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """`box` widened by `margin` of its own size on each side, clipped to an image of size `hw`."""
    x0, y0, x1, y1 = box
    h, w = hw
    mx, my = margin * (x1 - x0 + 1), margin * (y1 - y0 + 1)
    return (max(0.0, x0 - mx), max(0.0, y0 - my), min(w - 1.0, x1 + mx), min(h - 1.0, y1 + my))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The mask's largest 8-connected component (all False when the mask is empty)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask).astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(labels.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The box of the mask's largest connected component (x0, y0, x1, y1), None when empty."""
    boxes = component_boxes(mask, most=1)
    return boxes[0] if boxes else None


def component_boxes(mask: np.ndarray, min_share: float = 0.3, most: int = 3) -> list[tuple[float, float, float, float]]:
    """Boxes (x0, y0, x1, y1) of the mask's 8-connected components whose area is at least `min_share` of the
    largest one's, largest first (ties: the first found, as `largest_component`), at most `most`."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask).astype(np.uint8), connectivity=8)
    if n <= 1:
        return []
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = [int(i) for i in np.argsort(-areas, kind="stable") if areas[i] >= min_share * areas.max()][:most]
    return [(float(stats[1 + i, cv2.CC_STAT_LEFT]), float(stats[1 + i, cv2.CC_STAT_TOP]),
             float(stats[1 + i, cv2.CC_STAT_LEFT] + stats[1 + i, cv2.CC_STAT_WIDTH] - 1),
             float(stats[1 + i, cv2.CC_STAT_TOP] + stats[1 + i, cv2.CC_STAT_HEIGHT] - 1)) for i in order]
