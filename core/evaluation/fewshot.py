"""Few-shot evaluation on fixed, seeded episodes, with an audit trail of every episode.

Scores: per-query Dice and IoU on lesion queries (mean with a 95% CI, per class), and the share of
lesion-free (normal) queries on which any lesion pixel is predicted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import ImageSet, mask_tensor, to_tensor
from ..data.episodes import Episode, EpisodeSampler
from ..metrics import dice, iou, mean_ci95

# predict(support_images (K,3,S,S), support_masks (K,S,S), query (1,3,S,S)) -> bool mask (S, S)
Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], np.ndarray]


@dataclass
class EpisodeResult:
    support: list[str]
    query: str
    label: str | None
    dice: float
    iou: float
    predicted_pixels: int
    lesion: bool


def panet_predictor(model, threshold: float = 0.5) -> Predictor:
    model.eval()

    @torch.no_grad()
    def predict(s_img, s_msk, q_img):
        logits, _, _, _ = model(s_img, s_msk, q_img)
        return (torch.sigmoid(logits[0, 0]) > threshold).cpu().numpy()

    return predict


def displace_mask(mask: np.ndarray, rng: np.random.Generator, tries: int = 400) -> np.ndarray:
    """The same mask shape moved off the lesion onto other tissue of the same image.

    Picks a random shift that keeps the whole shape inside the image and does not overlap the
    original lesion; if none exists, the shift with the least overlap.
    """
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    best, best_overlap = None, math.inf
    for _ in range(tries):
        dy = int(rng.integers(-y0, h - y1))
        dx = int(rng.integers(-x0, w - x1))
        if dy == 0 and dx == 0:
            continue
        moved = np.zeros_like(mask)
        moved[ys + dy, xs + dx] = True
        overlap = (moved & mask).sum()
        if overlap < best_overlap:
            best, best_overlap = moved, overlap
        if overlap == 0:
            break
    return best if best is not None else mask.copy()


def run_episodes(predict: Predictor, query_set: ImageSet, support_set: ImageSet, episodes: list[Episode],
                 mismatched: bool = False, seed: int = 0, progress: bool = False, desc: str = "episodes") -> list[EpisodeResult]:
    rng = np.random.default_rng(seed)
    out = []
    for ep in tqdm(episodes, desc=desc, disable=not progress, leave=False):
        masks = [support_set.masks[i] for i in ep.support]
        if mismatched:
            masks = [displace_mask(m, rng) for m in masks]
        s_img = torch.stack([to_tensor(support_set.images[i]) for i in ep.support])
        s_msk = torch.stack([mask_tensor(m) for m in masks])
        q_img = to_tensor(query_set.images[ep.query])[None]
        pred = predict(s_img, s_msk, q_img)
        gt = query_set.masks[ep.query]
        out.append(EpisodeResult([support_set.samples[i].rel_path for i in ep.support],
                                 query_set.samples[ep.query].rel_path, query_set.samples[ep.query].label,
                                 dice(pred, gt), iou(pred, gt), int(pred.sum()), bool(gt.any())))
    return out


def summarize(results: list[EpisodeResult]) -> dict:
    lesion = [r for r in results if r.lesion]
    normal = [r for r in results if not r.lesion]
    out: dict = {"n_lesion_queries": len(lesion), "n_normal_queries": len(normal)}
    if lesion:
        m, lo, hi = mean_ci95([r.dice for r in lesion])
        mi, loi, hii = mean_ci95([r.iou for r in lesion])
        out.update(dice=m, dice_ci95=[lo, hi], iou=mi, iou_ci95=[loi, hii])
        out["per_class"] = {}
        for label in sorted({r.label or "none" for r in lesion}):
            sel = [r for r in lesion if (r.label or "none") == label]
            out["per_class"][label] = {"dice": float(np.mean([r.dice for r in sel])),
                                       "iou": float(np.mean([r.iou for r in sel])), "n": len(sel)}
    if normal:
        out["normal_false_positive_rate"] = float(np.mean([r.predicted_pixels > 0 for r in normal]))
    return out


def make_episodes(query_set: ImageSet, support_set: ImageSet | None, shots: int, n: int, seed: int,
                  normal_queries: int = 0) -> list[Episode]:
    """n lesion-query episodes, plus up to `normal_queries` episodes whose query is lesion-free."""
    sampler = EpisodeSampler(query_set, support_set)
    eps = sampler.fixed_episodes(n, shots, seed)
    if normal_queries:
        normals = [i for i in range(len(query_set)) if not query_set.has_lesion(i)]
        rng = np.random.default_rng(seed + 7)
        for q in normals[:normal_queries]:
            eps.append(sampler.episode(rng, shots, q))
    return eps


def figure_examples(model, query_set: ImageSet, support_set: ImageSet, results: list[EpisodeResult],
                    episodes: list[Episode], out_png, n: int = 4) -> None:
    """Rows of: supports with masks -> query with prediction and ground truth -> cosine heatmaps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..models.panet import PROTO_LEVELS

    picks = [i for i, r in enumerate(results) if r.lesion][:: max(1, len(results) // (n * 2))][:n]
    fig, axes = plt.subplots(len(picks), 4, figsize=(13, 3.2 * len(picks)), squeeze=False)
    model.eval()
    for row, i in enumerate(picks):
        ep = episodes[i]
        s = ep.support[0]
        s_img = torch.stack([to_tensor(support_set.images[j]) for j in ep.support])
        s_msk = torch.stack([mask_tensor(support_set.masks[j]) for j in ep.support])
        with torch.no_grad():
            logits, sims, _, _ = model(s_img, s_msk, to_tensor(query_set.images[ep.query])[None])
        pred = (torch.sigmoid(logits[0, 0]) > 0.5).numpy()
        ax = axes[row]
        ax[0].imshow(support_set.images[s])
        ax[0].contour(support_set.masks[s], colors="lime", linewidths=1)
        ax[0].set_title(f"support 1 of {len(ep.support)}", fontsize=9)
        ax[1].imshow(query_set.images[ep.query])
        ax[1].contour(query_set.masks[ep.query], colors="lime", linewidths=1)
        if pred.any():
            ax[1].contour(pred, colors="red", linewidths=1)
        ax[1].set_title(f"query: green truth, red prediction\nDice {results[i].dice:.2f}", fontsize=9)
        lvl = min(PROTO_LEVELS)
        tau = model.tau.item()
        for k, name in ((0, "foreground"), (1, "background")):
            im = ax[2 + k].imshow(sims[lvl][0, k].numpy() / tau, cmap="magma", vmin=-1, vmax=1)
            ax[2 + k].set_title(f"cosine to {name} prototype", fontsize=9)
            fig.colorbar(im, ax=ax[2 + k], fraction=0.046)
        for a in ax:
            a.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
