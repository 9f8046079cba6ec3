"""The crop head's scores and the rule that decides whether its fused kind ships (issue 28)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from core.evaluation.crop_classifier import (answer_scores, fit_fusion, fusion_goes_to_test, fusion_report,
                                             kind_head_ships, kind_scores)
from core.models.crop import fuse_kind


def test_the_fusion_is_calibrated_on_its_lesions_and_its_threshold_balances_the_classes():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    signal = np.where(y == 1, 1.0, -1.0)
    p_img = 1 / (1 + np.exp(-(3 * signal + rng.normal(0, 2, 400))))       # over-confident, noisy
    p_crop = 1 / (1 + np.exp(-(3 * signal + rng.normal(0, 2, 400))))
    fusion = fit_fusion(p_img, p_crop, y)
    fused = fuse_kind(p_img, p_crop, fusion)
    assert abs(fused.mean() - y.mean()) < 0.03, "Platt scaling: the mean probability meets the malignant share"
    assert fusion["kind_odds"] == pytest.approx(y.sum() / (1 - y).sum())
    report = fusion_report({"a": p_img}, {"a": p_crop}, {"a": y}, fusion)["a"]
    assert report["fused"]["auc"] > max(report["image"]["auc"], report["crop"]["auc"]), "two noisy readers beat one"
    assert report["fused"]["ece"] < report["image"]["ece"]
    pred = fused >= fusion["malignant_threshold"]
    assert (pred[y == 1].mean() + (~pred[y == 0]).mean()) / 2 > 0.8


def test_kind_scores_give_an_interval_around_the_auc():
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 50)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 100), 0, 1)
    s = kind_scores(p, y, np.arange(100), n_boot=200)
    assert s["n"] == 100 and s["n_malignant"] == 50
    assert s["auc_ci95"][0] < s["auc"] < s["auc_ci95"][1]


def test_answer_scores_count_what_the_user_was_shown():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    shown = np.array([0, 1, 2, 2, 2])            # the last lesion was called normal
    y = np.array([0, 1, 2, 0, 0])                # and so was a benign lesion
    s = answer_scores({"probs": probs, "shown": shown, "y": y, "groups": np.arange(5)})
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["lesions_called_normal"] == pytest.approx(2 / 4)
    assert s["normal_called_lesion"] == 0.0
    assert s["confusion_matrix"] == [[1, 0, 2], [0, 1, 0], [0, 0, 1]]


def _rows():
    part = {"kind_auc": 0.87, "kind_ece": 0.10, "kind_balanced_accuracy": 0.77, "accuracy": 0.87}
    old = {"busi_test": dict(part), "bb_test": dict(part)}
    return {"image classifier": old, "with the crop head": copy.deepcopy(old)}


def test_the_rule_ships_a_kind_head_only_when_nothing_the_user_sees_gets_worse():
    rows = _rows()
    assert kind_head_ships(rows) == (True, [])
    rows["with the crop head"]["busi_test"]["accuracy"] -= 2 / 155          # two more images wrong
    rows["with the crop head"]["bb_test"]["kind_ece"] += 0.01
    ok, failed = kind_head_ships(rows)
    assert not ok and failed == ["BUSI accuracy", "BUS-BRA kind ECE"]
    rows = _rows()
    rows["with the crop head"]["busi_test"]["accuracy"] -= 1 / 155           # one image: allowed
    rows["with the crop head"]["bb_test"]["kind_auc"] -= 0.004
    assert kind_head_ships(rows)[0]


def test_the_fusion_goes_to_a_test_read_only_if_it_ranks_as_well_on_both_val_parts():
    val = {"busi_val": {"image": {"auc": 0.9}, "fused": {"auc": 0.92}},
           "bb_val": {"image": {"auc": 0.85}, "fused": {"auc": 0.85}}}
    assert fusion_goes_to_test(val)
    val["bb_val"]["fused"]["auc"] = 0.849
    assert not fusion_goes_to_test(val)
