"""What the store and the team share: statuses, the stale-decision refusal, masks as PNG bytes, the overlap
sample's membership."""
from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from ..data.io import DataError

STATUSES = ("unlabelled", "predicted", "accepted", "corrected", "no lesion", "skipped", "unreadable")
DONE = ("accepted", "corrected", "no lesion")       # a person decided: propagation leaves these alone
QUEUE = ("predicted", "skipped", "unlabelled")       # awaiting a person's decision


class StaleDecision(DataError):
    """A decision for an image that is not the one named, that changed since the person saw it, or that
    another annotator now holds."""


def png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def from_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))) > 0


def in_overlap(rel_path: str, share: float) -> bool:
    """Whether an image belongs to the overlap sample (labelled by two annotators): a fixed hash of its name,
    so every process and every re-run agrees."""
    if share <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big") / 2 ** 64
    return h < share
