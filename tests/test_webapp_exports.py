"""The Classify tab's answer: the probabilities, the sentence and where the classifier looked (Grad-CAM),
for the image of that answer even if the session moves on before it is explained."""
from __future__ import annotations

import json

import numpy as np
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
    from webapp import exports
    from webapp.tabs.classify import classify

    sess, q = _session(3)
    answer = exports.classify(ctx, sess)
    probs, text, shown = answer.shows()
    assert set(probs) == {"benign", "malignant", "normal"} and abs(sum(probs.values()) - 1) < 1e-4
    assert ("Predicted class" in text or "No lesion" in text) and "Grad-CAM" not in text
    assert shown.shape == q.image.shape, "the query with the mask the classifier was given"
    sess.query_image, sess.mask = _session(4)[0].query_image, None   # the user moves on meanwhile
    probs2, text2, cam = exports.explain(answer)
    assert probs2 == probs and text2.startswith(text) and "Grad-CAM" in text2
    assert cam.shape == q.image.shape and not np.array_equal(cam, shown), "where it looked, on that image"
    sess2, _ = _session(3)
    assert classify(ctx, sess2)[1] == text2, "the tab answers with both in one message"


def test_classify_needs_a_segmented_query(ctx):
    from webapp.session import Session, UserError
    from webapp.tabs.classify import classify

    with pytest.raises(UserError, match="segment a query first"):
        classify(ctx, Session())
