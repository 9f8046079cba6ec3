"""Pictures for people: mask overlays and similarity heatmaps."""
from __future__ import annotations

import cv2
import numpy as np


def overlay(image: np.ndarray, mask: np.ndarray, opacity: float = 0.4, color=(255, 40, 40),
            truth: np.ndarray | None = None) -> np.ndarray:
    """The mask as a filled, semi-transparent region with a solid contour; truth as a green contour."""
    out = image.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = out[m] * (1 - opacity) + np.array(color, np.float32) * opacity
    out = out.round().astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, thickness)
    if truth is not None:
        contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (40, 220, 40), thickness)
    return out


def colorize(values: np.ndarray, vmin: float = -1.0, vmax: float = 1.0, cmap: str = "magma") -> np.ndarray:
    """Float map -> uint8 RGB with a matplotlib colour map."""
    from matplotlib import colormaps

    x = np.clip((values - vmin) / (vmax - vmin), 0, 1)
    return (colormaps[cmap](x)[..., :3] * 255).round().astype(np.uint8)


def heatmap_panel(image: np.ndarray, heatmaps: dict, out_png=None, max_cols: int = 4):
    """A grid of cosine heatmaps (values in [-1, 1]) with one shared colour bar; returns the RGB array."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(heatmaps)
    n = len(names) + 1
    cols = min(max_cols, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(image)
    axes[0].set_title("query", fontsize=9)
    im = None
    for ax, name in zip(axes[1:], names):
        im = ax.imshow(heatmaps[name], cmap="magma", vmin=-1, vmax=1)
        ax.set_title(f"cosine: {name}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.01, label="cosine similarity")
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if out_png:
        fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return rgb
