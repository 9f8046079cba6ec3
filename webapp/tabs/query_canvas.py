"""The Segment tab's canvas: its server functions (a new query, Segment, click, box, brush correction, undo,
clear, a new threshold), each answering with only what changed: the mask as a compact PNG, the clicks and box in
the displayed image's pixels, and a status line. The page draws them (webapp/static/canvas.js)."""
from __future__ import annotations

import threading
import time

from core.data.io import resize_mask

from .. import canvas, handlers, refine
from ..events import owner
from ..session import Session, UserError, clear_prompts

HEAVY = threading.BoundedSemaphore(2)   # Segments running at once (2 CPU cores), as the queue's limit for /segment


def view(ctx, sess: Session, status: str = "", image: bool = False) -> dict:
    """What the canvas shows of the session: the query (with `image`), its mask, clicks, box, status."""
    if sess.query_image is None:
        return {"image": None, "status": status} if image else {"status": status}
    small, scale = handlers.display_size(sess.query_image)
    p: dict = {}
    if image:
        truth = handlers.ground_truth(ctx, sess, sess.query_image)
        p.update(image=canvas.jpeg_url(small), w=small.shape[1], h=small.shape[0],
                 truth=canvas.contour_url(resize_mask(truth, small.shape[:2]) if truth is not None else None),
                 n=time.time_ns())
    p["mask"] = canvas.mask_url(resize_mask(sess.mask, small.shape[:2])) if sess.mask is not None else None
    p["clicks"] = canvas.display_clicks(sess.clicks, scale)
    p["box"] = canvas.display_box(sess.box, scale)
    p["status"] = status
    return p


def server_functions(ctx, link: canvas.PageLink, picked=None) -> list:
    """The canvas's calls, bound to the app and to the page's session (`picked`: the page's gallery pick)."""
    return _query_calls(ctx, link, picked) + _edit_calls(ctx, link)


def _query_calls(ctx, link: canvas.PageLink, picked) -> list:
    """A new query (uploaded on the canvas, or picked in the gallery) and Segment."""

    @canvas.answer
    def segment(a, request):
        with link.session(request) as (sess, req):
            if sess.query_image is None:
                raise UserError("no query image: upload one or pick one from the gallery")
            with HEAVY, ctx.foreground:
                out = handlers.segment(ctx, sess, a.get("ckpt"), a.get("threshold", 0.5),
                                       owner=owner(ctx, req), per_support_maps=bool(a.get("per_support")),
                                       no_lesion=bool(a.get("no_lesion")), defer_redraw=True)
            status = out.report + f"\n\n*{out.seconds * 1000:.0f} ms*"
            answer = view(ctx, sess, status)
            if sess.redraw_pending:
                answer["follow"] = "redraw"      # the page asks for LiteMedSAM's redraw next
            return answer

    @canvas.answer
    def redraw(a, request):
        """LiteMedSAM's redraw that a Segment deferred (its query was not encoded yet): the mask and a note."""
        with link.session(request) as (sess, req):
            t0 = time.perf_counter()
            note = handlers.redraw_later(ctx, sess, owner(ctx, req))
            if not note:
                return {}
            small, _ = handlers.display_size(sess.query_image)
            return {"mask": canvas.mask_url(resize_mask(sess.mask, small.shape[:2])),
                    "status_more": note.strip() + f" *({(time.perf_counter() - t0) * 1000:.0f} ms)*"}

    @canvas.answer
    def set_query(a, request):
        """A query uploaded through the canvas (Gradio's upload folder, which is the app's cache): read and
        checked like any upload, shown at once; its embedding starts in the background."""
        path = canvas.uploaded_file(ctx, a.get("path"), "the query upload")
        with link.session(request) as (sess, _req):
            notes: list[str] = []
            handlers.query_from_file(sess, path, notes)
            ctx.prefetch_embedding(sess.query_image, page=canvas.PageLink.session_hash(request),
                                  checkpoint=sess.checkpoint)
            name = str(a.get("name") or "")[:80]
            return view(ctx, sess, " ".join([f"Query {name} ready: press **Segment**."] + notes), image=True)

    @canvas.answer
    def use_picked(a, request):
        """The image picked in the gallery becomes the query (shown at once, no queued event)."""
        key = link.read(request, picked) if picked is not None else None
        with link.session(request) as (sess, _req):
            handlers.query_from_gallery(ctx, sess, key)
            return view(ctx, sess, f"Query: **{ctx.gallery[key].caption}**. Press **Segment**.", image=True)

    @canvas.answer
    def show(a, request):
        """What the session holds (after a reload: the query and its mask come back)."""
        with link.session(request) as (sess, _req):
            if sess.query_image is None:
                return {"image": None, "status": ""}
            return view(ctx, sess, "Restored: the query and its mask as you left them.", image=True)

    return [set_query, use_picked, segment, redraw, show]


def _edit_calls(ctx, link: canvas.PageLink) -> list:
    """Clicks, a box, a brush correction, undo, clear, a new threshold: each answers with the new mask."""

    def _refined(sess, req, threshold) -> dict:
        text = refine.refine_mask(ctx, sess, threshold, owner(ctx, req))
        return view(ctx, sess, text)

    @canvas.answer
    def click(a, request):
        with link.session(request) as (sess, req):
            mode = a.get("mode")
            if mode not in ("+", "-"):
                raise UserError(f"unknown click mode {mode!r}")
            refine.add_click(sess, a.get("x"), a.get("y"), mode)
            return _refined(sess, req, a.get("threshold", 0.5))

    @canvas.answer
    def box(a, request):
        with link.session(request) as (sess, req):
            b = a.get("box")
            if not (isinstance(b, list) and len(b) == 4):
                raise UserError("a box needs two corners")
            sess.box_corner = None
            refine.add_click(sess, b[0], b[1], "box")
            refine.add_click(sess, b[2], b[3], "box")
            return _refined(sess, req, a.get("threshold", 0.5))

    @canvas.answer
    def paint(a, request):
        with link.session(request) as (sess, req):
            if sess.query_image is None or sess.mask is None:
                raise UserError("segment a query first, then correct its mask")
            small, _ = handlers.display_size(sess.query_image)
            refine.paint(sess, canvas.read_mask(a.get("mask"), small.shape[:2]))
            text = (f"Corrected by hand: lesion on {sess.mask.mean() * 100:.1f}% of the image (z undoes it; "
                    "downloads, Classify and *Add corrected query as a support* use this mask).")
            return {"status": text}      # the page already shows the painted mask

    @canvas.answer
    def undo(a, request):
        with link.session(request) as (sess, req):
            done = refine.undo(sess)
            if done == "redraw":
                return _refined(sess, req, a.get("threshold", 0.5))
            return view(ctx, sess, "Undone: the mask before the brush correction." if done == "restored"
                        else "Nothing to undo.")

    @canvas.answer
    def clear(a, request):
        with link.session(request) as (sess, req):
            clear_prompts(sess)
            if sess.probability is None:
                return view(ctx, sess, "")
            return _refined(sess, req, a.get("threshold", 0.5))

    @canvas.answer
    def rethreshold(a, request):
        with link.session(request) as (sess, req):
            if sess.probability is None:
                return {"status": ""}
            refine.rethreshold(sess, a.get("threshold", 0.5))
            return view(ctx, sess, f"Threshold {float(a.get('threshold', 0.5)):.2f}: lesion on "
                                   f"{sess.mask.mean() * 100:.1f}% of the image.")

    return [click, box, paint, undo, clear, rethreshold]
