"""Page handlers: plain functions over core, raising UserError with a message for the page."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.checkpoint import CheckpointError
from core.data.io import (DataError, check_header, read_image, read_mask, resize_mask,
                          to_rgb_uint8)
from core.io import MAX_UPLOAD_BYTES
from core.metrics import dice, iou
from core.visual import colorize, overlay

from .context import AppContext

from .session import N_SLOTS, Session, UserError  # noqa: F401  (what the tabs import from here)
from .supports import KEPT_PAIR_SIDE, downscaled as _downscaled, fit_side  # noqa: F401

MAX_EXTRA_PAIRS = 10      # corrected queries a session keeps for fine-tuning (oldest dropped first)
QUERY_SIDE = 1024         # a session keeps its query at most this large (the models work at 256 px)


def bounded(value, lo: float, hi: float, what: str, integer: bool = False) -> float:
    """A number from the page or an API call, checked against its field's range (sliders do not check
    what an API client sends). Refuses NaN and infinities."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number") from None
    if not (lo <= v <= hi):   # also false for NaN
        raise UserError(f"{what} must be between {lo:g} and {hi:g} (got {value})")
    return int(round(v)) if integer else v


def finite(value, what: str) -> float:
    """A finite number from the page or an API call (NaN, infinities and text refused)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number") from None
    if not np.isfinite(v):
        raise UserError(f"{what} must be a finite number (got {value})")
    return v


def set_query(session: Session, image: np.ndarray | None, spacing_mm=None) -> None:
    """The session's query: kept downscaled to QUERY_SIDE (a 4000 px upload costs ~3 MB, not ~130 MB, for
    the session's lifetime); its own size (and pixel spacing, when the file has one) is remembered."""
    session.spacing_mm = tuple(spacing_mm) if spacing_mm else None
    # the last result was of the previous query: a new query starts without it
    session.probability = session.base_probability = session.mask = session.result_mask = None
    session.corrected, session.tiles, session.redraw_pending = False, [], False
    clear_prompts(session)
    if image is None:
        session.query_image, session.query_size = None, None
        return
    session.query_size = tuple(image.shape[:2])
    session.query_image = fit_side(image, QUERY_SIDE)[0]


def query_from_file(session: Session, path, notes: list) -> None:
    """An uploaded query file (checked by read_upload) becomes the session's query; `notes` gets what the
    reading converted."""
    meta: dict = {}
    image = read_upload(path, "query image", notes, meta)
    set_query(session, image, meta.get("spacing_mm"))
    session.query_key, session.query_file = None, str(path)


def query_from_gallery(ctx: AppContext, session: Session, key) -> None:
    """The gallery image `key` becomes the session's query; its LiteMedSAM embedding starts in the background."""
    if not key or key not in ctx.gallery:
        raise UserError("select an image in the gallery first")
    session.query_key, session.query_file = key, None
    set_query(session, ctx.item(key).image)
    ctx.prefetch_embedding(session.query_image)


def keep_pair(pairs: list, image: np.ndarray, mask: np.ndarray) -> list:
    """`pairs` plus (image, mask), downscaled to KEPT_PAIR_SIDE, at most MAX_EXTRA_PAIRS (oldest out):
    a session's memory stays bounded however often it adds a corrected query."""
    return (list(pairs) + [_downscaled(image, mask)])[-MAX_EXTRA_PAIRS:]


# ---------------------------------------------------------------------------------- inputs
def read_upload(path, what: str, notes: list | None = None, info: dict | None = None) -> np.ndarray:
    """Validate and read an uploaded image file: size on disk, decodability, dimensions, mode.

    Odd modes (16-bit, RGBA, palette, CMYK) are converted deterministically; `notes` gets a line
    saying so, for the page to show. DICOM: its header is checked first, the first frame is read (cropped
    to its ultrasound region); `info` gets its pixel spacing (nothing identifying is read into the page).
    """
    if path is None:
        raise UserError(f"{what}: no image")
    if isinstance(path, np.ndarray):
        return _array(path, what)
    p = Path(path)
    if p.stat().st_size > MAX_UPLOAD_BYTES:
        raise UserError(f"{what}: file larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    from core.data.dicom import is_dicom
    from core.data.io import read_image_info

    try:
        if is_dicom(p):
            check_header(p, what)             # size, frames, bit depth, decoder: before any pixel
            image, meta = read_image_info(p)
            if info is not None:
                info.update(meta)
            if meta.get("frames", 1) > 1 and notes is not None:
                notes.append(f"{what}: frame 1 of a {meta['frames']}-frame loop (annotate the loop as a project "
                             "to go through every frame)")
            return image
        image = read_image(p)  # validates: decodable, not truncated, within the size limit
        with Image.open(p) as im:
            mode = im.mode
    except DataError as exc:
        text = _short(exc, p)
        raise UserError(text if text.startswith(f"{what}: ") else f"{what}: {text}") from exc
    if mode not in ("L", "RGB", "1") and notes is not None:
        notes.append(f"{what}: {mode} image converted to 8-bit RGB")
    return image


def _hide_dirs(ctx: AppContext, exc) -> str:
    """The message without server folder names (the page needs the file name only)."""
    text = str(exc)
    for d in (ctx.config.checkpoints_dir, ctx.config.output_dir / "checkpoints"):
        text = text.replace(str(Path(d).resolve()) + "/", "").replace(str(d) + "/", "")
    return text


def _short(exc, p: Path) -> str:
    return str(exc).replace(str(p), p.name)


def _array(arr, what) -> np.ndarray:
    try:
        return to_rgb_uint8(np.asarray(arr), what)
    except DataError as exc:
        raise UserError(str(exc)) from exc


def read_mask_upload(path, shape, what: str) -> np.ndarray:
    p = Path(path)
    if p.stat().st_size > MAX_UPLOAD_BYTES:
        raise UserError(f"{what}: file larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        m = read_mask(p)
    except DataError as exc:
        raise UserError(f"{what}: {_short(exc, p)}") from exc
    if m.shape != tuple(shape):
        raise UserError(f"{what}: the mask is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}")
    return m


# ---------------------------------------------------------------------------------- segment
def session_supports(session: Session) -> list[tuple[np.ndarray, np.ndarray]]:
    from .supports import ready_pairs

    return ready_pairs(session.slots)


DISPLAY_SIDE = 640   # overlays and maps are sent at most this large (the page shows them smaller)


def display_size(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The image downscaled for the page (longer side <= DISPLAY_SIDE) and the scale used."""
    return fit_side(image, DISPLAY_SIDE)


@dataclass
class SegmentOutput:
    overlay: np.ndarray
    probability: np.ndarray
    heatmaps: list
    report: str
    seconds: float
    notes: list
    supports: list  # the (image, mask) pairs used, for the thumbnails


def segment(ctx: AppContext, session: Session, checkpoint_name, query, threshold: float, opacity: float,
            owner: str = "", per_support_maps: bool = False, no_lesion: bool = False,
            defer_redraw: bool = False) -> SegmentOutput:
    """Segment the session's query from the session's registered supports (nothing re-decoded).
    no_lesion: breast lesions; the lesion probe's presence head may answer "no lesion" (an empty mask)."""
    t0 = time.perf_counter()
    threshold = bounded(threshold, 0.01, 0.99, "the threshold")
    opacity = bounded(opacity, 0.0, 1.0, "the overlay opacity")
    supports = session_supports(session)
    notes: list[str] = []
    if query is not None and str(query) != session.query_file:   # a new upload (an API call)
        query_from_file(session, query, notes)
        q_img = session.query_image
    elif session.query_image is not None:  # decoded at upload, or picked from the gallery
        q_img = session.query_image
    else:
        raise UserError("no query image: upload one or pick one from the gallery")
    try:
        presence = ctx.presence_check() if no_lesion else None
        model = ctx.fewshot(checkpoint_name, owner)
        from core.delineate import segment_from_supports

        # the one rule (PANet++, presence, LiteMedSAM's redraw where trusted), as the CLI and propagation.
        # defer_redraw (the canvas): when the query's embedding is not ready yet, answer with PANet++'s mask
        # now and let the page ask for the redraw next (`redraw_later`), instead of waiting for the encoder
        from core.delineate import choice_ready
        sam = ctx.promptable_model()   # ...or while these supports' choice (issue 29) is not known yet
        later = defer_redraw and sam is not None and not (sam.has_embedding(q_img) and choice_ready(model, supports))
        out = segment_from_supports(model, q_img, supports, sam=None if later else sam, presence=presence,
                                    threshold=threshold, side=max(session.query_size) if session.query_size else None,
                                    owner=owner, agreement=True, per_support_maps=per_support_maps)
        res = out.result
        adapted, agreement = res.adapted, res.agreement
    except CheckpointError as exc:
        raise UserError(f"checkpoint could not be loaded: {_hide_dirs(ctx, exc)}") from exc
    except DataError as exc:
        raise UserError(str(exc)) from exc
    # half precision, and one array for both until clicks or the redraw replace the shown map (memory per session)
    prob16 = res.probability.astype(np.float16)
    session.query_image, session.probability, session.mask, session.corrected = q_img, prob16, res.mask, False
    session.base_probability = prob16
    redrawn = redraw_note(session, out)
    session.result_mask = session.mask
    session.redraw_pending = later and res.mask.any() and res.lesion_present
    if session.redraw_pending:
        redrawn = " Boundary: PANet++'s for now; LiteMedSAM's redraw follows as soon as the query is encoded."
    session.checkpoint = checkpoint_name
    clear_prompts(session)
    truth = ground_truth(ctx, session, q_img)
    ov = render_overlay(session, opacity, truth)
    if not res.lesion_present:
        lines = [f"**No lesion**: the breast-lesion presence check gives p(lesion) {res.lesion_score:.2f}, below "
                 "its threshold, so the mask is empty (turn the check off for targets other than breast lesions, "
                 "or click on the overlay to mark one)."]
    else:
        lines = [f"**{len(supports)} support(s)**{' (model adapted to them)' if adapted else ''}, lesion predicted on "
                 f"{session.mask.mean() * 100:.1f}% of the image{physical_size(session)} (threshold {threshold:.2f})."
                 + redrawn]
    if agreement:
        a = float(np.mean(agreement))
        lines.append(f"Supports agree with each other: leave-one-out Dice **{a:.2f}** (each support segmented "
                     "from the others).")
        if a < 0.5 and not adapted:
            lines.append("Low agreement: the target may look unlike what the model was trained on, or the supports "
                         "mark different structures. Try **Adapt to these supports**.")
    if truth is not None:
        if truth.any():
            lines.append(f"Against the ground truth (green contour): **Dice {dice(session.mask, truth):.3f}, "
                         f"IoU {iou(session.mask, truth):.3f}**")
        else:
            lines.append("Ground truth: no lesion (normal image). "
                         + ("The model predicts lesion pixels here (a false positive)." if session.mask.any()
                            else "The model correctly predicts no lesion."))
        if ctx.gallery[session.query_key].in_training_split:
            lines.append("Note: this image was in the model's training split, so this score is optimistic.")
    heat = heatmap_tiles(q_img, res.heatmaps)
    session.tiles = heat
    ctx.prefetch_embedding(q_img)   # boxes and clicks on this query then wait only for the decoder
    prob_rgb = colorize(display_size(res.probability)[0], 0, 1, "viridis")
    return SegmentOutput(ov, prob_rgb, heat, "\n\n".join(lines), time.perf_counter() - t0, notes, supports)


def maps_view(session: Session) -> tuple:
    """(probability map, heatmap tiles, support thumbnails) of the last Segment: sent only when the page's
    maps panel is open, so that a Segment click sends the overlay and a status line only."""
    if session.probability is None:
        raise UserError("segment a query first")
    prob = colorize(display_size(np.asarray(session.probability, np.float32))[0], 0, 1, "viridis")
    thumbs = [(display_size(overlay(img, m, 0.4))[0], f"support {k + 1}")
              for k, (img, m) in enumerate(session_supports(session))]
    return prob, session.tiles, thumbs


def physical_size(session: Session) -> str:
    """', 412.0 mm^2, longest diameter 28.1 mm' where the query has a pixel spacing (DICOM), else ''."""
    if session.spacing_mm is None or session.mask is None or not session.mask.any():
        return ""
    from core.metrics import lesion_size

    scale = session.query_size[0] / session.mask.shape[0] if session.query_size else 1.0
    sy, sx = session.spacing_mm
    s = lesion_size(session.mask, (sy * scale, sx * scale))    # the kept query may be downscaled
    return f", {s['area_mm2']:.1f} mm², longest diameter {s['diameter_mm']:.1f} mm"


def redraw_later(ctx: AppContext, session: Session, owner: str = "") -> str:
    """The redraw a Segment deferred (the page asks for it right after): LiteMedSAM redraws the mask where
    the rule trusts it (the same rule as `segment_from_supports`, the supports' choice included), once the
    query's embedding is there. Returns the note ("" if none was due)."""
    if not session.redraw_pending or session.mask is None or session.query_image is None:
        return ""
    session.redraw_pending = False
    sam = ctx.promptable_model()
    if sam is None:
        return ""
    from core.delineate import SupportsMask, redraw, support_choice

    side = max(session.query_size) if session.query_size else None
    supports = session_supports(session)
    try:
        choice = support_choice(ctx.fewshot(session.checkpoint, owner), sam, supports)
    except (CheckpointError, DataError, KeyError):
        choice = "shipped"
    prob = np.asarray(session.base_probability, np.float32) if session.base_probability is not None else None
    mask, used, iou = redraw(sam, session.query_image, session.mask, prob, supports, choice, side=side)
    note = redraw_note(session, SupportsMask(mask, None, used, iou, choice))
    session.result_mask = session.mask
    return note


def redraw_note(session: Session, out) -> str:
    """The session shows LiteMedSAM's redraw where the rule trusted it; a note for the report ("" if not tried)."""
    if out.iou is None:
        return ""
    if not out.redrawn:
        return f" Boundary: PANet++'s (LiteMedSAM's redraw not trusted here, predicted IoU {out.iou:.2f})."
    session.mask, session.probability = out.mask, out.mask.astype(np.float16)
    origin = ("the box of PANet++'s map fused with the supports' match in LiteMedSAM's space (the supports chose it)"
              if getattr(out, "choice", "shipped") == "matched" else "PANet++'s box")
    return f" Boundary drawn by **LiteMedSAM** from {origin} (predicted IoU {out.iou:.2f})."


def render_overlay(session: Session, opacity: float, truth=None) -> np.ndarray:
    """The prediction (and ground truth, clicks, box) on the query, at display size."""
    img, scale = display_size(session.query_image)
    mask = resize_mask(session.mask, img.shape[:2])
    t = resize_mask(truth, img.shape[:2]) if truth is not None else None
    ov = overlay(img, mask, opacity, truth=t)
    for x, y, positive in session.clicks:
        c = (int(x * scale), int(y * scale))
        cv2.circle(ov, c, 6, (0, 200, 0) if positive else (255, 60, 60), -1, cv2.LINE_AA)
        cv2.circle(ov, c, 6, (255, 255, 255), 1, cv2.LINE_AA)
    if session.box is not None:
        x0, y0, x1, y1 = (int(v * scale) for v in session.box)
        cv2.rectangle(ov, (x0, y0), (x1, y1), (255, 210, 0), 2)
    if session.box_corner is not None:
        cv2.drawMarker(ov, tuple(int(v * scale) for v in session.box_corner), (255, 210, 0), cv2.MARKER_CROSS, 14, 2)
    return ov


# ---------------------------------------------------------------------------------- click refinement
def refine(ctx: AppContext, session: Session, threshold: float, opacity: float, owner: str = "") -> tuple[np.ndarray, str]:
    """The session's clicks and box on its query, and the overlay (see `refine_mask`)."""
    opacity = bounded(opacity, 0.0, 1.0, "the overlay opacity")
    text = refine_mask(ctx, session, threshold, owner)
    return render_overlay(session, opacity, ground_truth(ctx, session, session.query_image)), text


def refine_mask(ctx: AppContext, session: Session, threshold: float, owner: str = "") -> str:
    """The session's clicks and box on its query: LiteMedSAM draws the target (the query's embedding is
    cached: one decoder pass per click), informed by PANet++'s map from the supports; PANet++'s own
    refinement (cached features, bumps) where LiteMedSAM is not available. Returns the status line."""
    if session.query_image is None or session.probability is None:
        raise UserError("segment a query first, then click on the overlay")
    threshold = bounded(threshold, 0.01, 0.99, "the threshold")
    if not session.clicks and session.box is None and session.result_mask is not None:
        # no prompt left (Undo of the only click, Clear): back to what Segment showed, not PANet++'s raw map
        session.mask, session.corrected = session.result_mask, False
        session.probability = session.mask.astype(np.float16)
        return "No clicks or box: the Segment result."
    t0 = time.perf_counter()
    by = "PANet++"
    try:
        supports = session_supports(session)
        delin = ctx.delineator(session.checkpoint, owner)
        if delin is not None and (session.clicks or session.box is not None):
            base = session.base_probability
            base = base.astype(np.float32) if base is not None else session.probability
            model = ctx.fewshot(session.checkpoint, owner)
            d = delin.delineate(session.query_image, base, box=session.box, clicks=session.clicks,
                                threshold=threshold, key=model.support_key(supports) + owner)
            mask, prob = d.mask, d.mask.astype(np.float32)
            by = "LiteMedSAM" + (f" (predicted IoU {d.iou:.2f})" if d.iou is not None else "")
        else:
            model = ctx.fewshot(session.checkpoint, owner)
            res = model.predict(session.query_image, supports, threshold=threshold, heatmaps=False,
                                owner=owner, clicks=session.clicks, box=session.box)
            mask, prob = res.mask, res.probability
    except (CheckpointError, DataError) as exc:
        raise UserError(_hide_dirs(ctx, exc)) from exc
    session.probability, session.mask, session.corrected = prob.astype(np.float16), mask, False
    ms = (time.perf_counter() - t0) * 1000
    n_pos = sum(1 for c in session.clicks if c[2])
    return (f"{n_pos} positive and {len(session.clicks) - n_pos} negative click(s)"
            + (", box" if session.box else "") + f": lesion on {mask.mean() * 100:.1f}% of the image, drawn by "
            f"{by} (*{ms:.0f} ms*).")


MAX_HISTORY = 30      # undo steps a session keeps (a painted mask is kept packed: 1 bit per pixel)


def clear_prompts(session: Session) -> None:
    """No clicks, no box (nor half of one), nothing to undo: a new query, new supports, a new Segment, Clear."""
    session.clicks, session.box, session.box_corner, session.history = [], None, None, []


def _remember(session: Session, kind: str, previous) -> None:
    session.history = (session.history + [(kind, previous)])[-MAX_HISTORY:]


def paint(session: Session, mask: np.ndarray) -> None:
    """A mask corrected by hand (the canvas's brush and eraser) becomes the session's mask; undo restores
    the one before."""
    if session.query_image is None or session.mask is None:
        raise UserError("segment a query first, then correct its mask")
    prev = session.mask
    _remember(session, "paint", (np.packbits(prev), prev.shape, session.corrected))
    session.mask = resize_mask(mask, session.mask.shape[:2]) if mask.shape != prev.shape else mask.astype(bool)
    session.probability, session.corrected = session.mask.astype(np.float16), True


def undo(session: Session) -> str:
    """Undo the last click, box or brush correction. Returns "redraw" when the model must draw the mask
    again from the clicks and box left, "restored" when the mask before a brush correction is back, ""
    when there was nothing to undo (or only half a box)."""
    if session.box_corner is not None:
        session.box_corner = None
        return ""
    if session.history:
        (kind, prev), session.history = session.history[-1], session.history[:-1]
        if kind == "paint":
            bits, shape, corrected = prev
            session.mask = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
            session.probability, session.corrected = session.mask.astype(np.float16), corrected
            return "restored"
        if kind == "click" and session.clicks:
            session.clicks = session.clicks[:-1]
        elif kind == "box":
            session.box = prev
        return "redraw"
    if session.clicks:
        session.clicks = session.clicks[:-1]
        return "redraw"
    if session.box is not None:
        session.box = None
        return "redraw"
    return ""


def add_click(session: Session, x_display: float, y_display: float, mode: str) -> None:
    """A click on the displayed overlay (display pixels) in `mode`: '+', '-' or 'box'."""
    if session.query_image is None:
        raise UserError("segment a query first, then click on the overlay")
    x_display = finite(x_display, "the click's x")
    y_display = finite(y_display, "the click's y")
    _, scale = display_size(session.query_image)
    h, w = session.query_image.shape[:2]
    x, y = min(w - 1.0, max(0.0, x_display / scale)), min(h - 1.0, max(0.0, y_display / scale))
    if mode == "box":
        if session.box_corner is None:
            session.box_corner = (x, y)
        else:
            (x0, y0), session.box_corner = session.box_corner, None
            if abs(x - x0) < 2 or abs(y - y0) < 2:
                raise UserError("the box is too small: click two opposite corners")
            _remember(session, "box", session.box)
            session.box = (min(x0, x), min(y0, y), max(x0, x), max(y0, y))
        return
    if mode not in ("+", "-"):
        raise UserError(f"unknown click mode {mode!r}")
    if len(session.clicks) >= MAX_CLICKS:
        raise UserError(f"at most {MAX_CLICKS} clicks: clear them or correct with the brush")
    session.clicks = session.clicks + [(x, y, mode == "+")]
    _remember(session, "click", None)


MAX_CLICKS = 30


def ground_truth(ctx: AppContext, session: Session, q_img: np.ndarray):
    if not session.query_key:
        return None
    it = ctx.item(session.query_key)
    image = fit_side(it.image, QUERY_SIDE)[0]     # the query is kept at this size
    if it.mask is None or image.shape != q_img.shape or not np.array_equal(image, q_img):
        session.query_key = None  # the user changed the query since picking it
        return None
    return resize_mask(it.mask, image.shape[:2])


def rethreshold(session: Session, threshold: float) -> None:
    """A new threshold on the session's map (a hand-corrected mask keeps its pixels)."""
    threshold = bounded(threshold, 0.01, 0.99, "the threshold")
    if session.probability is not None and not session.corrected:
        session.mask = session.probability > threshold


def downloads(ctx: AppContext, session: Session, opacity: float) -> list[str]:
    """The last result as files (written now, on request): mask and overlay at the query's size, heatmaps."""
    if session.query_image is None or session.mask is None:
        raise UserError("segment a query first")
    ov = overlay(session.query_image, session.mask, opacity, truth=ground_truth(ctx, session, session.query_image))
    size = session.query_size or session.query_image.shape[:2]
    return export_files(ctx, session.query_image, resize_mask(session.mask, size), ov, session.tiles)


def heatmap_tiles(query: np.ndarray, heatmaps: dict, tile: int = 256) -> list[tuple[np.ndarray, str]]:
    """Each cosine map blended over the query, with a colour bar strip: [(rgb, caption), ...]."""
    h, w = query.shape[:2]
    scale = tile / max(h, w)
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    base = cv2.resize(query, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    bar = colorbar(size[0])
    out = []
    for name, values in heatmaps.items():
        col = colorize(cv2.resize(values, size, interpolation=cv2.INTER_LINEAR), -1, 1).astype(np.float32)
        img = (0.35 * base + 0.65 * col).round().astype(np.uint8)
        out.append((np.concatenate([img, bar], 0), f"cosine similarity: {name}"))
    return out


def colorbar(width: int, height: int = 26) -> np.ndarray:
    ramp = np.tile(np.linspace(-1, 1, width, dtype=np.float32), (12, 1))
    bar = np.full((height, width, 3), 255, np.uint8)
    bar[:12] = colorize(ramp, -1, 1)
    for x, text in ((2, "-1"), (width // 2 - 4, "0"), (width - 22, "+1")):
        cv2.putText(bar, text, (x, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def export_files(ctx: AppContext, image, mask, ov, heat) -> list[str]:
    """Mask PNG (query's size), overlay PNG, heatmaps PNG, written into a fresh folder in outputs/cache/
    (only when the user asks to download; they expire with the cache)."""
    d = ctx.new_export_dir()
    paths = [d / "mask.png", d / "overlay.png", d / "heatmaps.png"]
    Image.fromarray(mask.astype(np.uint8) * 255).save(paths[0])
    Image.fromarray(ov).save(paths[1])
    if heat:
        row_h = max(t[0].shape[0] for t in heat)
        tiles = [np.pad(t[0], ((0, row_h - t[0].shape[0]), (0, 4), (0, 0)), constant_values=255) for t in heat]
        cols = 2
        rows = [np.concatenate(tiles[i:i + cols] + [np.full_like(tiles[0], 255)] * (cols - len(tiles[i:i + cols])), 1)
                for i in range(0, len(tiles), cols)]
        Image.fromarray(np.concatenate(rows, 0)).save(paths[2])
    else:
        paths = paths[:2]
    return [str(p) for p in paths]


# ---------------------------------------------------------------------------------- classify
def classify(ctx: AppContext, session: Session) -> tuple[dict, str, np.ndarray]:
    """Class probabilities, a sentence, and the query with the mask the classifier was given (what it saw):
    the session's mask, as Segment drew it or as it was corrected on the canvas."""
    if session.query_image is None or session.mask is None:
        raise UserError("segment a query first")
    mask = session.mask
    try:
        pipe = ctx.pipeline()
        res = pipe.classify(session.query_image, mask)
    except CheckpointError as exc:
        raise UserError(f"classifier not available: {exc}") from exc
    except DataError as exc:
        raise UserError(str(exc)) from exc
    src = "your corrected mask" if session.corrected else "the predicted mask"
    cam = pipe.explain(session.query_image, res.label)
    if not res.lesion_present:
        text = (f"**No lesion** (p(lesion) {res.lesion_probability:.2f}, below the presence threshold "
                f"{pipe.presence_threshold():.2f}): class normal, the mask is emptied. Research tool: not a diagnosis.")
        return res.probabilities, text + _cam_note(cam), _cam_or_overlay(session.query_image, res.mask, cam)
    lesion = "" if res.lesion_probability is None else f"p(lesion) {res.lesion_probability:.2f}; "
    text = (f"**Predicted class: {res.label} ({res.confidence:.2f} confidence)**, {lesion}from the query and {src} "
            f"(shown beside: {mask.mean() * 100:.1f}% of the image"
            + ("; an empty mask" if not mask.any() else "") + "). Research tool: not a diagnosis.")
    return res.probabilities, text + _cam_note(cam), _cam_or_overlay(session.query_image, mask, cam)


def _cam_note(cam) -> str:
    return "" if cam is None else (" The picture shows where the classifier looked for its answer (Grad-CAM: "
                                   "bright = weighed most), with the mask's outline.")


def _cam_or_overlay(image: np.ndarray, mask: np.ndarray, cam) -> np.ndarray:
    """The image classifier's Grad-CAM blended on the query with the mask's outline; else the mask overlay."""
    if cam is None:
        return overlay(image, mask, 0.45)
    from core.visual import colorize

    heat = colorize(cam, 0.0, 1.0, "inferno")
    out = (0.55 * image.astype(np.float32) + 0.45 * heat.astype(np.float32)).astype(np.uint8)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (40, 220, 40), max(1, round(max(mask.shape) / 300)))
    return out
