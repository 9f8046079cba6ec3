"""Synthetic breast-ultrasound-like phantoms with known lesion masks (a demo set; NOT patient data).

Each phantom: speckled tissue with horizontal layers (skin, fat, glandular tissue), a hypoechoic
lesion with a lobulated border, posterior acoustic shadowing or enhancement, and a fan-shaped
field of view. Deterministic for a given seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Phantom:
    name: str
    image: np.ndarray   # (H, W, 3) uint8, grey
    mask: np.ndarray    # (H, W) bool
    label: str = "synthetic"


def make_phantom(seed: int, size: tuple[int, int] = (360, 440)) -> Phantom:
    """size = (H, W)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    # tissue layers: bright skin line, dark fat, brighter glandular band, varying with x
    wave = 8 * np.sin(xx / rng.uniform(40, 90) + rng.uniform(0, 6))
    depth = yy + wave
    tissue = np.full((h, w), 0.35, np.float32)
    tissue[depth < 0.06 * h] = 0.85
    tissue[(depth >= 0.06 * h) & (depth < 0.25 * h)] = 0.3
    tissue[(depth >= 0.25 * h) & (depth < 0.65 * h)] = 0.6
    tissue = cv2.GaussianBlur(tissue, (0, 0), 4)
    # lesion: ellipse with a lobulated radius
    cy, cx = rng.uniform(0.38, 0.6) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.07, 0.13) * h, rng.uniform(0.08, 0.16) * w
    theta = np.arctan2(yy - cy, xx - cx)
    lobes = 1 + sum(rng.uniform(0, 0.08) * np.sin(k * theta + rng.uniform(0, 6)) for k in (3, 5, 7))
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    mask = r < lobes
    tissue[mask] = rng.uniform(0.08, 0.18)
    # posterior effect below the lesion: shadow (malignant-like) or enhancement (cyst-like)
    below = (yy > cy) & (np.abs(xx - cx) < rx * 0.9) & ~mask
    tissue[below] *= rng.choice([0.55, 1.35])
    tissue = cv2.GaussianBlur(tissue, (0, 0), 1.5)
    # speckle: multiplicative Rayleigh noise, smoothed anisotropically like a real PSF
    speckle = rng.rayleigh(1.0, (h, w)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=1.6, sigmaY=0.8)
    img = tissue * speckle / speckle.mean()
    img *= np.clip(1.1 - 0.5 * yy / h, 0.4, 1.1)     # depth attenuation
    fan = np.abs(xx - w / 2) < (0.35 * w + 0.2 * yy)  # sector field of view
    img[~fan] = 0
    mask &= fan
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return Phantom(f"phantom {seed:02d} (synthetic)", np.repeat(img[:, :, None], 3, 2), mask)


def demo_set(n: int = 8) -> list[Phantom]:
    return [make_phantom(seed) for seed in range(1, n + 1)]
