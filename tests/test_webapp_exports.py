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
