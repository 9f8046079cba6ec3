"""What comes from the page or a script, checked before it is used: numbers against their field's range,
uploaded image and mask files (size on disk, type, pixels, mode; DICOM's header before any pixel)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.data.io import DataError, check_header, read_image, read_mask, to_rgb_uint8
from core.io import MAX_UPLOAD_BYTES

from .session import UserError

if TYPE_CHECKING:
    from .context import AppContext


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


def hide_dirs(ctx: AppContext, exc) -> str:
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
