"""Issue 28: the lesion-crop benign / malignant head's model and its crop (what training and `predict` share).

The kind of a lesion is written in the lesion and its rim (shape, margin, orientation, posterior shadow; the
BI-RADS descriptors), so this head sees only a square crop around it: the bounding box of the mask's largest
component widened by `margin` of its longer side on every side, zero-padded where it leaves the image,
resized to the model's size.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from ..data.dataset import to_tensor
from .supervised import ClassifierConfig, ImageClassifier

KINDS = ("benign", "malignant")
CROP_MARGIN = 0.5
JITTER = {"margin": (0.3, 0.8), "side": 0.15, "shift": 0.1}

Box = tuple[int, int, int, int]   # y0, y1, x0, x1 (end exclusive)


def lesion_box(mask: np.ndarray) -> Box | None:
    """The bounding box of the mask's largest connected component (None for an empty mask)."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n < 2:
        return None
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[i, :4])
    return y, y + h, x, x + w


def lesion_crop(image: np.ndarray, box: Box | None, size: int, margin: float = CROP_MARGIN,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """A square (size, size, 3) uint8 crop around `box` (see the module's doc); the whole image squared
    when there is no box. With `rng`, the training jitter: sides, centre and margin drawn at random."""
    h, w = image.shape[:2]
    y0, y1, x0, x1 = box if box is not None else (0, h, 0, w)
    bh, bw = max(y1 - y0, 1), max(x1 - x0, 1)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    if rng is not None:
        bh *= 1 + rng.uniform(-JITTER["side"], JITTER["side"])
        bw *= 1 + rng.uniform(-JITTER["side"], JITTER["side"])
        cy += rng.uniform(-JITTER["shift"], JITTER["shift"]) * bh
        cx += rng.uniform(-JITTER["shift"], JITTER["shift"]) * bw
        margin = rng.uniform(*JITTER["margin"])
    side = max(bh, bw) * (1 + 2 * margin) if box is not None else max(h, w)
    side = max(int(round(side)), 16)
    top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
    pad = max(0, -top, -left, top + side - h, left + side - w)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        top, left = top + pad, left + pad
    crop = np.ascontiguousarray(image[top:top + side, left:left + side])
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


class CropClassifier(ImageClassifier):
    """An `ImageClassifier` over lesion crops, two classes (benign, malignant); `config.extra` records the
    crop (`"input": "lesion_crop"`, the margin) so that a loader and `predict` crop the same way."""

    def __init__(self, config: ClassifierConfig):
        config.extra = {**config.extra, "input": "lesion_crop", "crop_margin": config.extra.get("crop_margin", CROP_MARGIN)}
        super().__init__(config)

    @torch.no_grad()
    def malignancy(self, image: np.ndarray, mask: np.ndarray) -> float:
        """p(malignant) of the lesion `mask` marks in `image` (flip TTA, temperature applied)."""
        crop = lesion_crop(image, lesion_box(mask), self.config.image_size, self.config.extra["crop_margin"])
        p = self.predict(to_tensor(crop)[None].to(self.mean.device))
        return float(p[0, KINDS.index("malignant")])


def fuse_kind(p_image, p_crop, fusion: dict) -> np.ndarray:
    """p(malignant | lesion) from the image classifier's (already calibrated) and the crop head's: the mean
    of their logits (no weight fitted, so the choice between them cannot overfit the val lesions), then
    Platt-scaled by `fusion["calibration"]` (fitted on the val lesions)."""
    from .presence import kind_logit, logistic_score

    z = (kind_logit(p_image) + kind_logit(p_crop)) / 2
    return logistic_score(fusion["calibration"], z)
