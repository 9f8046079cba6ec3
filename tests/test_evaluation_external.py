"""External test of the supervised pipeline on a labelled folder (the BUS-BRA layout), on a tiny synthetic set."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core import checkpoint
from core.data.io import DataError
from core.evaluation.external import binary_metrics, bootstrap_ci, evaluate_external, read_labels
from core.models.supervised import ClassifierConfig, LesionClassifier, Segmenter, SegmenterConfig
from core.phantom import make_phantom


@pytest.fixture
def labelled_folder(tmp_path):
    root = tmp_path / "bra"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, groups = ["id,pathology,histology,birads,device"], ["id,group"]
    for i in range(8):
        p = make_phantom(i, size=(90, 120))
        sid = f"bus_{i // 2:04d}-{'lr'[i % 2]}"                 # two images per patient
        Image.fromarray(p.image).convert("L").save(root / "images" / f"{sid}.jpg", quality=90)
        Image.fromarray(p.mask.astype(np.uint8) * 255).save(root / "masks" / f"{sid}_mask.png")
        rows.append(f"{sid},{'malignant' if i % 3 == 0 else 'benign'},x,4,GE")
        groups.append(f"{sid},{sid[:8]}")
    rows.append("bus_9999-l,benign,x,4,GE")                     # labelled but no image: ignored
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "groups.csv").write_text("\n".join(groups) + "\n")
    return root


@pytest.fixture
def tiny_models(tmp_path):
    torch.manual_seed(0)
    seg = Segmenter(SegmenterConfig(image_size=64, weights="random"))
    checkpoint.save(tmp_path / "seg", seg.state_dict(), {"kind": "segmenter", "model": seg.config_dict()})
    cls = LesionClassifier(ClassifierConfig(image_size=64, weights="random"))
    checkpoint.save(tmp_path / "cls", cls.state_dict(), {"kind": "classifier", "model": cls.config_dict()})
    return tmp_path / "seg", tmp_path / "cls"


def test_external_evaluation_on_a_labelled_folder(labelled_folder, tiny_models, tmp_path):
    out = tmp_path / "res" / "bra.json"
    r = evaluate_external(labelled_folder, *tiny_models, n_boot=200, out=out, progress=False)
    assert r["n_images"] == 8 and r["n_patients"] == 4
    assert r["n_malignant"] == 3 and r["n_benign"] == 5
    for part in ("pipeline", "classifier_with_gt_masks"):
        m = r[part]
        assert 0 <= m["auc"] <= 1 and m["auc_ci95"][0] <= m["auc_ci95"][1]
        assert m["balanced_accuracy"] == pytest.approx((m["sensitivity"] + m["specificity"]) / 2)
    assert 0 <= r["segmenter_dice"] <= 1
    assert json.loads(out.read_text())["n_images"] == 8
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("id,group,malignant,dice")
    assert out.with_name("bra_reliability.png").exists()


def test_labels_are_required(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no labels.csv"):
        read_labels(tmp_path)
    (tmp_path / "labels.csv").write_text("id,pathology\na,normal\n")
    with pytest.raises(DataError, match="no row with pathology"):
        read_labels(tmp_path)


def test_binary_metrics_by_hand_and_patient_bootstrap():
    score = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1])
    malignant = np.array([True, True, False, False, False, True])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    m = binary_metrics(score, malignant, groups, n_boot=300)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    # positives 0.9, 0.8, 0.1 vs negatives 0.3, 0.2, 0.6: 6 of 9 pairs ordered right
    assert m["auc"] == pytest.approx(6 / 9)
    # resampling whole patients: a statistic that is constant within patients has a CI over patient values
    lo, hi = bootstrap_ci(lambda i: float(np.mean(groups[i] == "a")), groups, 500)
    assert lo >= 0 and hi <= 1 and lo < 1 / 3 < hi
