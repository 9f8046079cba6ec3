"""Out-of-fold masks: no training image's mask comes from a model that trained on it (or on its group)."""
from __future__ import annotations

import numpy as np
import pytest

from core.data.dataset import ImageSet
from core.data.discover import Sample
from core.models.supervised import SegmenterConfig
from core.phantom import make_phantom
from core.training.oof import group_folds, load_oof, out_of_fold_masks, save_oof
from core.training.supervised import SupervisedTrainConfig


def _set(n: int, size: int = 64, group_of=lambda i: i) -> ImageSet:
    ps = [make_phantom(i, size=(size, size)) for i in range(n)]
    labels = ["benign", "malignant", "normal"]
    samples = [Sample(None, (), f"{labels[i % 3]}/img{i}.png", labels[i % 3]) for i in range(n)]
    return ImageSet(samples, np.stack([p.image for p in ps]), np.stack([p.mask for p in ps]),
                    [group_of(i) for i in range(n)])


def test_folds_keep_groups_together_and_spread_each_class():
    groups = [i // 2 for i in range(30)]            # pairs of near-duplicates
    labels = [["benign", "malignant", "normal"][(i // 2) % 3] for i in range(30)]
    folds = group_folds(groups, labels, 3)
    for g in set(groups):
        assert len({folds[i] for i in range(30) if groups[i] == g}) == 1, "a group never straddles two folds"
    for c in ("benign", "malignant", "normal"):
        counts = np.bincount([folds[i] for i in range(30) if labels[i] == c], minlength=3)
        assert counts.max() - counts.min() <= 2
    with pytest.raises(ValueError, match="cannot make 3 folds"):
        group_folds([0, 0, 1], ["benign"] * 3, 3)


def test_no_mask_comes_from_a_model_that_trained_on_its_image(tmp_path):
    train = _set(9, group_of=lambda i: i // 3 * 3 + (i % 3 != 0))   # some groups of two
    val = _set(3)
    cfg = SupervisedTrainConfig(epochs=1, batch_size=4, device="cpu", save_path=str(tmp_path / "x"))
    res = out_of_fold_masks(train, val, 3, SegmenterConfig(image_size=64, weights="random"), cfg, tmp_path / "m",
                            {}, progress=False)
    assert res["masks"].shape == train.masks.shape and len(res["trained_on"]) == 3
    for i, name in enumerate(train.names):
        f = res["folds"][i]
        assert name not in res["trained_on"][f], "its mask's model trained on it"
        mates = [train.names[j] for j in range(len(train)) if train.groups[j] == train.groups[i]]
        assert not set(mates) & set(res["trained_on"][f]), "...or on a near-duplicate of it"
    save_oof(tmp_path / "oof", train.names, res)
    back = load_oof(tmp_path / "oof", list(reversed(train.names)))
    assert np.array_equal(back, res["masks"][::-1])
    with pytest.raises(ValueError, match="no out-of-fold mask"):
        load_oof(tmp_path / "oof", ["other.png"])
