"""Propagation through a cine loop with temporal consistency (issue 21).

Frame by frame, PANet++ predicts the target from the supports; the previous frame's mask is then the
prompt that keeps the answer on the same structure:

- **with LiteMedSAM** (the promptable model): the box of PANet++'s component that overlaps the previous
  mask (grown by `margin`), or the previous mask's own box when PANet++ finds nothing near it, is drawn by
  LiteMedSAM with the previous frame's low-resolution logits as its mask prompt;
- **without it**: PANet++'s components that touch the (dilated) previous mask are kept; where none does,
  the previous mask is carried over.

Every frame reports its IoU with the previous mask; a frame below `abrupt_iou` is flagged for review (the
target jumped, vanished or the prediction went astray). `temporal=False` gives the frame-by-frame
baseline (PANet++ alone, or PANet++ redrawn by the automatic LiteMedSAM rule) for comparison.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from ..delineate import mask_box, segment_from_supports, widen_box
from ..metrics import iou

ABRUPT_IOU = 0.5


@dataclass
class FrameResult:
    mask: np.ndarray
    iou_previous: float | None
    abrupt: bool
    seconds: float
    logits: np.ndarray | None = None   # LiteMedSAM's low-resolution logits (the next frame's mask prompt)


def near_previous(panet_mask: np.ndarray, prev: np.ndarray, grow: int = 7) -> np.ndarray:
    """PANet++'s connected components that touch the previous mask dilated by `grow` pixels."""
    if not panet_mask.any() or not prev.any():
        return np.zeros_like(panet_mask)
    near = cv2.dilate(prev.astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) > 0
    n, lab = cv2.connectedComponents(panet_mask.astype(np.uint8), connectivity=8)
    keep = np.unique(lab[near & panet_mask])
    keep = keep[keep > 0]
    return np.isin(lab, keep)


def temporal_mask(panet_mask: np.ndarray, prev: np.ndarray, image: np.ndarray | None = None, sam=None,
                  prev_logits: np.ndarray | None = None, margin: float = 0.1):
    """(mask, logits or None) for one frame from PANet++'s mask and the previous frame's mask."""
    near = near_previous(panet_mask, prev)
    if sam is None:
        return (near if near.any() else prev.copy()), None
    box = mask_box(near) if near.any() else mask_box(prev)
    if box is None:
        return panet_mask, None
    res = sam.predict(image, box=widen_box(box, margin, prev.shape), mask_logits=prev_logits)
    return res.mask, res.logits


def propagate_loop(frames, seg, supports, known: dict[int, np.ndarray] | None = None, sam=None,
                   temporal: bool = True, threshold: float = 0.5, abrupt_iou: float = ABRUPT_IOU,
                   on_frame=None) -> list[FrameResult]:
    """Masks for every frame of `frames` (in order). `known`: frame index -> a person's mask (support
    frames, accepted frames): kept as they are and used as the previous mask of the next frame."""
    known = known or {}
    out: list[FrameResult] = []
    prev, prev_logits = None, None
    for t, img in enumerate(frames):
        t0 = time.perf_counter()
        if t in known:
            mask, logits = np.asarray(known[t], bool), None
        else:
            follow = temporal and prev is not None and prev.any()
            # the one rule (core.delineate.segment_from_supports); a frame after a known mask follows it instead
            found = segment_from_supports(seg, img, supports, sam=None if follow else sam, heatmaps=False,
                                          threshold=threshold)
            if follow:
                mask, logits = temporal_mask(found.mask, prev, img, sam, prev_logits)
            else:
                mask, logits = found.mask, None
        j = None if prev is None else float(iou(mask, prev, empty="one"))
        r = FrameResult(mask, j, j is not None and j < abrupt_iou, time.perf_counter() - t0, logits)
        out.append(r)
        if on_frame:
            on_frame(t, r)
        prev, prev_logits = mask, logits
    return out
