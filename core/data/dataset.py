"""In-memory image/mask sets at a fixed working size, and training augmentations.

Resize policy: images are resized to size x size WITHOUT keeping the aspect ratio (BUSI frames are
close to square, width/height mostly 1.0-1.3, so the stretch is mild, and no padding pixels enter the
prototypes). Predictions are resized back to each image's original size, so masks a user gets are
always at the original resolution.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .discover import Sample
from .io import resize_mask as _resize_mask
from .io import DataError, read_image, read_masks_union

log = logging.getLogger(__name__)


def load_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution uint8 RGB image and bool mask (union of all its mask files)."""
    image = read_image(sample.image_path)
    mask = read_masks_union(list(sample.mask_paths), image.shape[:2], sample.rel_path)
    return image, mask


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """The working-size mask: `core.data.io.resize_mask` in its "area" mode (thin structures survive)."""
    return _resize_mask(mask, size, "area")


@dataclass
class ImageSet:
    """Samples loaded once and resized to a square working size."""

    samples: list[Sample]
    images: np.ndarray        # (N, S, S, 3) uint8
    masks: np.ndarray         # (N, S, S) bool
    groups: list[int]         # duplicate group per sample (each sample its own group if unknown)

    @property
    def names(self) -> list[str]:
        return [s.rel_path for s in self.samples]

    def has_lesion(self, i: int) -> bool:
        return bool(self.masks[i].any())

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, index) -> "ImageSet":
        """The set restricted to `index` (a slice, or a sequence of positions), groups kept."""
        if isinstance(index, slice):
            return ImageSet(self.samples[index], self.images[index], self.masks[index], list(self.groups[index]))
        idx = list(index)
        return ImageSet([self.samples[i] for i in idx], self.images[idx], self.masks[idx], [self.groups[i] for i in idx])


def load_image_set(samples: list[Sample], size: int, groups: dict[str, int] | None = None,
                   progress: bool = True) -> ImageSet:
    images, masks, kept, problems = [], [], [], []
    for s in tqdm(samples, desc=f"loading {len(samples)} images at {size}px", disable=not progress):
        try:
            image, mask = load_pair(s)
        except DataError as exc:
            problems.append(str(exc))
            continue
        images.append(resize_image(image, size))
        masks.append(resize_mask(mask, size))
        kept.append(s)
    for p in problems:
        log.warning("skipped: %s", p)
    if not kept:
        raise DataError("no readable image/mask pairs: " + "; ".join(problems[:3]))
    if groups is None:
        group_ids = list(range(len(kept)))
    else:
        fresh = max(groups.values(), default=-1) + 1
        group_ids = []
        for s in kept:
            if s.rel_path in groups:
                group_ids.append(groups[s.rel_path])
            else:
                group_ids.append(fresh)
                fresh += 1
    return ImageSet(kept, np.stack(images), np.stack(masks), group_ids)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask)).float()


# Why not albumentations: these ~40 lines do the few transforms we need (the same geometry on image and
# mask, speckle), are seeded by our episode RNG (reproducible episodes and resumption), and are tested;
# albumentations would add a dependency tree (pydantic, albucore, a second OpenCV wheel) for no new transform.
@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5
    vflip: float = 0.0            # ultrasound has a physical top (the probe): off by default
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.15
    contrast: float = 0.15
    gamma: tuple[float, float] = (0.8, 1.25)
    speckle: float = 0.1          # std of multiplicative noise
    grey: float = 0.0             # probability of turning a colour image grey
    blur: float = 0.0             # probability of a Gaussian blur (another device's resolution)


# Meta-training on many sets and devices: wider geometry and intensity changes, so that a prototype
# cannot lean on one scanner's grey levels or on a fixed size/position of the target.
STRONG_AUGMENT = AugmentConfig(hflip=0.5, vflip=0.1, rotate_deg=20.0, scale=(0.75, 1.3), translate=0.1,
                               brightness=0.25, contrast=0.3, gamma=(0.6, 1.6), speckle=0.15, grey=0.2, blur=0.2)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
            cfg: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """The same geometric transform on image and mask; intensity changes on the image only."""
    h, w = mask.shape
    if rng.random() < cfg.hflip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < cfg.vflip:
        image, mask = image[::-1], mask[::-1]
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    scale = rng.uniform(*cfg.scale)
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, 2) * (w, h)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += (tx, ty)
    image = cv2.warpAffine(np.ascontiguousarray(image), m, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = cv2.warpAffine(np.ascontiguousarray(mask).astype(np.uint8), m, (w, h),
                          flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    if cfg.blur and rng.random() < cfg.blur:
        image = cv2.GaussianBlur(np.ascontiguousarray(image), (0, 0), rng.uniform(0.5, 1.5))
    x = image.astype(np.float32) / 255
    if cfg.grey and rng.random() < cfg.grey:
        x = np.repeat(x.mean(2, keepdims=True), 3, axis=2)
    x = x * (1 + rng.uniform(-cfg.contrast, cfg.contrast)) + rng.uniform(-cfg.brightness, cfg.brightness)
    x = np.clip(x, 0, 1) ** rng.uniform(*cfg.gamma)
    if cfg.speckle > 0:
        # multiplicative speckle, same on the three (grey) channels
        noise = rng.normal(1.0, cfg.speckle, size=(h, w, 1)).astype(np.float32)
        x = x * noise
    image = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    return image, mask
