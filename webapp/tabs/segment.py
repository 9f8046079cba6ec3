"""The Segment tab: the supports' canvas (five slots) and the gallery, the query's canvas, Segment, box/click
refinement, downloads, adaptation, and reusing a (corrected) prediction as a support."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr


from .. import canvas, finetune, handlers
from .. import exports
from ..events import bind, owner
from ..session import Session
from . import Shared

MAX_WAITING_JOBS = 8  # training jobs running or waiting in our own queue (one runs; the others see their place)


# ------------------------------------------------------------------------------------------ layout
def _supports_column(ctx, c: SimpleNamespace) -> None:
    from .support_canvas import server_functions

    gr.Markdown("### 1. Supports (1-5): an image and its target's mask in each slot")
    c.supports = canvas.component("support", server_functions(ctx, c.link, c.picked), "support-canvas")


def _gallery_column(c: SimpleNamespace, thumbs) -> None:
    c.gallery = gr.Gallery(value=thumbs, label="Gallery: synthetic demo phantoms, then the data folder",
                           columns=4, height=360, allow_preview=False, elem_id="gallery")
    c.picked_text = gr.Markdown("Click an image in the gallery to select it.", elem_id="picked-text")
    with gr.Row():
        c.to_slot = gr.Button("Put in support slot")
        c.to_query = gr.Button("Use as query")


def _query_column(c: SimpleNamespace) -> None:
    c.threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Threshold", elem_id="threshold-slider")
    c.per_support = gr.Checkbox(False, label="Heatmaps of each support too (slower)")
    c.no_lesion = gr.Checkbox(False, label="Breast lesions: answer 'no lesion' when the image has none "
                                           "(lesion-presence head; off for other targets)", elem_id="no-lesion-check")
    with gr.Row():
        c.adapt_seconds = gr.Slider(5, 300, value=30, step=5, label="Adaptation time (s)")
    with gr.Row():
        c.adapt_btn = gr.Button("Adapt to these supports", elem_id="adapt-button")
        c.adapt_cancel = gr.Button("Cancel adaptation", variant="stop", size="sm")
    c.adapt_status = gr.Markdown(elem_id="adapt-status")
    with gr.Row():
        c.adapt_name = gr.Textbox(label="Name for the adapted model", placeholder="thyroid_adapted", scale=2)
        c.adapt_save = gr.Button("Save adapted model", size="sm", scale=1)


def _result_column(ctx, c: SimpleNamespace) -> None:
    from .query_canvas import server_functions
    c.canvas = canvas.component("segment", server_functions(ctx, c.link, c.picked), "query-canvas")


def _maps_and_correction(c: SimpleNamespace) -> None:
    # filled when opened (and by its button): a Segment click updates only the overlay and the status line
    with gr.Accordion("Probability map, similarity heatmaps and the supports used", open=False) as c.maps:
        c.maps_btn = gr.Button("Show the maps of the last segmentation", size="sm", elem_id="maps-button")
        with gr.Row():
            c.prob_out = gr.Image(label="Probability map (0 dark, 1 yellow)", type="numpy", format="jpeg",
                                  interactive=False, height=260)
            c.heat_out = gr.Gallery(label="Similarity heatmaps (cosine, colour bar below each)", columns=4,
                                    height=300, format="jpeg")
        c.support_thumbs = gr.Gallery(label="Supports used in the last segmentation", columns=5, height=170,
                                      allow_preview=False, preview=False, object_fit="contain")
    with gr.Row():
        c.download_btn = gr.Button("Prepare downloads", size="sm", scale=0, min_width=180)
        c.files_out = gr.File(label="Downloads: mask PNG (query size), overlay, heatmaps", file_count="multiple",
                              interactive=False)
    gr.Markdown("### 3. Reuse: correct the mask on the canvas (brush p, eraser e), then")
    c.add_support = gr.Button("Add the query with this mask as a support", elem_id="add-support-button")


def layout(ctx, thumbs, link) -> SimpleNamespace:
    c = SimpleNamespace(link=link, picked=gr.State(None))    # picked: the gallery key selected last
    # the action first: reachable without scrolling (supports and query are set below)
    with gr.Row(equal_height=True):
        c.seg_btn = gr.Button("Segment", variant="primary", elem_id="segment-button", scale=1, min_width=160)
        gr.Markdown("Set 1-5 supports and a query below, then **Segment**; the result is under *2. Query*.",
                    elem_id="run-status")
    with gr.Row():
        with gr.Column(scale=3):
            _supports_column(ctx, c)
        with gr.Column(scale=2):
            _gallery_column(c, thumbs)
    gr.Markdown("### 2. Query")
    with gr.Row():
        with gr.Column(scale=1):
            _query_column(c)
        with gr.Column(scale=2):
            _result_column(ctx, c)
    _maps_and_correction(c)
    return c


# ------------------------------------------------------------------------------------------ handlers
def on_pick(ctx, keys, evt: gr.SelectData):
    key = keys[evt.index]
    return key, f"Selected: **{ctx.gallery[key].caption}**"


def show_maps(ctx, sess: Session):
    if sess.probability is None:     # opened before any Segment: nothing to show yet
        return None, [], []
    return handlers.maps_view(sess)


def downloads(ctx, sess: Session):
    return exports.downloads(ctx, sess, 0.4)


def adapt(ctx, ckpt_name, seconds, sess: Session, request: gr.Request):
    yield from finetune.adapt(ctx, ckpt_name, handlers.session_supports(sess), seconds, owner(ctx, request))


def save_adapted(ctx, ckpt_name, name, sess: Session, request: gr.Request):
    who = owner(ctx, request)
    msg, _ = finetune.save_adapted(ctx, ckpt_name, handlers.session_supports(sess), name, who)
    return msg, gr.update(choices=ctx.checkpoint_choices("panet", who), value=ckpt_name)


def cancel(ctx, request: gr.Request):
    return finetune.cancel(owner(ctx, request))


# ------------------------------------------------------------------------------------------ wiring
def _wire_supports(ctx, c, s: Shared, keys) -> None:
    c.gallery.select(_picker(ctx, keys), None, [c.picked, c.picked_text], api_name=False)
    # the gallery's pick goes to the canvases through their own calls (no queued event)
    c.to_slot.click(None, None, None, js="() => { if (window.panetSupports) window.panetSupports.pick(); }",
                    api_name=False)
    c.to_query.click(None, None, None, js="() => { if (window.panetCanvas) window.panetCanvas.usePicked(); }",
                     api_name=False)
    c.add_support.click(None, None, None, js="() => { if (window.panetSupports) window.panetSupports.fromQuery(); }",
                        api_name=False)


def _picker(ctx, keys):
    def pick(evt: gr.SelectData):
        return on_pick(ctx, keys, evt)
    return pick


# the page's Segment and threshold go to the canvas (its server functions), with the values of these inputs
SEGMENT_JS = """(ckpt, threshold, per_support, no_lesion) => {
  if (window.panetCanvas) window.panetCanvas.segment({ckpt, threshold, per_support, no_lesion});
}"""
THRESHOLD_JS = "(t) => { if (window.panetCanvas) window.panetCanvas.threshold(t); }"


def _wire_segment(ctx, c, s: Shared) -> None:
    c.seg_btn.click(None, [s.ckpt, c.threshold, c.per_support, c.no_lesion], None, js=SEGMENT_JS, api_name=False)
    c.threshold.release(None, c.threshold, None, js=THRESHOLD_JS, api_name=False)
    maps_out = [c.prob_out, c.heat_out, c.support_thumbs]
    c.maps.expand(bind(ctx, show_maps), s.session, maps_out, api_name=False)
    c.maps_btn.click(bind(ctx, show_maps), s.session, maps_out, api_name=False)
    c.download_btn.click(bind(ctx, downloads), s.session, c.files_out, api_name=False)


def _wire_adapt(ctx, c, s: Shared) -> None:
    c.adapt_btn.click(bind(ctx, adapt), [s.ckpt, c.adapt_seconds, s.session], c.adapt_status, api_name="adapt",
                      concurrency_limit=MAX_WAITING_JOBS, concurrency_id="jobs")
    c.adapt_save.click(bind(ctx, save_adapted), [s.ckpt, c.adapt_name, s.session], [c.adapt_status, s.ckpt],
                       api_name="save_adapted")
    c.adapt_cancel.click(bind(ctx, cancel), None, c.adapt_status, api_name="cancel_adapt")


def build(ctx, shared: Shared) -> None:
    gallery_items = ctx.thumbnails()
    keys = [k for k, _, _ in gallery_items]
    c = layout(ctx, [(img, caption) for _, img, caption in gallery_items], shared.link)
    _wire_supports(ctx, c, shared, keys)
    _wire_segment(ctx, c, shared)
    _wire_adapt(ctx, c, shared)

