"""The checkpoints that ship in checkpoints/ load with one call and work on held-out BUSI images."""
import json

import pytest

from core import checkpoint
from tests.conftest import ROOT

CKPT = ROOT / "checkpoints"


def test_shipped_checkpoints_are_complete_and_named_in_defaults():
    defaults = json.loads((CKPT / "DEFAULTS.json").read_text())
    listed = defaults.pop("listed")
    for kind, names in listed.items():   # the checkpoints the app lists, each with its one-line description
        assert defaults[kind] in names and all(checkpoint.load_meta(CKPT / n)["kind"] == kind for n in names)
        assert all(len(text) > 20 for text in names.values())
    for kind, name in defaults.items():
        meta = checkpoint.load_meta(CKPT / name)
        assert meta["kind"] == kind
        assert meta["model"]["weights_loaded"].startswith(("ImageNet", "LiteMedSAM")), "from offline pretrained weights"
        assert meta["data"]["split_hash"], "the checkpoint names the split it was trained on"


def test_shipped_panet_on_held_out_episodes(busi_dir):
    """20 fixed 5-shot test episodes: the shipped model must clearly beat its own mismatched-support control."""
    from core.data.sets import split_sets
    from core.evaluation.fewshot import make_episodes, panet_predictor, run_episodes, summarize
    from core.inference import load_panet

    defaults = json.loads((CKPT / "DEFAULTS.json").read_text())
    model, meta = load_panet(CKPT / defaults["panet"])
    test = split_sets(busi_dir, ("test",), model.config.image_size, progress=False)["test"]
    eps = make_episodes(test, None, 5, 20, seed=99)
    good = summarize(run_episodes(panet_predictor(model), test, test, eps))["dice"]
    moved = summarize(run_episodes(panet_predictor(model), test, test, eps, mismatched=True))["dice"]
    assert good > 0.55, f"5-shot Dice {good:.3f} on held-out episodes"
    assert good > moved + 0.05, f"supports must matter: {good:.3f} vs mismatched {moved:.3f}"


def test_shipped_pipeline_predicts_a_real_image(busi_dir):
    from PIL import Image

    from core.inference import SupervisedPipeline

    defaults = json.loads((CKPT / "DEFAULTS.json").read_text())
    if not (CKPT / f"{defaults['segmenter']}.json").exists():
        pytest.skip("no shipped segmenter")
    pipe = SupervisedPipeline(CKPT / defaults["segmenter"], CKPT / defaults["classifier"])
    path = busi_dir / "benign" / "benign (100).png"
    res = pipe.predict_file(path)
    assert res.mask.shape == Image.open(path).size[::-1]
    assert res.label in ("benign", "malignant", "normal") and 0.33 < res.confidence <= 1
    site = SupervisedPipeline(CKPT / defaults["segmenter"], CKPT / defaults["classifier"], malignant_odds=2.0)
    moved = site.predict_file(path)
    assert moved.label == res.label and moved.probabilities["malignant"] > res.probabilities["malignant"], \
        "a site with more malignant lesions: p(malignant) rises, the label stays (the default records its mix)"
