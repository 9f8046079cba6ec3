"""The interaction canvas's server side (webapp/canvas.py, webapp/tabs/query_canvas.py, the review's
decide): its wire format, the painted masks it accepts, and its calls on a page's session, without a
browser (a page's call is a request naming its session hash, as Gradio's component server passes it)."""
from __future__ import annotations

import base64
import copy
import cv2
import numpy as np
import pytest
from PIL import Image

from core.phantom import make_phantom
from webapp import canvas, handlers, refine, supports
from webapp.session import Session, UserError


def _decode(url: str) -> np.ndarray:
    raw = base64.b64decode(url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)


def test_a_mask_travels_as_a_small_png_and_comes_back_the_same():
    mask = np.zeros((300, 400), bool)
    mask[100:180, 120:260] = True
    url = canvas.mask_url(mask)
    assert url.startswith("data:image/png;base64,") and len(url) < 4000     # a few kB, not an image per answer
    assert np.array_equal(canvas.read_mask(url, (300, 400)), mask)
    assert canvas.mask_url(np.zeros((10, 10), bool)) is None
    rgba = _decode(url)
    assert rgba.shape == (300, 400, 4) and tuple(rgba[150, 200]) == (0, 0, 255, 255)   # red (BGRA), opaque


@pytest.mark.parametrize("bad, message", [
    ("data:image/jpeg;base64,AAAA", "must be a PNG"),
    (None, "must be a PNG"),
    ("data:image/png;base64,@@@not base64@@@", "not valid base64"),
    ("data:image/png;base64," + base64.b64encode(b"GIF89a" + bytes(40)).decode(), "not a PNG"),
    ("data:image/png;base64," + "A" * (4 * 2**20), "too large"),
])
def test_a_painted_mask_is_checked_before_it_is_decoded(bad, message):
    with pytest.raises(UserError, match=message):
        canvas.read_mask(bad, (30, 40))


def test_a_painted_mask_of_another_size_or_without_alpha_is_refused():
    m = np.ones((30, 40), bool)
    with pytest.raises(UserError, match="40x30, the image shown is 50x30"):
        canvas.read_mask(canvas.mask_url(m), (30, 50))
    ok, buf = cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(UserError, match="RGBA"):
        canvas.read_mask("data:image/png;base64," + base64.b64encode(buf.tobytes()).decode(), (30, 40))


def test_undo_goes_back_through_clicks_boxes_and_brush_corrections():
    sess = Session()
    sess.query_image = make_phantom(1).image
    h, w = sess.query_image.shape[:2]
    sess.probability = np.zeros((h, w), np.float16)
    sess.mask = np.zeros((h, w), bool)
    refine.add_click(sess, 10, 10, "+")
    refine.add_click(sess, 5, 5, "box")
    refine.add_click(sess, 60, 60, "box")
    painted = np.zeros((h, w), bool)
    painted[20:40, 30:50] = True
    refine.paint(sess, painted)
    assert sess.corrected and np.array_equal(sess.mask, painted)
    assert refine.undo(sess) == "restored" and not sess.corrected and not sess.mask.any()
    assert refine.undo(sess) == "redraw" and sess.box is None and len(sess.clicks) == 1
    assert refine.undo(sess) == "redraw" and sess.clicks == []
    assert refine.undo(sess) == ""


# ---------------------------------------------------------------------------------- calls on a session
class _Holder:
    """Gradio's state holder, as far as PageLink reads it: holder[session_hash][state id]."""

    def __init__(self):
        self.pages: dict[str, dict] = {}

    def __getitem__(self, sh):
        if sh not in self.pages:
            self.pages[sh] = _Page()
        return self.pages[sh]


class _State:
    _id = 7


class _Page(dict):
    def __getitem__(self, key):
        if key not in self:
            self[key] = Session()
        return dict.__getitem__(self, key)


class _Request:
    """A server call as Starlette hands it over: the JSON body read, the app in the scope."""

    def __init__(self, app, session_hash):
        self._json = {"session_hash": session_hash, "data": {}}
        self.scope = {"app": app}
        self.cookies = {}
        self.headers = {}


class _App:
    auth = None

    def __init__(self):
        self.state_holder = _Holder()


@pytest.fixture(scope="module")
def canvas_app(tmp_path_factory):
    from tests.test_webapp import make_checkpoints
    from webapp.context import AppConfig, AppContext
    from webapp.tabs import query_canvas

    root = tmp_path_factory.mktemp("canvas")
    make_checkpoints(root / "ckpt")
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=root / "ckpt", output_dir=root / "out",
                               promptable=False))
    link = canvas.PageLink(_State())
    fns = {f.__name__: f for f in query_canvas.server_functions(ctx, link)}
    return ctx, fns, _App()


def _session(app, sh) -> Session:
    return app.state_holder[sh][_State._id]


def _ready(ctx, app, sh):
    page = app.state_holder[sh]
    sess = Session()
    support = make_phantom(1)
    sess.slots = supports.put(sess.slots, 1, supports.with_image(support.image, support.mask))
    handlers.set_query(sess, make_phantom(2).image)
    page[_State._id] = sess


def test_segment_click_and_paint_answer_with_only_what_changed(canvas_app):
    ctx, fns, app = canvas_app
    _ready(ctx, app, "page-a")
    req = _Request(app, "page-a")
    out = fns["segment"]({"ckpt": "tiny_panet", "threshold": 0.5}, req)
    assert "error" not in out, out
    h, w = _session(app, "page-a").query_image.shape[:2]
    assert "image" not in out and "support(s)" in out["status"]          # the image is already on the page
    if out["mask"] is not None:
        assert canvas.read_mask(out["mask"], (h, w)).shape == (h, w)
    out = fns["click"]({"x": 50, "y": 40, "mode": "+", "threshold": 0.5}, req)
    assert out["clicks"] == [[50.0, 40.0, True]] and "1 positive" in out["status"]
    painted = np.zeros((h, w), bool)
    painted[10:30, 10:60] = True
    out = fns["paint"]({"mask": canvas.mask_url(painted)}, req)
    assert "Corrected by hand" in out["status"]
    sess = _session(app, "page-a")
    assert sess.corrected and np.array_equal(sess.mask, painted)          # what downloads and Classify use
    # a wrong painted mask is refused and changes nothing
    out = fns["paint"]({"mask": canvas.mask_url(np.ones((5, 5), bool))}, req)
    assert "error" in out and np.array_equal(_session(app, "page-a").mask, painted)
    out = fns["undo"]({"threshold": 0.5}, req)
    assert "Undone" in out["status"] and not _session(app, "page-a").corrected


def test_one_page_never_sees_or_changes_another_pages_session(canvas_app):
    ctx, fns, app = canvas_app
    _ready(ctx, app, "page-b")
    _ready(ctx, app, "page-c")
    fns["segment"]({"ckpt": "tiny_panet", "threshold": 0.5}, _Request(app, "page-b"))
    fns["click"]({"x": 20, "y": 20, "mode": "-", "threshold": 0.5}, _Request(app, "page-b"))
    assert _session(app, "page-c").mask is None and _session(app, "page-c").clicks == []
    out = fns["click"]({"x": 20, "y": 20, "mode": "+", "threshold": 0.5}, _Request(app, "page-c"))
    assert "error" in out and "segment a query first" in out["error"]
    assert len(_session(app, "page-b").clicks) == 1


def test_a_call_without_a_session_or_with_bad_values_is_answered_with_a_message(canvas_app):
    ctx, fns, app = canvas_app
    req = _Request(app, "page-d")
    req._json = {}
    assert "reload" in fns["segment"]({}, req)["error"]
    _ready(ctx, app, "page-e")
    req = _Request(app, "page-e")
    assert "no query" not in fns["segment"]({"ckpt": "tiny_panet", "threshold": 0.5}, req).get("error", "")
    for bad in ({"x": float("nan"), "y": 3, "mode": "+"}, {"x": 3, "y": 3, "mode": "lasso"},
                {"x": "left", "y": 3, "mode": "+"}):
        out = fns["click"](bad, req)
        assert "error" in out, bad
    assert _session(app, "page-e").clicks == []
    assert "must be between" in fns["rethreshold"]({"threshold": 7}, req)["error"]


def test_the_query_view_carries_the_image_once_and_the_truth_contour(tmp_path):
    from tests.test_webapp import make_checkpoints
    from webapp.context import AppConfig, AppContext
    from webapp.tabs import query_canvas

    make_checkpoints(tmp_path / "ckpt")
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=tmp_path / "ckpt", output_dir=tmp_path / "out",
                               promptable=False))
    sess = Session()
    key = next(iter(ctx.gallery))
    sess.query_key = key
    handlers.set_query(sess, ctx.item(key).image)
    view = query_canvas.view(ctx, sess, "", image=True)
    small, _ = handlers.display_size(sess.query_image)
    assert (view["h"], view["w"]) == small.shape[:2] and view["image"].startswith("data:image/jpeg;base64,")
    assert view["mask"] is None and view["truth"].startswith("data:image/png")   # the phantom's ground truth
    jpeg = np.asarray(Image.open(__import__("io").BytesIO(base64.b64decode(view["image"].split(",")[1]))))
    assert jpeg.shape[:2] == small.shape[:2]


def test_a_query_uploaded_on_the_canvas_is_read_only_from_the_apps_upload_folder(canvas_app, tmp_path):
    ctx, fns, app = canvas_app
    req = _Request(app, "page-f")
    outside = tmp_path / "q.png"
    Image.fromarray(make_phantom(3).image).save(outside)
    for bad in (str(outside), "/etc/passwd", str(ctx.cache_dir / ".." / "q.png"), None, 7):
        out = fns["set_query"]({"path": bad}, req)
        assert "not found" in out["error"], bad
    assert _session(app, "page-f").query_image is None
    inside = ctx.cache_dir / "upload" / "q.png"
    inside.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_phantom(3).image).save(inside)
    out = fns["set_query"]({"path": str(inside), "name": "q.png"}, req)
    assert out["image"].startswith("data:image/jpeg") and out["mask"] is None and "ready" in out["status"]
    assert _session(app, "page-f").query_image.shape[:2] == make_phantom(3).image.shape[:2]
    trunc = ctx.cache_dir / "upload" / "bad.png"
    trunc.write_bytes(inside.read_bytes()[:200])
    assert "error" in fns["set_query"]({"path": str(trunc)}, req)


def test_a_propagation_that_ends_keeps_what_the_canvas_did_meanwhile(tmp_path):
    """Issue 26, case 1: the propagation wrote back the whole page state it copied when it started, so a
    query uploaded and segmented on the canvas meanwhile was lost. Now it changes only the review's
    fields, on the page's session as it is when it ends, and hands Gradio no stale copy."""
    from webapp.tabs import review

    ctx, app, link, Call = _review_app(tmp_path)
    start = Session(project="p")
    ph = make_phantom(4)
    start.slots = supports.put(start.slots, 1, supports.with_image(ph.image, ph.mask))
    app.state_holder["page-1"][_State._id] = start
    outputs = []
    for out in review.propagate(ctx, link, start, "tiny_panet", False, False, False, Call()):
        if not outputs:     # the propagation runs; the canvas gets a query and its Segment result
            now = copy.copy(_session(app, "page-1"))
            now.query_image, now.mask = make_phantom(5).image, make_phantom(5).mask
            app.state_holder["page-1"][_State._id] = now
        outputs.append(out)
    assert not isinstance(outputs[-1][-1], Session), "no stale copy handed back to Gradio"
    after = _session(app, "page-1")
    assert after.query_image is not None and after.mask is not None and after.mask.any(), "the canvas's work is kept"
    assert after.review_path is not None and after.review_token, "the review shows the propagated project"
    assert start.review_path is None, "the copy given at the start is never changed"


def _review_app(tmp_path, page="page-1"):
    """A context with a data folder of three phantoms, a page's state holder, and a call on that page."""
    from tests.test_webapp import make_checkpoints
    from webapp.context import AppConfig, AppContext

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(make_phantom(i + 1).image).save(data / f"img{i}.png")
    make_checkpoints(tmp_path / "ckpt")
    ctx = AppContext(AppConfig(data_dir=data, checkpoints_dir=tmp_path / "ckpt", output_dir=tmp_path / "out",
                               promptable=False, single_user=True))
    app, link = _App(), canvas.PageLink(_State())

    class Call:           # a queued event's gr.Request, as far as the handlers read it
        session_hash, username, cookies = page, None, {}
        scope = {"app": app}
    return ctx, app, link, Call


def test_undo_in_a_tab_that_decided_nothing_is_refused(tmp_path):
    """Issue 26, case 4: two review tabs of one user; tab B decided nothing, so its undo must not revert
    tab A's decision."""
    from webapp import annotate
    from webapp.tabs import review

    ctx, app, link, Call = _review_app(tmp_path)
    store = annotate.open_project(ctx, "p", "local")
    first = store.rows()[0]["rel_path"]
    store.record(first, "predicted", make_phantom(1).mask)
    tab_a, tab_b = Session(project="p"), Session(project="p")
    review.show(ctx, tab_a, store, first, Call())
    review.show(ctx, tab_b, store, first, Call())
    review._decide(ctx, "accept", tab_a, tab_a.review_token, Call())
    assert store.row(first)["status"] == "accepted"
    with pytest.raises(UserError, match="nothing to undo"):
        review._decide(ctx, "undo", tab_b, "", Call())
    assert store.row(first)["status"] == "accepted", "tab A's decision stands"
    tab_c = Session(project="p")                       # a tab that decided, then another tab changed it
    review.show(ctx, tab_c, store, store.rows()[1]["rel_path"], Call())
    store.record(store.rows()[1]["rel_path"], "predicted", make_phantom(2).mask)
    review.show(ctx, tab_c, store, store.rows()[1]["rel_path"], Call())
    review._decide(ctx, "no lesion", tab_c, tab_c.review_token, Call())
    second = tab_c.last_decided
    review.show(ctx, tab_a, store, second, Call())
    review._decide(ctx, "skip", tab_a, tab_a.review_token, Call())     # another tab changes it afterwards
    with pytest.raises(UserError, match="changed after this tab decided it"):
        review._decide(ctx, "undo", tab_c, "", Call())
    review._decide(ctx, "undo", tab_a, "", Call())     # the tab that decided last may undo its own


def test_segment_before_the_query_is_encoded_shows_panets_mask_then_the_redraw(tmp_path):
    """Issue 26: Segment clicked as soon as the query shows answers with PANet++'s mask at once and asks
    the page to fetch LiteMedSAM's redraw next, instead of waiting for the query's encoder pass."""
    from tests.test_webapp import make_checkpoints
    from webapp.context import AppConfig, AppContext
    from webapp.tabs import query_canvas

    make_checkpoints(tmp_path / "ckpt")
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=tmp_path / "ckpt", output_dir=tmp_path / "out"))
    sam = ctx.promptable_model()
    if sam is None:
        pytest.skip("LiteMedSAM is not installed")
    fns = {f.__name__: f for f in query_canvas.server_functions(ctx, canvas.PageLink(_State()))}
    app = _App()
    _ready(ctx, app, "page-r")
    req = _Request(app, "page-r")
    query = _session(app, "page-r").query_image
    query[:4, :4] = (17, 99, 3)          # a query no earlier test encoded (LiteMedSAM is shared in the process)
    assert not sam.has_embedding(query)
    out = fns["segment"]({"ckpt": "tiny_panet", "threshold": 0.02}, req)
    assert "error" not in out and out["mask"] is not None, out
    assert out.get("follow") == "redraw" and "follows" in out["status"]
    out = fns["redraw"]({}, req)
    assert "LiteMedSAM" in out["status_more"] and out["mask"] is not None
    assert not _session(app, "page-r").redraw_pending and sam.has_embedding(query)
    assert fns["redraw"]({}, req) == {}, "nothing more to redraw"
    out = fns["segment"]({"ckpt": "tiny_panet", "threshold": 0.03}, req)   # now encoded: redrawn in the answer
    assert "follow" not in out


def test_undo_of_the_only_click_and_clear_come_back_to_the_segment_result(canvas_app):
    ctx, fns, app = canvas_app
    _ready(ctx, app, "page-u")
    req = _Request(app, "page-u")
    fns["segment"]({"ckpt": "tiny_panet", "threshold": 0.3}, req)
    shown = _session(app, "page-u").mask.copy()
    fns["click"]({"x": 30, "y": 30, "mode": "-", "threshold": 0.3}, req)
    out = fns["undo"]({"threshold": 0.3}, req)
    assert "Segment result" in out["status"] and np.array_equal(_session(app, "page-u").mask, shown)
    fns["click"]({"x": 60, "y": 40, "mode": "+", "threshold": 0.3}, req)
    out = fns["clear"]({"threshold": 0.3}, req)
    assert "Segment result" in out["status"] and np.array_equal(_session(app, "page-u").mask, shown)
