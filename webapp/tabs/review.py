"""The "Annotate a folder" tab: a project per user, propagation of the session's supports, the review
queue (accept / no lesion / skip / correct / undo / promote / next), promoted supports, export."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import gradio as gr

from .. import annotate, handlers, jobs, shortcuts
from ..context import owner_tag
from ..events import EMPTY_EDITOR, bind, owner
from ..handlers import N_SLOTS, Session, UserError
from . import Shared
from .segment import editor

DECISIONS = ("accept", "no lesion", "skip", "correct")


def layout() -> SimpleNamespace:
    c = SimpleNamespace()
    gr.Markdown("Annotates every image of the data folder with this session's supports: *Propagate*, then review "
                "the most uncertain images first (accept, no lesion, skip, correct with the brush, undo), promote "
                "good ones to supports, and export a dataset. Projects are stored under the output folder and "
                "shared with `python -m core annotate` / `export`.")
    with gr.Row():
        c.name = gr.Textbox(label="Project name (your own: other users never see it)", placeholder="e.g. ward7_thyroid",
                            scale=3, elem_id="project-name")
        c.open = gr.Button("Open / create", scale=1)
    c.status = gr.Markdown(elem_id="project-status")
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
        with gr.Column():
            c.img = gr.Image(label="Review: the most uncertain first", type="numpy", format="jpeg", interactive=False,
                             height=320, elem_id="review-image")
            c.text = gr.Markdown(elem_id="review-text")
            # which image (id:version) the page shows: every decision carries it back and is refused unless
            # it is the image under review, unchanged since it was shown
            c.token = gr.Textbox(visible=False, elem_id="review-token")
        with gr.Column():
            with gr.Row():
                c.accept = gr.Button("Accept (Enter)", variant="primary", elem_id="accept-button")
                c.no_lesion = gr.Button("No lesion (n)", elem_id="nolesion-button")
                c.skip = gr.Button("Skip (s)", elem_id="skip-button")
            with gr.Row():
                c.back = gr.Button("Back (←)", size="sm", elem_id="back-button")
                c.next = gr.Button("Next (→)", size="sm", elem_id="next-button")
                c.undo = gr.Button("Undo (u)", size="sm", elem_id="undo-button")
                c.promote = gr.Button("Promote to support", size="sm")
            c.load = gr.Button("Correct with the brush", size="sm")
            c.editor = editor("Correct the mask of the image under review", 300, elem_id="review-editor")
            c.save = gr.Button("Save correction", elem_id="save-correction")
            c.use_promoted = gr.Button("Use promoted images as supports", size="sm")
            # the scrubber of a cine loop: any frame of the project's loops, by its place in the loop
            c.frame = gr.Slider(0, 1, value=0, step=1, label="Cine loop: frame (0 = the first frame of the first loop)",
                                elem_id="frame-scrubber", visible=False)
    gr.Markdown(shortcuts.HELP_MD, elem_id="review-shortcuts")
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
    sess = copy.copy(sess)
    store = annotate.open_project(ctx, name, owner(ctx, request))
    sess.project, sess.last_decided = store.name, None
    v = show(ctx, sess, store, annotate.next_image(store), request)
    return sess, annotate.status_text(store), v.image, v.text, v.token


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
    v = show(ctx, sess, store, frames[int(min(max(0, int(k)), len(frames) - 1))], request)
    return sess, v.image, v.text, v.token


def propagate(ctx, sess: Session, ckpt_name, use_presence, use_sam=False, temporal=False, request: gr.Request = None):
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
            yield line, gr.skip(), gr.skip(), gr.skip(), gr.skip()
    # the review shows the most uncertain image with its new prediction (what was shown before may have
    # changed: a decision on it would be refused)
    sess = copy.copy(sess)
    v = show(ctx, sess, store, annotate.next_image(store), request)
    yield line, v.image, v.text, v.token, sess


def _target(store, sess: Session, action: str) -> str | None:
    target = sess.review_path
    if action == "promote" and target and store.row(target)["status"] not in ("accepted", "corrected"):
        target = sess.last_decided or target
    if action == "undo":          # undo the last decision, and show that image again
        target = sess.last_decided or target
    return target


def _next_shown(store, sess: Session, action: str, target):
    if action == "undo":
        sess.last_decided = None
        return target
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


def decide(ctx, action: str, sess: Session, corr, token, request: gr.Request):
    sess = copy.copy(sess)
    store = store_of(ctx, sess, request)
    # the page sends the token of the image it shows; an API client may leave it empty
    token = token or sess.review_token
    if action in DECISIONS and token != sess.review_token:
        raise UserError("the page and the review are out of step: open the project again (nothing was saved)")
    target = _target(store, sess, action)
    if action not in ("next", "back"):
        annotate.decide(store, target, action, owner(ctx, request), token, corr)
    if action in DECISIONS:
        sess.last_decided = target
    v = show(ctx, sess, store, _next_shown(store, sess, action, target), request)
    return sess, annotate.status_text(store), v.image, v.text, EMPTY_EDITOR, v.token


def load_editor(ctx, sess: Session, request: gr.Request):
    store = store_of(ctx, sess, request)
    if not sess.review_path:
        raise UserError("nothing under review")
    from core.data.io import read_image
    return handlers.editor_value(read_image(store.image_path(sess.review_path)), store.mask(sess.review_path))


def use_promoted(ctx, sess: Session, request: gr.Request):
    pairs = annotate.promoted_supports(store_of(ctx, sess, request))
    if not pairs:
        raise UserError("no promoted image yet: accept or correct an image, then Promote to support")
    sess = copy.copy(sess)
    out = [gr.skip()] * N_SLOTS
    for k, (img, m) in enumerate(pairs):
        handlers.set_slot_pair(sess, k + 1, img, m)
        out[k] = handlers.editor_value(img, m)
    return out + [sess, handlers.supports_status(sess)]


def export(ctx, sess: Session, request: gr.Request):
    store = store_of(ctx, sess, request)
    note = annotate.left_out_note(store)
    if note:
        gr.Info(note)
    return annotate.export_zip(ctx, store)


def cancel(ctx, request: gr.Request):
    return jobs.cancel(owner(ctx, request))


def _bound_decision(ctx, action):
    def fn(ctx, sess: Session, corr, token, request: gr.Request):
        return decide(ctx, action, sess, corr, token, request)
    return bind(ctx, fn)


def build(ctx, shared: Shared) -> None:
    c = layout()
    s = shared.session
    c.open.click(bind(ctx, open_project), [s, c.name], [s, c.status, c.img, c.text, c.token],
                 api_name="annotate_open").then(bind(ctx, scrubber_range), s, c.frame, api_name=False)
    c.frame.release(bind(ctx, go_to_frame), [s, c.frame], [s, c.img, c.text, c.token], api_name="annotate_frame")
    c.prop_btn.click(bind(ctx, propagate), [s, shared.ckpt, c.presence, c.delineate, c.temporal],
                     [c.prop_status, c.img, c.text, c.token, s], api_name="annotate_propagate",
                     concurrency_limit=1, concurrency_id="propagate")
    c.prop_cancel.click(bind(ctx, cancel), None, c.prop_status, api_name="annotate_stop")
    for btn, action in ((c.accept, "accept"), (c.no_lesion, "no lesion"), (c.skip, "skip"), (c.undo, "undo"),
                        (c.promote, "promote"), (c.next, "next"), (c.back, "back"), (c.save, "correct")):
        btn.click(_bound_decision(ctx, action), [s, c.editor, c.token], [s, c.status, c.img, c.text, c.editor, c.token],
                  api_name="annotate_" + action.replace(" ", "_"))
    c.load.click(bind(ctx, load_editor), s, c.editor, api_name=False)
    c.use_promoted.click(bind(ctx, use_promoted), s, shared.editors + [s, shared.supports_md],
                         api_name="annotate_use_promoted")
    c.export.click(bind(ctx, export), s, c.export_file, api_name="annotate_export")
