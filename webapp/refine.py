"""Refinement of the query's mask on the page: clicks, a box, brush corrections, undo, clear, a new threshold.
The prompts go to core's Delineator (LiteMedSAM, informed by PANet++'s map from the supports), or to PANet++'s
own refinement where LiteMedSAM is not available. Every function changes the session it is given (the
caller's copy: webapp/canvas.py)."""
from __future__ import annotations

import time

import numpy as np

from core.checkpoint import CheckpointError
from core.data.io import DataError, resize_mask

from .context import AppContext
from .handlers import display_size, ground_truth, render_overlay, session_supports
from .inputs import bounded, finite, hide_dirs
from .session import Session, UserError


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
    try:
        with ctx.foreground:     # the user waits for this mask: background steps (a new support's) pause
            mask, prob, by = _draw(ctx, session, threshold, owner)
    except (CheckpointError, DataError) as exc:
        raise UserError(hide_dirs(ctx, exc)) from exc
    session.probability, session.mask, session.corrected = prob.astype(np.float16), mask, False
    ms = (time.perf_counter() - t0) * 1000
    n_pos = sum(1 for c in session.clicks if c[2])
    return (f"{n_pos} positive and {len(session.clicks) - n_pos} negative click(s)"
            + (", box" if session.box else "") + f": lesion on {mask.mean() * 100:.1f}% of the image, drawn by "
            f"{by} (*{ms:.0f} ms*).")


def _draw(ctx: AppContext, session: Session, threshold: float, owner: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The mask for the session's clicks and box: (mask, probability, who drew it)."""
    supports = session_supports(session)
    delin = ctx.delineator(session.checkpoint, owner)
    model = ctx.fewshot(session.checkpoint, owner)
    if delin is not None and (session.clicks or session.box is not None):
        base = session.base_probability
        base = base.astype(np.float32) if base is not None else session.probability
        d = delin.delineate(session.query_image, base, box=session.box, clicks=session.clicks,
                            threshold=threshold, key=model.support_key(supports) + owner)
        return d.mask, d.mask.astype(np.float32), "LiteMedSAM" + (f" (predicted IoU {d.iou:.2f})" if d.iou is not None else "")
    res = model.predict(session.query_image, supports, threshold=threshold, heatmaps=False,
                        owner=owner, clicks=session.clicks, box=session.box)
    return res.mask, res.probability, "PANet++"


MAX_HISTORY = 30      # undo steps a session keeps (a painted mask is kept packed: 1 bit per pixel)


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


def rethreshold(session: Session, threshold: float) -> None:
    """A new threshold on the session's map (a hand-corrected mask keeps its pixels)."""
    threshold = bounded(threshold, 0.01, 0.99, "the threshold")
    if session.probability is not None and not session.corrected:
        session.mask = session.probability > threshold
