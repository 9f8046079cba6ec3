"""Find image/mask pairs in the folder layouts users have.

Supported layouts (the class comes from a folder name where there is one):
  (a) Kaggle BUSI:   <root>/<class>/X.png beside X_mask.png, X_mask_1.png, X_mask_2.png (union of all)
  (b) flat:          <root>/images/X.png with <root>/masks/X_mask.png or <root>/masks/X.png
  (c) class folders: <root>/images/<class>/X.png with <root>/masks/<class>/X_mask.png or X.png
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .io import IMAGE_SUFFIXES, DataError

_MASK_RE = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    """One image with all of its lesion mask files."""

    image_path: Path
    mask_paths: tuple[Path, ...]
    rel_path: str          # image path relative to the dataset root, POSIX style: the sample's id
    label: str | None      # class folder name (benign / malignant / normal / ...) or None


@dataclass
class Discovery:
    root: Path
    layout: str
    samples: list[Sample]
    unmatched_images: list[Path] = field(default_factory=list)
    orphan_masks: list[Path] = field(default_factory=list)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _mask_key(p: Path) -> str | None:
    m = _MASK_RE.match(p.stem)
    return m.group("stem") if m else None


def _pair_in_folder(folder: Path, root: Path, label: str | None) -> tuple[list[Sample], list[Path]]:
    """Layout (a): images and their _mask files side by side."""
    files = sorted(p for p in folder.iterdir() if _is_image(p))
    masks: dict[str, list[Path]] = {}
    images = []
    for p in files:
        key = _mask_key(p)
        if key is None:
            images.append(p)
        else:
            masks.setdefault(key, []).append(p)
    samples, unmatched = [], []
    for img in images:
        m = sorted(masks.pop(img.stem, []), key=lambda q: q.name)
        if not m:
            unmatched.append(img)
            continue
        samples.append(Sample(img, tuple(m), img.relative_to(root).as_posix(), label))
    return samples, unmatched


def _pair_images_masks(img_dir: Path, mask_dir: Path, root: Path, label: str | None):
    """Layouts (b)/(c): masks/X_mask*.png or masks/X.png for images/X.png."""
    mask_files = [p for p in mask_dir.iterdir() if _is_image(p)] if mask_dir.is_dir() else []
    by_stem: dict[str, list[Path]] = {}
    for p in mask_files:
        key = _mask_key(p) or p.stem
        by_stem.setdefault(key, []).append(p)
    samples, unmatched = [], []
    for img in sorted(p for p in img_dir.iterdir() if _is_image(p)):
        m = sorted(by_stem.pop(img.stem, []), key=lambda q: q.name)
        if not m:
            unmatched.append(img)
            continue
        samples.append(Sample(img, tuple(m), img.relative_to(root).as_posix(), label))
    orphans = sorted(p for ps in by_stem.values() for p in ps)
    return samples, unmatched, orphans


def discover(root: str | Path) -> Discovery:
    """Find every (image, masks) pair below `root`. Raises DataError with a clear message."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    img_dir, mask_dir = root / "images", root / "masks"
    if img_dir.is_dir():
        if not mask_dir.is_dir():
            raise DataError(f"{root}: has images/ but no masks/ folder")
        subdirs = sorted(d for d in img_dir.iterdir() if d.is_dir())
        if subdirs:
            layout, samples, unmatched, orphans = "images-masks-classes", [], [], []
            for d in subdirs:
                s, u, o = _pair_images_masks(d, mask_dir / d.name, root, d.name.lower())
                samples += s
                unmatched += u
                orphans += o
        else:
            layout = "images-masks-flat"
            samples, unmatched, orphans = _pair_images_masks(img_dir, mask_dir, root, None)
    else:
        layout, samples, unmatched, orphans = "class-folders", [], [], []
        folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not folders:
            folders, layout = [root], "single-folder"
        for d in folders:
            s, u = _pair_in_folder(d, root, d.name.lower() if d != root else None)
            samples += s
            unmatched += u
    if not samples:
        hint = f" ({len(unmatched)} images without a mask, e.g. {unmatched[0]})" if unmatched else ""
        raise DataError(
            f"{root}: no image/mask pairs found{hint}. Expected <class>/X.png with X_mask.png, "
            "or images/X.png with masks/X_mask.png (or masks/X.png)")
    return Discovery(root, layout, samples, unmatched, orphans)
