"""Few-shot evaluation helpers, classification metrics and the results report."""
import numpy as np
import pytest

from core.evaluation.fewshot import EpisodeResult, displace_mask, summarize
from core.evaluation.supervised import _auc, classification_metrics


def test_displaced_mask_keeps_shape_and_leaves_the_lesion():
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:45] = True
    moved = displace_mask(mask, np.random.default_rng(0))
    assert moved.sum() == mask.sum()
    assert not (moved & mask).any()


def test_summary_separates_lesion_and_normal_queries():
    rs = [EpisodeResult(["a"], "q1", "benign", 0.8, 0.6, 10, True),
          EpisodeResult(["a"], "q2", "malignant", 0.4, 0.3, 10, True),
          EpisodeResult(["a"], "n1", "normal", float("nan"), float("nan"), 5, False),
          EpisodeResult(["a"], "n2", "normal", float("nan"), float("nan"), 0, False)]
    s = summarize(rs)
    assert s["dice"] == pytest.approx(0.6) and s["iou"] == pytest.approx(0.45)
    assert s["per_class"]["benign"]["dice"] == 0.8 and s["per_class"]["malignant"]["n"] == 1
    assert s["normal_false_positive_rate"] == 0.5
    assert s["n_lesion_queries"] == 2 and s["n_normal_queries"] == 2


def test_classification_metrics_by_hand():
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 1, 2])
    m = classification_metrics(probs, labels, ("benign", "malignant", "normal"))
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["auc"]["normal"] == 1.0
    # benign: positives score 0.9; negatives 0.2, 0.6, 0.1 -> all below -> AUC 1
    assert m["auc"]["benign"] == 1.0
    assert 0 <= m["ece"] <= 1


def test_auc_against_pairwise_definition():
    rng = np.random.default_rng(0)
    s, y = rng.random(40), rng.random(40) > 0.5
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert _auc(s, y) == pytest.approx(np.mean(pairs))
