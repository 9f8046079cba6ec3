"""The supports' canvas (issue 26): five slots filled by an upload, the gallery's pick or the corrected
query, marked by a mask file, a box (LiteMedSAM draws the target), clicks or the brush; undo and clear. Its
calls run on a page's session as the canvas's server functions get them (tests/test_webapp_canvas.py's
stand-ins for Gradio's state holder and request)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.metrics import dice
from core.phantom import make_phantom
from tests.test_webapp_canvas import _App, _Request, _session, _State
from webapp import canvas, handlers, supports
from webapp.session import Session


class _Picked:
    _id = 8


@pytest.fixture(scope="module")
def slots_app(tmp_path_factory):
    from core.delineate import promptable_or_none
    from tests.test_webapp import make_checkpoints
    from webapp.context import AppConfig, AppContext
    from webapp.tabs import support_canvas

    root = tmp_path_factory.mktemp("slots")
    make_checkpoints(root / "ckpt")
    sam = promptable_or_none("cpu")
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=root / "ckpt", output_dir=root / "out",
                               promptable=sam is not None))
    link = canvas.PageLink(_State())
    fns = {f.__name__: f for f in support_canvas.server_functions(ctx, link, _Picked())}
    return ctx, fns, _App(), sam


def _upload(ctx, name: str, arr) -> str:
    p = ctx.cache_dir / "upload" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(p)
    return str(p)


def test_an_uploaded_image_then_its_mask_file_make_a_ready_slot(slots_app):
    ctx, fns, app, _ = slots_app
    req = _Request(app, "s-1")
    ph = make_phantom(3, size=(300, 400))
    out = fns["slot_upload"]({"slot": 2, "path": _upload(ctx, "s.png", ph.image), "name": "s.png"}, req)
    assert out["image"].startswith("data:image/jpeg") and out["mask"] is None and out["slot"] == 2
    assert out["slots"] == ["empty", "waiting", "empty", "empty", "empty"] and "box" in out["status"]
    # a mask of another size is refused, and the slot is unchanged
    small = _upload(ctx, "m_small.png", np.full((50, 60), 255, np.uint8))
    out = fns["slot_mask_file"]({"slot": 2, "path": small}, req)
    assert "but its image is" in out["error"] and _session(app, "s-1").slots[1].pair is None
    out = fns["slot_mask_file"]({"slot": 2, "path": _upload(ctx, "m.png", ph.mask.astype(np.uint8) * 255)}, req)
    assert out["slots"][1] == "ready" and "2: ready" in out["supports"]
    img, mask = handlers.session_supports(_session(app, "s-1"))[0]
    assert np.array_equal(mask, ph.mask) and img.shape[:2] == ph.mask.shape


def test_a_gallery_pick_fills_the_slot_shown_then_the_next_empty_one(slots_app):
    ctx, fns, app, _ = slots_app
    req = _Request(app, "s-2")
    app.state_holder["s-2"][_Picked._id] = "demo:1"
    out = fns["slot_pick"]({"slot": 1}, req)
    assert out["slot"] == 1 and out["slots"][0] == "ready" and out["image"] and out["mask"]
    out = fns["slot_pick"]({"slot": 1}, req)          # slot 1 is in use: the pick goes to slot 2
    assert out["slot"] == 2 and out["slots"][:2] == ["ready", "ready"]
    out = fns["slot_clear"]({"slot": 1}, req)
    assert out["slots"][:2] == ["empty", "ready"] and out["image"] is None
    app.state_holder["s-2"][_Picked._id] = None
    assert "select an image" in fns["slot_pick"]({"slot": 1}, req)["error"]


def test_a_box_draws_the_support_mask_with_litemedsam_and_undo_takes_it_back(slots_app):
    ctx, fns, app, sam = slots_app
    if sam is None:
        pytest.skip("LiteMedSAM is not installed")
    req = _Request(app, "s-3")
    ph = make_phantom(5)
    fns["slot_upload"]({"slot": 1, "path": _upload(ctx, "b.png", ph.image)}, req)
    ys, xs = np.nonzero(ph.mask)
    box = [float(xs.min() - 4), float(ys.min() - 4), float(xs.max() + 4), float(ys.max() + 4)]  # display = image px
    out = fns["slot_box"]({"slot": 1, "box": box}, req)
    assert "error" not in out, out
    assert out["slots"][0] == "ready" and "LiteMedSAM" in out["status"] and out["box"]
    drawn = _session(app, "s-3").slots[0].mask
    assert dice(drawn, ph.mask) > 0.7, "one box draws the target"
    out = fns["slot_click"]({"slot": 1, "x": float(xs.mean()), "y": float(ys.mean()), "mode": "+"}, req)
    assert out["clicks"] and out["slots"][0] == "ready"
    fns["slot_undo"]({"slot": 1}, req)
    out = fns["slot_undo"]({"slot": 1}, req)
    assert out["slots"][0] == "waiting" and _session(app, "s-3").slots[0].pair is None
    assert "Nothing to undo" in fns["slot_undo"]({"slot": 1}, req)["status"]


def test_a_painted_support_mask_and_the_corrected_query_as_a_support(slots_app):
    ctx, fns, app, _ = slots_app
    req = _Request(app, "s-4")
    ph = make_phantom(6)
    fns["slot_upload"]({"slot": 1, "path": _upload(ctx, "p.png", ph.image)}, req)
    h, w = ph.image.shape[:2]          # a phantom is smaller than the display side: display = image pixels
    painted = np.zeros((h, w), bool)
    painted[40:90, 50:120] = True
    out = fns["slot_paint"]({"slot": 1, "mask": canvas.mask_url(painted)}, req)
    assert out["slots"][0] == "ready" and "mask" not in out          # the page already shows what it painted
    assert np.array_equal(_session(app, "s-4").slots[0].mask, painted)
    assert "error" in fns["slot_paint"]({"slot": 1, "mask": canvas.mask_url(np.ones((5, 5), bool))}, req)
    assert "segment a query first" in fns["slot_from_query"]({}, req)["error"]
    sess = _session(app, "s-4")
    handlers.set_query(sess, make_phantom(7).image)
    sess.mask = make_phantom(7).mask
    out = fns["slot_from_query"]({}, req)
    assert out["slot"] == 2 and out["slots"][:2] == ["ready", "ready"]
    assert len(_session(app, "s-4").extra_pairs) == 1, "kept for fine-tuning too"


@pytest.mark.parametrize("args, message", [
    ({"slot": 7}, "from 1 to 5"),
    ({"slot": "two"}, "from 1 to 5"),
    ({"slot": 1, "path": "/etc/passwd"}, "not found"),
    ({"slot": 1, "path": None}, "not found"),
])
def test_bad_slot_calls_are_refused_with_a_message(slots_app, args, message):
    ctx, fns, app, _ = slots_app
    out = fns["slot_upload"](args, _Request(app, "s-5"))
    assert message in out["error"]
    assert all(s.image is None for s in _session(app, "s-5").slots)


def test_slots_are_never_changed_in_place():
    """A page's call changes a copy of its session: the slots the old copy holds stay as they were."""
    ph = make_phantom(1)
    before = Session()
    after = Session(slots=supports.put(before.slots, 3, supports.with_image(ph.image, ph.mask, 3)))
    assert before.slots[2].image is None and after.slots[2].pair is not None
    assert after.supports[2] is after.slots[2].pair, "Segment reads the same objects while a slot is unchanged"
    undone, done = supports.undo(after.slots[2])
    assert not done and undone is after.slots[2]
