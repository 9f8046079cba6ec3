"""The interaction canvas (issue 20): one component that shows the query (or the image under review),
draws the mask on the client from a compact PNG, draws clicks, the box and brush strokes the moment they
are made, and talks to the server through the component's own server functions (a direct POST, not
Gradio's queue: no job, no event stream, no image file written and fetched per answer).

`webapp/static/canvas.js` is the page side (plain JavaScript, no build step). This module is the server
side: the wire format (JPEG and PNG data URLs, validated on the way in), the component's HTML, and
`PageLink`, which gives a server function the calling page's session (its `gr.State`), exactly as a
Gradio event would get it, with one lock per page so that its calls run in order."""
from __future__ import annotations

import base64
import copy
import functools
import logging
import threading
from contextlib import contextmanager
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from core.cache import LRU

from .session import Session, UserError

log = logging.getLogger(__name__)
SCRIPT = (Path(__file__).parent / "static" / "canvas.js").read_text()
MAX_MASK_BYTES = 2 * 2**20        # a painted mask sent back by the page (a 640 px PNG is a few kB)
PNG_PREFIX = "data:image/png;base64,"

CSS = """
.pc-root { font: 14px sans-serif; }
.pc-toolbar { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; margin-bottom: 6px; }
.pc-toolbar button { padding: 3px 9px; border: 1px solid #aaa; border-radius: 6px; background: #f4f4f5;
  color: #111; cursor: pointer; font-size: 13px; }
.pc-toolbar button.pc-on { background: #2563eb; color: #fff; border-color: #2563eb; }
.pc-toolbar label { font-size: 12px; margin-left: 6px; }
.pc-stage { position: relative; display: inline-block; max-width: 100%; line-height: 0; }
.pc-stage.pc-busy { cursor: progress; }
.pc-img { width: min(100%, 640px); height: auto; display: block; user-select: none; -webkit-user-drag: none; }
.pc-mask, .pc-marks { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.pc-mask { pointer-events: none; }
.pc-marks { cursor: crosshair; touch-action: none; }
.pc-empty { padding: 40px 12px; color: #777; border: 1px dashed #bbb; border-radius: 6px; line-height: 1.4; }
.pc-status { margin-top: 6px; min-height: 1.4em; line-height: 1.4; }
.pc-status.pc-error { color: #b91c1c; }
.pc-project { margin-bottom: 6px; }
.pc-upload { font-size: 13px; }
.pc-toolbar button.pc-slot { min-width: 34px; font-weight: 600; }
.pc-toolbar button.pc-slot.pc-ready { border-color: #16a34a; box-shadow: inset 0 -3px 0 #16a34a; }
.pc-toolbar button.pc-slot.pc-waiting { border-color: #d97706; box-shadow: inset 0 -3px 0 #d97706; }
.pc-toolbar button.pc-slot.pc-current { background: #1e293b; color: #fff; }
.pc-slots { margin-top: 4px; font-size: 13px; color: #444; line-height: 1.4; }
"""

_STAGE = ('<div class="pc-stage"><img class="pc-img" alt="image" draggable="false"/>'
          '<canvas class="pc-mask"></canvas><canvas class="pc-marks"></canvas></div>')
_VIEW = ('<button data-act="toggle" class="pc-toggle" title="space">Overlay (space)</button>'
         '<label>opacity <input class="pc-opacity" type="range" min="0" max="1" step="0.05" value="0.45"/></label>'
         '<label>brush <input class="pc-brush" type="range" min="2" max="60" step="1" value="14"/></label>')

SEGMENT_HTML = (
    '<div class="pc-root" data-kind="segment"><div class="pc-toolbar">'
    '<button data-mode="+" title="a">Add (a)</button><button data-mode="-" title="r">Remove (r)</button>'
    '<button data-mode="box" title="b">Box (b)</button><button data-mode="brush" title="p">Brush (p)</button>'
    '<button data-mode="erase" title="e">Eraser (e)</button><button data-act="undo" title="z">Undo (z)</button>'
    '<button data-act="clear" title="c">Clear (c)</button>' + _VIEW + '</div>'
    '<div class="pc-toolbar"><label class="pc-upload">Query image (PNG, JPEG, BMP, TIFF, DICOM; up to 4096 px): '
    '<input class="pc-file" type="file" accept="image/*,.dcm,.dicom"/></label></div>'
    '<div class="pc-empty">Upload a query or pick one from the gallery: it appears here, then <b>Segment</b>. '
    'Click to add (green) or remove (red), drag a box, or paint with the brush.</div>'
    + _STAGE + '<div class="pc-status"></div></div>')

SUPPORT_HTML = (
    '<div class="pc-root" data-kind="support"><div class="pc-toolbar">'
    + "".join(f'<button class="pc-slot" data-slot="{k}" title="slot {k} (keys 1-5)">{k}</button>' for k in range(1, 6))
    + '<button data-act="clear" title="c">Clear slot (c)</button></div><div class="pc-toolbar">'
    '<button data-mode="box" title="b">Box (b)</button><button data-mode="+" title="a">Add (a)</button>'
    '<button data-mode="-" title="r">Remove (r)</button><button data-mode="brush" title="p">Brush (p)</button>'
    '<button data-mode="erase" title="e">Eraser (e)</button><button data-act="undo" title="z">Undo (z)</button>'
    + _VIEW + '</div><div class="pc-toolbar"><label class="pc-upload">Image: '
    '<input class="pc-file" type="file" accept="image/*,.dcm,.dicom"/></label>'
    '<label class="pc-upload">its mask (PNG, optional): <input class="pc-maskfile" type="file" accept="image/*"/>'
    '</label></div>'
    '<div class="pc-empty">Upload a support image, or pick one in the gallery and press <b>Put in support slot</b>. '
    'Then drag a <b>box</b> around the target: LiteMedSAM draws its mask (clicks add or remove parts; the brush '
    'paints), or upload the mask.</div>'
    + _STAGE + '<div class="pc-status"></div><div class="pc-slots"></div></div>')

REVIEW_HTML = (
    '<div class="pc-root" data-kind="review"><div class="pc-project"></div><div class="pc-toolbar">'
    '<button data-act="accept" id="review-accept" title="Enter">Accept (Enter)</button>'
    '<button data-act="no lesion" id="review-nolesion" title="n">No lesion (n)</button>'
    '<button data-act="skip" id="review-skip" title="s">Skip (s)</button>'
    '<button data-act="back" id="review-back" title="←">Back (←)</button>'
    '<button data-act="next" id="review-next" title="→">Next (→)</button>'
    '<button data-act="undo" id="review-undo" title="u">Undo (u)</button></div><div class="pc-toolbar">'
    '<button data-mode="brush" title="p">Brush (p)</button><button data-mode="erase" title="e">Eraser (e)</button>'
    '<button data-act="save" id="review-save">Save correction</button>' + _VIEW + '</div>'
    '<div class="pc-empty">Open a project and propagate: the most uncertain image shows here.</div>'
    + _STAGE + '<div class="pc-status"></div></div>')


def component(kind: str, server_functions: list, elem_id: str) -> gr.HTML:
    """The query's canvas (`kind="segment"`), the supports' (`"support"`) or the review queue's (`"review"`)."""
    html = {"segment": SEGMENT_HTML, "support": SUPPORT_HTML, "review": REVIEW_HTML}[kind]
    return gr.HTML("", html_template=html, css_template=CSS, js_on_load=SCRIPT, elem_id=elem_id,
                   server_functions=server_functions, apply_default_css=False)


# ---------------------------------------------------------------------------------- the wire format
def jpeg_url(image: np.ndarray, quality: int = 88) -> str:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def mask_url(mask: np.ndarray | None) -> str | None:
    """A mask as a PNG whose alpha is the mask (red where it is set): a few kB at 640 px."""
    if mask is None or not mask.any():
        return None
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask.astype(bool)] = (0, 0, 255, 255)          # BGRA for OpenCV: red, opaque
    ok, buf = cv2.imencode(".png", rgba, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return PNG_PREFIX + base64.b64encode(buf.tobytes()).decode()


def contour_url(truth: np.ndarray | None) -> str | None:
    """The ground truth's outline (green) as a transparent PNG, or None."""
    if truth is None or not truth.any():
        return None
    rgba = np.zeros((*truth.shape, 4), np.uint8)
    contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(rgba, contours, -1, (40, 220, 40, 255), max(1, round(max(truth.shape) / 300)))
    ok, buf = cv2.imencode(".png", rgba)
    return PNG_PREFIX + base64.b64encode(buf.tobytes()).decode()


def read_mask(url, size: tuple[int, int]) -> np.ndarray:
    """A mask painted in the page (a PNG data URL, alpha = mask), checked before it is decoded: the
    prefix, its size in bytes, the PNG signature, then exactly the displayed image's (height, width)."""
    if not isinstance(url, str) or not url.startswith(PNG_PREFIX):
        raise UserError("the painted mask must be a PNG")
    if len(url) > MAX_MASK_BYTES * 4 // 3 + len(PNG_PREFIX) + 4:
        raise UserError("the painted mask is too large")
    try:
        raw = base64.b64decode(url[len(PNG_PREFIX):], validate=True)
    except ValueError:
        raise UserError("the painted mask is not valid base64") from None
    if not raw.startswith(b"\x89PNG\r\n\x1a\n") or len(raw) < 33:
        raise UserError("the painted mask is not a PNG")
    w, h = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")   # IHDR, before decoding
    if (h, w) != tuple(size):
        raise UserError(f"the painted mask is {w}x{h}, the image shown is {size[1]}x{size[0]}")
    arr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3 or arr.shape[2] != 4:
        raise UserError("the painted mask must be an RGBA PNG")
    return arr[..., 3] > 127


def uploaded_file(ctx, path, what: str = "the upload") -> str:
    """A file the page uploaded through Gradio's upload route, named in a canvas call: only a file in the app's
    cache folder (where Gradio keeps uploads) is accepted, nothing else on the server."""
    from core.io import inside

    if not isinstance(path, str) or not path or not inside(path, ctx.cache_dir) or not Path(path).is_file():
        raise UserError(f"{what} was not found: upload it again")
    return path


def display_box(box, scale: float):
    return None if box is None else [float(v) * scale for v in box]


def display_clicks(clicks, scale: float) -> list:
    return [[x * scale, y * scale, bool(p)] for x, y, p in clicks]


# ---------------------------------------------------------------------------------- the page's session
class PageLink:
    """A server function's way to the calling page's session: the page's session hash (sent with the
    call, as with every Gradio event) names its `gr.State`; the value is copied, changed and put back
    (never changed in place), under one lock per page, so that a page's calls run one at a time and a
    call that fails changes nothing."""

    def __init__(self, state: gr.State):
        self.state = state
        self._locks: LRU = LRU(2000)
        self._guard = threading.Lock()

    @staticmethod
    def raw(request):
        """The Starlette request under a gr.Request (Gradio hands a server function either)."""
        return request.request if isinstance(request, gr.Request) and request.request is not None else request

    @classmethod
    def session_hash(cls, request) -> str:
        """The calling page's session hash: a queued call's (gr.api) from Gradio, a server function's from the
        call's JSON body (Starlette keeps it once read)."""
        sh = getattr(request, "session_hash", None) if isinstance(request, gr.Request) else None
        if not sh:
            body = cls.raw(request).__dict__.get("_json")
            sh = body.get("session_hash") if isinstance(body, dict) else None
        if not isinstance(sh, str) or not sh:
            raise UserError("this page has no session: reload it")
        return sh

    @staticmethod
    def gradio_request(request, session_hash: str) -> gr.Request:
        """The call as a gr.Request (what AppContext.owner reads): the signed-in user when the app has a
        login, else the browser's user-key cookie."""
        from .pages import auth_user

        request = PageLink.raw(request)
        user = auth_user(request.scope.get("app"), request.cookies)
        return gr.Request(request=request, username=user, session_hash=session_hash)

    def _lock(self, sh: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(sh)
            if lock is None:
                lock = threading.Lock()
                self._locks.put(sh, lock)
            return lock

    def read(self, request, state: gr.State):
        """The calling page's value of another of its gr.State components (read only)."""
        sh = self.session_hash(request)
        return self.raw(request).scope["app"].state_holder[sh][state._id]

    @contextmanager
    def session(self, request):
        """`with link.session(request) as (sess, req):` the page's session (a copy) and the call as a
        gr.Request; the copy is stored back when the block ends without an error."""
        sh = self.session_hash(request)
        holder = self.raw(request).scope["app"].state_holder[sh]
        with self._lock(sh):
            sess: Session = copy.copy(holder[self.state._id])
            yield sess, self.gradio_request(request, sh)
            holder[self.state._id] = sess


    def adopt(self, request, previous: str, new: str) -> bool:
        """The page `new` starts from a copy of page `previous`'s session (a reload of the same identity),
        unless it has one of its own already; its review decisions start empty. False when there is none."""
        holder = self.raw(request).scope["app"].state_holder
        if previous not in holder:
            return False
        with self._lock(previous):
            old = holder[previous][self.state._id]
        if not isinstance(old, Session) or (old.query_image is None and old.project is None
                                            and all(s.image is None for s in old.slots)):
            return False
        with self._lock(new):
            mine = holder[new][self.state._id]
            if isinstance(mine, Session) and (mine.query_image is not None or mine.project is not None):
                return False
            sess = copy.copy(old)
            sess.last_decided, sess.last_decided_version, sess.history = None, 0, []
            holder[new][self.state._id] = sess
        return True

    @contextmanager
    def current(self, request: gr.Request):
        """For a queued event that ran long (a propagation): `with link.current(request) as sess:` the page's
        session as it is *now* (a copy), stored back under the page's lock when the block ends. The event
        changes only the fields it owns on it, never writing back the copy it was given when it started."""
        sh = getattr(request, "session_hash", None)
        if not isinstance(sh, str) or not sh:
            raise UserError("this page has no session: reload it")
        holder = self.raw(request).scope["app"].state_holder[sh]
        with self._lock(sh):
            sess: Session = copy.copy(holder[self.state._id])
            yield sess
            holder[self.state._id] = sess


def answer(fn):
    """A canvas server function `fn(args: dict, request)` as Gradio calls it: the page's single argument,
    the call's request, and a mistake the user can fix (or a bug, logged) answered as {"error": message}
    for the canvas to show; the session is stored back only when `fn` succeeds (PageLink.session)."""
    @functools.wraps(fn)
    def call(args, request: gr.Request = None):
        try:
            return fn(first_arg(args), calling_request(request))
        except (UserError, ValueError) as exc:      # DataError is a ValueError
            return {"error": str(exc)}
        except Exception:
            log.exception("canvas call %s failed", fn.__name__)
            return {"error": "Something went wrong on the server (logged); nothing was changed."}
    del call.__wrapped__      # Gradio reads this signature (it injects the request), not fn's
    return call


def first_arg(args) -> dict:
    """The single object a page's server call sends ({} when it sent nothing usable)."""
    if isinstance(args, dict):
        return args
    if isinstance(args, list) and args and isinstance(args[0], dict):
        return args[0]
    return {}


def calling_request(request=None):
    """The HTTP request of the server call being answered: the one Gradio passed, else the one it keeps
    in its context for the call (with postponed annotations Gradio may pass None)."""
    if request is not None:
        return request
    from gradio.context import LocalContext

    req = LocalContext.request.get()
    if req is None:
        raise UserError("this call has no request: reload the page")
    return req
