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


def test_the_checkpoint_menu_lists_described_user_checkpoints_only():
    """Finding 8: the menu offered panet_lite0_lesion_only (which ignores its supports) unexplained."""
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        ctx = AppContext(AppConfig(data_dir=None, output_dir=Path(out)))
        choices = dict((name, label) for label, name in ctx.checkpoint_choices("panet"))
    assert "panet_lite0_lesion_only" not in choices
    assert ctx.default_checkpoint("panet") in choices
    assert all(label.startswith(name + ": ") and len(label) > len(name) + 10 for name, label in choices.items())


def test_gallery_picks_fill_the_next_free_slot():
    """Finding 8: three gallery picks in a row all replaced support 1."""
    from webapp import supports
    from webapp.session import Session

    sess = Session()
    p = __import__("core.phantom", fromlist=["make_phantom"]).make_phantom(1)
    slot = 1
    for expected in (2, 3, 4):
        sess.slots = supports.put(sess.slots, slot, supports.with_image(p.image, p.mask, slot))
        slot = supports.next_free(sess.slots, slot)
        assert slot == expected


def test_a_session_keeps_its_query_downscaled_and_downloads_at_its_size():
    """Finding 5: a 4000 x 4000 query cost ~125 MB per session for an hour."""
    from webapp.handlers import QUERY_SIDE, set_query
    from webapp.session import Session

    sess = Session()
    set_query(sess, np.zeros((4000, 3000, 3), np.uint8))
    assert max(sess.query_image.shape[:2]) == QUERY_SIDE and sess.query_size == (4000, 3000)
    assert sess.query_image.nbytes < 4 * 2**20


def test_single_user_install_owns_everything_and_api_clients_are_apart(tmp_path):
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=tmp_path, output_dir=tmp_path / "o", single_user=True))

    class Req:
        session_hash, username = "abc", None

    assert ctx.owner(Req()) == "local" and ctx.project_namespace("local") is None
    multi = AppContext(AppConfig(data_dir=None, checkpoints_dir=tmp_path, output_dir=tmp_path / "m"))
    assert multi.owner(Req()) == "abc", "an API client without a browser key is its own user"
    Req.username = "dr_who"
    assert multi.owner(Req()) == "user:dr_who"


def test_the_page_user_key_comes_with_its_cookie_and_a_bad_one_is_ignored(tmp_path):
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=tmp_path, output_dir=tmp_path / "o"))

    class Req:
        username = None

        def __init__(self, sh, cookie):
            self.session_hash, self.cookies = sh, {"panet_user": cookie}

    key = "0123456789abcdef0123456789abcdef"
    assert ctx.owner(Req("tab-1", key)) == ctx.owner(Req("tab-2-after-reload", key)) == f"key:{key}"
    assert ctx.owner(Req("tab-3", "../../x")) == "tab-3", "a malformed key is not trusted"
