"""Masked average pooling and scaled cosine similarity on hand-checkable inputs."""
import pytest
import torch

from core.models.prototypes import (EmptySupportMask, combine_shots, cosine_similarity_map,
                                    masked_average_pooling, support_prototypes)


def test_masked_average_pooling_by_hand():
    feats = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)  # channel 0: 0 1 2 3, channel 1: 4 5 6 7
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    out = masked_average_pooling(feats, mask)
    assert out.tolist() == [[1.0, 5.0]]  # mean of (0, 2) and (4, 6)
    soft = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    assert masked_average_pooling(feats, soft)[0, 0].item() == pytest.approx((0 + 0.5) / 1.5)


def test_cosine_map_equals_tau_where_feature_equals_prototype():
    feats = torch.randn(1, 8, 4, 4)
    proto = feats[0, :, 2, 1].clone()
    sim = cosine_similarity_map(feats, proto, tau=20.0)
    assert sim.shape == (1, 4, 4)
    assert sim[0, 2, 1].item() == pytest.approx(20.0, rel=1e-5)
    assert sim.abs().max().item() <= 20.0 + 1e-4
    assert cosine_similarity_map(feats, -proto, 20.0)[0, 2, 1].item() == pytest.approx(-20.0, rel=1e-5)


def test_support_prototypes_are_unit_vectors_and_average_over_shots():
    feats = torch.randn(3, 5, 8, 8)
    masks = torch.zeros(3, 32, 32)
    masks[:, 4:16, 4:16] = 1
    fg, bg = support_prototypes(feats, masks)
    assert fg.shape == bg.shape == (3, 5)
    assert torch.allclose(fg.norm(dim=1), torch.ones(3))
    combined = combine_shots(fg)
    assert combined.norm().item() == pytest.approx(1.0)
    assert torch.allclose(combined, torch.nn.functional.normalize(fg.mean(0), dim=0))


def test_empty_support_mask_raises_clear_error():
    with pytest.raises(EmptySupportMask, match=r"\[1\] are empty"):
        support_prototypes(torch.randn(2, 4, 4, 4), torch.stack([torch.ones(16, 16), torch.zeros(16, 16)]))
