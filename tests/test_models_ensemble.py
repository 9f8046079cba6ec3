"""Issue 28: several image classifiers shipped as one checkpoint (probabilities averaged), loaded without
unpickling, used by the pipeline like any image classifier."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core import checkpoint
from core.inference import SupervisedPipeline
from core.models.ensemble import ImageEnsemble
from core.training.ensemble import save_ensemble
from core.models.supervised import ClassifierConfig, ImageClassifier, MultiTaskClassifier
from core.training.image_classifier import load_image_classifier


def _member(tmp_path, name: str, seed: int, multitask: bool = True, size: int = 64, split: str = "abc",
            fold: tuple | None = None):
    torch.manual_seed(seed)
    cfg = ClassifierConfig(image_size=size, weights="random", temperature=0.5 + seed)
    model = (MultiTaskClassifier if multitask else ImageClassifier)(cfg).eval()
    path = tmp_path / name
    data = {"split_hash": split, "busbra": "/x/busbra"}
    if fold:
        data["fold"] = {"index": fold[0], "k": fold[1]}
    checkpoint.save(path, model.state_dict(), {"kind": "classifier", "model": model.config_dict(), "epoch": seed,
                                               "data": data})
    return path, model


def test_a_k_fold_ensemble_records_its_folds_and_refuses_a_fold_missing_or_a_full_data_member(tmp_path):
    folds = [_member(tmp_path, f"f{i}", i, fold=(i, 3))[0] for i in range(3)]
    save_ensemble(folds, tmp_path / "ens")
    data = json.loads((tmp_path / "ens.json").read_text())["data"]
    assert data["folds"] == {"k": 3, "indices": [0, 1, 2]} and "fold" not in data and data["split_hash"] == "abc"
    full, _ = _member(tmp_path, "full", 4)
    for members, why in ((folds[:2], "fold 2 missing"), (folds[:2] + [full], "a full-data member"),
                         (folds + [_member(tmp_path, "g", 5, fold=(0, 4))[0]], "folds of two K")):
        with pytest.raises(checkpoint.CheckpointError, match="every fold"):
            save_ensemble(members, tmp_path / "bad")
        assert not checkpoint.paths(tmp_path / "bad")[1].exists(), why


def test_the_ensemble_is_the_mean_of_its_members_and_survives_a_round_trip(tmp_path):
    (pa, a), (pb, b) = _member(tmp_path, "a", 0), _member(tmp_path, "b", 1, multitask=False)
    x = torch.rand(2, 3, 70, 90)
    expected = (a.predict(x) + b.predict(x)) / 2
    save_ensemble([pa, pb], tmp_path / "ens", half=False)
    meta = json.loads((tmp_path / "ens.json").read_text())
    assert meta["architecture"] == "image_ensemble" and [m["name"] for m in meta["members"]] == ["a", "b"]
    ens = load_image_classifier(tmp_path / "ens")
    assert isinstance(ens, ImageEnsemble) and len(ens.members) == 2
    assert torch.allclose(ens.predict(x), expected, atol=1e-5), "the members' calibrated probabilities, averaged"
    assert torch.allclose(torch.softmax(ens(x), 1), (torch.softmax(a(x) / a.config.temperature, 1)
                                                     + torch.softmax(b(x) / b.config.temperature, 1)) / 2, atol=1e-5)
    assert not any(k.startswith("members.0.model.decoder") for k in checkpoint.load_weights(tmp_path / "ens")), \
        "a multi-task member's mask decoder is not shipped"
    with pytest.raises(RuntimeError, match="dropped"):
        ens.members[0].segment(x)


def test_float16_weights_stay_close_and_the_pipeline_uses_the_ensemble(tmp_path):
    (pa, a), (pb, b) = _member(tmp_path, "a", 0), _member(tmp_path, "b", 1)
    save_ensemble([pa, pb], tmp_path / "ens")
    assert checkpoint.paths(tmp_path / "ens")[0].stat().st_size < 0.6 * 2 * checkpoint.paths(pa)[0].stat().st_size
    x = torch.rand(1, 3, 64, 64)
    ens = load_image_classifier(tmp_path / "ens")
    assert torch.allclose(ens.predict(x), (a.predict(x) + b.predict(x)) / 2, atol=2e-3)
    pipe = SupervisedPipeline(None, tmp_path / "ens")
    assert pipe.is_image and pipe.classes == ["benign", "malignant", "normal"]
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    p, present = pipe.presence(img)
    assert 0.0 <= p <= 1.0 and isinstance(present, (bool, np.bool_))
    res = pipe.classify(img, np.zeros((64, 64), bool))
    assert abs(sum(res.probabilities.values()) - 1) < 1e-4 and res.label in pipe.classes
    cam = pipe.explain(img, "malignant")
    assert cam.shape == (64, 64) and cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6


def test_members_from_different_splits_or_sizes_are_refused(tmp_path):
    pa, _ = _member(tmp_path, "a", 0)
    pb, _ = _member(tmp_path, "b", 1, split="other")
    with pytest.raises(checkpoint.CheckpointError, match="same split"):
        save_ensemble([pa, pb], tmp_path / "ens")
    pc, _ = _member(tmp_path, "c", 2, size=96)
    with pytest.raises(ValueError, match="image size"):
        save_ensemble([pa, pc], tmp_path / "ens")
    assert not checkpoint.paths(tmp_path / "ens")[1].exists(), "nothing half-made is left behind"


def test_a_tampered_ensemble_checkpoint_is_a_clear_error(tmp_path):
    (pa, _), (pb, _) = _member(tmp_path, "a", 0), _member(tmp_path, "b", 1)
    save_ensemble([pa, pb], tmp_path / "ens")
    meta_path = tmp_path / "ens.json"
    meta = json.loads(meta_path.read_text())
    meta["members"] = meta["members"][:1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="at least two"):
        load_image_classifier(tmp_path / "ens")
    meta["members"] = [{"model": {"backbone": "resnet9000"}}] * 2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="does not build"):
        load_image_classifier(tmp_path / "ens")


def test_the_command_builds_an_ensemble_a_user_can_load(tmp_path, capsys):
    from core.cli.main import main

    (pa, _), (pb, _) = _member(tmp_path, "a", 0), _member(tmp_path, "b", 1)
    assert main(["ensemble-image-cls", "--members", str(pa), str(pb), "--save-path", str(tmp_path / "ens")]) == 0
    assert "2 members" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ens.json").read_text())
    assert meta["weights_dtype"] == "float16" and meta["data"]["split_hash"] == "abc"
    assert isinstance(load_image_classifier(tmp_path / "ens"), ImageEnsemble)


def test_the_shipping_rule_needs_both_test_answers_not_worse():
    from core.evaluation.report import ensemble_ships

    def res(acc, auc):
        return {"parts": {"busi_test": {"accuracy": acc}, "busbra_test": {"benign_malignant_auc": auc}}}
    assert ensemble_ships(res(0.82, 0.85), res(0.81, 0.848))
    assert not ensemble_ships(res(0.80, 0.90), res(0.81, 0.848)), "a lower accuracy on BUSI blocks it"
    assert not ensemble_ships(res(0.90, 0.84), res(0.81, 0.848)), "a lower BUS-BRA AUC blocks it"


def test_grad_cam_reuses_the_prediction_s_feature_maps(tmp_path):
    """Classify then explain: Grad-CAM from the feature maps the prediction kept equals Grad-CAM computed afresh."""
    pa, pb = _member(tmp_path, "a", 0)[0], _member(tmp_path, "b", 1, multitask=False)[0]
    save_ensemble([pa, pb], tmp_path / "ens", half=False)
    ens = load_image_classifier(tmp_path / "ens")
    x = torch.rand(1, 3, 90, 70)
    probs, feats = ens.predict_with_features(x)
    assert torch.allclose(probs, ens.predict(x), atol=1e-6) and len(feats) == 2
    for k in range(3):
        fresh, reused = ens.grad_cam(x, k), ens.grad_cam(x, k, feats)
        assert reused.shape == (90, 70) and torch.allclose(fresh, reused, atol=1e-5)
    pipe = SupervisedPipeline(None, tmp_path / "ens")
    img = (np.random.default_rng(1).random((90, 70, 3)) * 255).astype(np.uint8)
    fresh = pipe.explain(img, "malignant")
    pipe.classify(img, np.zeros((90, 70), bool))
    assert pipe._last_probs is not None and len(pipe._last_probs[2]) == 2, "the classified image's maps are kept"
    assert np.allclose(pipe.explain(img, "malignant"), fresh, atol=1e-5)
    other = img[::-1].copy()
    assert np.allclose(pipe.explain(other, "benign"), SupervisedPipeline(None, tmp_path / "ens").explain(other, "benign"),
                       atol=1e-5), "another image's Grad-CAM never reads the kept maps"


def _read(acc=0.87, normal=0.037, missed=0.031, bal=0.76, busi_auc=0.96, bb_auc=0.87):
    busi = {"n": 155, "n_normal": 27, "n_lesion": 128, "accuracy": acc, "macro_auc": busi_auc, "normal_called_lesion": normal,
            "lesions_called_normal": missed, "ece_top_label": 0.05, "benign_malignant_ece": 0.06,
            "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}
    bb = {"benign_malignant_auc": bb_auc, "benign_malignant_balanced_accuracy": bal, "benign_malignant_ece": 0.08}
    return {"parts": {"busi_test": busi, "busbra_test": bb, "busi_val": {"accuracy": 0.9}, "busbra_val": {}},
            "test_reads": 14, "seconds_per_image_2_threads": 0.2}


def test_the_k_fold_section_states_the_rule_written_before_and_its_verdict(tmp_path, monkeypatch):
    """docs/results.md's k-fold section: the verdict follows FOLD_ENSEMBLE_RULE against the default's own read."""
    from core.evaluation import report
    from core.evaluation.image_classifier import FOLD_ENSEMBLE_RULE

    monkeypatch.setattr(report, "DOCS", tmp_path)
    assert report._fold_ensemble_lines(_read()) == [], "nothing is said before the read exists"
    cal = {"k": 4, "temperature": 1.1, "decision_points": {"presence_threshold": 0.8, "max_missed_lesions": 0.02,
                                                         "n_val_lesions": 1000, "malignant_threshold": 0.4}}
    (tmp_path / "results_image_classifier_kfold_calibration.json").write_text(json.dumps(cal))
    for kfold, verdict in ((_read(acc=0.871 - 2 / 155), "does not ship** (failed: BUSI accuracy)"),
                           (_read(acc=0.871 - 1 / 155, normal=0.037 + 1 / 27, bb_auc=0.864), "failed: BUS-BRA AUC"),
                           (_read(acc=0.871 - 1 / 155, normal=0.037 + 1 / 27), "passes the rule")):
        (tmp_path / "results_image_classifier_mt_kfold.json").write_text(json.dumps(kfold))
        text = "\n".join(report._fold_ensemble_lines(_read(acc=0.871)))
        assert verdict in text and FOLD_ENSEMBLE_RULE in text and "cls_mt_k4_f3.oof.json" in text
