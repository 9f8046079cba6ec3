"""The "Annotate a folder" tab: a project per user, propagation of the session's supports, the review
queue (accept / no lesion / skip / correct / undo / promote / next), promoted supports, export."""
from __future__ import annotations

import copy
import json
import time
from types import SimpleNamespace

import gradio as gr
import numpy as np

from core.data.io import DataError

from .. import annotate, canvas, handlers, jobs, shortcuts, supports
from ..context import owner_tag
from ..events import bind, owner
from ..session import Session, UserError
from . import Shared

DECISIONS = ("accept", "no lesion", "skip", "correct")


def layout(ctx, link) -> SimpleNamespace:
    c = SimpleNamespace(link=link)
    gr.Markdown("Annotates every image of the data folder with this session's supports: *Propagate*, then review "
                "the most uncertain images first (accept, no lesion, skip, correct with the brush, undo), promote "
                "good ones to supports, and export a dataset. Projects are stored under the output folder and "
                "shared with `python -m core annotate` / `export`.")
    with gr.Row():
        c.name = gr.Textbox(label="Project name (your own: other users never see it)", placeholder="e.g. ward7_thyroid",
                            scale=3, elem_id="project-name")
        c.open = gr.Button("Open / create", scale=1)
    with gr.Row():
        c.prop_btn = gr.Button("Propagate the supports", variant="primary", elem_id="propagate-button")
        c.prop_cancel = gr.Button("Stop", variant="stop", size="sm")
        c.presence = gr.Checkbox(False, label="Breast lesions: predict 'no lesion' on images without one "
                                              "(the lesion-presence head, as in predict and Classify)")
        c.delineate = gr.Checkbox(False, label="Delineate each image with LiteMedSAM (redraws the boundary from the "
                                               "box of the prediction; slower)")
        c.temporal = gr.Checkbox(False, label="Cine loops (DICOM): each frame starts from the previous frame's mask; "
                                              "frames that jump are listed for review")
    c.prop_status = gr.Markdown(elem_id="propagate-status")
    with gr.Row():
        with gr.Column(scale=3):
            c.canvas = canvas.component("review", server_functions(ctx, c.link), "review-canvas")
        with gr.Column(scale=1):
            c.promote = gr.Button("Promote to support", size="sm")
            c.use_promoted = gr.Button("Use promoted images as supports", size="sm")
            # the scrubber of a cine loop: any frame of the project's loops, by its place in the loop
            c.frame = gr.Slider(0, 1, value=0, step=1, label="Cine loop: frame (0 = the first frame of the first loop)",
                                elem_id="frame-scrubber", visible=False)
    gr.Markdown(shortcuts.HELP_MD, elem_id="review-shortcuts")
    with gr.Accordion("Reviewer's pass (team projects: approve or send back an annotator's decision)", open=False):
        with gr.Row():
            c.rv_next = gr.Button("Next decision to review", size="sm", scale=0, min_width=200)
            c.rv_which = gr.Textbox(label="Under review (image @ version)", interactive=False, scale=2)
        c.rv_img = gr.Image(type="numpy", format="jpeg", interactive=False, show_label=False, height=320)
        c.rv_text = gr.Markdown()
        c.rv_note = gr.Textbox(label="Note to the annotator (needed to send back)", lines=2)
        with gr.Row():
            c.rv_approve = gr.Button("Approve", variant="primary", size="sm")
            c.rv_back = gr.Button("Send back", variant="stop", size="sm")
    with gr.Row():
        c.export = gr.Button("Export (masks, manifest, COCO)", size="sm", scale=0, min_width=220)
        c.export_file = gr.File(label="Exported project (zip)", interactive=False)
    return c


# ------------------------------------------------------------------------------------------ handlers
def store_of(ctx, sess: Session, request):
    if not sess.project:
        raise UserError("open a project first")
    return annotate.open_project(ctx, sess.project, owner(ctx, request))


def show(ctx, sess: Session, store, rel_path, request):
    """Show `rel_path` for review: the session and the page's token name exactly that image."""
    v = annotate.view(store, rel_path, who=owner_tag(owner(ctx, request)))
    sess.review_path, sess.review_token = v.rel_path, v.token
    return v


def open_project(ctx, sess: Session, name, request: gr.Request):
    """Open (or create) the user's project `name`; the review canvas shows its next image (the event after)."""
    sess = copy.copy(sess)
    store = annotate.open_project(ctx, name, owner(ctx, request))
    sess.project, sess.last_decided = store.name, None
    show(ctx, sess, store, annotate.next_image(store), request)
    return sess, annotate.status_text(store)


def scrubber_range(ctx, sess: Session, request: gr.Request):
    """The scrubber spans the project's loop frames (hidden when it has none)."""
    frames = annotate.loop_frames(store_of(ctx, sess, request)) if sess.project else []
    return gr.update(maximum=max(1, len(frames) - 1), value=0, visible=bool(frames))


def go_to_frame(ctx, sess: Session, k, request: gr.Request):
    """The scrubber: show frame k of the project's loops for review (nothing is decided)."""
    store = store_of(ctx, sess, request)
    frames = annotate.loop_frames(store)
    if not frames:
        raise UserError("this project has no cine loop (multi-frame DICOM)")
    sess = copy.copy(sess)
    show(ctx, sess, store, frames[int(min(max(0, int(k)), len(frames) - 1))], request)
    return sess


def propagate(ctx, link: canvas.PageLink, sess: Session, ckpt_name, use_presence, use_sam=False, temporal=False,
              request: gr.Request = None):
    store = store_of(ctx, sess, request)
    supports = handlers.session_supports(sess)
    calib = annotate.presence_decision(ctx) if use_presence else None
    with jobs.REGISTRY.job(owner(ctx, request), "propagation") as job:
        sam = ctx.promptable_model() if use_sam else None
        if use_sam and sam is None:
            raise UserError("LiteMedSAM is not available: untick Delineate with LiteMedSAM")
        line = ""
        for line in annotate.run_propagation(ctx, store, ckpt_name, supports, owner(ctx, request), job, calib,
                                             delineate_with=sam, temporal=bool(temporal)):
            yield line
    # the review shows the most uncertain image with its new prediction (what was shown before may have
    # changed: a decision on it would be refused). Written on the page's session as it is now: the canvas
    # may have changed it while the propagation ran (issue 26), and the copy taken at the start is stale.
    with link.current(request) as now:
        show(ctx, now, store, annotate.next_image(store), request)
    yield line


def _propagate_on(link: canvas.PageLink):
    def fn(ctx, sess: Session, ckpt_name, use_presence, use_sam=False, temporal=False, request: gr.Request = None):
        yield from propagate(ctx, link, sess, ckpt_name, use_presence, use_sam, temporal, request)
    return fn


def _target(store, sess: Session, action: str) -> str | None:
    target = sess.review_path
    if action == "promote" and target and store.row(target)["status"] not in ("accepted", "corrected"):
        target = sess.last_decided or target
    if action == "undo":          # undo this page's last decision, and show that image again
        target = sess.last_decided
    return target


def _check_undo(store, sess: Session) -> None:
    """Undo reverts only this page's own last decision, and only while nobody changed that image since
    (another tab of the same user, another person, a propagation): else it is refused, nothing changed."""
    if not sess.last_decided:
        raise UserError("nothing to undo: this tab has not decided anything yet (nothing was changed)")
    now = store.row(sess.last_decided)["version"]
    if now != sess.last_decided_version:
        raise UserError(f"{sess.last_decided} changed after this tab decided it (version {now}, this tab made "
                        f"{sess.last_decided_version}): nothing was undone")


def _next_shown(store, sess: Session, action: str, target):
    if action == "undo":
        sess.last_decided = None
        return target
    if action == "skip" and store.user is not None:      # a team member: the next image leased to them
        return annotate.next_image(store, after=target)
    if action == "skip":
        return next((r["rel_path"] for r in store.review_queue() if r["status"] != "skipped"
                     and r["rel_path"] != target), None)
    if action in ("accept", "no lesion", "correct"):
        return annotate.next_image(store)
    if action == "next":
        return annotate.next_image(store, after=target)
    if action == "back":          # look again at the image decided last (nothing changes)
        return sess.last_decided or target
    return sess.review_path


def promote(ctx, sess: Session, request: gr.Request):
    """The image decided last (or the one shown, once accepted or corrected) becomes a project support."""
    sess = copy.copy(sess)
    store, _ = _decide(ctx, "promote", sess, "", request)
    return sess, annotate.status_text(store)


def _decide(ctx, action: str, sess: Session, token, request, painted=None):
    """A decision (or a move) on the image under review, then the image to show next: (store, view).
    `sess` is changed in place (the caller's copy)."""
    store = store_of(ctx, sess, request)
    # the page sends the token of the image it shows; an API client may leave it empty
    token = token or sess.review_token
    if action in DECISIONS and token != sess.review_token:
        raise UserError("the page and the review are out of step: open the project again (nothing was saved)")
    target = _target(store, sess, action)
    if action == "undo":
        _check_undo(store, sess)
    if action not in ("next", "back"):
        made = annotate.decide(store, target, action, owner(ctx, request), token, painted=painted)
    if action in DECISIONS:
        sess.last_decided, sess.last_decided_version = target, int(made or 0)
    return store, show(ctx, sess, store, _next_shown(store, sess, action, target), request)


def canvas_payload(store, v: annotate.ReviewView) -> dict:
    """What the review canvas shows: the image, its mask, the token of what it shows, the status."""
    p = {"image": None if v.base is None else canvas.jpeg_url(v.base), "token": v.token, "status": v.text,
         "project": annotate.status_text(store), "n": time.time_ns()}
    if v.base is not None:
        p.update(w=v.base.shape[1], h=v.base.shape[0], mask=canvas.mask_url(v.mask), truth=None)
    return p


def canvas_view(ctx, sess: Session, request: gr.Request):
    """The review canvas after the view changed through the queue (open, propagate, the scrubber)."""
    if not sess.project:
        return json.dumps({"image": None, "status": ""})
    store = store_of(ctx, sess, request)
    v = annotate.view(store, sess.review_path, who=owner_tag(owner(ctx, request)))
    if v.token != sess.review_token:     # the image shown changed (unreadable, decided elsewhere): say so
        return json.dumps({"image": None, "status": "The review changed: open the project again."})
    return json.dumps(canvas_payload(store, v))


def server_functions(ctx, link: canvas.PageLink) -> list:
    @canvas.answer
    def decide(a, request):
        """The review canvas's decisions and moves (Enter, n, s, arrows, u, Save correction)."""
        action = a.get("action")
        if action not in DECISIONS + ("undo", "next", "back"):
            raise UserError(f"unknown action {action!r}")
        with link.session(request) as (sess, req):
            if not isinstance(a.get("token"), str) or (action in DECISIONS and not a.get("token")):
                raise UserError("no image under review: open a project first")
            store, v = _decide(ctx, action, sess, a["token"], req,
                               painted=a.get("mask") if action == "correct" else None)
            return canvas_payload(store, v)

    @canvas.answer
    def show(a, request):
        """The project and the image under review that the session holds (after a reload)."""
        with link.session(request) as (sess, req):
            return json.loads(canvas_view(ctx, sess, req))
    return [decide, show]


def review_next(ctx, sess: Session, request: gr.Request):
    """The oldest decision nobody reviewed (not one of the reviewer's own), with its mask."""
    from core.data.io import read_image
    from core.visual import overlay

    store = store_of(ctx, sess, request)
    me = store.user
    pending = [r for r in store.review_pending() if me is None or r["who"] != me]
    if not pending:
        return "", None, "Nothing waits for review. " + annotate.status_text(store), ""
    r = pending[0]
    img = read_image(store.image_path(r["rel_path"]))
    mask = store.mask(r["rel_path"])
    small, _ = handlers.display_size(img)
    m = handlers.resize_mask(mask, small.shape[:2]) if mask is not None else np.zeros(small.shape[:2], bool)
    text = (f"**{r['rel_path']}**: {r['status']} by {r['who'] or 'local'} (version {r['version']}); "
            f"{len(pending) - 1} more waiting.")
    return f"{r['rel_path']} @ {r['version']}", overlay(small, m, 0.4), text, ""


def review_verdict(ctx, verdict: str, sess: Session, which: str, note: str, request: gr.Request):
    """Approve or send back exactly the decision shown (its version travels with the verdict)."""
    rel_path, _, version = (which or "").rpartition(" @ ")
    if not rel_path or not version.isdigit():
        raise UserError("press Next decision to review first")
    store = store_of(ctx, sess, request)
    try:
        store.review(rel_path, verdict, note or "", seen_version=int(version))
    except DataError as exc:
        raise UserError(str(exc)) from exc
    gr.Info(f"{rel_path}: {'approved' if verdict == 'approve' else 'sent back to its annotator'}")
    return review_next(ctx, sess, request)


def use_promoted(ctx, sess: Session, request: gr.Request):
    """The project's promoted images become the supports (slots 1-5, in the order promoted); the page's
    support canvas shows them next (its own call, after this event)."""
    pairs = annotate.promoted_supports(store_of(ctx, sess, request))
    if not pairs:
        raise UserError("no promoted image yet: accept or correct an image, then Promote to support")
    sess = copy.copy(sess)
    slots = list(sess.slots)
    for k, (img, m) in enumerate(pairs, 1):
        slots = supports.put(slots, k, supports.with_image(img, m, k))
    sess.slots = slots
    return sess, supports.status(sess.slots)


def export(ctx, sess: Session, request: gr.Request):
    store = store_of(ctx, sess, request)
    note = annotate.left_out_note(store)
    if note:
        gr.Info(note)
    return annotate.export_zip(ctx, store)


def cancel(ctx, request: gr.Request):
    return jobs.cancel(owner(ctx, request))


def build(ctx, shared: Shared) -> None:
    s = shared.session
    c = layout(ctx, shared.link)
    show_view = bind(ctx, canvas_view)
    c.open.click(bind(ctx, open_project), [s, c.name], [s, c.prop_status], api_name=False
                 ).then(bind(ctx, scrubber_range), s, c.frame, api_name=False
                        ).then(show_view, s, c.canvas, api_name=False)
    c.frame.release(bind(ctx, go_to_frame), [s, c.frame], s, api_name=False).then(show_view, s, c.canvas,
                                                                                  api_name=False)
    # the propagation streams its progress; scripts reach it by this name too (then /annotate_view)
    c.prop_btn.click(bind(ctx, _propagate_on(c.link)), [s, shared.ckpt, c.presence, c.delineate, c.temporal],
                     c.prop_status, api_name="annotate_propagate",
                     concurrency_limit=1, concurrency_id="propagate").then(show_view, s, c.canvas, api_name=False)
    c.prop_cancel.click(bind(ctx, cancel), None, c.prop_status, api_name="annotate_stop")
    c.promote.click(bind(ctx, promote), s, [s, c.prop_status], api_name=False
                    ).then(show_view, s, c.canvas, api_name=False)
    c.use_promoted.click(bind(ctx, use_promoted), s, [s, c.prop_status], api_name="annotate_use_promoted"
                         ).then(None, js="() => { if (window.panetSupports) window.panetSupports.show(1); }")
    c.export.click(bind(ctx, export), s, c.export_file, api_name="annotate_export")
    shown = [c.rv_which, c.rv_img, c.rv_text, c.rv_note]
    c.rv_next.click(bind(ctx, review_next), s, shown, api_name="review_next")
    for btn, verdict in ((c.rv_approve, "approve"), (c.rv_back, "send back")):
        btn.click(bind(ctx, _verdict(verdict)), [s, c.rv_which, c.rv_note], shown,
                  api_name="review_" + verdict.replace(" ", "_"))
    register_api(ctx, shared.link)


def _verdict(verdict: str):
    def fn(ctx, sess: Session, which, note, request: gr.Request):
        return review_verdict(ctx, verdict, sess, which, note, request)
    return fn


# ------------------------------------------------------------------------------------------ the script API
def _view_dict(store, v: annotate.ReviewView) -> dict:
    return {"project": annotate.status_text(store), "image": v.rel_path, "text": v.text, "token": v.token}


def annotate_open(ctx, sess: Session, req, name: str) -> dict:
    """Open (or create) your project `name` over the data folder; the image to review next."""
    store = annotate.open_project(ctx, name, owner(ctx, req))
    sess.project, sess.last_decided = store.name, None
    return _view_dict(store, show(ctx, sess, store, annotate.next_image(store), req))


def annotate_view(ctx, sess: Session, req) -> dict:
    """The image under review now (after a propagation, the most uncertain one), with its token."""
    store = store_of(ctx, sess, req)
    return _view_dict(store, show(ctx, sess, store, sess.review_path or annotate.next_image(store), req))


def annotate_decide(ctx, sess: Session, req, action: str, token: str) -> dict:
    """accept | no lesion | skip | undo | next | back | promote, on the image `token` names (as
    /annotate_open or /annotate_view gave it); returns the image to review next."""
    if action not in DECISIONS[:-1] + ("undo", "next", "back", "promote"):
        raise UserError(f"unknown action {action!r} (a correction is painted on the page's canvas)")
    store, v = _decide(ctx, action, sess, token, req)
    return _view_dict(store, v)


def register_api(ctx, link: canvas.PageLink) -> None:
    from ..session_api import endpoint

    for fn in (annotate_open, annotate_view, annotate_decide):
        gr.api(endpoint(ctx, link, fn), api_name=fn.__name__, concurrency_limit=2, concurrency_id="review_api")
