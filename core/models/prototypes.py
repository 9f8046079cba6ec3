"""Prototype math of PANet: masked average pooling and scaled cosine similarity. Pure functions."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class EmptySupportMask(ValueError):
    """A support mask with no foreground pixel cannot give a foreground prototype."""


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) binary mask -> (K, 1, h, w) soft mask (fraction of foreground pixels per cell)."""
    return F.adaptive_avg_pool2d(mask[:, None].float(), size) if mask.shape[-2:] != size else mask[:, None].float()


def masked_average_pooling(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of `features` (K, C, h, w) weighted by `mask` (K, 1, h, w) -> (K, C).

    Raises EmptySupportMask if a mask has (numerically) no weight.
    """
    weight = mask.sum(dim=(2, 3))  # (K, 1)
    if (weight <= 1e-6).any():
        bad = torch.nonzero(weight.squeeze(1) <= 1e-6).flatten().tolist()
        raise EmptySupportMask(f"support(s) {', '.join(str(b + 1) for b in bad)}: the region to average (lesion "
                               "or background) has no pixel at feature resolution")
    return (features * mask).sum(dim=(2, 3)) / weight


def cosine_similarity_map(features: torch.Tensor, prototype: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """tau * cos(features[b, :, y, x], prototype[b or shared]) -> (B, h, w).

    features (B, C, h, w); prototype (C,) or (B, C).
    """
    if prototype.dim() == 1:
        prototype = prototype[None].expand(features.shape[0], -1)
    f = F.normalize(features, dim=1)
    p = F.normalize(prototype, dim=1)
    return tau * torch.einsum("bchw,bc->bhw", f, p)


def support_prototypes(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-shot L2-normalised foreground and background prototypes, each (K, C).

    features (K, C, h, w); masks (K, H, W) binary at image resolution.
    """
    m = downsample_mask(masks, tuple(features.shape[-2:]))
    if (masks.flatten(1).sum(1) == 0).any():
        bad = torch.nonzero(masks.flatten(1).sum(1) == 0).flatten().tolist()
        raise EmptySupportMask(f"support mask(s) {bad} are empty: mark the lesion on every support")
    fg = masked_average_pooling(features, m)
    bg = masked_average_pooling(features, 1 - m)
    return F.normalize(fg, dim=1), F.normalize(bg, dim=1)


def combine_shots(prototypes: torch.Tensor) -> torch.Tensor:
    """Average K per-shot prototypes (K, C) into one L2-normalised prototype (C,)."""
    return F.normalize(prototypes.mean(0), dim=0)
