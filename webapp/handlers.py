"""Page handlers: plain functions over core, raising UserError with a message for the page."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.checkpoint import CheckpointError
from core.data.io import DataError, mask_from_array, read_image, read_mask, resize_mask, to_rgb_uint8
from core.metrics import dice, iou
from core.visual import colorize, overlay

from .context import AppContext

N_SLOTS = 5
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_EXTRA_PAIRS = 10      # corrected queries a session keeps for fine-tuning (oldest dropped first)
KEPT_PAIR_SIDE = 1024     # ...stored at most this large (fine-tuning works at 256 px)


class UserError(ValueError):
    """A mistake the user can fix; the message is shown in the page."""


@dataclass
class Session:
    """Per-browser-session state (kept in gr.State: never shared between users)."""

    query_key: str | None = None          # gallery key when the query came from the gallery
    query_image: np.ndarray | None = None
    probability: np.ndarray | None = None
    mask: np.ndarray | None = None        # predicted (or corrected) mask at the query's size
    corrected: bool = False
    extra_pairs: list = field(default_factory=list)  # corrected queries kept for fine-tuning
    notes: list = field(default_factory=list)


def keep_pair(pairs: list, image: np.ndarray, mask: np.ndarray) -> list:
    """`pairs` plus (image, mask), downscaled to KEPT_PAIR_SIDE, at most MAX_EXTRA_PAIRS (oldest out):
    a session's memory stays bounded however often it adds a corrected query."""
    h, w = image.shape[:2]
    if max(h, w) > KEPT_PAIR_SIDE:
        scale = KEPT_PAIR_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        mask = resize_mask(mask, (size[1], size[0]))
    return (list(pairs) + [(image, mask)])[-MAX_EXTRA_PAIRS:]


# ---------------------------------------------------------------------------------- inputs
def read_upload(path, what: str, notes: list | None = None) -> np.ndarray:
    """Validate and read an uploaded image file: size on disk, decodability, dimensions, mode.

    Odd modes (16-bit, RGBA, palette, CMYK) are converted deterministically; `notes` gets a line
    saying so, for the page to show.
    """
    if path is None:
        raise UserError(f"{what}: no image")
    if isinstance(path, np.ndarray):
        return _array(path, what)
    p = Path(path)
    if p.stat().st_size > MAX_UPLOAD_BYTES:
        raise UserError(f"{what}: file larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        image = read_image(p)  # validates: decodable, not truncated, within the size limit
        with Image.open(p) as im:
            mode = im.mode
    except DataError as exc:
        raise UserError(f"{what}: {_short(exc, p)}") from exc
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
        return image, read_mask_upload(mask_file, image.shape[:2], f"support {slot} mask")
    mask = layer_mask(value, image.shape[:2])
    if not mask.any():
        raise UserError(f"support {slot}: the mask is empty: paint the lesion with the brush or upload a mask PNG")
    return image, mask


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


# ---------------------------------------------------------------------------------- segment
@dataclass
class SegmentOutput:
    overlay: np.ndarray
    probability: np.ndarray
    heatmaps: list
    report: str
    files: list
    seconds: float
    notes: list
    supports: list  # the (image, mask) pairs used, for the thumbnails


def segment(ctx: AppContext, session: Session, checkpoint_name, editors, mask_files, query, threshold: float,
            opacity: float, owner: str = "") -> SegmentOutput:
    t0 = time.perf_counter()
    supports = collect_supports(editors, mask_files)
    notes: list[str] = []
    if query is not None:          # an uploaded file (the page, or an API call)
        q_img = read_upload(query, "query image", notes)
        session.query_key = None
    elif session.query_image is not None:  # picked from the gallery
        q_img = session.query_image
    else:
        raise UserError("no query image: upload one or pick one from the gallery")
    try:
        model = ctx.fewshot(checkpoint_name, owner)
        res = model.predict(q_img, supports, threshold=threshold, owner=owner, agreement=True)
        adapted, agreement = res.adapted, res.agreement
    except CheckpointError as exc:
        raise UserError(f"checkpoint could not be loaded: {_hide_dirs(ctx, exc)}") from exc
    except DataError as exc:
        raise UserError(str(exc)) from exc
    session.query_image, session.probability, session.mask, session.corrected = q_img, res.probability, res.mask, False
    truth = _truth(ctx, session, q_img)
    ov = overlay(q_img, res.mask, opacity, truth=truth)
    lines = [f"**{len(supports)} support(s)**{' (model adapted to them)' if adapted else ''}, lesion predicted on "
             f"{res.mask.mean() * 100:.1f}% of the image (threshold {threshold:.2f})."]
    if agreement:
        a = float(np.mean(agreement))
        lines.append(f"Supports agree with each other: leave-one-out Dice **{a:.2f}** (each support segmented "
                     "from the others).")
        if a < 0.5 and not adapted:
            lines.append("Low agreement: the target may look unlike what the model was trained on, or the supports "
                         "mark different structures. Try **Adapt to these supports**.")
    if truth is not None:
        if truth.any():
            lines.append(f"Against the ground truth (green contour): **Dice {dice(res.mask, truth):.3f}, "
                         f"IoU {iou(res.mask, truth):.3f}**")
        else:
            lines.append("Ground truth: no lesion (normal image). "
                         + ("The model predicts lesion pixels here (a false positive)." if res.mask.any()
                            else "The model correctly predicts no lesion."))
        if ctx.gallery[session.query_key].in_training_split:
            lines.append("Note: this image was in the model's training split, so this score is optimistic.")
    heat = heatmap_tiles(q_img, res.heatmaps)
    prob_rgb = colorize(res.probability, 0, 1, "viridis")
    files = export_files(ctx, q_img, res.mask, ov, heat)
    return SegmentOutput(ov, prob_rgb, heat, "\n\n".join(lines), files, time.perf_counter() - t0, notes, supports)


def _truth(ctx: AppContext, session: Session, q_img: np.ndarray):
    if not session.query_key:
        return None
    it = ctx.item(session.query_key)
    if it.mask is None or it.image.shape != q_img.shape or not np.array_equal(it.image, q_img):
        session.query_key = None  # the user changed the query since picking it
        return None
    return it.mask


def rerender(session: Session, threshold: float, opacity: float, ctx: AppContext):
    """New threshold/opacity without running the model again."""
    if session.probability is None:
        return None
    if not session.corrected:
        session.mask = session.probability > threshold
    truth = _truth(ctx, session, session.query_image)
    return overlay(session.query_image, session.mask, opacity, truth=truth)


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
    """Mask PNG (query's size), overlay PNG, heatmaps PNG, written into a fresh folder under outputs/."""
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
    text = (f"**Predicted class: {res.label} ({res.confidence:.2f} confidence)**, from the query and {src} "
            f"(shown beside: {mask.mean() * 100:.1f}% of the image"
            + ("; an empty mask" if not mask.any() else "") + "). Research tool: not a diagnosis.")
    return res.probabilities, text, overlay(session.query_image, mask, 0.45)
