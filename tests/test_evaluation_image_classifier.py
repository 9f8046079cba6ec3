"""Decision points of the image classifier (core/evaluation/image_classifier.py), on hand-made inputs."""
from __future__ import annotations

import numpy as np
import pytest

from core.evaluation import image_classifier as ev
from tests.conftest import fold_files


def test_presence_threshold_misses_at_most_the_allowed_share_of_lesions():
    score = np.linspace(0.01, 1.0, 100)         # 100 lesions with p(lesion) 0.01 ... 1.0
    lesion = np.ones(100, bool)
    t = ev.presence_threshold(score, lesion, max_missed=0.02)
    assert (score < t).sum() == 2 and (score >= t).sum() == 98


def test_kind_threshold_maximises_balanced_accuracy():
    score = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7])
    malignant = np.array([False, False, False, True, True, True])
    t = ev.kind_threshold(score, malignant)
    assert 0.3 < t <= 0.35


def test_decide_says_normal_below_presence_then_the_kind():
    probs = np.array([[0.1, 0.1, 0.8],      # benign, malignant, normal
                      [0.7, 0.2, 0.1],
                      [0.2, 0.7, 0.1]])
    points = {"presence_threshold": 0.5, "malignant_threshold": 0.5}
    assert ev.decide(probs, points).tolist() == [ev.N, ev.B, ev.M]


def test_part_metrics_count_normals_called_lesion_and_lesions_called_normal():
    probs = np.array([[0.1, 0.1, 0.8], [0.6, 0.1, 0.3], [0.7, 0.2, 0.1], [0.3, 0.1, 0.6]])
    y = np.array([ev.N, ev.N, ev.B, ev.M])
    m = ev.part_metrics(probs, y, {"presence_threshold": 0.5, "malignant_threshold": 0.5})
    assert m["normal_called_lesion"] == 0.5 and m["lesions_called_normal"] == 0.5
    assert m["confusion_matrix"][ev.N][ev.B] == 1


def test_the_combiner_learns_a_cue_the_classifier_misses_and_scores_out_of_fold():
    rng = np.random.default_rng(0)
    n = 200
    lesion = rng.random(n) < 0.6
    p_les = np.clip(0.5 + rng.normal(0, 0.2, n), 0.01, 0.99)          # the classifier knows nothing here
    evidence = np.column_stack([np.where(lesion, 0.9, 0.3) + rng.normal(0, 0.05, n),
                                np.where(lesion, 0.02, 0.0), np.where(lesion, 0.03, 0.0)])
    x = ev.presence_features(p_les, evidence)
    oof = ev.out_of_fold(x, lesion.astype(float), np.arange(n))
    from core.metrics import auc
    assert auc(oof, lesion) > 0.95 and abs(auc(x[:, 0], lesion) - 0.5) < 0.15
    w = ev.fit_logistic(x, lesion.astype(float))
    assert ev.logistic_score(w, x[lesion]).mean() > ev.logistic_score(w, x[~lesion]).mean()


def test_segmenter_evidence_of_an_empty_and_a_blob_map():
    prob = np.zeros((40, 40))
    assert ev.segmenter_evidence(prob).tolist() == [0.0, 0.0, 0.0]
    prob[10:20, 10:20] = 0.9
    m, mass, area = ev.segmenter_evidence(prob)
    assert m == 0.9 and abs(area - 100 / 1600) < 1e-9 and abs(mass - 90 / 1600) < 1e-9


def test_the_kind_calibration_keeps_presence_and_mends_an_over_confident_score():
    """p(malignant | lesion) over-confident (the truth is a coin weighted 0.5 + 0.3 * sign): Platt scaling fitted
    on val lesions brings its ECE down; p(normal) and each row's sum stay as they were."""
    rng = np.random.default_rng(0)
    n = 400
    truth_p = rng.uniform(0.2, 0.8, n)                       # the real chance of malignancy
    y_mal = rng.random(n) < truth_p
    score = 1 / (1 + np.exp(-15 * (truth_p - 0.5)))           # the same order, too extreme
    p_les = rng.uniform(0.7, 1.0, n)
    probs = np.column_stack([p_les * (1 - score), p_les * score, 1 - p_les])
    y = np.where(y_mal, ev.M, ev.B)
    points = ev.decision_points(probs, y)
    cal = ev.calibrate_kind(probs, points["kind_calibration"])
    assert np.allclose(cal.sum(1), 1) and np.allclose(cal[:, ev.N], probs[:, ev.N])
    assert ev.binary_ece(ev.p_malignant(cal), y_mal) < ev.binary_ece(score, y_mal) - 0.05
    assert np.array_equal(ev.calibrate_kind(probs, None), probs), "no calibration stored: unchanged"


def test_a_site_mix_moves_the_kinds_calibration_but_not_its_labels_or_ranking():
    from core.evaluation.image_classifier import at_site_mix, malignant_odds, part_metrics
    from core.models.presence import shift_kind_prior

    rng = np.random.default_rng(0)
    y = np.array([0] * 30 + [1] * 30 + [2] * 10)
    probs = rng.dirichlet(np.ones(3), len(y))
    probs[y == 1, 1] += 0.5
    probs /= probs.sum(1, keepdims=True)
    assert np.allclose(shift_kind_prior(probs, 1.0), probs), "ratio 1: nothing moves"
    moved = shift_kind_prior(probs, 3.0)
    assert np.allclose(moved[:, 2], probs[:, 2]) and np.allclose(moved.sum(1), 1), "p(lesion) is kept"
    assert (moved[:, 1] >= probs[:, 1] - 1e-12).all(), "more malignant odds: p(malignant) goes up"
    points = {"presence_threshold": 0.3, "malignant_threshold": 0.5}
    before, after = part_metrics(probs, y, points), at_site_mix(probs, y, points, 3.0)
    for key in ("confusion_matrix", "benign_malignant_auc", "benign_malignant_balanced_accuracy", "accuracy"):
        assert after[key] == before[key], key
    assert after["benign_malignant_ece"] != before["benign_malignant_ece"] and after["prior_ratio"] == 3.0
    assert malignant_odds(y) == 1.0
    with pytest.raises(ValueError, match="both benign and malignant"):
        malignant_odds(np.array([0, 0, 2]))


def test_out_of_fold_calibration_tempers_an_over_confident_model(tmp_path):
    oof = ev.read_out_of_fold(fold_files(tmp_path))
    assert len(oof["labels"]) == 300 and oof["k"] == 3
    t, points = ev.fit_out_of_fold(oof, max_missed=0.02)
    assert t > 2.0, "logits three times too large want a temperature well above 1"
    report = ev.out_of_fold_report(oof, t, points)["busi"]
    assert report["after"]["ece_top_label"] < report["before"]["ece_top_label"]
    assert report["after"]["lesions_called_normal"] <= 0.02
    assert points["n_out_of_fold"] == 300 and "out of fold" in points["chosen_on"]


def test_out_of_fold_files_must_be_one_whole_cross_validation(tmp_path):
    paths = fold_files(tmp_path)
    with pytest.raises(ValueError, match="every fold"):
        ev.read_out_of_fold(paths[:2])
    with pytest.raises(ValueError, match="every fold"):
        ev.read_out_of_fold([paths[0], paths[0], paths[1]])
    import json
    doc = json.loads(paths[1].read_text())
    doc["sets"]["busi"]["names"][0] = json.loads(paths[0].read_text())["sets"]["busi"]["names"][0]
    paths[1].write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="two folds"):
        ev.read_out_of_fold(paths)


def test_the_oof_calibration_ships_only_if_the_answer_shown_is_no_worse():
    part = {"n": 155, "n_normal": 27, "n_lesion": 128, "accuracy": 0.871, "normal_called_lesion": 1 / 27,
            "lesions_called_normal": 4 / 128, "macro_auc": 0.959}
    bb = {"benign_malignant_balanced_accuracy": 0.765, "benign_malignant_auc": 0.873}
    old = {"parts": {"busi_test": part, "busbra_test": bb}}
    same = {"parts": {"busi_test": {**part, "accuracy": 0.871 - 1 / 155}, "busbra_test": bb}}
    assert ev.oof_calibration_ships(same, old) == (True, [])
    worse = {"parts": {"busi_test": {**part, "lesions_called_normal": 6 / 128}, "busbra_test": bb}}
    assert ev.oof_calibration_ships(worse, old) == (False, ["lesions called normal"])
