"""Episode sampler and augmentations."""
from pathlib import Path

import numpy as np
import pytest

from core.data.dataset import ImageSet, augment
from core.data.discover import Sample
from core.data.episodes import EpisodeSampler


def _set(n=12, normal=(0,), groups=None):
    imgs = np.zeros((n, 32, 32, 3), np.uint8)
    masks = np.zeros((n, 32, 32), bool)
    for i in range(n):
        if i not in normal:
            masks[i, 8:16, 8:16] = True
    samples = [Sample(Path(f"{i}.png"), (), f"x/{i}.png", "normal" if i in normal else "benign") for i in range(n)]
    return ImageSet(samples, imgs, masks, groups or [i // 2 for i in range(n)])


def test_supports_never_from_query_group_nor_normal():
    data = _set()
    sampler = EpisodeSampler(data, include_normal_queries=True)
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 6))
        ep = sampler.episode(rng, k)
        assert len(ep.support) == k == len(set(ep.support))
        assert all(data.groups[s] != data.groups[ep.query] for s in ep.support)
        assert all(data.has_lesion(s) for s in ep.support)


def test_fixed_episodes_are_reproducible_and_cover_queries():
    data = _set()
    s = EpisodeSampler(data)
    a, b = s.fixed_episodes(20, 5, seed=3), s.fixed_episodes(20, 5, seed=3)
    assert a == b
    assert a != s.fixed_episodes(20, 5, seed=4)
    assert {e.query for e in a[:11]} == set(range(1, 12))  # every lesion query once before repeats
    assert all(data.has_lesion(e.query) for e in a)


def test_normal_queries_only_on_request():
    data = _set()
    assert 0 not in EpisodeSampler(data).query_candidates
    assert 0 in EpisodeSampler(data, include_normal_queries=True).query_candidates


def test_shots_out_of_range():
    with pytest.raises(ValueError, match="between 1 and 5"):
        EpisodeSampler(_set()).episode(np.random.default_rng(0), 6)


def test_augment_moves_image_and_mask_together():
    img = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), bool)
    img[10:30, 20:40] = 255
    mask[10:30, 20:40] = True
    rng = np.random.default_rng(0)
    for _ in range(10):
        a_img, a_mask = augment(img, mask, rng)
        assert a_img.shape == img.shape and a_mask.shape == mask.shape and a_mask.dtype == bool
        bright = a_img[..., 0] > 100
        # the bright square and the mask stay aligned (IoU high despite intensity noise)
        inter = (bright & a_mask).sum() / max(1, (bright | a_mask).sum())
        assert inter > 0.8
