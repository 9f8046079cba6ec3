"""What the page hands out: the downloads (mask at the query's size, overlay, heatmaps with a colour bar) and
the classifier's answer with where it looked (Grad-CAM)."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from core.checkpoint import CheckpointError
from core.data.io import DataError, resize_mask
from core.visual import colorize, overlay

from .context import AppContext
from .handlers import ground_truth, session_tiles
from .inputs import bounded
from .session import Session, UserError


def downloads(ctx: AppContext, session: Session, opacity: float) -> list[str]:
    """The last result as files (written now, on request): mask and overlay at the query's size, heatmaps."""
    if session.query_image is None or session.mask is None:
        raise UserError("segment a query first")
    ov = overlay(session.query_image, session.mask, opacity, truth=ground_truth(ctx, session, session.query_image))
    size = session.query_size or session.query_image.shape[:2]
    return export_files(ctx, session.query_image, resize_mask(session.mask, size), ov, session_tiles(session))


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


def classify(ctx: AppContext, session: Session, site_odds=None) -> tuple[dict, str, np.ndarray]:
    """Class probabilities, a sentence, and the query with the mask the classifier was given (what it saw):
    the session's mask, as Segment drew it or as it was corrected on the canvas. `site_odds`: the user's site's
    malignant:benign odds among its lesions (empty: the mix the classifier was calibrated at)."""
    if session.query_image is None or session.mask is None:
        raise UserError("segment a query first")
    mask = session.mask
    odds = None if site_odds in (None, "") else bounded(site_odds, 0.01, 100.0, "Site's malignant:benign odds")
    try:
        pipe = ctx.pipeline()
        res = pipe.classify(session.query_image, mask, malignant_odds=odds)
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
    reader = " (the kind from the whole image and the lesion's crop)" if getattr(pipe, "kind_head", None) else ""
    text = (f"**Predicted class: {res.label} ({res.confidence:.2f} confidence)**{reader}, {lesion}from the query and {src} "
            f"(shown beside: {mask.mean() * 100:.1f}% of the image"
            + ("; an empty mask" if not mask.any() else "") + ")"
            + (f"; p(malignant) at your site's prior (odds {odds:g})" if odds is not None else "")
            + ". Research tool: not a diagnosis.")
    return res.probabilities, text + _cam_note(cam), _cam_or_overlay(session.query_image, mask, cam)


def _cam_note(cam) -> str:
    return "" if cam is None else (" The picture shows where the classifier looked for its answer (Grad-CAM: "
                                   "bright = weighed most), with the mask's outline.")


def _cam_or_overlay(image: np.ndarray, mask: np.ndarray, cam) -> np.ndarray:
    """The image classifier's Grad-CAM blended on the query with the mask's outline; else the mask overlay."""
    if cam is None:
        return overlay(image, mask, 0.45)

    heat = colorize(cam, 0.0, 1.0, "inferno")
    out = (0.55 * image.astype(np.float32) + 0.45 * heat.astype(np.float32)).astype(np.uint8)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (40, 220, 40), max(1, round(max(mask.shape) / 300)))
    return out
