"""Training smoke runs on a handful of real images (few-shot and supervised), and resumption."""
import math

import pytest

from core import checkpoint
from core.data.dataset import ImageSet
from core.data.sets import split_sets


@pytest.fixture(scope="module")
def tiny_sets(busi_dir):
    sets = split_sets(busi_dir, ("train", "val"), 96, progress=False)

    def head(s, n):
        idx = [i for i in range(len(s)) if s.has_lesion(i)][: n - 2] + [i for i in range(len(s)) if not s.has_lesion(i)][:2]
        return ImageSet([s.samples[i] for i in idx], s.images[idx], s.masks[idx], [s.groups[i] for i in idx])

    return head(sets["train"], 12), head(sets["val"], 10)


def test_fewshot_smoke_run_writes_a_loadable_checkpoint(tiny_sets, tmp_path):
    from core.inference import FewShotSegmenter
    from core.training.fewshot import FewShotTrainConfig, train_fewshot

    train, val = tiny_sets
    cfg = FewShotTrainConfig(image_size=96, episodes_per_epoch=6, epochs=2, val_episodes=4,
                             save_path=str(tmp_path / "panet"), device="cpu")
    summary = train_fewshot(cfg, train, val, {"note": "smoke"}, progress=False)
    assert summary["epochs"] == 2 and summary["episodes"] == 12 and not summary["cancelled"]
    meta = checkpoint.load_meta(tmp_path / "panet")
    assert meta["kind"] == "panet" and meta["model"]["weights_loaded"].startswith("ImageNet")
    assert 0.0 <= meta["val_dice"] <= 1.0
    rows = (tmp_path / "panet.episodes.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].startswith("epoch,episode,shots,loss,dice")
    assert (tmp_path / "panet.curves.png").stat().st_size > 1000
    assert not (tmp_path / "panet.resume.pt").exists(), "a finished run leaves no resume file"
    seg = FewShotSegmenter(tmp_path / "panet")
    res = seg.predict(train.images[0], [(train.images[1], train.masks[1])])
    assert res.mask.shape == train.images[0].shape[:2]


def test_cancelled_run_can_resume(tiny_sets, tmp_path):
    from core.training.fewshot import FewShotTrainConfig, train_fewshot

    train, val = tiny_sets
    cfg = FewShotTrainConfig(image_size=96, episodes_per_epoch=4, epochs=2, val_episodes=2,
                             save_path=str(tmp_path / "p"), device="cpu")
    from core.training.engine import Job

    job, steps = Job(), []

    def cancel_in_epoch_two(ev):
        steps.append(ev)
        if sum(e["type"] == "step" for e in steps) == 6:   # in the middle of epoch 2
            job.cancel()

    first = train_fewshot(cfg, train, val, {}, job=job, on_progress=cancel_in_epoch_two, progress=False)
    assert first["cancelled"] and (tmp_path / "p.resume.pt").exists()
    assert checkpoint.load_meta(tmp_path / "p")["epoch"] == 1  # the best so far stays intact
    second = train_fewshot(cfg, train, val, {}, progress=False)
    assert second["epochs"] == 2 and not second["cancelled"]


def test_supervised_smoke_runs(tiny_sets, tmp_path):
    from core.inference import SupervisedPipeline
    from core.models.supervised import ClassifierConfig, SegmenterConfig
    from core.training.supervised import SupervisedTrainConfig, train_classifier, train_segmenter

    train, val = tiny_sets
    cfg = SupervisedTrainConfig(epochs=1, batch_size=4, save_path=str(tmp_path / "seg"), device="cpu")
    s = train_segmenter(SegmenterConfig(image_size=96), cfg, train, val, {}, progress=False)
    assert s["best_epoch"] == 1 and 0 <= s["best_val"] <= 1
    cfg_c = SupervisedTrainConfig(epochs=1, batch_size=4, save_path=str(tmp_path / "cls"), device="cpu")
    c = train_classifier(ClassifierConfig(image_size=64), cfg_c, train, val, train.masks, val.masks, {}, progress=False)
    meta = checkpoint.load_meta(tmp_path / "cls")
    assert meta["kind"] == "classifier" and meta["model"]["temperature"] > 0 and math.isfinite(c["best_val"])
    pipe = SupervisedPipeline(tmp_path / "seg", tmp_path / "cls")
    res = pipe.classify(train.images[0], train.masks[0])
    assert res.label in ("benign", "malignant", "normal") and abs(sum(res.probabilities.values()) - 1) < 1e-5
