"""The query and its Segment: the session's query (uploaded, picked, kept downscaled), Segment from the session's
supports through core's one rule (PANet++, LiteMedSAM's redraw where trusted, presence where asked), the deferred
redraw, the report, the overlay and the ground truth's contour. Refinement is in webapp/refine.py, the inputs'
checks in webapp/inputs.py, downloads and the classifier's answer in webapp/exports.py."""
from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from core.checkpoint import CheckpointError
from core.data.io import DataError, resize_mask
from core.metrics import dice, iou
from core.visual import colorize, heatmap_tiles, overlay

from .context import AppContext
from .inputs import bounded, hide_dirs, read_upload
from .session import Session, UserError, clear_prompts
from .supports import downscaled as _downscaled, fit_side

MAX_EXTRA_PAIRS = 10      # corrected queries a session keeps for fine-tuning (oldest dropped first)
QUERY_SIDE = 1024         # a session keeps its query at most this large (the models work at 256 px)


def set_query(session: Session, image: np.ndarray | None, spacing_mm=None) -> None:
    """The session's query: kept downscaled to QUERY_SIDE (a 4000 px upload costs ~3 MB, not ~130 MB, for
    the session's lifetime); its own size (and pixel spacing, when the file has one) is remembered."""
    session.spacing_mm = tuple(spacing_mm) if spacing_mm else None
    # the last result was of the previous query: a new query starts without it
    session.probability = session.base_probability = session.mask = session.result_mask = None
    session.corrected, session.heatmaps, session.redraw_pending = False, {}, False
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
    ctx.prefetch_embedding(session.query_image, checkpoint=session.checkpoint)


def keep_pair(pairs: list, image: np.ndarray, mask: np.ndarray) -> list:
    """`pairs` plus (image, mask), downscaled to KEPT_PAIR_SIDE, at most MAX_EXTRA_PAIRS (oldest out):
    a session's memory stays bounded however often it adds a corrected query."""
    return (list(pairs) + [_downscaled(image, mask)])[-MAX_EXTRA_PAIRS:]


# ---------------------------------------------------------------------------------- inputs


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
    heatmaps: list  # the similarity maps' captions (the pictures are made when asked for: `session_tiles`)
    report: str
    seconds: float


def segment(ctx: AppContext, session: Session, checkpoint_name, threshold: float, owner: str = "", per_support_maps: bool = False, no_lesion: bool = False,
            defer_redraw: bool = False) -> SegmentOutput:
    """Segment the session's query from the session's registered supports (nothing re-decoded).
    no_lesion: breast lesions; the lesion probe's presence head may answer "no lesion" (an empty mask)."""
    t0 = time.perf_counter()
    threshold = bounded(threshold, 0.01, 0.99, "the threshold")
    supports = session_supports(session)
    q_img = session.query_image       # decoded at upload, or picked from the gallery
    if q_img is None:
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
        # ...and the supports' agreement (a line of the report) waits for the background too, not the page
        agree = not defer_redraw or model.agreement_ready(supports, owner)
        out = segment_from_supports(model, q_img, supports, sam=None if later else sam, presence=presence,
                                    threshold=threshold, side=max(session.query_size) if session.query_size else None,
                                    owner=owner, agreement=agree, per_support_maps=per_support_maps,
                                    heatmap_side=TILE)
        res = out.result
        adapted, agreement = res.adapted, res.agreement
    except CheckpointError as exc:
        raise UserError(f"checkpoint could not be loaded: {hide_dirs(ctx, exc)}") from exc
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
    if not res.lesion_present:
        lines = [f"**No lesion**: the breast-lesion presence check gives p(lesion) {res.lesion_score:.2f}, below "
                 "its threshold, so the mask is empty (turn the check off for targets other than breast lesions, "
                 "or click on the overlay to mark one)."]
    else:
        lines = [f"**{len(supports)} support(s)**{' (model adapted to them)' if adapted else ''}, lesion predicted on "
                 f"{session.mask.mean() * 100:.1f}% of the image{physical_size(session)} (threshold {threshold:.2f})."
                 + redrawn]
    lines += _agreement_lines(agreement, len(supports), adapted) + _truth_lines(ctx, session, truth)
    session.heatmaps = small_maps(res.heatmaps)   # pictures only when the maps panel or a download asks
    ctx.prefetch_embedding(q_img, checkpoint=False)   # boxes and clicks then wait only for the decoder
    captions = [f"cosine similarity: {name}" for name in res.heatmaps]
    return SegmentOutput(captions, "\n\n".join(lines), time.perf_counter() - t0)


def _agreement_lines(agreement, n_supports: int, adapted: bool) -> list[str]:
    """The report's lines on how the supports agree with each other (leave-one-out Dice)."""
    if not agreement:
        return (["*The supports' agreement with each other is being computed (shown with the next Segment).*"]
                if n_supports >= 2 else [])
    a = float(np.mean(agreement))
    lines = [f"Supports agree with each other: leave-one-out Dice **{a:.2f}** (each support segmented from the "
             "others)."]
    if a < 0.5 and not adapted:
        lines.append("Low agreement: the target may look unlike what the model was trained on, or the supports "
                     "mark different structures. Try **Adapt to these supports**.")
    return lines


def _truth_lines(ctx: AppContext, session: Session, truth) -> list[str]:
    """The report's lines against the ground truth of a gallery query (none for an uploaded one)."""
    if truth is None:
        return []
    if truth.any():
        lines = [f"Against the ground truth (green contour): **Dice {dice(session.mask, truth):.3f}, "
                 f"IoU {iou(session.mask, truth):.3f}**"]
    else:
        lines = ["Ground truth: no lesion (normal image). "
                 + ("The model predicts lesion pixels here (a false positive)." if session.mask.any()
                    else "The model correctly predicts no lesion.")]
    if ctx.gallery[session.query_key].in_training_split:
        lines.append("Note: this image was in the model's training split, so this score is optimistic.")
    return lines


TILE = 256   # the similarity maps are kept (and shown) at most this large


def small_maps(heatmaps: dict) -> dict:
    """The cosine maps at tile size in half precision (a session keeps a few hundred kB, not MB)."""
    out = {}
    for name, v in heatmaps.items():
        h, w = v.shape[:2]
        scale = TILE / max(h, w)
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        out[name] = cv2.resize(v.astype(np.float32), size, interpolation=cv2.INTER_AREA).astype(np.float16)
    return out


def session_tiles(session: Session) -> list:
    """The last Segment's similarity maps as pictures (blended on the query, with a colour bar)."""
    if session.query_image is None or not session.heatmaps:
        return []
    return heatmap_tiles(session.query_image, {k: v.astype(np.float32) for k, v in session.heatmaps.items()}, TILE)


def maps_view(session: Session) -> tuple:
    """(probability map, heatmap tiles, support thumbnails) of the last Segment: sent only when the page's
    maps panel is open, so that a Segment click sends the overlay and a status line only."""
    if session.probability is None:
        raise UserError("segment a query first")
    prob = colorize(display_size(np.asarray(session.probability, np.float32))[0], 0, 1, "viridis")
    thumbs = [(display_size(overlay(img, m, 0.4))[0], f"support {k + 1}")
              for k, (img, m) in enumerate(session_supports(session))]
    return prob, session_tiles(session), thumbs


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


def ground_truth(ctx: AppContext, session: Session, q_img: np.ndarray):
    if not session.query_key:
        return None
    it = ctx.item(session.query_key)
    image = fit_side(it.image, QUERY_SIDE)[0]     # the query is kept at this size
    if it.mask is None or image.shape != q_img.shape or not np.array_equal(image, q_img):
        session.query_key = None  # the user changed the query since picking it
        return None
    return resize_mask(it.mask, image.shape[:2])


# ---------------------------------------------------------------------------------- classify


