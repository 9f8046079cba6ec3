"""Segmenter-like mask errors for training the classifier (core/data/mask_noise.py)."""
import numpy as np

from core.data.mask_noise import MaskNoise, perturb_mask


def _lesion():
    m = np.zeros((96, 96), bool)
    m[30:60, 25:70] = True
    return m


def test_lesion_free_images_get_false_lesions_from_donor_shapes():
    rng = np.random.default_rng(0)
    donors = [_lesion()]
    outs = [perturb_mask(np.zeros((96, 96), bool), rng, donors) for _ in range(400)]
    share = np.mean([o.any() for o in outs])
    assert 0.4 < share < 0.6, "about half of the normal images get a false lesion (false_lesion=0.5)"
    sizes = [o.sum() for o in outs if o.any()]
    assert max(sizes) <= _lesion().sum() and min(sizes) > 0, "a shrunk copy of a donor lesion"
    assert not perturb_mask(np.zeros((96, 96), bool), rng, []).any(), "no donors: stays empty"


def test_lesion_masks_are_dropped_or_deformed_but_stay_near_the_lesion():
    rng = np.random.default_rng(1)
    m = _lesion()
    outs = [perturb_mask(m, rng, [m], MaskNoise(extra_blob=0.0)) for _ in range(400)]
    empty = np.mean([not o.any() for o in outs])
    assert 0.1 < empty < 0.2, "about 15% become empty (a missed lesion)"
    kept = [o for o in outs if o.any()]
    overlap = [(o & m).sum() / o.sum() for o in kept]
    assert np.median(overlap) > 0.7, "deformed masks mostly stay on the lesion"
    assert np.mean([not np.array_equal(o, m) for o in kept]) > 0.5, "most are changed"


def test_no_noise_config_returns_the_mask():
    m = _lesion()
    none = MaskNoise(drop=0, false_lesion=0, boundary=0, cut=0, extra_blob=0)
    assert np.array_equal(perturb_mask(m, np.random.default_rng(0), [m], none), m)
