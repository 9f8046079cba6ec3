"""The support slots (issue 26): each slot holds an image and, once it is marked, its mask; both are kept
small (the model works at 256 px) and decoded once, when the slot changes, never again with each Segment.

A slot is filled from an upload, a gallery pick, a promoted project image or the corrected query. Its mask
comes from a mask file, from a box (LiteMedSAM draws the target in one gesture, clicks correct it) or from
the brush. A `Slot` is never changed in place: every action makes a new one and a new list of slots, so
that a session copied by a page's call shares nothing the call changes."""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from core.data.io import resize_mask

from .session import N_SLOTS, Slot, UserError

KEPT_PAIR_SIDE = 1024     # a support is stored at most this large (fine-tuning works at 256 px)
MIN_LESION_PIXELS = 4     # a support mark smaller than this is a slip of the brush, not a lesion
MAX_LESION_FRACTION = 0.98  # ...and one covering (nearly) the whole image marks no structure
MAX_SLOT_HISTORY = 20     # undo steps a slot keeps (each a packed mask: 1 bit per pixel)
MAX_SLOT_CLICKS = 30
NO_MASK = "no mask yet: drag a box around the target (LiteMedSAM draws it), paint it, or upload its mask"


def fit_side(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """The image downscaled so that its longer side is at most `side` (never upscaled), and the scale."""
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if image.dtype == np.uint8 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp), scale


def downscaled(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    small, _ = fit_side(image, KEPT_PAIR_SIDE)
    return small, resize_mask(mask, small.shape[:2])


def check_support_mask(mask: np.ndarray, slot: int) -> np.ndarray:
    """Refuse a support mask that marks nothing usable, with a message naming the slot."""
    n = int(mask.sum())
    if n == 0:
        raise UserError(f"support {slot}: the mask is empty: drag a box around the target, paint it or upload "
                        "its mask")
    if n < MIN_LESION_PIXELS:
        raise UserError(f"support {slot}: the mask marks only {n} pixel(s): mark the whole target")
    if n >= MAX_LESION_FRACTION * mask.size:
        raise UserError(f"support {slot}: the mask covers the whole image: mark only the target")
    return mask


def index(slot) -> int:
    """A slot number from the page or a script (1-5) as a list index."""
    try:
        v = float(slot)
    except (TypeError, ValueError):
        raise UserError(f"the support slot must be a number from 1 to {N_SLOTS}") from None
    if not (v.is_integer() and 1 <= v <= N_SLOTS):
        raise UserError(f"the support slot must be a number from 1 to {N_SLOTS} (got {slot})")
    return int(v) - 1


def empty_slots() -> list:
    return [Slot()] * N_SLOTS


def put(slots: list, slot: int, new: Slot) -> list:
    """A new list of slots with slot `slot` (1-5) replaced (the old list is left as it was)."""
    i = index(slot)
    return [new if k == i else s for k, s in enumerate(slots)]


def with_image(image: np.ndarray, mask: np.ndarray | None = None, slot: int = 1) -> Slot:
    """A slot holding `image` (and `mask`, checked, when given): ready with a mask, waiting without one."""
    small, _ = fit_side(image, KEPT_PAIR_SIDE)
    s = Slot(image=small, size=tuple(image.shape[:2]), note=NO_MASK)
    return s if mask is None or not mask.any() else with_mask(s, mask, slot, remember=False)


def with_mask(s: Slot, mask: np.ndarray, slot: int, remember: bool = True, **prompts) -> Slot:
    """The slot with `mask` (any size: mapped onto the kept image), checked; the mask before goes to undo."""
    if s.image is None:
        raise UserError(f"support {slot}: put an image in the slot first")
    m = resize_mask(mask, s.image.shape[:2]) if mask.shape != s.image.shape[:2] else mask.astype(bool)
    check_support_mask(m, slot)
    history = s.history
    if remember:
        history = (history + (_packed(s.mask),))[-MAX_SLOT_HISTORY:]
    return replace(s, pair=(s.image, m), note="", history=history, **prompts)


def _packed(mask: np.ndarray | None):
    return None if mask is None else (np.packbits(mask), mask.shape)


def _unpacked(packed) -> np.ndarray | None:
    if packed is None:
        return None
    bits, shape = packed
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


def undo(s: Slot) -> tuple[Slot, bool]:
    """The slot before its last change (its mask and the prompts that drew it); False when nothing to undo."""
    if not s.history:
        return s, False
    prev = _unpacked(s.history[-1])
    clicks = s.clicks[:-1] if s.clicks else ()
    box = s.box if s.clicks else None
    if prev is None:
        return replace(s, pair=None, note=NO_MASK, history=s.history[:-1], clicks=(), box=None), True
    return replace(s, pair=(s.image, prev), note="", history=s.history[:-1], clicks=clicks, box=box), True


def add_prompt(s: Slot, slot: int, click=None, box=None) -> Slot:
    """The slot with one more click (x, y, positive) or a new box, in the kept image's pixels (clamped)."""
    if s.image is None:
        raise UserError(f"support {slot}: put an image in the slot first")
    h, w = s.image.shape[:2]
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = sorted((min(w - 1.0, max(0.0, x0)), min(w - 1.0, max(0.0, x1))))
        y0, y1 = sorted((min(h - 1.0, max(0.0, y0)), min(h - 1.0, max(0.0, y1))))
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise UserError("the box is too small: drag from one corner of the target to the opposite one")
        return replace(s, box=(x0, y0, x1, y1), clicks=())
    if len(s.clicks) >= MAX_SLOT_CLICKS:
        raise UserError(f"at most {MAX_SLOT_CLICKS} clicks: correct with the brush")
    x, y, positive = click
    return replace(s, clicks=s.clicks + ((min(w - 1.0, max(0.0, float(x))), min(h - 1.0, max(0.0, float(y))),
                                         bool(positive)),))


def status(slots: list) -> str:
    """One line: which slots are ready (size, share marked) and why the others are not."""
    parts = []
    for k, s in enumerate(slots, 1):
        if s.pair is not None:
            img, m = s.pair
            parts.append(f"{k}: ready ({img.shape[1]}x{img.shape[0]}, target {m.mean() * 100:.1f}%)")
        elif s.note:
            parts.append(f"{k}: {s.note}")
    return "**Supports** - " + ("; ".join(parts) if parts else "none yet")


def ready_pairs(slots: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (image, mask) pairs of the ready slots; a UserError naming what is missing when there is none."""
    pairs = [s.pair for s in slots if s.pair is not None]
    if not pairs:
        pending = [f"support {k}: {s.note}" for k, s in enumerate(slots, 1) if s.note]
        raise UserError("no support: put an image with its target's mask in at least one support slot"
                        + (f" ({'; '.join(pending)})" if pending else ""))
    return pairs


def next_free(slots: list, after: int) -> int:
    """The slot a gallery pick should fill next: the first empty one after `after` (wrapping), else `after`."""
    for k in list(range(after, N_SLOTS)) + list(range(0, after)):
        if slots[k].image is None:
            return k + 1
    return after


def first_free(slots: list) -> int:
    """The first empty slot (1-5); a UserError when all five are in use."""
    for k, s in enumerate(slots, 1):
        if s.image is None:
            return k
    raise UserError(f"all {N_SLOTS} support slots are in use: clear one first")
