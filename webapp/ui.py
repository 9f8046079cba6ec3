"""The Gradio Blocks of PANet++ Studio: wiring only; the work is in webapp.handlers and core."""
from __future__ import annotations

import copy
import os

import gradio as gr
import numpy as np

from core.data.io import DataError
from core.visual import overlay

from . import annotate, finetune, handlers
from .context import AppContext, owner_tag
from .handlers import N_SLOTS, Session, UserError
from .uploads import SafeImageEditor

EMPTY_EDITOR = {"background": None, "layers": [], "composite": None}
# the user key: kept (encrypted) in the browser's local storage, made there on the first visit, and sent to
# the server with every request as a same-site cookie (no server event at page load: a load event that
# reaches the server makes Gradio drop an editor upload started meanwhile)
NEW_KEY_JS = """(key) => {
  if (!(typeof key === "string" && /^[0-9a-f]{32}$/.test(key))) {
    key = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  document.cookie = "panet_user=" + key + "; path=/; max-age=31536000; SameSite=Strict";
  return key;
}"""
SESSION_TTL = 3600  # seconds a session's state outlives its last use (API clients never "close a tab")
MAX_WAITING_JOBS = 8  # training jobs running or waiting in our own queue (one runs; the others see their place)

HEADER = """# PANet++ Studio
Few-shot segmentation of breast tumours on ultrasound: annotate 1-5 **support** images, and the model
outlines the tumour on a new **query** image. *Research tool: not for diagnosis.*"""

HELP = """### How to use it
1. **Supports.** In a support slot, upload an image (or pick one in the gallery and press *Put in support slot*:
   dataset images bring their ground-truth mask). Paint the tumour with the brush (the eraser removes paint), or
   upload a mask PNG instead (white = lesion; it must have the image's size). Each slot is read once, when it
   changes: the line under the slots says which are ready. 1 support works; 3-5 work better.
2. **Query.** Upload an image or pick one in the gallery (*Use as query*), then press **Segment**. The red
   overlay is the prediction; a green contour is the ground truth when the query comes from the data folder.
   The heatmaps show how similar each part of the query is to the lesion (foreground) and tissue (background)
   prototypes of the supports: bright = similar (tick the box for each support's own maps).
3. **Refine with a box or clicks.** Click on the overlay: *box* (two opposite corners) around the target, *add
   lesion (+)* where it was missed, *remove (-)* where it is not. The boundary is then drawn by **LiteMedSAM**, a
   medical foundation model, from your box and clicks and the supports' map (the query is encoded once, in the
   background, when it arrives: each click then takes tens of ms). *Undo click*, *Clear clicks*. *Prepare
   downloads* writes the mask at the query's size, the overlay and the heatmaps.
4. **Correct and reuse.** *Correct this prediction with the brush*, fix it, then *Add corrected query as a support*.
5. **Classify** runs the lesion classifier on the query and its (corrected) mask, and shows the mask it was given.
6. **Adapt to these supports** (under Segment) fine-tunes a private copy of the model on your supports for the
   seconds you choose (GPU when present); Segment then uses it for exactly these supports, in your session only.
   Use it when the target is unlike breast lesions (another organ): it reports how well the supports agree.
7. **Fine-tune** trains on more images; the result is saved as a new checkpoint ("yours": listed to you only)
   when it beats the checkpoint it started from.

The synthetic demo images are computer-generated phantoms, not patient data.
Known editor quirks (Gradio): strokes may vanish when switching brush size; if the brush stops responding
after a gallery pick, clear the slot or upload a mask PNG instead."""


def _editor(label: str, height: int = 340, elem_id: str | None = None) -> gr.ImageEditor:
    return SafeImageEditor(
        label=label, type="numpy", format="png", transforms=(), sources=("upload", "clipboard"),
        brush=gr.Brush(colors=[("#ff0000", 0.5)], color_mode="fixed", default_size=12),
        eraser=gr.Eraser(default_size=16),
        layers=gr.LayerOptions(allow_additional_layers=False, layers=["Lesion"]),
        height=height, image_mode="RGBA", elem_id=elem_id)


def _error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), duration=12)


def _clear_corrector(sess: Session):
    """Empty the correction editor if it holds a correction (an editor update is costly in the page)."""
    if sess.corrector_loaded:
        sess.corrector_loaded = False
        return EMPTY_EDITOR
    return gr.skip()


def build_app(ctx: AppContext) -> gr.Blocks:
    from . import gradio_fixes

    gradio_fixes.apply()

    def _owner(request: gr.Request | None) -> str:
        """The user a call comes from (AppContext.owner): jobs, projects and saved models belong to them."""
        return ctx.owner(request)

    # Gradio's uploads and results live in the app's own cache folder (cleaned at start and by age),
    # not in the system temp folder; set before any component is created (each reads it then)
    os.environ["GRADIO_TEMP_DIR"] = str(ctx.cache_dir)
    panet_choices = ctx.checkpoint_choices("panet")
    gallery_items = ctx.thumbnails()
    keys = [k for k, _, _ in gallery_items]
    thumbs = [(img, caption) for _, img, caption in gallery_items]
    ttl = int(ctx.config.cache_ttl)

    with gr.Blocks(title="PANet++ Studio", delete_cache=(max(60, ttl // 4), ttl)) as demo:
        session = gr.State(Session(), time_to_live=SESSION_TTL)
        picked = gr.State(None)
        # the user key, kept (encrypted) in the browser: the same user after a reload or a restart
        user_key = gr.BrowserState("", storage_key="panet_user", secret=ctx.browser_secret())
        gr.Markdown(HEADER)
        with gr.Row():
            # custom values are let through to the handlers, which accept only names this session may use
            # (so an API client can name a checkpoint it saved after the page was built)
            ckpt = gr.Dropdown(panet_choices, value=ctx.default_checkpoint("panet"),
                               label="Few-shot checkpoint", scale=3, allow_custom_value=True)
            refresh = gr.Button("Refresh list", scale=0, min_width=120)
        gr.Markdown(f"{ctx.data_message} Running on the **{ctx.device().upper()}**. {ctx.promptable_message()}")

        with gr.Tab("Segment"):
            # the action first: reachable without scrolling (supports and query are set below)
            with gr.Row(equal_height=True):
                seg_btn = gr.Button("Segment", variant="primary", elem_id="segment-button", scale=1, min_width=160)
                gr.Markdown("Set 1-5 supports and a query below, then **Segment**; the result is under "
                                         "*2. Query*.", elem_id="run-status")
            with gr.Row():
                with gr.Column(scale=3):
                    gr.Markdown("### 1. Supports (1-5): an image and its tumour mask in each slot")
                    editors, mask_files, clears = [], [], []
                    with gr.Tabs():
                        for i in range(1, N_SLOTS + 1):
                            with gr.Tab(f"Support {i}"):
                                editors.append(_editor(f"Support {i}: upload, then paint the tumour",
                                                      elem_id=f"support{i}"))
                                with gr.Row():
                                    mask_files.append(gr.File(label=f"...or upload a mask PNG for support {i}",
                                                              file_types=["image"], height=90, elem_id=f"mask{i}"))
                                    clears.append(gr.Button(f"Clear slot {i}", size="sm", scale=0, min_width=110))
                    supports_md = gr.Markdown(handlers.supports_status(Session()), elem_id="supports-status")
                    set_supports_btn = gr.Button("Read all slots again", size="sm", elem_id="set-supports")
                    support_thumbs = gr.Gallery(label="Supports used in the last segmentation", columns=5,
                                                height=170, allow_preview=False, preview=False, object_fit="contain")
                with gr.Column(scale=2):
                    gallery = gr.Gallery(value=thumbs, label="Gallery: synthetic demo phantoms, then the data folder",
                                         columns=4, height=360, allow_preview=False, elem_id="gallery")
                    picked_text = gr.Markdown("Click an image in the gallery to select it.", elem_id="picked-text")
                    with gr.Row():
                        slot_choice = gr.Dropdown(list(range(1, N_SLOTS + 1)), value=1, label="Slot", scale=0,
                                                  min_width=110, elem_id="slot-choice")
                        to_slot = gr.Button("Put in support slot")
                        to_query = gr.Button("Use as query")
            gr.Markdown("### 2. Query")
            with gr.Row():
                with gr.Column(scale=1):
                    query_preview = gr.Image(label="Query image", type="numpy", format="png", interactive=False,
                                             height=280)
                    query = gr.File(label="Upload a query image (PNG, JPEG, BMP, TIFF, DICOM; up to 4096 px)",
                                    file_types=["image", ".dcm", ".dicom"], height=90, elem_id="query-file")
                    threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Threshold")
                    opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Overlay opacity")
                    per_support = gr.Checkbox(False, label="Heatmaps of each support too (slower)")
                    no_lesion_cb = gr.Checkbox(False, label="Breast lesions: answer 'no lesion' when the image has "
                                                            "none (lesion-presence head; off for other targets)",
                                               elem_id="no-lesion-check")
                    with gr.Row():
                        adapt_seconds = gr.Slider(5, 300, value=30, step=5, label="Adaptation time (s)")
                    with gr.Row():
                        adapt_btn = gr.Button("Adapt to these supports", elem_id="adapt-button")
                        adapt_cancel = gr.Button("Cancel adaptation", variant="stop", size="sm")
                    adapt_status = gr.Markdown(elem_id="adapt-status")
                    with gr.Row():
                        adapt_name = gr.Textbox(label="Name for the adapted model", placeholder="thyroid_adapted",
                                                scale=2)
                        adapt_save = gr.Button("Save adapted model", size="sm", scale=1)
                with gr.Column(scale=1):
                    overlay_out = gr.Image(label="Prediction overlay (red; green: ground truth). Click it to refine",
                                           type="numpy", format="jpeg", interactive=False, height=320,
                                           elem_id="overlay")
                    with gr.Row():
                        click_mode = gr.Radio([("add lesion (+)", "+"), ("remove (-)", "-"), ("box: 2 corners", "box")],
                                              value="+", label="A click on the overlay...", elem_id="click-mode",
                                              scale=3)
                        undo_click = gr.Button("Undo click", size="sm", scale=1)
                        clear_clicks = gr.Button("Clear clicks", size="sm", scale=1)
                    click_text = gr.Markdown(elem_id="click-status")
                    report = gr.Markdown()
                    # the click endpoint for API clients (the page uses the overlay's select event)
                    click_x = gr.Number(visible=False, label="click x")
                    click_y = gr.Number(visible=False, label="click y")
                    click_btn = gr.Button(visible=False)
            with gr.Row():
                prob_out = gr.Image(label="Probability map (0 dark, 1 yellow)", type="numpy", format="jpeg",
                                    interactive=False, height=260)
                heat_out = gr.Gallery(label="Similarity heatmaps (cosine, colour bar below each)", columns=4,
                                      height=300, format="jpeg")
            with gr.Row():
                download_btn = gr.Button("Prepare downloads", size="sm", scale=0, min_width=180)
                files_out = gr.File(label="Downloads: mask PNG (query size), overlay, heatmaps", file_count="multiple",
                                    interactive=False)
            gr.Markdown("### 3. Correct and reuse")
            load_corrector = gr.Button("Correct this prediction with the brush", size="sm")
            corrector = _editor("Correct the prediction (paint / erase), then reuse it", 320)
            add_support = gr.Button("Add corrected query as a support")

        with gr.Tab("Annotate a folder"):
            gr.Markdown("Annotates every image of the data folder with this session's supports: *Propagate*, then "
                        "review the most uncertain images first (accept, no lesion, skip, correct with the brush, "
                        "undo), promote good ones to supports, and export a dataset. Projects are stored under the "
                        "output folder and shared with `python -m core annotate` / `export`.")
            with gr.Row():
                proj_name = gr.Textbox(label="Project name (your own: other users never see it)",
                                       placeholder="e.g. ward7_thyroid", scale=3,
                                       elem_id="project-name")
                proj_open = gr.Button("Open / create", scale=1)
            proj_status = gr.Markdown(elem_id="project-status")
            with gr.Row():
                prop_btn = gr.Button("Propagate the supports", variant="primary", elem_id="propagate-button")
                prop_cancel = gr.Button("Stop", variant="stop", size="sm")
                presence_cb = gr.Checkbox(False, label="Breast lesions: predict 'no lesion' on images without one "
                                                      "(the lesion-presence head, as in predict and Classify)")
                delineate_cb = gr.Checkbox(False, label="Delineate each image with LiteMedSAM (redraws the boundary "
                                                       "from the box of the prediction; slower)")
            prop_status = gr.Markdown(elem_id="propagate-status")
            with gr.Row():
                with gr.Column():
                    rev_img = gr.Image(label="Review: the most uncertain first", type="numpy", format="jpeg",
                                       interactive=False, height=320, elem_id="review-image")
                    rev_text = gr.Markdown(elem_id="review-text")
                    # which image (id:version) the page shows: every decision carries it back and is refused
                    # unless it is the image under review, unchanged since it was shown
                    rev_token = gr.Textbox(visible=False, elem_id="review-token")
                with gr.Column():
                    with gr.Row():
                        acc_btn = gr.Button("Accept", variant="primary", elem_id="accept-button")
                        nol_btn = gr.Button("No lesion")
                        skip_btn = gr.Button("Skip")
                    with gr.Row():
                        undo_btn = gr.Button("Undo", size="sm")
                        promote_btn = gr.Button("Promote to support", size="sm")
                        next_btn = gr.Button("Next", size="sm")
                    rev_load = gr.Button("Correct with the brush", size="sm")
                    rev_editor = _editor("Correct the mask of the image under review", 300, elem_id="review-editor")
                    rev_save = gr.Button("Save correction", elem_id="save-correction")
                    use_promoted = gr.Button("Use promoted images as supports", size="sm")
            with gr.Row():
                exp_btn = gr.Button("Export (masks, manifest, COCO)", size="sm", scale=0, min_width=220)
                exp_file = gr.File(label="Exported project (zip)", interactive=False)

        with gr.Tab("Classify"):
            gr.Markdown("Classifies the current query with its predicted mask (or your corrected mask).")
            cls_btn = gr.Button("Classify query", variant="primary")
            with gr.Row():
                label_out = gr.Label(num_top_classes=3, label="Class probabilities")
                cls_input = gr.Image(label="What the classifier was given: the query and this mask (red)",
                                     type="numpy", format="png", interactive=False, height=280)
            cls_text = gr.Markdown()

        with gr.Tab("Fine-tune"):
            gr.Markdown("Adapts the selected few-shot checkpoint to your images. Runs on the GPU when present, "
                        "else the CPU. The shipped checkpoints are never changed: the result is a new one.")
            with gr.Row():
                ft_source = gr.Radio(["this session's supports and corrected queries", "data folder"],
                                     value="this session's supports and corrected queries", label="Images")
                ft_name = gr.Textbox(label="Name of the new checkpoint", placeholder="my_hospital")
            with gr.Row():
                ft_epochs = gr.Slider(1, 20, value=3, step=1, label="Epochs")
                ft_episodes = gr.Slider(10, 500, value=50, step=10, label="Episodes per epoch")
                ft_lr = gr.Number(value=5e-5, label="Learning rate")
            with gr.Row():
                ft_start = gr.Button("Start fine-tuning", variant="primary")
                ft_cancel = gr.Button("Cancel", variant="stop")
            ft_status = gr.Markdown()
            ft_plot = gr.Plot(label="Loss and Dice")

        with gr.Tab("Help"):
            gr.Markdown(HELP)

        # ------------------------------------------------------------------------- events
        def on_refresh(current, request: gr.Request):
            choices = ctx.checkpoint_choices("panet", _owner(request))
            names = [n for _, n in choices]
            return gr.update(choices=choices, value=current if current in names else (names[0] if names else None))

        refresh.click(on_refresh, ckpt, ckpt, api_name="refresh_checkpoints")

        demo.load(None, user_key, user_key, js=NEW_KEY_JS, queue=False, show_progress="hidden")
        # the menu lists this user's saved checkpoints whenever it is opened (also after a reload)
        ckpt.focus(on_refresh, ckpt, ckpt, api_name=False, show_progress="hidden")

        def on_pick(evt: gr.SelectData):
            key = keys[evt.index]
            return key, f"Selected: **{ctx.gallery[key].caption}**"

        gallery.select(on_pick, None, [picked, picked_text], api_name=False)

        def put_in_slot(key, slot, sess: Session):
            if not key:
                raise gr.Error("select an image in the gallery first")
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

        to_slot.click(put_in_slot, [picked, slot_choice, session],
                      editors + mask_files + [session, supports_md, slot_choice], api_name="put_in_slot")

        def use_as_query(key, sess: Session):
            if not key:
                raise gr.Error("select an image in the gallery first")
            sess = copy.copy(sess)
            sess.query_key, sess.query_file = key, None
            handlers.set_query(sess, ctx.item(key).image)
            ctx.prefetch_embedding(sess.query_image)
            return sess.query_image, None, sess

        to_query.click(use_as_query, [picked, session], [query_preview, query, session], api_name="use_as_query")

        def on_query_upload(path, sess: Session):
            sess = copy.copy(sess)
            notes: list[str] = []
            try:
                handlers.set_query(sess, handlers.read_upload(path, "query image", notes) if path else None)
                ctx.prefetch_embedding(sess.query_image)
            except UserError as exc:
                raise _error(exc)
            for note in notes:
                gr.Warning(note)
            sess.query_key, sess.query_file = None, str(path) if path else None
            return sess.query_image, sess

        query.upload(on_query_upload, [query, session], [query_preview, session], api_name=False)

        # supports are decoded when a slot changes, once; Segment never receives them again
        def make_register(slot):
            def register(sess: Session, value, mask_file):
                sess = copy.copy(sess)
                try:
                    handlers.register_slot(sess, slot, value, mask_file)
                except (UserError, ValueError) as exc:
                    gr.Warning(str(exc))
                return sess, handlers.supports_status(sess)
            return register

        def make_clear(slot):
            def clear(sess: Session):
                sess = copy.copy(sess)
                handlers.clear_slot(sess, slot)
                return {"background": None, "layers": [], "composite": None}, None, sess, handlers.supports_status(sess)
            return clear

        for i in range(N_SLOTS):
            reg = make_register(i + 1)
            for comp in (editors[i], mask_files[i]):
                comp.change(reg, [session, editors[i], mask_files[i]], [session, supports_md], api_name=False,
                            trigger_mode="always_last", show_progress="hidden")
            clears[i].click(make_clear(i + 1), session, [editors[i], mask_files[i], session, supports_md],
                            api_name=False)
            editors[i].clear(lambda sess, _c=make_clear(i + 1): _c(sess)[2:], session, [session, supports_md],
                             api_name=False)

        def set_supports(sess: Session, *rest):
            """All five slots at once (an API client's way to set its supports; the page's Read again)."""
            eds, mfs = rest[:N_SLOTS], rest[N_SLOTS:]
            sess = copy.copy(sess)
            for i in range(N_SLOTS):
                empty = not (isinstance(eds[i], dict) and eds[i].get("background") is not None) and not mfs[i]
                if empty:
                    handlers.clear_slot(sess, i + 1)
                    continue
                try:
                    handlers.register_slot(sess, i + 1, eds[i], mfs[i])
                except (UserError, ValueError) as exc:
                    raise _error(exc)
            return sess, handlers.supports_status(sess)

        set_supports_btn.click(set_supports, [session] + editors + mask_files, [session, supports_md],
                               api_name="set_supports")

        # gr.Request must be a positional parameter for Gradio to pass it in
        def do_segment(sess: Session, ckpt_name, q, thr, opa, per_sup, no_les, request: gr.Request):
            key = (ckpt_name, str(q), thr, opa, bool(per_sup), bool(no_les), tuple(id(p) for p in sess.supports),
                   tuple(sess.slot_notes), sess.query_key)
            who = getattr(request, "session_hash", None) or _owner(request)
            repeated = handlers.SEGMENT_GUARD.repeat_of(who, key)
            if repeated is not None:
                return repeated   # the second click of a double click: the first one's answer, not computed again
            sess = copy.copy(sess)
            shown = [id(p) for p in sess.supports]
            try:
                out = handlers.segment(ctx, sess, ckpt_name, q, thr, opa, owner=_owner(request),
                                       per_support_maps=bool(per_sup), no_lesion=bool(no_les))
            except (UserError, ValueError) as exc:
                handlers.SEGMENT_GUARD.remember(who, key, None)
                raise _error(exc)
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
                      "", sthumbs, _clear_corrector(sess), sess)
            handlers.SEGMENT_GUARD.remember(who, key, result[:5] + (gr.skip(), gr.skip(), sess))
            return result

        # a new prediction empties the correction editor (a correction of the previous one must not be reused)
        seg_btn.click(do_segment,
                      [session, ckpt, query, threshold, opacity, per_support, no_lesion_cb],
                      [overlay_out, prob_out, heat_out, report, click_text, support_thumbs, corrector, session],
                      api_name="segment", concurrency_limit=2, trigger_mode="once")

        def on_overlay_click(sess: Session, mode, thr, opa, evt: gr.SelectData, request: gr.Request):
            return _click(sess, evt.index[0], evt.index[1], mode, thr, opa, request)

        def on_api_click(sess: Session, x, y, mode, thr, opa, request: gr.Request):
            return _click(sess, x, y, mode, thr, opa, request)

        def _refined(sess: Session, thr, opa, request):
            """The overlay refined with the session's clicks and box (outputs of every click event)."""
            try:
                img, text = handlers.refine(ctx, sess, thr, opa, _owner(request))
            except (UserError, ValueError) as exc:
                raise _error(exc)
            return img, text, _clear_corrector(sess), sess

        def _click(sess: Session, x, y, mode, thr, opa, request):
            sess = copy.copy(sess)
            try:
                handlers.add_click(sess, float(x), float(y), mode)
                if mode == "box" and sess.box_corner is not None:
                    return (handlers.render_overlay(sess, opa, handlers._truth(ctx, sess, sess.query_image)),
                            "Box: now click the opposite corner.", gr.skip(), sess)
            except (UserError, ValueError) as exc:
                raise _error(exc)
            return _refined(sess, thr, opa, request)

        overlay_out.select(on_overlay_click, [session, click_mode, threshold, opacity],
                           [overlay_out, click_text, corrector, session], api_name=False, concurrency_limit=2)
        click_btn.click(on_api_click, [session, click_x, click_y, click_mode, threshold, opacity],
                        [overlay_out, click_text, corrector, session], api_name="click", concurrency_limit=2)

        def do_undo(sess: Session, thr, opa, request: gr.Request):
            sess = copy.copy(sess)
            if sess.box_corner is not None:
                sess.box_corner = None
            elif sess.clicks:
                sess.clicks = sess.clicks[:-1]
            elif sess.box is not None:
                sess.box = None
            return _refined(sess, thr, opa, request)

        def do_clear_clicks(sess: Session, thr, opa, request: gr.Request):
            sess = copy.copy(sess)
            sess.clicks, sess.box, sess.box_corner = [], None, None
            return _refined(sess, thr, opa, request)

        undo_click.click(do_undo, [session, threshold, opacity], [overlay_out, click_text, corrector, session],
                         api_name="undo_click")
        clear_clicks.click(do_clear_clicks, [session, threshold, opacity],
                           [overlay_out, click_text, corrector, session], api_name="clear_clicks")

        def do_downloads(sess: Session, opa):
            try:
                return handlers.downloads(ctx, sess, opa)
            except UserError as exc:
                raise _error(exc)

        download_btn.click(do_downloads, [session, opacity], files_out, api_name="downloads")

        def do_load_corrector(sess: Session):
            if sess.query_image is None or sess.mask is None:
                raise gr.Error("segment a query first")
            sess = copy.copy(sess)
            sess.corrector_loaded = True
            return handlers.editor_value(sess.query_image, sess.mask), sess

        load_corrector.click(do_load_corrector, session, [corrector, session], api_name=False)

        def do_adapt(ckpt_name, seconds, sess: Session, request: gr.Request):
            try:
                supports = handlers.session_supports(sess)
                for status in finetune.adapt(ctx, ckpt_name, supports, seconds, _owner(request)):
                    yield status
            except (UserError, ValueError) as exc:
                raise _error(exc)

        adapt_btn.click(do_adapt, [ckpt, adapt_seconds, session], adapt_status, api_name="adapt",
                        concurrency_limit=MAX_WAITING_JOBS, concurrency_id="jobs")

        def do_save_adapted(ckpt_name, name, sess: Session, request: gr.Request):
            try:
                supports = handlers.session_supports(sess)
                msg, new_name = finetune.save_adapted(ctx, ckpt_name, supports, name, _owner(request))
            except (UserError, ValueError) as exc:
                raise _error(exc)
            return msg, gr.update(choices=ctx.checkpoint_choices("panet", _owner(request)), value=ckpt_name)

        adapt_save.click(do_save_adapted, [ckpt, adapt_name, session], [adapt_status, ckpt], api_name="save_adapted")

        def do_cancel(request: gr.Request):
            return finetune.cancel(_owner(request))

        adapt_cancel.click(do_cancel, None, adapt_status, api_name="cancel_adapt")

        def do_rerender(sess: Session, thr, opa):
            try:
                img = handlers.rerender(sess, thr, opa, ctx)
            except UserError as exc:
                raise _error(exc)
            return img if img is not None else gr.skip()

        threshold.release(do_rerender, [session, threshold, opacity], overlay_out, api_name=False)
        opacity.release(do_rerender, [session, threshold, opacity], overlay_out, api_name=False)

        def add_corrected(sess: Session, corr):
            try:
                mask = handlers.corrected_mask(sess, corr)
            except UserError as exc:
                raise _error(exc)
            if not mask.any():
                raise gr.Error("the corrected mask is empty: paint the lesion first")
            free = [i for i, (p, n) in enumerate(zip(sess.supports, sess.slot_notes)) if p is None and not n]
            if not free:
                raise gr.Error("all 5 support slots are in use: clear one first")
            sess = copy.copy(sess)
            sess.mask, sess.corrected = mask, True
            sess.extra_pairs = handlers.keep_pair(sess.extra_pairs, sess.query_image, mask)
            handlers.set_slot_pair(sess, free[0] + 1, sess.query_image, mask)
            out = [gr.skip()] * N_SLOTS
            out[free[0]] = handlers.editor_value(sess.query_image, mask)
            gr.Info(f"added as support {free[0] + 1}")
            return out + [sess, handlers.supports_status(sess)]

        add_support.click(add_corrected, [session, corrector], editors + [session, supports_md],
                          api_name="add_corrected_support")

        def do_classify(sess: Session, corr):
            try:
                mask = handlers.corrected_mask(sess, corr)
                sess.corrected = sess.corrected or (sess.mask is not None and not np.array_equal(mask, sess.mask))
                sess.mask = mask
                return handlers.classify(ctx, sess, corr)
            except (UserError, ValueError) as exc:
                raise _error(exc)

        cls_btn.click(do_classify, [session, corrector], [label_out, cls_text, cls_input], api_name="classify")

        def do_finetune(ckpt_name, source, epochs, episodes, lr, name, sess: Session, request: gr.Request):
            pairs = [p for p in sess.supports if p is not None] + list(sess.extra_pairs) \
                if source != "data folder" else []
            try:
                for status, fig, new_name in finetune.run(ctx, ckpt_name, source, pairs, epochs, episodes, lr, name,
                                                          owner=_owner(request)):
                    upd = gr.skip()
                    if new_name:
                        upd = gr.update(choices=ctx.checkpoint_choices("panet", _owner(request)), value=new_name)
                    yield status, fig if fig is not None else gr.skip(), upd
            except (UserError, ValueError) as exc:
                # said in the status line (and a toast), not raised: a raised error would mark every output
                # of this event, the checkpoint menu included, as failed
                gr.Warning(str(exc))
                yield f"**Not done:** {exc}", gr.skip(), gr.skip()

        ft_start.click(do_finetune, [ckpt, ft_source, ft_epochs, ft_episodes, ft_lr, ft_name, session],
                       [ft_status, ft_plot, ckpt], api_name="finetune", concurrency_limit=MAX_WAITING_JOBS, concurrency_id="jobs")
        ft_cancel.click(do_cancel, None, ft_status, api_name="cancel_finetune")
        # --------------------------------------------------------------- annotation projects
        def _store(sess: Session, request):
            if not sess.project:
                raise gr.Error("open a project first")
            return annotate.open_project(ctx, sess.project, _owner(request))

        def _shown(sess: Session, store, rel_path, request):
            """Show `rel_path` for review: the session and the page's token name exactly that image."""
            v = annotate.view(store, rel_path, who=owner_tag(_owner(request)))
            sess.review_path, sess.review_token = v.rel_path, v.token
            return v

        def do_open(sess: Session, name, request: gr.Request):
            sess = copy.copy(sess)
            try:
                store = annotate.open_project(ctx, name, _owner(request))
            except UserError as exc:
                raise _error(exc)
            sess.project, sess.last_decided = store.name, None
            v = _shown(sess, store, annotate.next_image(store), request)
            return sess, annotate.status_text(store), v.image, v.text, v.token

        proj_open.click(do_open, [session, proj_name], [session, proj_status, rev_img, rev_text, rev_token],
                        api_name="annotate_open")

        def do_propagate(sess: Session, ckpt_name, use_presence, use_sam=False, request: gr.Request = None):
            try:
                store = _store(sess, request)
                supports = handlers.session_supports(sess)
                calib = annotate.presence_decision(ctx) if use_presence else None
                job = finetune._register(_owner(request), "propagation")
                try:
                    sam = ctx.promptable_model() if use_sam else None
                    if use_sam and sam is None:
                        raise UserError("LiteMedSAM is not available: untick Delineate with LiteMedSAM")
                    line = ""
                    for line in annotate.run_propagation(ctx, store, ckpt_name, supports, _owner(request), job,
                                                         calib, delineate_with=sam):
                        yield line, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                finally:
                    finetune._unregister(job)
                # the review shows the most uncertain image with its new prediction (what was shown before
                # may have changed: a decision on it would be refused)
                sess = copy.copy(sess)
                v = _shown(sess, store, annotate.next_image(store), request)
                yield line, v.image, v.text, v.token, sess
            except (UserError, ValueError) as exc:
                raise _error(exc)

        prop_btn.click(do_propagate, [session, ckpt, presence_cb, delineate_cb],
                       [prop_status, rev_img, rev_text, rev_token, session], api_name="annotate_propagate",
                       concurrency_limit=1, concurrency_id="propagate")
        prop_cancel.click(do_cancel, None, prop_status, api_name="annotate_stop")

        def make_decision(action):
            def act(sess: Session, corr, token, request: gr.Request):
                sess = copy.copy(sess)
                try:
                    store = _store(sess, request)
                    target = sess.review_path
                    # the page sends the token of the image it shows; an API client may leave it empty
                    token = token or sess.review_token
                    if action in ("accept", "no lesion", "skip", "correct") and token != sess.review_token:
                        raise UserError("the page and the review are out of step: open the project again "
                                        "(nothing was saved)")
                    if action == "promote" and target and store.row(target)["status"] not in ("accepted", "corrected"):
                        target = sess.last_decided or target
                    if action == "undo":          # undo the last decision, and show that image again
                        target = sess.last_decided or target
                    if action != "next":
                        annotate.decide(store, target, action, _owner(request), token, corr)
                    if action in ("accept", "correct", "no lesion", "skip"):
                        sess.last_decided = target
                    nxt = sess.review_path
                    if action == "undo":
                        nxt, sess.last_decided = target, None
                    elif action == "skip":
                        nxt = next((r["rel_path"] for r in store.review_queue() if r["status"] != "skipped"
                                    and r["rel_path"] != target), None)
                    elif action in ("accept", "no lesion", "correct"):
                        nxt = annotate.next_image(store)
                    elif action == "next":
                        nxt = annotate.next_image(store, after=target)
                    v = _shown(sess, store, nxt, request)
                except (UserError, ValueError) as exc:
                    raise _error(exc)
                return sess, annotate.status_text(store), v.image, v.text, EMPTY_EDITOR, v.token
            return act

        for btn, action in ((acc_btn, "accept"), (nol_btn, "no lesion"), (skip_btn, "skip"), (undo_btn, "undo"),
                            (promote_btn, "promote"), (next_btn, "next"), (rev_save, "correct")):
            btn.click(make_decision(action), [session, rev_editor, rev_token],
                      [session, proj_status, rev_img, rev_text, rev_editor, rev_token],
                      api_name="annotate_" + action.replace(" ", "_"))

        def do_rev_load(sess: Session, request: gr.Request):
            store = _store(sess, request)
            if not sess.review_path:
                raise gr.Error("nothing under review")
            from core.data.io import read_image
            return handlers.editor_value(read_image(store.image_path(sess.review_path)), store.mask(sess.review_path))

        rev_load.click(do_rev_load, session, rev_editor, api_name=False)

        def do_use_promoted(sess: Session, request: gr.Request):
            store = _store(sess, request)
            pairs = annotate.promoted_supports(store)
            if not pairs:
                raise gr.Error("no promoted image yet: accept or correct an image, then Promote to support")
            sess = copy.copy(sess)
            out = [gr.skip()] * N_SLOTS
            for k, (img, m) in enumerate(pairs):
                handlers.set_slot_pair(sess, k + 1, img, m)
                out[k] = handlers.editor_value(img, m)
            return out + [sess, handlers.supports_status(sess)]

        use_promoted.click(do_use_promoted, session, editors + [session, supports_md], api_name="annotate_use_promoted")

        def do_export(sess: Session, request: gr.Request):
            try:
                store = _store(sess, request)
                note = annotate.left_out_note(store)
                if note:
                    gr.Info(note)
                return annotate.export_zip(ctx, store)
            except (UserError, DataError) as exc:
                raise _error(exc)

        exp_btn.click(do_export, session, exp_file, api_name="annotate_export")

        def on_unload(request: gr.Request):
            # a closed tab's adapted model copies are dropped (memory stays bounded)
            ctx.forget_session(_owner(request))

        demo.unload(on_unload)
    demo.queue(default_concurrency_limit=2)
    return demo


def launch_options(ctx: AppContext) -> dict:
    """demo.launch() settings that belong to the app (app.py and the tests use the same): nothing
    below outputs/ is served by URL except Gradio's own cache; saved checkpoints are blocked too."""
    return {"max_file_size": "20mb", "blocked_paths": [str(ctx.saved_dir)]}
