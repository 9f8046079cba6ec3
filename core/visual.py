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


def heatmap_tiles(query: np.ndarray, heatmaps: dict, tile: int = 256) -> list[tuple[np.ndarray, str]]:
    """Each cosine map blended over the query, with a colour bar strip: [(rgb, caption), ...]."""
    h, w = query.shape[:2]
    scale = tile / max(h, w)
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    base = cv2.resize(query, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    bar = colorbar(size[0])
    out = []
    for name, values in heatmaps.items():
        col = colorize(cv2.resize(values, size, interpolation=cv2.INTER_LINEAR), -1, 1).astype(np.float32)
        img = (0.35 * base + 0.65 * col).round().astype(np.uint8)
        out.append((np.concatenate([img, bar], 0), f"cosine similarity: {name}"))
    return out


def colorbar(width: int, height: int = 26) -> np.ndarray:
    ramp = np.tile(np.linspace(-1, 1, width, dtype=np.float32), (12, 1))
    bar = np.full((height, width, 3), 255, np.uint8)
    bar[:12] = colorize(ramp, -1, 1)
    for x, text in ((2, "-1"), (width // 2 - 4, "0"), (width - 22, "+1")):
        cv2.putText(bar, text, (x, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return bar
