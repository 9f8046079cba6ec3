"""A page's state (kept in its gr.State: never shared between users), in three parts: the support slots,
the query and its result, and the review queue's position. A call copies the session, changes the copy and
stores it back (webapp/canvas.py: PageLink), so nothing here is changed in place."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_SLOTS = 5


class UserError(ValueError):
    """A mistake the user can fix; the message is shown in the page."""


@dataclass(frozen=True)
class Slot:
    """One support slot (webapp/supports.py makes and changes them)."""

    image: np.ndarray | None = None   # the slot's image, at most supports.KEPT_PAIR_SIDE px
    size: tuple | None = None         # the image's own (height, width): an uploaded mask must match it
    pair: tuple | None = None         # (image, mask) once the slot is ready (the one object Segment reads)
    note: str = ""                    # why the slot is not ready ("" when empty or ready)
    clicks: tuple = ()                # LiteMedSAM's clicks on this image, in its pixels: (x, y, positive)
    box: tuple | None = None          # ...and its box
    history: tuple = ()               # masks before each change (packed), newest last: what undo restores

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.pair is None else self.pair[1]


@dataclass
class Session:
    """Per-page state. Supports: `slots`. Query: from `query_key` to `result_mask`. Review: `project` on."""

    # ---- supports, decoded once when a slot changes (never re-sent with each Segment)
    slots: list = field(default_factory=lambda: [Slot()] * N_SLOTS)
    slot: int = 1                         # the slot the support canvas shows
    # ---- the query and its result
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
    query_file: str | None = None         # the uploaded query file already decoded into query_image
    clicks: list = field(default_factory=list)   # (x, y, positive) in query pixels, since the last Segment
    box: tuple | None = None
    box_corner: tuple | None = None       # first corner of a box being drawn
    heatmaps: dict = field(default_factory=dict) # the last Segment's similarity maps (small, float16)
    checkpoint: str | None = None         # the checkpoint of the last Segment (clicks refine with it)
    thumbs_for: list | None = None        # the supports whose thumbnails the page shows (not sent again)
    history: list = field(default_factory=list)  # ("click" | "box" | "paint", what undo restores), newest last
    redraw_pending: bool = False          # Segment answered with PANet++'s mask; LiteMedSAM's redraw follows
    result_mask: np.ndarray | None = None # what Segment showed (after the redraw): Undo and Clear come back to it
    # ---- the review queue
    project: str | None = None            # the annotation project this session works on
    review_path: str | None = None        # the image under review
    review_token: str = ""                # its "image_id:version" as shown (a decision must name it)
    last_decided: str | None = None       # the image decided last (Promote applies to it once the view moved on)
    last_decided_version: int = 0         # the version this page's decision made (undo only while it is current)

    @property
    def supports(self) -> list:
        """(image, mask) or None per slot: the same objects as long as a slot is unchanged."""
        return [s.pair for s in self.slots]

    @property
    def slot_notes(self) -> list:
        return [s.note for s in self.slots]


def clear_prompts(session: Session) -> None:
    """No clicks, no box (nor half of one), nothing to undo: a new query, new supports, a new Segment, Clear."""
    session.clicks, session.box, session.box_corner, session.history = [], None, None, []
