"""The 'no lesion' decision: presence scores, the threshold choice on validation rows, gating in predict."""
import numpy as np
import pytest

from core.evaluation.presence import choose, presence_scores, tradeoff
from core.phantom import make_phantom


def _rows():
    # lesion images score high (one low), normal images mostly low
    lesion = [{"lesion": True, "dice": d, "predicted_any": True, "mass": m, "peak": m, "confidence": m}
              for d, m in ((0.8, 0.30), (0.9, 0.25), (0.7, 0.20), (0.6, 0.02))]
    normal = [{"lesion": False, "dice": None, "predicted_any": True, "mass": m, "peak": m, "confidence": m}
              for m in (0.01, 0.03, 0.05, 0.22)]
    return lesion + normal


def test_scores_of_a_probability_map():
    p = np.zeros((10, 10), np.float32)
    p[:2, :5] = 0.9
    s = presence_scores(p)
    assert s["mass"] == pytest.approx(0.09) and s["confidence"] == pytest.approx(0.9) and s["peak"] == pytest.approx(0.9)
    assert presence_scores(np.zeros((4, 4)))["confidence"] == 0.0


def test_tradeoff_and_choice_respect_the_dice_budget():
    rows = _rows()
    t0 = tradeoff(rows, "mass", [0.0])[0]
    assert t0["fp_rate"] == 1.0 and t0["dice_drop"] == 0.0
    t = tradeoff(rows, "mass", [0.1])[0]
    assert t["fp_rate"] == 0.25 and t["dice_drop"] == pytest.approx(0.6 / 4)
    best = choose(rows, max_dice_drop=0.01)     # may not lose the low-scoring lesion
    assert best["dice_drop"] <= 0.01 and best["threshold"] <= 0.02 and best["fp_rate"] == 0.75
    loose = choose(rows, max_dice_drop=0.2)
    assert loose["fp_rate"] == 0.25 and loose["dice_drop"] <= 0.2


def test_predict_empties_the_mask_below_the_threshold(seg):
    sup = [(make_phantom(1).image, make_phantom(1).mask)]
    q = make_phantom(2).image
    plain = seg.predict(q, sup, threshold=0.01, heatmaps=False)
    assert plain.lesion_present and plain.lesion_score is None and plain.mask.any()
    gated = seg.predict(q, sup, threshold=0.01, heatmaps=False, presence={"score": "mass", "threshold": 2.0})
    assert not gated.lesion_present and not gated.mask.any() and gated.lesion_score is not None
    clicked = seg.predict(q, sup, threshold=0.01, heatmaps=False, presence={"score": "mass", "threshold": 2.0},
                          clicks=[(30, 30, True)])
    assert clicked.lesion_present, "a positive click overrides the decision"
