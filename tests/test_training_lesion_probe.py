"""Fitting the lesion probe: folds keep patient groups whole, selection never reads a test part, the
temperature and the presence threshold do what they say, and the data parts do not share a group."""
from __future__ import annotations

import numpy as np
import pytest

from core.models.lesion_probe import IMAGE_DIM, LESION_DIM
from core.training.lesion_probe import (choose_threshold, fit_final, fit_temperature, group_folds, select_presence,
                                        select_type, three_class)


def test_folds_keep_every_group_whole():
    groups = [f"busi:{i // 3}" for i in range(60)] + [f"bb:{i // 2}" for i in range(40)]
    folds = group_folds(groups, 5, 0)
    for g in set(groups):
        assert len({folds[i] for i, x in enumerate(groups) if x == g}) == 1
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]


def test_temperature_undoes_overconfidence():
    rng = np.random.default_rng(0)
    true = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-true))).astype(np.float32)
    assert fit_temperature(3 * true, y) == pytest.approx(3.0, rel=0.15)


def test_threshold_keeps_missed_lesions_within_the_budget():
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.uniform(0.3, 1, 300), rng.uniform(0, 0.6, 100)])
    lesion = np.arange(400) < 300
    t = choose_threshold(p, lesion, 0.01)
    assert (p[lesion] < t).mean() <= 0.01
    assert (p[lesion] < t + 0.02).mean() > 0.01 or t > 0.3, "the highest such threshold"


def synthetic(n_busi=90, n_bb=60, seed=0):
    """Training parts only, with a learnable signal spread over many features (as in an embedding)."""
    rng = np.random.default_rng(seed)

    def part(n, labels, prefix):
        lab = np.array([labels[i % len(labels)] for i in range(n)])
        pres = rng.normal(size=(n, IMAGE_DIM)).astype(np.float32)
        pres[:, :64] += (lab != "normal")[:, None]
        gt = rng.normal(size=(n, LESION_DIM)).astype(np.float32)
        gt[:, 256:320] += (lab == "malignant")[:, None]
        gt[lab == "normal"] = np.nan
        return {"label": lab, "group": np.array([f"{prefix}:{i // 2}" for i in range(n)]), "presence": pres, "gt": gt}

    return {"busi_trainval": part(n_busi, ["benign", "malignant", "normal"], "busi"),
            "bb_trainval": part(n_bb, ["benign", "malignant"], "bb")}


def test_selection_reads_only_the_training_parts_and_learns_the_signal():
    data = synthetic()       # no test part at all: selection would fail if it read one
    folds_of = lambda g: group_folds(g, 5, 0)
    _, p_best = select_presence(data, folds_of)
    _, t_best = select_type(data, folds_of)
    assert p_best["busi_oof_auc"] > 0.9 and t_best["oof_auc"] > 0.9
    probe = fit_final(data, p_best, t_best, 1.0, 1.0, 0.5)
    test = synthetic(30, 2, seed=7)["busi_trainval"]
    probs, decided = three_class(probe, test["presence"], test["gt"])
    y = np.array([["benign", "malignant", "normal"].index(v) for v in test["label"]])
    assert (decided == y).mean() > 0.8
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


def test_lesion_parts_share_no_image_and_no_group(busi_dir):
    from core.data.lesion_sets import lesion_parts

    parts = lesion_parts(busi_dir)
    for a, b in (("busi_trainval", "busi_test"), ("bb_trainval", "bb_test")):
        if not parts[a]:
            continue
        assert not {r["name"] for r in parts[a]} & {r["name"] for r in parts[b]}
        assert not {r["group"] for r in parts[a]} & {r["group"] for r in parts[b]}, "a patient on both sides"
    assert {r["label"] for r in parts["busi_test"]} == {"benign", "malignant", "normal"}
    assert {r["label"] for r in parts["bb_test"]} <= {"benign", "malignant"}
