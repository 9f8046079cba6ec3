"""The Classify tab's answer: the probabilities, the sentence and where the classifier looked (Grad-CAM)."""
from __future__ import annotations

import json

import pytest
import torch

from core import checkpoint
from core.models.supervised import ClassifierConfig, MultiTaskClassifier
from core.phantom import make_phantom

pytest.importorskip("gradio")


@pytest.fixture()
def ctx(tmp_path):
    from webapp.context import AppConfig, AppContext

    torch.manual_seed(0)
    model = MultiTaskClassifier(ClassifierConfig(image_size=64, weights="random")).eval()
    folder = tmp_path / "ckpt"
    checkpoint.save(folder / "tiny_image", model.state_dict(), {"kind": "classifier", "model": model.config_dict()})
    (folder / "DEFAULTS.json").write_text(json.dumps({"classifier": "tiny_image"}))
    return AppContext(AppConfig(checkpoints_dir=folder, output_dir=tmp_path / "out"))


def _session(seed: int):
    from webapp.session import Session

    q = make_phantom(seed, size=(120, 150))
    return Session(query_image=q.image, mask=q.mask.astype(bool)), q


def test_the_answer_and_where_it_looked(ctx):
    from webapp.tabs.classify import classify

    sess, q = _session(3)
    probs, text, cam = classify(ctx, sess)
    assert set(probs) == {"benign", "malignant", "normal"} and abs(sum(probs.values()) - 1) < 1e-4
    assert ("Predicted class" in text or "No lesion" in text) and "Grad-CAM" in text
    assert cam.shape == q.image.shape, "where it looked, on the query, with the mask's outline"
    pipe = ctx.pipeline()
    assert pipe._last_probs is not None and pipe._last_probs[0] == pipe._image_key(q.image), \
        "Grad-CAM read the feature maps of the image just classified"


def test_classify_needs_a_segmented_query(ctx):
    from webapp.session import Session, UserError
    from webapp.tabs.classify import classify

    with pytest.raises(UserError, match="segment a query first"):
        classify(ctx, Session())


def test_a_site_prior_moves_p_malignant_not_the_label(ctx):
    from webapp.session import UserError
    from webapp.tabs.classify import classify

    sess, _ = _session(5)
    pipe = ctx.pipeline()
    if not pipe.is_image or not (pipe.classifier.decision_points or {}).get("kind_odds"):
        pipe.classifier.decision_points = {**(pipe.classifier.decision_points or {"presence_threshold": 0.0,
                                                                                 "malignant_threshold": 0.5}),
                                           "presence_threshold": 0.0, "kind_odds": 0.5}
    here, text, _ = classify(ctx, sess)
    there, text_there, _ = classify(ctx, sess, 2.0)          # four times the calibration's odds
    odds = lambda p: p["malignant"] / p["benign"]
    assert odds(there) == pytest.approx(4 * odds(here), rel=1e-3)
    assert there["normal"] == pytest.approx(here["normal"])
    label = lambda t: t.split("**")[1].split(" (")[0]
    assert label(text) == label(text_there), "the label is the same"
    p_mal = there["malignant"] / (there["malignant"] + there["benign"])
    shown = float(text_there.split("(")[1].split(" confidence")[0])
    assert shown == pytest.approx(p_mal if "malignant" in label(text_there) else 1 - p_mal, abs=0.006), \
        "the confidence is the shown label's own probability given a lesion"
    assert "your site's prior (odds 2)" in text_there
    for bad in (0, -1, "abc", float("nan"), 1e9):
        with pytest.raises(UserError, match="malignant:benign odds"):
            classify(ctx, sess, bad)
