"""Click and box refinement (core/models/clicks.py) and the interactive protocol's simulated user."""
import numpy as np
import pytest

from core.data.io import DataError
from core.models.clicks import check_box, clicks_to_reach, next_click, parse_clicks
from core.phantom import make_phantom


def _supports():
    return [(p.image, p.mask) for p in (make_phantom(1), make_phantom(2))]


def test_a_positive_click_on_a_missed_lesion_adds_it(seg):
    q = make_phantom(5)
    base = seg.predict(q.image, _supports(), threshold=0.99, heatmaps=False)   # a strict threshold: lesion missed
    ys, xs = np.nonzero(q.mask & ~base.mask)
    y, x = int(np.median(ys)), int(np.median(xs))
    clicked = seg.predict(q.image, _supports(), threshold=0.99, heatmaps=False, clicks=[(x, y, True)])
    assert not base.mask[y, x] and clicked.mask[y, x], "the clicked pixel becomes lesion"
    assert (clicked.mask & q.mask).sum() > (base.mask & q.mask).sum()


def test_a_negative_click_on_a_false_region_removes_it(seg):
    q = make_phantom(6)
    base = seg.predict(q.image, _supports(), threshold=0.01, heatmaps=False)    # a lax threshold: false regions
    ys, xs = np.nonzero(base.mask & ~q.mask)
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    clicked = seg.predict(q.image, _supports(), threshold=0.01, heatmaps=False, clicks=[(x, y, "-")])
    assert base.mask[y, x] and not clicked.mask[y, x]
    assert (clicked.mask & ~q.mask).sum() < (base.mask & ~q.mask).sum()


def test_a_box_restricts_the_lesion_and_clicks_alone_work(seg):
    q = make_phantom(7)
    res = seg.predict(q.image, _supports(), threshold=0.01, heatmaps=False, box=(10, 20, 60, 70))
    assert res.mask[20:71, 10:61].any() and not res.mask[:20].any() and not res.mask[:, 61:].any()
    ys, xs = np.nonzero(q.mask)
    alone = seg.predict(q.image, [], heatmaps=False, clicks=[(int(xs.mean()), int(ys.mean()), True)])
    assert alone.mask[int(ys.mean()), int(xs.mean())]
    with pytest.raises(DataError, match="click on the lesion"):
        seg.predict(q.image, [], clicks=[(5, 5, False)])
    with pytest.raises(DataError, match="box is empty"):
        seg.predict(q.image, _supports(), box=(5000, 5000, 6000, 6000))


def test_refinement_reuses_the_query_features(seg, monkeypatch):
    q = make_phantom(8)
    seg.predict(q.image, _supports(), heatmaps=False)
    calls = []
    real = seg.model.encoder.forward
    monkeypatch.setattr(seg.model.encoder, "forward", lambda x: calls.append(1) or real(x))
    seg.predict(q.image, _supports(), heatmaps=False, clicks=[(10, 10, True)])
    seg.predict(q.image, _supports(), heatmaps=False, clicks=[(10, 10, True), (40, 40, False)])
    assert calls == [], "a click runs the decoder only"


def test_next_click_goes_to_the_centre_of_the_largest_error():
    truth = np.zeros((50, 60), bool)
    truth[10:30, 10:30] = True              # 400 px lesion
    pred = np.zeros_like(truth)
    pred[40:45, 50:55] = True               # 25 px false region
    x, y, positive = next_click(pred, truth)
    assert positive and 19 <= x <= 20 and 19 <= y <= 20
    pred2 = truth.copy()
    pred2[0:20, 40:60] = True               # the false region is now the largest error
    x, y, positive = next_click(pred2, truth)
    assert not positive and 40 <= x <= 59 and 0 <= y <= 19
    assert next_click(truth, truth) is None
    edge = np.zeros((20, 20), bool)
    edge[:, :6] = True                      # touching the image border: the border counts as an edge
    x, y, _ = next_click(np.zeros_like(edge), edge)
    assert 2 <= x <= 3


def test_clicks_to_reach_and_parsing():
    assert clicks_to_reach([0.2, 0.5, 0.86, 0.9], 0.85, 10) == 2
    assert clicks_to_reach([0.9], 0.85) == 0
    assert clicks_to_reach([0.1] * 11, 0.85, 10) == 10
    assert parse_clicks([(1, 2, "+"), (3, 4, False)]) == [(1.0, 2.0, True), (3.0, 4.0, False)]
    with pytest.raises(ValueError):
        parse_clicks([(1, 2, "?")])
    assert check_box((50, 40, 10, 5), (100, 100)) == (10, 5, 50, 40)
