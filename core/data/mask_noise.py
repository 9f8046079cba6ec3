"""Masks as a segmenter gives them, for training the 4-channel classifier.

The classifier sees (image, mask). Trained on ground-truth masks it learns a shortcut: every normal
image's mask is empty and every lesion image's is not, so "empty mask = normal". At inference the mask
comes from a segmenter that misses lesions and marks lesions on normal tissue (on BUSI's normal test
images the supervised segmenter marks one in half of them), and the shortcut fails. `perturb_mask` draws
the kinds of error a segmenter makes, so the classifier has to look at the image too:

- a miss: the mask is emptied (also the "image only" path);
- a false lesion on a lesion-free image: another training image's lesion shape, shrunk and moved;
- a boundary error: erosion or dilation by a few per cent of the image, a shift, a cut-off part;
- an extra false blob beside a real lesion.

Why not albumentations' mask dropout: it drops grid cells of the mask, not the errors above, and the
label-dependent part (false lesions only where there is none) is ours to write anyway.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class MaskNoise:
    drop: float = 0.15            # lesion image: mask emptied (a missed lesion / image-only training)
    false_lesion: float = 0.5     # lesion-free image: a borrowed lesion shape pasted somewhere
    boundary: float = 0.6         # lesion image: erode or dilate, shift
    max_morph: float = 0.06       # largest erosion/dilation radius, as a share of the image side
    cut: float = 0.15             # lesion image: a half-plane cuts part of the mask away
    extra_blob: float = 0.15      # lesion image: a second, false blob


def _paste(shape: tuple[int, int], donor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The donor's lesion, scaled by 0.3-1.0 and centred at a random point, on an empty canvas."""
    h, w = shape
    ys, xs = np.nonzero(donor)
    if len(ys) == 0:
        return np.zeros(shape, bool)
    crop = donor[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8)
    s = rng.uniform(0.3, 1.0)
    ch, cw = max(2, int(crop.shape[0] * s)), max(2, int(crop.shape[1] * s))
    ch, cw = min(ch, h), min(cw, w)
    crop = cv2.resize(crop, (cw, ch), interpolation=cv2.INTER_NEAREST)
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = np.zeros(shape, bool)
    out[y0:y0 + ch, x0:x0 + cw] = crop > 0
    return out


def perturb_mask(mask: np.ndarray, rng: np.random.Generator, donors: list[np.ndarray] | np.ndarray,
                 cfg: MaskNoise = MaskNoise()) -> np.ndarray:
    """A plausible predicted mask for a training image whose true mask is `mask` (bool, H x W).
    `donors` are lesion masks of other training images (same size), the shapes of false lesions."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    if not mask.any():
        if len(donors) and rng.random() < cfg.false_lesion:
            return _paste((h, w), donors[rng.integers(len(donors))], rng)
        return mask.copy()
    if rng.random() < cfg.drop:
        return np.zeros_like(mask)
    out = mask.astype(np.uint8)
    if rng.random() < cfg.boundary:
        r = int(rng.integers(1, max(2, int(cfg.max_morph * min(h, w)) + 1)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        eroded = cv2.erode(out, kernel)
        out = cv2.dilate(out, kernel) if rng.random() < 0.5 or not eroded.any() else eroded
        dy, dx = (rng.uniform(-0.03, 0.03, 2) * (h, w)).astype(int)
        out = np.roll(out, (dy, dx), axis=(0, 1))
    if rng.random() < cfg.cut:
        ys, xs = np.nonzero(out)
        if len(ys):
            cy, cx = ys.mean(), xs.mean()
            angle = rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[0:h, 0:w]
            side = (yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
            shift = rng.uniform(0, 0.5) * np.sqrt(len(ys) / np.pi)
            out = out * (side < shift)
    out = out > 0
    if len(donors) and rng.random() < cfg.extra_blob:
        out = out | _paste((h, w), donors[rng.integers(len(donors))], rng)
    return out
