"""Segmentation losses on logits. Pure functions: tensors in, scalar tensor out."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image (over all non-batch dims), averaged over the batch.

    `smooth` keeps the loss defined for an empty target: an empty prediction on an empty target
    costs ~0, any predicted foreground costs more.
    """
    prob = torch.sigmoid(logits).flatten(1)
    target = target.float().flatten(1)
    inter = (prob * target).sum(1)
    denom = prob.sum(1) + target.sum(1)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.5) -> torch.Tensor:
    """bce_weight * BCEWithLogits + (1 - bce_weight) * soft Dice loss (0.5 / 0.5 by default)."""
    bce = F.binary_cross_entropy_with_logits(logits, target.float())
    return bce_weight * bce + (1 - bce_weight) * soft_dice_loss(logits, target)
