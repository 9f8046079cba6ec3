"""Metrics and losses on hand-checked cases, cross-checked against scipy on random masks."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial import distance

from core.losses import bce_dice_loss, soft_dice_loss
from core.metrics import dice, iou, mean_ci95


def test_dice_iou_by_hand():
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    pred[0, :3] = True   # 3 px
    gt[0, 1:] = True     # 3 px, 2 shared
    assert dice(pred, gt) == pytest.approx(2 * 2 / 6)
    assert iou(pred, gt) == pytest.approx(2 / 4)


def test_empty_semantics():
    z = np.zeros((3, 3), bool)
    o = np.ones((3, 3), bool)
    assert math.isnan(dice(z, z)) and math.isnan(iou(z, z))
    assert dice(z, z, empty="one") == 1.0 and iou(z, z, empty="one") == 1.0
    assert dice(o, z) == 0.0 and dice(z, o) == 0.0 and iou(o, z) == 0.0


def test_against_scipy_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.random((16, 16)) > rng.uniform(0.2, 0.8)
        t = rng.random((16, 16)) > rng.uniform(0.2, 0.8)
        assert dice(p, t) == pytest.approx(1 - distance.dice(p.ravel(), t.ravel()))
        assert iou(p, t) == pytest.approx(1 - distance.jaccard(p.ravel(), t.ravel()))


def test_metrics_accept_tensors_and_probabilities():
    t = torch.tensor([[0.9, 0.2], [0.7, 0.1]])
    assert dice(t, np.array([[1, 0], [1, 0]])) == 1.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2)), np.zeros((3, 3)))


def test_mean_ci95_ignores_nan():
    m, lo, hi = mean_ci95([0.5, float("nan"), 0.7])
    assert m == pytest.approx(0.6) and lo < 0.6 < hi


def test_soft_dice_loss_by_hand():
    target = torch.tensor([[1.0, 0.0]])
    logits = torch.tensor([[100.0, -100.0]])  # prob ~ [1, 0]: perfect
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[0.0, 0.0]])       # prob [0.5, 0.5]: 1 - (2*0.5+1)/(1+1+1) = 1/3
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 / 3, rel=1e-5)


def test_bce_dice_is_the_half_half_mix():
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8, 8, generator=rng)
    target = (torch.rand(2, 8, 8, generator=rng) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert bce_dice_loss(logits, target).item() == pytest.approx(0.5 * bce.item() + 0.5 * soft_dice_loss(logits, target).item())


def test_empty_target_loss_is_low_for_empty_prediction():
    target = torch.zeros(1, 8, 8)
    assert soft_dice_loss(torch.full((1, 8, 8), -20.0), target) < 0.05
    assert soft_dice_loss(torch.full((1, 8, 8), 20.0), target) > 0.9
