"""The script API of a page's session (`gr.api`, issue 26): the same actions as the canvases, on the same
session (the client's session hash names it; one lock per page, as for the canvas's calls), under
documented names. Images travel as base64 and are checked before they are decoded; a query may be any
file the page accepts (DICOM included: it is read by the same code as an upload).

    from gradio_client import Client
    c = Client("http://127.0.0.1:7860/")
    c.predict([b64("S.png")], [b64("S_mask.png")], api_name="/set_supports")   # -> "**Supports** - 1: ready ..."
    out = c.predict(b64("Q.png"), "", 0.5, False, False, api_name="/segment")  # -> {"mask_png", "report", ...}
    c.predict(120, 80, "+", 0.5, api_name="/click")      # a positive click (displayed pixels: longer side 640)
    c.predict(0.5, api_name="/undo"); c.predict(0.5, api_name="/clear")
"""
from __future__ import annotations

import base64
import inspect
import tempfile
import typing
from pathlib import Path

import gradio as gr
import numpy as np

from core.data.io import DataError, check_mask_matches, mask_from_array

from . import canvas, handlers, refine, supports
from .context import AppContext
from .events import owner
from .script_api import MAX_SUPPORTS, decode_image
from .session import Session, UserError, clear_prompts


def _answer(sess: Session, status: str) -> dict:
    """What a script gets back: the mask at the query's own size (base64 PNG), its area, the status line."""
    from core.annotate.records import png_bytes
    from core.data.io import resize_mask

    if sess.mask is None:
        return {"status": status, "mask_png": None, "area_px": 0}
    mask = resize_mask(sess.mask, sess.query_size) if sess.query_size else sess.mask
    return {"status": status, "mask_png": base64.b64encode(png_bytes(mask)).decode(), "area_px": int(mask.sum()),
            "height": int(mask.shape[0]), "width": int(mask.shape[1])}


def _query_file(ctx: AppContext, b64: str) -> str:
    """A base64 query written into the app's cache (where uploads live), read by the upload's own checks."""
    from core.io import MAX_UPLOAD_BYTES

    if not isinstance(b64, str) or len(b64) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise UserError(f"query: a base64 image of at most {MAX_UPLOAD_BYTES // 2 ** 20} MB")
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raise UserError("query: not base64") from None
    d = Path(tempfile.mkdtemp(prefix="api_", dir=ctx.cache_dir))
    p = d / "query"
    p.write_bytes(raw)
    return str(p)


def set_supports(ctx, sess: Session, req, images: list[str], masks: list[str]) -> str:
    """Slots 1-k get these images and masks (base64; k = 1-5); the other slots are emptied."""
    if not 1 <= len(images or []) <= MAX_SUPPORTS or len(images) != len(masks or []):
        raise UserError(f"give 1-{MAX_SUPPORTS} support images and as many masks")
    slots = supports.empty_slots()
    for k, (si, sm) in enumerate(zip(images, masks), 1):
        img = decode_image(si, f"support {k}")
        mask = mask_from_array(decode_image(sm, f"support mask {k}"), f"support mask {k}")
        check_mask_matches(img, mask, f"support mask {k}")
        slots = supports.put(slots, k, supports.with_mask(supports.with_image(img, None, k), mask, k))
    sess.slots = slots
    return supports.status(sess.slots)


def segment(ctx, sess: Session, req, query: str, checkpoint: str, threshold: float, per_support_maps: bool,
            no_lesion: bool) -> dict:
    """Segment `query` (base64; "" = the session's query) from the session's supports. Returns the mask
    (base64 PNG at the query's size), the report and the heatmaps' captions."""
    notes: list[str] = []       # what reading the query converted (a 16-bit image, a DICOM loop's first frame)
    if query:
        handlers.query_from_file(sess, _query_file(ctx, query), notes)
    out = handlers.segment(ctx, sess, checkpoint or None, threshold, owner=owner(ctx, req),
                           per_support_maps=bool(per_support_maps), no_lesion=bool(no_lesion))
    return {**_answer(sess, out.report), "report": out.report, "notes": notes,
            "heatmaps": out.heatmaps}


def click(ctx, sess: Session, req, x: float, y: float, mode: str, threshold: float) -> dict:
    """A click ('+' or '-') at (x, y) in the displayed query's pixels (its longer side at most 640)."""
    if mode not in ("+", "-"):
        raise UserError(f"unknown click mode {mode!r}: '+' or '-'")
    refine.add_click(sess, x, y, mode)
    return _answer(sess, refine.refine_mask(ctx, sess, threshold, owner(ctx, req)))


def box(ctx, sess: Session, req, x0: float, y0: float, x1: float, y1: float, threshold: float) -> dict:
    """A box (two opposite corners, displayed pixels): LiteMedSAM draws the target inside it."""
    sess.box_corner = None
    refine.add_click(sess, x0, y0, "box")
    refine.add_click(sess, x1, y1, "box")
    return _answer(sess, refine.refine_mask(ctx, sess, threshold, owner(ctx, req)))


def undo(ctx, sess: Session, req, threshold: float) -> dict:
    """Undo the last click, box or brush correction (with none: 'Nothing to undo.', nothing changed)."""
    done = refine.undo(sess)
    if done == "redraw":
        return _answer(sess, refine.refine_mask(ctx, sess, threshold, owner(ctx, req)))
    return _answer(sess, "Undone." if done else "Nothing to undo.")


def clear(ctx, sess: Session, req, threshold: float) -> dict:
    """No clicks, no box: back to the Segment result."""
    clear_prompts(sess)
    if sess.probability is None:
        return _answer(sess, "")
    return _answer(sess, refine.refine_mask(ctx, sess, threshold, owner(ctx, req)))


ACTIONS = (set_supports, segment, click, box, undo, clear)


def endpoint(ctx: AppContext, link: canvas.PageLink, fn):
    """`fn(ctx, sess, req, *args)` as a gr.api function `(*args, request)` on the caller's session (copied,
    changed, stored back under the page's lock only when it succeeds); errors the user can fix -> gr.Error."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)     # the annotations as types (this module postpones them as text)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in list(sig.parameters.values())[3:]]
    req_param = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)

    def run(*args):
        *args, request = args          # Gradio passes the call's request last (the signature below says so)
        try:
            with link.session(request) as (sess, req):
                return fn(ctx, sess, req, *args)
        except (UserError, DataError, ValueError) as exc:
            raise gr.Error(str(exc)) from None

    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    ret = hints.get("return", sig.return_annotation)
    run.__signature__ = sig.replace(parameters=params + [req_param], return_annotation=ret)
    run.__annotations__ = {p.name: p.annotation for p in params} | {"request": gr.Request, "return": ret}
    return run


def register(ctx: AppContext, link: canvas.PageLink) -> None:
    for fn in ACTIONS:
        gr.api(endpoint(ctx, link, fn), api_name=fn.__name__, concurrency_limit=2, concurrency_id="session_api")


def mask_of(answer: dict) -> np.ndarray:
    """The mask of an answer (for scripts and tests): a bool array at the query's size."""
    from core.annotate.records import from_png

    return from_png(base64.b64decode(answer["mask_png"])) if answer.get("mask_png") else np.zeros((0, 0), bool)
