"""The app's folders: gallery of demo phantoms and the data folder, checkpoint lists, confinement."""
import json
from pathlib import Path

import numpy as np
import pytest

from core.data.io import DataError
from webapp.context import AppConfig, AppContext, inside, owner_tag


def test_gallery_without_data_has_the_labelled_synthetic_demo(tmp_path):
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=tmp_path, output_dir=tmp_path / "out"))
    items = ctx.thumbnails()
    assert len(items) == 8 and all("synthetic" in caption for _, _, caption in items)
    it = ctx.item("demo:1")
    assert it.mask.shape == it.image.shape[:2] and it.mask.any()


def test_gallery_with_a_data_folder_brings_ground_truth(kaggle_dir, tmp_path):
    (kaggle_dir / "malignant" / "malignant (3).png").write_bytes(b"broken")
    ctx = AppContext(AppConfig(data_dir=kaggle_dir, checkpoints_dir=tmp_path, output_dir=tmp_path / "out"))
    keys = [k for k, _, _ in ctx.thumbnails()]
    assert "data:benign/benign (0).png" in keys
    assert "data:malignant/malignant (3).png" not in keys  # unreadable: dropped, not a crash
    assert str(kaggle_dir.parent) not in ctx.data_message and kaggle_dir.name in ctx.data_message
    it = ctx.item("data:benign/benign (0).png")
    assert it.mask[10, 10] and it.mask[40, 50]  # union of its two mask files
    with pytest.raises(DataError, match="unknown gallery item"):
        ctx.item("data:../../etc/passwd")


def test_bad_data_folder_still_starts(tmp_path):
    ctx = AppContext(AppConfig(data_dir=tmp_path / "missing", checkpoints_dir=tmp_path, output_dir=tmp_path / "o"))
    assert "not usable" in ctx.data_message and len(ctx.gallery) == 8
    assert str(tmp_path) not in ctx.data_message, "the page never shows the server's absolute paths"


def test_checkpoint_lists_and_default(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "out"
    ck.mkdir()
    for name in ("a_panet", "b_panet"):
        (ck / f"{name}.json").write_text(json.dumps({"kind": "panet"}))
        (ck / f"{name}.safetensors").write_bytes(b"")
    (ck / "seg.json").write_text(json.dumps({"kind": "segmenter"}))
    (ck / "seg.safetensors").write_bytes(b"")
    (ck / "DEFAULTS.json").write_text(json.dumps({"panet": "b_panet"}))
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=ck, output_dir=out))
    for name, owner in (("mine", owner_tag("me")), ("theirs", owner_tag("them")), ("legacy", None)):
        (out / "checkpoints" / f"{name}.json").write_text(json.dumps({"kind": "panet", "owner": owner}))
        (out / "checkpoints" / f"{name}.safetensors").write_bytes(b"")
    assert list(ctx.checkpoints("panet", "me")) == ["a_panet", "b_panet", "mine (yours)"]
    assert list(ctx.checkpoints("panet")) == ["a_panet", "b_panet"], "no session: shipped ones only"
    ctx.config.list_all_checkpoints = True   # a single-user install
    assert list(ctx.checkpoints("panet", "me")) == ["a_panet", "b_panet", "legacy (yours)", "mine (yours)",
                                                   "theirs (yours)"]
    assert list(ctx.checkpoints("segmenter")) == ["seg"]
    assert ctx.default_checkpoint("panet") == "b_panet"


def test_inside():
    assert inside(Path("/a/b/c"), Path("/a/b"))
    assert not inside(Path("/a/b/../x"), Path("/a/b"))
