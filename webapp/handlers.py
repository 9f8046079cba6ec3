"""Page handlers: plain functions over core, raising UserError with a message for the page."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.checkpoint import CheckpointError
from core.data.io import (DataError, check_header, mask_from_array, read_image, read_mask, resize_mask,
                          to_rgb_uint8)
from core.io import MAX_UPLOAD_BYTES
from core.metrics import dice, iou
from core.visual import colorize, overlay

from .context import AppContext

N_SLOTS = 5
MAX_EXTRA_PAIRS = 10      # corrected queries a session keeps for fine-tuning (oldest dropped first)
KEPT_PAIR_SIDE = 1024     # ...stored at most this large (fine-tuning works at 256 px)
QUERY_SIDE = 1024         # a session keeps its query at most this large (the models work at 256 px)


class UserError(ValueError):
    """A mistake the user can fix; the message is shown in the page."""


@dataclass
class Session:
    """Per-browser-session state (kept in gr.State: never shared between users)."""

    query_key: str | None = None          # gallery key when the query came from the gallery
    query_image: np.ndarray | None = None # kept at most QUERY_SIDE px (memory stays bounded per session)
    query_size: tuple | None = None       # the query's own (height, width): downloads are at this size
    spacing_mm: tuple | None = None       # (row, column) mm per pixel of the query at its own size (DICOM)
    probability: np.ndarray | None = None
    base_probability: np.ndarray | None = None   # PANet++'s map before any click (float16; clicks start from it)
    mask: np.ndarray | None = None        # predicted (or corrected) mask at the query's size
    corrected: bool = False
    extra_pairs: list = field(default_factory=list)  # corrected queries kept for fine-tuning
    notes: list = field(default_factory=list)
    # supports, decoded once when a slot changes (never re-sent with each Segment): (image, mask) or None
    supports: list = field(default_factory=lambda: [None] * N_SLOTS)
    slot_notes: list = field(default_factory=lambda: [""] * N_SLOTS)
    query_file: str | None = None         # the uploaded query file already decoded into query_image
    clicks: list = field(default_factory=list)   # (x, y, positive) in query pixels, since the last Segment
    box: tuple | None = None
    box_corner: tuple | None = None       # first corner of a box being drawn
    tiles: list = field(default_factory=list)    # heatmap tiles of the last Segment (for the download)
    checkpoint: str | None = None         # the checkpoint of the last Segment (clicks refine with it)
    project: str | None = None            # the annotation project this session works on
    review_path: str | None = None        # the image under review
    review_token: str = ""                # its "image_id:version" as shown (a decision must name it)
    last_decided: str | None = None       # the image decided last (Promote applies to it once the view moved on)
    last_decided_version: int = 0         # the version this page's decision made (undo only while it is current)
    corrector_loaded: bool = False        # the correction editor holds a correction of the current prediction
    thumbs_for: list | None = None        # the supports whose thumbnails the page shows (not sent again)
    history: list = field(default_factory=list)  # ("click" | "box" | "paint", what undo restores), newest last
    redraw_pending: bool = False          # Segment answered with PANet++'s mask; LiteMedSAM's redraw follows
    result_mask: np.ndarray | None = None # what Segment showed (after the redraw): Undo and Clear come back to it


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


def fit_side(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """The image downscaled so that its longer side is at most `side` (never upscaled), and the scale."""
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if image.dtype == np.uint8 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp), scale


def _downscaled(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    small, _ = fit_side(image, KEPT_PAIR_SIDE)
    return small, resize_mask(mask, small.shape[:2])


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


def layer_mask(value: dict, target_hw: tuple[int, int]) -> np.ndarray:
    """The union of the editor's painted layers (alpha > 0) as a mask of size target_hw.

    Layers come back in three shapes: the background's size (drawn in the page); the canvas size
    with the background at its top-left (a layer the app set: see `editor_value`); or scaled
    (Gradio issue #10298). Crop the second, resize (nearest) the third, then map to target_hw.
    """
    bg = np.asarray(value["background"])
    h, w = bg.shape[:2]
    mask = np.zeros((h, w), bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        m = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else mask_from_array(layer)
        if m.shape != (h, w) and m.shape[0] >= h and m.shape[1] >= w:
            m = m[:h, :w]
        mask |= resize_mask(m, (h, w))
    return resize_mask(mask, target_hw)


def editor_pair(value, mask_file, slot: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, mask) of a support slot, or None when the slot is empty.

    The painted layer is the mask; an uploaded mask PNG wins over the drawing.
    """
    bg = value.get("background") if isinstance(value, dict) else None
    if bg is None:
        if mask_file:
            raise UserError(f"support {slot}: a mask was uploaded but there is no image")
        return None
    image = _array(bg, f"support {slot} image")
    if mask_file:
        mask = read_mask_upload(mask_file, image.shape[:2], f"support {slot} mask")
    else:
        mask = layer_mask(value, image.shape[:2])
    return image, check_support_mask(mask, slot)


MIN_LESION_PIXELS = 4      # a support mark smaller than this is a slip of the brush, not a lesion
MAX_LESION_FRACTION = 0.98  # ...and one covering (nearly) the whole image marks no structure


def check_support_mask(mask: np.ndarray, slot: int) -> np.ndarray:
    """Refuse a support mask that marks nothing usable, with a message naming the slot."""
    n = int(mask.sum())
    if n == 0:
        raise UserError(f"support {slot}: the mask is empty: paint the lesion with the brush or upload a mask PNG")
    if n < MIN_LESION_PIXELS:
        raise UserError(f"support {slot}: the mask marks only {n} pixel(s): paint the whole lesion")
    if n >= MAX_LESION_FRACTION * mask.size:
        raise UserError(f"support {slot}: the mask covers the whole image: mark only the lesion")
    return mask


def collect_supports(editors, mask_files) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for i, (v, f) in enumerate(zip(editors, mask_files), 1):
        pair = editor_pair(v, f, i)
        if pair is not None:
            pairs.append(pair)
    if not pairs:
        raise UserError("no support: put an image with its lesion mask in at least one support slot")
    return pairs


EDITOR_CANVAS = 800  # gr.ImageEditor's default canvas_size


def editor_value(image: np.ndarray, mask: np.ndarray | None) -> dict:
    """ImageEditor value with `mask` as a semi-transparent red layer.

    Gradio 6 places a layer set from Python centred on its (800 x 800) canvas while the background
    sits at the top-left, so the layer is given at canvas size with the mask at its top-left; images
    larger than the canvas are shown downscaled (their masks are mapped back by `layer_mask`).
    """
    h, w = image.shape[:2]
    if max(h, w) > EDITOR_CANVAS:
        scale = EDITOR_CANVAS / max(h, w)
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        mask = resize_mask(mask, (size[1], size[0])) if mask is not None else None
        h, w = image.shape[:2]
    layer = np.zeros((EDITOR_CANVAS, EDITOR_CANVAS, 4), np.uint8)
    if mask is not None:
        layer[:h, :w][mask] = (255, 0, 0, 128)
    return {"background": image, "layers": [layer], "composite": None}


# ---------------------------------------------------------------------------------- supports


def register_slot(session: Session, slot: int, value, mask_file) -> None:
    """Decode one support slot into the session (on the slot's change, not on every Segment).

    A slot with an image but no painted mask yet is kept as "no mask yet" (the user is still drawing);
    an editor value that arrives without its image (an upload the server no longer holds) changes nothing.
    Raises UserError for what the user must fix (unreadable image, mask of the wrong size).
    """
    i = slot - 1
    bg = value.get("background") if isinstance(value, dict) else None
    if bg is None and not mask_file:
        return
    supports, notes = list(session.supports), list(session.slot_notes)
    try:
        pair = editor_pair(value, mask_file, slot)
        notes[i] = "" if pair else "empty"
    except UserError as exc:
        pair = None
        if "the mask is empty" in str(exc) and not mask_file:   # still painting: not an error yet
            notes[i] = "no mask yet: paint the lesion or upload a mask PNG"
        else:
            notes[i] = str(exc)
            session.supports, session.slot_notes = supports[:i] + [None] + supports[i + 1:], notes
            raise
    supports[i] = _downscaled(*pair) if pair is not None else None   # kept small: the model works at 256 px
    session.supports, session.slot_notes = supports, notes
    clear_prompts(session)


def next_free_slot(session: Session, after: int) -> int:
    """The slot a gallery pick should fill next: the first empty one after `after` (wrapping), or `after`
    itself when all are in use."""
    for k in list(range(after, N_SLOTS)) + list(range(0, after)):
        if session.supports[k] is None and not session.slot_notes[k]:
            return k + 1
    return after


def clear_slot(session: Session, slot: int) -> None:
    session.supports = [None if k == slot - 1 else p for k, p in enumerate(session.supports)]
    session.slot_notes = ["" if k == slot - 1 else n for k, n in enumerate(session.slot_notes)]


def set_slot_pair(session: Session, slot: int, image: np.ndarray, mask: np.ndarray | None) -> None:
    """A slot filled by the app (gallery pick, corrected query): already decoded."""
    i = slot - 1
    ok = mask is not None and mask.any()
    if ok:
        image, mask = _downscaled(image, mask)
    session.supports = [(image, mask) if (k == i and ok) else (None if k == i else p)
                        for k, p in enumerate(session.supports)]
    session.slot_notes = [("" if ok else "no mask yet: paint the lesion or upload a mask PNG") if k == i else n
                          for k, n in enumerate(session.slot_notes)]


def session_supports(session: Session) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = [p for p in session.supports if p is not None]
    if not pairs:
        pending = [f"support {k + 1}: {n}" for k, n in enumerate(session.slot_notes) if n and n != "empty"]
        raise UserError("no support: put an image with its lesion mask in at least one support slot"
                        + (f" ({'; '.join(pending)})" if pending else ""))
    return pairs


def supports_status(session: Session) -> str:
    parts = []
    for k, (p, n) in enumerate(zip(session.supports, session.slot_notes), 1):
        if p is not None:
            parts.append(f"{k}: ready ({p[0].shape[1]}x{p[0].shape[0]}, lesion {p[1].mean() * 100:.1f}%)")
        elif n and n != "empty":
            parts.append(f"{k}: {n}")
    return "**Supports** - " + ("; ".join(parts) if parts else "none yet")


# ---------------------------------------------------------------------------------- segment
class RepeatGuard:
    """A request that repeats the same session's previous one within `window` seconds (a double click,
    an API client sending twice) is not computed again: it gets the first one's answer, waiting for it
    if the first is still running. The browser's own "once" mode lets both clicks of a fast double
    click through, so the server checks too."""

    @dataclass
    class _Entry:
        key: object
        at: float
        done: threading.Event = field(default_factory=threading.Event)
        result: object = None

    def __init__(self, window: float = 1.0, max_sessions: int = 1000, wait: float = 60.0):
        self.window, self.max_sessions, self.wait = window, max_sessions, wait
        self._last: dict[str, RepeatGuard._Entry] = {}
        self._lock = threading.Lock()

    def repeat_of(self, who: str, key):
        """The answer of the request this one repeats, or None when it must be computed (then call
        `remember` with its answer, or `remember(who, key, None)` if it failed)."""
        now = time.monotonic()
        with self._lock:
            prev = self._last.get(who)
            if prev is not None and prev.key == key and now - prev.at < self.window:
                entry = prev
            else:
                self._last.pop(who, None)
                self._last[who] = RepeatGuard._Entry(key, now)
                while len(self._last) > self.max_sessions:
                    self._last.pop(next(iter(self._last)))
                return None
        entry.done.wait(self.wait)
        return entry.result

    def remember(self, who: str, key, result) -> None:
        with self._lock:
            entry = self._last.get(who)
        if entry is not None and entry.key == key:
            entry.result = result
            entry.done.set()


SEGMENT_GUARD = RepeatGuard()
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


def corrected_mask(session: Session, corrector) -> np.ndarray:
    """The mask of the correction editor (its layer), or the prediction when nothing was edited."""
    if session.query_image is None:
        raise UserError("segment a query first")
    if isinstance(corrector, dict) and corrector.get("layers") and corrector.get("background") is not None:
        return layer_mask(corrector, session.query_image.shape[:2])
    return session.mask


# ---------------------------------------------------------------------------------- classify
def classify(ctx: AppContext, session: Session, corrector) -> tuple[dict, str, np.ndarray]:
    """Class probabilities, a sentence, and the query with the mask the classifier was given (what it saw)."""
    mask = corrected_mask(session, corrector)
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
