"""The gallery: demo images and the first images of the data folder (held-out test images first, classes
interleaved), read lazily and only from inside the data folder."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.dataset import load_pair
from core.data.discover import Sample, discover
from core.data.io import DataError
from core.io import inside

log = logging.getLogger(__name__)
GALLERY_LIMIT = 48  # data-folder images shown in the gallery


@dataclass
class GalleryItem:
    key: str                 # "demo:3" or "data:benign/benign (1).png"
    caption: str
    image: np.ndarray | None = None   # loaded lazily for data items
    mask: np.ndarray | None = None
    sample: Sample | None = None
    in_training_split: bool = False


def index_data(gallery: dict[str, GalleryItem], root: Path) -> str:
    """Add the data folder's first images to `gallery`; returns the line the page shows about the folder."""
    from core.data.split import DEFAULT_SPLIT_FILE, load_split

    found = discover(root)
    train_names: set[str] = set()
    samples = found.samples
    try:
        doc = load_split(DEFAULT_SPLIT_FILE)
        if {s.rel_path for s in samples} & set(doc["test"]):
            train_names = set(doc["train"]) | set(doc["val"])
            # show held-out images first: Dice shown on them is honest
            samples = [s for s in samples if s.rel_path in set(doc["test"])] + \
                      [s for s in samples if s.rel_path not in set(doc["test"])]
    except DataError:
        pass
    # interleave classes so that the gallery shows benign, malignant and normal images
    by_label: dict[str, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label or "", []).append(s)
    order = [s for group in zip(*by_label.values()) for s in group] if len(by_label) > 1 else samples
    for s in order[:GALLERY_LIMIT]:
        key = f"data:{s.rel_path}"
        tag = " (training image)" if s.rel_path in train_names else ""
        gallery[key] = GalleryItem(key, f"{s.rel_path}{tag}", sample=s, in_training_split=s.rel_path in train_names)
    return (f"Data folder: {Path(found.root).name} ({len(found.samples)} images; gallery shows "
            f"{min(GALLERY_LIMIT, len(order))}, held-out test images first)")


def item(gallery: dict[str, GalleryItem], key: str, data_dir: Path | None) -> GalleryItem:
    if key not in gallery:
        raise DataError(f"unknown gallery item {key!r}")
    it = gallery[key]
    if it.image is None and it.sample is not None:
        if data_dir is None or not inside(it.sample.image_path, data_dir):
            raise DataError("refusing to read outside the data folder")
        it.image, it.mask = load_pair(it.sample)
    return it


def thumbnails(gallery: dict[str, GalleryItem], data_dir: Path | None) -> list[tuple[str, np.ndarray, str]]:
    """(key, thumbnail, caption) of every gallery item that can be read; unreadable ones are dropped."""
    import cv2

    from core.visual import overlay

    out = []
    for key, it in list(gallery.items()):
        try:
            full = item(gallery, key, data_dir)
        except DataError as exc:
            log.warning("gallery: skipped %s (%s)", key, exc)
            del gallery[key]
            continue
        img = overlay(full.image, full.mask, 0.3) if full.mask is not None and full.mask.any() else full.image
        scale = 160 / max(img.shape[:2])
        out.append((key, cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale))), it.caption))
    return out
