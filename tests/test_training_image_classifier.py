"""The image-level classifier (issue 28): a tiny training run, a checkpoint that loads without unpickling,
and the pipeline's answer with every probability and the presence decision."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.data.dataset import ImageSet
from core.data.errors import DataError
from core.data.discover import Sample
from core.inference import SupervisedPipeline
from core.models.supervised import CLASSES, ClassifierConfig
from core.training.image_classifier import depth_crop, load_image_classifier, train_image_classifier
from core.training.supervised import SupervisedTrainConfig


def _set(n: int, seed: int, labels) -> tuple[ImageSet, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
    y = np.array([i % len(labels) for i in range(n)])
    for i, k in enumerate(y):               # a learnable cue: brightness by class
        imgs[i] = np.clip(imgs[i] // 3 + 80 * labels[k], 0, 255)
    samples = [Sample(None, (), f"x{i}.png", CLASSES[labels[k]]) for i, k in enumerate(y)]
    return ImageSet(samples, imgs, np.zeros((n, 64, 64), bool), list(range(n))), np.array([labels[k] for k in y])


def test_depth_crop_keeps_the_size_and_the_top(tmp_path):
    img = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    out = depth_crop(img, np.random.default_rng(0))
    assert out.shape == img.shape


def test_depth_crop_cuts_the_mask_with_the_image():
    img = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), bool)
    img[40:, :, 0] = 255           # the image's deep rows are marked, as is the mask
    mask[40:] = True
    out, m = depth_crop(img, np.random.default_rng(3), max_cut=0.5, mask=mask)
    assert m.dtype == bool and m.shape == mask.shape and out.shape == img.shape
    assert m.mean() < mask.mean(), "the bottom was cut and the rest stretched"
    assert np.array_equal(m, out[..., 0] > 127), "one cut for both"


def test_a_multitask_run_learns_both_heads_and_loads_as_a_classifier(tmp_path):
    from core.models.supervised import MultiTaskClassifier

    torch.manual_seed(0)
    train = {"busi": _set(12, 0, [0, 1, 2])}
    for i in range(len(train["busi"][0])):     # lesions: a bright square in the middle
        if train["busi"][1][i] != 2:
            train["busi"][0].masks[i, 16:48, 16:48] = True
    val = {"busi": _set(6, 2, [0, 1, 2])}
    cfg = SupervisedTrainConfig(epochs=1, batch_size=4, save_path=str(tmp_path / "mt"), device="cpu")
    summary = train_image_classifier(ClassifierConfig(image_size=64, weights="random"), cfg, train, val, {},
                                     progress=False, multitask=True)
    assert summary["status"] == "finished"
    model = load_image_classifier(tmp_path / "mt")
    assert isinstance(model, MultiTaskClassifier) and model.config.extra["multitask"] == "deeplabv3plus"
    x = torch.rand(2, 3, 80, 96)
    assert model.predict(x).shape == (2, 3) and torch.allclose(model.predict(x).sum(1), torch.ones(2), atol=1e-5)
    assert model.segment(x).shape == (2, 1, 80, 96), "the mask at the image's size"
    cam = model.grad_cam(x[:1], 0)
    assert cam.shape == (80, 96) and float(cam.min()) >= 0 and float(cam.max()) <= 1 + 1e-6
    pipe = SupervisedPipeline(None, tmp_path / "mt")
    res = pipe.classify(train["busi"][0].images[0], np.zeros((64, 64), bool))
    assert set(res.probabilities) == set(CLASSES)


def test_a_tiny_run_saves_a_checkpoint_the_pipeline_answers_with(tmp_path):
    torch.manual_seed(0)
    train = {"busi": _set(12, 0, [0, 1, 2]), "busbra": _set(8, 1, [0, 1])}
    val = {"busi": _set(6, 2, [0, 1, 2]), "busbra": _set(4, 3, [0, 1])}
    cfg = SupervisedTrainConfig(epochs=1, batch_size=4, save_path=str(tmp_path / "cls"), device="cpu")
    summary = train_image_classifier(ClassifierConfig(image_size=64, weights="random"), cfg, train, val, {},
                                     progress=False)
    assert summary["status"] == "finished"
    model = load_image_classifier(tmp_path / "cls")
    assert model.config.extra["input"] == "image" and model.config.temperature > 0
    pipe = SupervisedPipeline(None, tmp_path / "cls")
    assert pipe.is_image
    img = train["busi"][0].images[0]
    p, present = pipe.presence(img)
    res = pipe.classify(img, np.zeros(img.shape[:2], bool), (p, present))
    assert set(res.probabilities) == set(CLASSES) and abs(sum(res.probabilities.values()) - 1) < 1e-4
    assert res.lesion_probability == p
    cam = pipe.explain(img, res.label)
    assert cam.shape == img.shape[:2] and cam.min() >= 0 and cam.max() <= 1 + 1e-6, "Grad-CAM at the image's size"
    assert pipe.presence_threshold() == 0.5, "no decision points yet: the plain 0.5"
    model.decision_points = {"presence_threshold": 0.0, "malignant_threshold": 0.5, "kind_odds": 0.5}
    pipe.classifier = model
    here = pipe.classify(img, np.ones(img.shape[:2], bool))
    site = SupervisedPipeline(None, tmp_path / "cls", malignant_odds=2.0)      # four times the malignant odds
    site.classifier = model
    there = site.classify(img, np.ones(img.shape[:2], bool))
    odds = lambda r: r.probabilities["malignant"] / r.probabilities["benign"]
    assert odds(there) == pytest.approx(4 * odds(here), rel=1e-4) and there.label == here.label, \
        "a site's prior moves p(malignant), not the label"
    assert there.probabilities["normal"] == pytest.approx(here.probabilities["normal"])
    model.decision_points = {"presence_threshold": 1.01, "malignant_threshold": 0.5}   # nothing is a lesion
    res = pipe.classify(img, np.ones(img.shape[:2], bool))
    assert res.label == "normal" and not res.lesion_present and not res.mask.any()
    with pytest.raises(DataError, match="mix it was calibrated at"):
        site.classify(img, np.ones(img.shape[:2], bool), (0.9, True))


def test_lesion_free_crops_avoid_the_lesion(tmp_path):
    from PIL import Image

    from core.data.sets import folder_set
    from core.training.image_classifier import lesion_free_crops

    root = tmp_path / "busi" / "benign"
    root.mkdir(parents=True)
    for i, (y0, y1) in enumerate([(10, 30), (0, 200)]):      # a small lesion at the top; one filling everything
        img = np.full((200, 200, 3), 90, np.uint8)
        mask = np.zeros((200, 200), np.uint8)
        mask[y0:y1, 10:190 if i else 40] = 255
        img[mask > 0] = 250                                   # the lesion is bright: a crop must not show it
        Image.fromarray(img).save(root / f"b ({i}).png")
        Image.fromarray(mask).save(root / f"b ({i})_mask.png")
    data = folder_set(tmp_path / "busi", 64, progress=False)
    crops = lesion_free_crops(data, 64, np.random.default_rng(0), share=1.0)
    assert crops.shape == (1, 64, 64, 3), "one crop from the small lesion's image, none from the other"
    assert crops.max() < 200, "no lesion pixel in the crop"


def test_folds_keep_groups_whole_and_the_held_fold_gets_out_of_fold_logits(tmp_path):
    """Cross-validation for calibration: fold I of K never trains, whole groups stay on one side, and the
    trained model's logits on fold I are written with each image's name and label."""
    import json

    from core.training.image_classifier import fold_parts, save_out_of_fold

    data, y = _set(18, 0, [0, 1, 2])
    data.groups = [i // 2 for i in range(18)]          # pairs of near-duplicates
    train = {"busi": (data, y), "busbra": _set(9, 1, [0, 1])}
    seen = {name: set() for name in train}
    for fold in range(3):
        keep, held = fold_parts(train, fold, 3)
        for name, (d, _) in train.items():
            kept, out = set(keep[name][0].names), set(held[name][0].names)
            assert not kept & out and kept | out == set(d.names)
            seen[name] |= out
        groups_out = {data.groups[data.names.index(n)] for n in held["busi"][0].names}
        groups_in = {data.groups[data.names.index(n)] for n in keep["busi"][0].names}
        assert not groups_out & groups_in, "a group never sits on both sides"
    assert all(seen[name] == set(d.names) for name, (d, _) in train.items()), "every image is held out once"
    keep, held = fold_parts(train, 1, 3)
    cfg = SupervisedTrainConfig(epochs=1, batch_size=4, save_path=str(tmp_path / "f1"), device="cpu")
    val = {"busi": _set(6, 2, [0, 1, 2])}
    assert train_image_classifier(ClassifierConfig(image_size=64, weights="random"), cfg, keep, val, {},
                                  progress=False)["status"] == "finished"
    doc = save_out_of_fold(tmp_path / "f1", held, tmp_path / "f1.oof.json")
    assert json.loads((tmp_path / "f1.oof.json").read_text()) == json.loads(json.dumps(doc))
    for name, (d, yy) in held.items():
        got = doc["sets"][name]
        assert got["names"] == d.names and got["labels"] == yy.tolist()
        assert np.array(got["logits"]).shape == (len(d), 3)
    model = load_image_classifier(tmp_path / "f1")
    from core.training.image_classifier import logits_of
    assert np.allclose(doc["sets"]["busi"]["logits"], logits_of(model, held["busi"][0].images, "cpu").numpy(), atol=1e-5)


def test_predict_feeds_the_classifier_the_image_resized_as_in_training(tmp_path):
    """A full-size image reaches the image classifier area-averaged to its size, as its training images were
    (`resize_image`), not bilinearly downsampled: the pipeline's probabilities are the evaluated model's."""
    from core import checkpoint
    from core.data.dataset import resize_image, to_tensor
    from core.models.supervised import ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier(ClassifierConfig(image_size=32, weights="random"))
    checkpoint.save(tmp_path / "cls", model.state_dict(), {"kind": "classifier", "model": model.config_dict()})
    pipe = SupervisedPipeline(None, tmp_path / "cls")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)      # speckle: aliasing shows at once
    want = pipe.classifier.predict(to_tensor(resize_image(img, 32))[None])[0].numpy()
    bilinear = pipe.classifier.predict(to_tensor(img)[None])[0].numpy()
    got = pipe.image_probabilities(img)
    assert np.allclose(got, want, atol=1e-6)
    assert not np.allclose(got, bilinear, atol=1e-4), "the two paths differ on a speckled image"
    cam = pipe.explain(img, "benign")
    assert cam.shape == img.shape[:2] and cam.min() >= 0 and cam.max() <= 1
