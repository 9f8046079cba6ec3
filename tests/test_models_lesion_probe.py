"""The lesion probe (issue 18): shape features, the crop around the lesion, storage without pickles, and
the presence head emptying the mask in predict, Classify's pipeline and the few-shot Segment."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from core.models.lesion_probe import (IMAGE_DIM, LESION_DIM, SHAPE_NAMES, LesionProbe, LinearHead, crop_box,
                                      shape_features)


def disc(h=120, w=160, c=(60, 80), r=25):
    yy, xx = np.mgrid[:h, :w]
    return (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r ** 2


def star(h=120, w=160, c=(60, 80), r=30, spikes=9):
    ang = np.linspace(0, 2 * np.pi, 2 * spikes, endpoint=False)
    rad = np.where(np.arange(2 * spikes) % 2 == 0, r, r * 0.45)
    pts = np.stack([c[1] + rad * np.cos(ang), c[0] + rad * np.sin(ang)], 1).astype(np.int32)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [pts], 1)
    return m.astype(bool)


def test_shape_features_see_an_irregular_and_a_tall_lesion():
    f = dict(zip(SHAPE_NAMES, shape_features(disc())))
    g = dict(zip(SHAPE_NAMES, shape_features(star())))
    assert f["solidity"] > 0.95 > 0.8 > g["solidity"], "a spiculated outline is far from its convex hull"
    assert f["circularity"] > 0.8 > g["circularity"]
    tall, wide = np.zeros((120, 160), bool), np.zeros((120, 160), bool)
    tall[20:100, 70:90] = True
    wide[50:70, 40:120] = True
    ttw = lambda m: dict(zip(SHAPE_NAMES, shape_features(m)))["taller_than_wide"]
    assert ttw(tall) > 0 > ttw(wide), "taller than wide (a BI-RADS sign of malignancy) is positive"
    assert not shape_features(np.zeros((10, 10), bool)).any(), "no lesion: zeros"


def test_crop_box_is_a_square_around_the_lesion_inside_the_image():
    m = disc(c=(20, 30), r=10)          # near the corner: the crop is shifted in, not cut
    x0, y0, x1, y1 = crop_box(m)
    assert x1 - x0 == y1 - y0 and x0 >= 0 and y0 >= 0 and x1 <= 160 and y1 <= 120
    ys, xs = np.nonzero(m)
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    assert x1 - x0 >= 2 * 21 - 1, "the lesion's box grown by half its size on each side"
    assert crop_box(np.zeros((5, 5), bool)) is None


def random_probe(threshold=0.5, seed=0) -> LesionProbe:
    rng = np.random.default_rng(seed)
    pres = LinearHead(rng.normal(size=(1, IMAGE_DIM)).astype(np.float32) * 0.01, np.zeros(1, np.float32),
                      np.zeros(IMAGE_DIM, np.float32), np.ones(IMAGE_DIM, np.float32), 1.5)
    cols = np.arange(0, 768)
    kind = LinearHead(rng.normal(size=(1, len(cols))).astype(np.float32) * 0.01, np.zeros(1, np.float32),
                      np.zeros(len(cols), np.float32), np.ones(len(cols), np.float32), 0.8, cols)
    return LesionProbe(pres, kind, threshold)


def test_probe_round_trips_through_safetensors_and_json(tmp_path):
    from core.inference import load_classifier

    p = random_probe(0.3)
    p.save(tmp_path / "probe", {"note": "test"})
    doc = json.loads((tmp_path / "probe.json").read_text())
    assert doc["kind"] == "classifier" and doc["architecture"] == "lesion_probe" and doc["note"] == "test"
    q = load_classifier(tmp_path / "probe")
    assert isinstance(q, LesionProbe) and q.threshold == 0.3
    x = np.random.default_rng(1).normal(size=(3, LESION_DIM)).astype(np.float32)
    np.testing.assert_allclose(q.kind.prob(x), p.kind.prob(x), rtol=1e-6)
    assert q.kind.temperature == 0.8 and (q.kind.columns == p.kind.columns).all()
    probs = q.probabilities(0.9, 0.25)
    assert sum(probs.values()) == pytest.approx(1.0) and probs["normal"] == pytest.approx(0.1)


def test_the_presence_decision_empties_the_few_shot_mask(seg):
    from tests.conftest import blob_image

    img, mask = blob_image()
    base = seg.predict(img, [(img, mask)], heatmaps=False, threshold=0.01)
    assert base.mask.any() and base.lesion_present
    res = seg.predict(img, [(img, mask)], heatmaps=False, threshold=0.01, presence=lambda im: (0.05, False))
    assert not res.mask.any() and not res.lesion_present and res.lesion_score == 0.05
    kept = seg.predict(img, [(img, mask)], heatmaps=False, threshold=0.01, presence=lambda im: (0.95, True))
    assert (kept.mask == base.mask).all()


@pytest.fixture(scope="module")
def sam():
    promptable = pytest.importorskip("core.models.promptable")
    if not promptable.available()[0]:
        pytest.skip("LiteMedSAM not installed")
    return promptable.shared("cpu")


def test_pipeline_says_no_lesion_with_an_empty_mask_below_the_threshold(sam):
    from core.inference import SupervisedPipeline
    from tests.test_models_promptable import disc_image

    img, mask = disc_image()
    pipe = SupervisedPipeline(None, None)
    pipe._sam = sam
    pipe.classifier = random_probe(threshold=1.01)      # never sure enough: always "no lesion"
    res = pipe.classify(img, mask)
    assert res.label == "normal" and not res.lesion_present and not res.mask.any()
    assert res.probabilities["normal"] == pytest.approx(1 - res.lesion_probability)
    pipe.classifier = random_probe(threshold=0.0)       # always a lesion: benign or malignant, mask kept
    res = pipe.classify(img, mask)
    assert res.label in ("benign", "malignant") and res.lesion_present and (res.mask == mask).all()
    assert sum(res.probabilities.values()) == pytest.approx(1.0)
    p_mal = res.probabilities["malignant"] / (res.probabilities["malignant"] + res.probabilities["benign"])
    assert res.confidence == pytest.approx(max(p_mal, 1 - p_mal)), "the kind's confidence, given a lesion"
