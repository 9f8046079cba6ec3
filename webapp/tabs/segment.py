"""The Segment tab: supports (slots, gallery), the query, Segment, box/click refinement, downloads,
adaptation, and correcting a prediction to reuse it as a support."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import gradio as gr

from core.visual import overlay

from .. import canvas, finetune, handlers
from ..events import EMPTY_EDITOR, bind, clear_corrector, owner
from ..handlers import N_SLOTS, Session, UserError
from ..uploads import SafeImageEditor
from . import Shared

MAX_WAITING_JOBS = 8  # training jobs running or waiting in our own queue (one runs; the others see their place)


def editor(label: str, height: int = 340, elem_id: str | None = None, visible: bool = True) -> gr.ImageEditor:
    return SafeImageEditor(
        label=label, type="numpy", format="png", transforms=(), sources=("upload", "clipboard"),
        brush=gr.Brush(colors=[("#ff0000", 0.5)], color_mode="fixed", default_size=12),
        eraser=gr.Eraser(default_size=16),
        layers=gr.LayerOptions(allow_additional_layers=False, layers=["Lesion"]),
        height=height, image_mode="RGBA", elem_id=elem_id, visible=visible)


# ------------------------------------------------------------------------------------------ layout
def _supports_column(c: SimpleNamespace) -> None:
    gr.Markdown("### 1. Supports (1-5): an image and its tumour mask in each slot")
    c.editors, c.mask_files, c.clears = [], [], []
    with gr.Tabs():
        for i in range(1, N_SLOTS + 1):
            with gr.Tab(f"Support {i}"):
                c.editors.append(editor(f"Support {i}: upload, then paint the tumour", elem_id=f"support{i}"))
                with gr.Row():
                    c.mask_files.append(gr.File(label=f"...or upload a mask PNG for support {i}",
                                                file_types=["image"], height=90, elem_id=f"mask{i}"))
                    c.clears.append(gr.Button(f"Clear slot {i}", size="sm", scale=0, min_width=110))
    c.supports_md = gr.Markdown(handlers.supports_status(Session()), elem_id="supports-status")
    c.set_supports_btn = gr.Button("Read all slots again", size="sm", elem_id="set-supports")


def _gallery_column(c: SimpleNamespace, thumbs) -> None:
    c.gallery = gr.Gallery(value=thumbs, label="Gallery: synthetic demo phantoms, then the data folder",
                           columns=4, height=360, allow_preview=False, elem_id="gallery")
    c.picked_text = gr.Markdown("Click an image in the gallery to select it.", elem_id="picked-text")
    with gr.Row():
        c.slot_choice = gr.Dropdown(list(range(1, N_SLOTS + 1)), value=1, label="Slot", scale=0, min_width=110,
                                    elem_id="slot-choice")
        c.to_slot = gr.Button("Put in support slot")
        c.to_query = gr.Button("Use as query")


def _query_column(c: SimpleNamespace) -> None:
    # the canvas shows the query; this image is an output of the API's use_as_query only
    c.query_preview = gr.Image(label="Query image", type="numpy", format="png", interactive=False, visible=False)
    # the page uploads its query on the canvas (no queued event); this is the API's query input
    c.query = gr.File(label="Upload a query image (PNG, JPEG, BMP, TIFF, DICOM; up to 4096 px)",
                      file_types=["image", ".dcm", ".dicom"], height=90, elem_id="query-file", visible=False)
    c.threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Threshold", elem_id="threshold-slider")
    # the page's opacity is the canvas's own slider (drawn in the browser); this one is the API's
    c.opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Overlay opacity", visible=False)
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
    # what the API's endpoints return (scripts); the page shows all of it on the canvas
    c.overlay_out = gr.Image(label="Prediction overlay", type="numpy", format="jpeg", interactive=False,
                             visible=False, elem_id="overlay")
    c.click_mode = gr.Radio([("add lesion", "+"), ("remove", "-"), ("box: 2 corners", "box")], value="+",
                            label="A click on the overlay...", visible=False)
    c.undo_click = gr.Button("Undo click", visible=False)
    c.clear_clicks = gr.Button("Clear clicks", visible=False)
    c.click_text = gr.Markdown(visible=False)
    c.report = gr.Markdown(visible=False)
    c.click_x = gr.Number(visible=False, label="click x")
    c.click_y = gr.Number(visible=False, label="click y")
    c.click_btn = gr.Button(visible=False)


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
    # the API's correction (scripts send an editor value); the page corrects on the canvas
    c.load_corrector = gr.Button(visible=False)
    c.corrector = editor("Correct the prediction (paint / erase), then reuse it", 320, visible=False)


def layout(ctx, thumbs, link) -> SimpleNamespace:
    c = SimpleNamespace(link=link, picked=gr.State(None))    # picked: the gallery key selected last
    # the action first: reachable without scrolling (supports and query are set below)
    with gr.Row(equal_height=True):
        c.seg_btn = gr.Button("Segment", variant="primary", elem_id="segment-button", scale=1, min_width=160)
        gr.Markdown("Set 1-5 supports and a query below, then **Segment**; the result is under *2. Query*.",
                    elem_id="run-status")
    with gr.Row():
        with gr.Column(scale=3):
            _supports_column(c)
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


def put_in_slot(ctx, key, slot, sess: Session):
    if not key:
        raise UserError("select an image in the gallery first")
    it = ctx.item(key)
    out = [gr.skip()] * (2 * N_SLOTS)
    mask = it.mask if it.mask is not None and it.mask.any() else None
    out[int(slot) - 1] = handlers.editor_value(it.image, mask)
    out[N_SLOTS + int(slot) - 1] = None
    sess = copy.copy(sess)
    handlers.set_slot_pair(sess, int(slot), it.image, mask)
    if mask is None:
        gr.Warning("this image has no lesion mask: paint the tumour before segmenting")
    # the next pick goes to the next free slot (not over this one)
    return out + [sess, handlers.supports_status(sess), handlers.next_free_slot(sess, int(slot))]


def use_as_query(ctx, key, sess: Session):
    sess = copy.copy(sess)
    handlers.query_from_gallery(ctx, sess, key)
    return sess.query_image, None, sess


def register_slot(ctx, slot, sess: Session, value, mask_file):
    """A slot changed: decode it once (Segment never receives the supports again)."""
    sess = copy.copy(sess)
    try:
        handlers.register_slot(sess, slot, value, mask_file)
    except (UserError, ValueError) as exc:
        gr.Warning(str(exc))
    return sess, handlers.supports_status(sess)


def clear_slot(ctx, slot, sess: Session):
    sess = copy.copy(sess)
    handlers.clear_slot(sess, slot)
    return EMPTY_EDITOR, None, sess, handlers.supports_status(sess)


def set_supports(ctx, sess: Session, *rest):
    """All five slots at once (an API client's way to set its supports; the page's Read again)."""
    eds, mfs = rest[:N_SLOTS], rest[N_SLOTS:]
    sess = copy.copy(sess)
    for i in range(N_SLOTS):
        if not (isinstance(eds[i], dict) and eds[i].get("background") is not None) and not mfs[i]:
            handlers.clear_slot(sess, i + 1)
            continue
        handlers.register_slot(sess, i + 1, eds[i], mfs[i])
    return sess, handlers.supports_status(sess)


def do_segment(ctx, sess: Session, ckpt_name, q, thr, opa, per_sup, no_les, request: gr.Request):
    key = (ckpt_name, str(q), thr, opa, bool(per_sup), bool(no_les), tuple(id(p) for p in sess.supports),
           tuple(sess.slot_notes), sess.query_key)
    who = getattr(request, "session_hash", None) or owner(ctx, request)
    repeated = handlers.SEGMENT_GUARD.repeat_of(who, key)
    if repeated is not None:
        return repeated   # the second click of a double click: the first one's answer, not computed again
    sess = copy.copy(sess)
    shown = [id(p) for p in sess.supports]
    try:
        out = handlers.segment(ctx, sess, ckpt_name, q, thr, opa, owner=owner(ctx, request),
                               per_support_maps=bool(per_sup), no_lesion=bool(no_les))
    except BaseException:
        handlers.SEGMENT_GUARD.remember(who, key, None)
        raise
    for note in out.notes:
        gr.Warning(note)
    if sess.thumbs_for == shown:
        sthumbs = gr.skip()    # the same supports as last time: nothing to send again
    else:
        sthumbs = [(handlers.display_size(overlay(img, m, 0.4))[0], f"support {k + 1}")
                   for k, (img, m) in enumerate(out.supports)]
        sess.thumbs_for = shown
    result = (out.overlay, out.probability, out.heatmaps, out.report + f"\n\n*{out.seconds * 1000:.0f} ms*",
              "", sthumbs, clear_corrector(sess), sess)
    handlers.SEGMENT_GUARD.remember(who, key, result[:5] + (gr.skip(), gr.skip(), sess))
    return result


def show_maps(ctx, sess: Session):
    if sess.probability is None:     # opened before any Segment: nothing to show yet
        return None, [], []
    return handlers.maps_view(sess)


def refined(ctx, sess: Session, thr, opa, request):
    """The overlay refined with the session's clicks and box (outputs of every click event)."""
    img, text = handlers.refine(ctx, sess, thr, opa, owner(ctx, request))
    return img, text, clear_corrector(sess), sess


def click(ctx, sess: Session, x, y, mode, thr, opa, request):
    sess = copy.copy(sess)
    handlers.add_click(sess, float(x), float(y), mode)
    if mode == "box" and sess.box_corner is not None:
        return (handlers.render_overlay(sess, opa, handlers.ground_truth(ctx, sess, sess.query_image)),
                "Box: now click the opposite corner.", gr.skip(), sess)
    return refined(ctx, sess, thr, opa, request)


def on_api_click(ctx, sess: Session, x, y, mode, thr, opa, request: gr.Request):
    return click(ctx, sess, x, y, mode, thr, opa, request)


def undo_click(ctx, sess: Session, thr, opa, request: gr.Request):
    sess = copy.copy(sess)
    if handlers.undo(sess) == "redraw":
        return refined(ctx, sess, thr, opa, request)
    if sess.query_image is None or sess.mask is None:    # half a box undone, or nothing to undo
        return gr.skip(), "Nothing to undo.", gr.skip(), sess
    ov = handlers.render_overlay(sess, handlers.bounded(opa, 0.0, 1.0, "the overlay opacity"),
                                 handlers.ground_truth(ctx, sess, sess.query_image))
    return ov, "Undone.", clear_corrector(sess), sess


def clear_clicks(ctx, sess: Session, thr, opa, request: gr.Request):
    sess = copy.copy(sess)
    handlers.clear_prompts(sess)
    return refined(ctx, sess, thr, opa, request)


def downloads(ctx, sess: Session, opa):
    return handlers.downloads(ctx, sess, opa)


def load_corrector(ctx, sess: Session):
    if sess.query_image is None or sess.mask is None:
        raise UserError("segment a query first")
    sess = copy.copy(sess)
    sess.corrector_loaded = True
    return handlers.editor_value(sess.query_image, sess.mask), sess


def adapt(ctx, ckpt_name, seconds, sess: Session, request: gr.Request):
    yield from finetune.adapt(ctx, ckpt_name, handlers.session_supports(sess), seconds, owner(ctx, request))


def save_adapted(ctx, ckpt_name, name, sess: Session, request: gr.Request):
    who = owner(ctx, request)
    msg, _ = finetune.save_adapted(ctx, ckpt_name, handlers.session_supports(sess), name, who)
    return msg, gr.update(choices=ctx.checkpoint_choices("panet", who), value=ckpt_name)


def cancel(ctx, request: gr.Request):
    return finetune.cancel(owner(ctx, request))


def add_corrected(ctx, sess: Session, corr):
    mask = handlers.corrected_mask(sess, corr)
    if not mask.any():
        raise UserError("the corrected mask is empty: paint the lesion first")
    free = [i for i, (p, n) in enumerate(zip(sess.supports, sess.slot_notes)) if p is None and not n]
    if not free:
        raise UserError("all 5 support slots are in use: clear one first")
    sess = copy.copy(sess)
    sess.mask, sess.corrected = mask, True
    sess.extra_pairs = handlers.keep_pair(sess.extra_pairs, sess.query_image, mask)
    handlers.set_slot_pair(sess, free[0] + 1, sess.query_image, mask)
    out = [gr.skip()] * N_SLOTS
    out[free[0]] = handlers.editor_value(sess.query_image, mask)
    gr.Info(f"added as support {free[0] + 1}")
    return out + [sess, handlers.supports_status(sess)]


# ------------------------------------------------------------------------------------------ wiring
def _wire_supports(ctx, c, s: Shared, keys) -> None:
    c.gallery.select(_picker(ctx, keys), None, [c.picked, c.picked_text], api_name=False)
    c.to_slot.click(bind(ctx, put_in_slot), [c.picked, c.slot_choice, s.session],
                    c.editors + c.mask_files + [s.session, c.supports_md, c.slot_choice], api_name="put_in_slot")
    # the page's "Use as query" is the canvas's own call (no queued event); the API keeps its endpoint
    c.to_query.click(None, None, None, js="() => { if (window.panetCanvas) window.panetCanvas.usePicked(); }",
                     api_name=False)
    c.api_to_query = gr.Button(visible=False)
    c.api_to_query.click(bind(ctx, use_as_query), [c.picked, s.session], [c.query_preview, c.query, s.session],
                         api_name="use_as_query")
    for i in range(N_SLOTS):
        reg = _slot_handler(ctx, register_slot, i + 1)
        for comp in (c.editors[i], c.mask_files[i]):
            comp.change(reg, [s.session, c.editors[i], c.mask_files[i]], [s.session, c.supports_md], api_name=False,
                        trigger_mode="always_last", show_progress="hidden")
        clr = _slot_handler(ctx, clear_slot, i + 1)
        c.clears[i].click(clr, s.session, [c.editors[i], c.mask_files[i], s.session, c.supports_md], api_name=False)
        c.editors[i].clear(lambda sess, _c=clr: _c(sess)[2:], s.session, [s.session, c.supports_md], api_name=False)
    c.set_supports_btn.click(bind(ctx, set_supports), [s.session] + c.editors + c.mask_files,
                             [s.session, c.supports_md], api_name="set_supports")


def _picker(ctx, keys):
    def pick(evt: gr.SelectData):
        return on_pick(ctx, keys, evt)
    return pick


def _slot_handler(ctx, fn, slot):
    def handler(sess: Session, *rest):
        return fn(ctx, slot, sess, *rest)
    return handler


# the page's Segment and threshold go to the canvas (its server functions), with the values of these inputs
SEGMENT_JS = """(ckpt, threshold, per_support, no_lesion) => {
  if (window.panetCanvas) window.panetCanvas.segment({ckpt, threshold, per_support, no_lesion});
}"""
THRESHOLD_JS = "(t) => { if (window.panetCanvas) window.panetCanvas.threshold(t); }"


def _wire_segment(ctx, c, s: Shared) -> None:
    c.seg_btn.click(None, [s.ckpt, c.threshold, c.per_support, c.no_lesion], None, js=SEGMENT_JS, api_name=False)
    c.threshold.release(None, c.threshold, None, js=THRESHOLD_JS, api_name=False)
    # the API for scripts keeps every output (overlay, probability map, heatmaps, report, ...)
    inputs = [s.session, s.ckpt, c.query, c.threshold, c.opacity, c.per_support, c.no_lesion]
    c.api_segment = gr.Button(visible=False)
    c.api_segment.click(bind(ctx, do_segment), inputs,
                        [c.overlay_out, c.prob_out, c.heat_out, c.report, c.click_text, c.support_thumbs, c.corrector,
                         s.session], api_name="segment", concurrency_limit=2, concurrency_id="segment")
    maps_out = [c.prob_out, c.heat_out, c.support_thumbs]
    c.maps.expand(bind(ctx, show_maps), s.session, maps_out, api_name=False)
    c.maps_btn.click(bind(ctx, show_maps), s.session, maps_out, api_name=False)
    refined_out = [c.overlay_out, c.click_text, c.corrector, s.session]
    c.click_btn.click(bind(ctx, on_api_click), [s.session, c.click_x, c.click_y, c.click_mode, c.threshold,
                                                c.opacity], refined_out, api_name="click", concurrency_limit=2)
    c.undo_click.click(bind(ctx, undo_click), [s.session, c.threshold, c.opacity], refined_out,
                       api_name="undo_click")
    c.clear_clicks.click(bind(ctx, clear_clicks), [s.session, c.threshold, c.opacity], refined_out,
                         api_name="clear_clicks")
    c.download_btn.click(bind(ctx, downloads), [s.session, c.opacity], c.files_out, api_name="downloads")
    c.load_corrector.click(bind(ctx, load_corrector), s.session, [c.corrector, s.session], api_name="load_corrector")
    c.add_support.click(bind(ctx, add_corrected), [s.session, c.corrector], c.editors + [s.session, c.supports_md],
                        api_name="add_corrected_support")


def _wire_adapt(ctx, c, s: Shared) -> None:
    c.adapt_btn.click(bind(ctx, adapt), [s.ckpt, c.adapt_seconds, s.session], c.adapt_status, api_name="adapt",
                      concurrency_limit=MAX_WAITING_JOBS, concurrency_id="jobs")
    c.adapt_save.click(bind(ctx, save_adapted), [s.ckpt, c.adapt_name, s.session], [c.adapt_status, s.ckpt],
                       api_name="save_adapted")
    c.adapt_cancel.click(bind(ctx, cancel), None, c.adapt_status, api_name="cancel_adapt")


def build(ctx, shared: Shared) -> None:
    gallery_items = ctx.thumbnails()
    keys = [k for k, _, _ in gallery_items]
    c = layout(ctx, [(img, caption) for _, img, caption in gallery_items], canvas.PageLink(shared.session))
    shared.editors, shared.mask_files, shared.supports_md, shared.corrector = (c.editors, c.mask_files,
                                                                              c.supports_md, c.corrector)
    _wire_supports(ctx, c, shared, keys)
    _wire_segment(ctx, c, shared)
    _wire_adapt(ctx, c, shared)

