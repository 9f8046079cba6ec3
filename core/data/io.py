"""Robust reading of ultrasound images and lesion masks.

Every reader returns the same array for the same pixels, whatever the file's mode:
images come back as uint8 RGB (H, W, 3), masks as bool (H, W).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
from .errors import MAX_SIDE, DataError  # noqa: F401  (re-exported: the readers' public names)


def check_header(source, name: str = "image") -> tuple[int, int]:
    """(width, height) of an image file or bytes, read from its header only: no pixel is decoded.
    Refuses what is not an image and anything larger than MAX_SIDE, so that a small compressed
    file cannot make the caller decode gigabytes."""
    import io as _io

    from . import dicom

    if dicom.is_dicom(source):      # DICOM: its own header checks (size, frames, bit depth, decoder)
        info = dicom.read_header(source, name)[1]
        return info.columns, info.rows
    src = _io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():   # PIL warns about a large header: it is refused below anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                size = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{name}: not a readable image (PNG, JPEG, BMP, TIFF or DICOM)") from exc
    if max(size) > MAX_SIDE:
        raise DataError(f"{name}: image too large ({size[0]}x{size[1]} px, limit {MAX_SIDE})")
    return size


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        img = Image.open(path)
        if max(img.size) > MAX_SIDE:  # checked on the header, before decoding any pixel
            raise DataError(f"{path}: image too large ({img.size[0]}x{img.size[1]} px, limit {MAX_SIDE})")
        img.load()  # force decoding now so truncated files fail here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    return img


def to_rgb_uint8(img: Image.Image | np.ndarray, name: str = "image") -> np.ndarray:
    """Convert any PIL image or array (L, RGB, RGBA, P, I;16, I, F, bool) to uint8 RGB.

    16-bit and float data are rescaled by their bit depth (not by their min/max), so that the
    same pixel values always give the same tensor.
    """
    if isinstance(img, Image.Image):
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.int64)
            arr = np.clip(arr, 0, 65535).astype(np.float64) / 65535.0 * 255.0
            arr = np.round(arr).astype(np.uint8)
        elif img.mode == "F":
            arr = np.asarray(img, dtype=np.float32)
        elif img.mode in ("L", "RGB", "RGBA", "LA", "1"):
            arr = np.asarray(img)
        else:
            arr = np.asarray(img.convert("RGB"))
    else:
        arr = np.asarray(img)
    return array_to_rgb_uint8(arr, name)


def array_to_rgb_uint8(arr: np.ndarray, name: str = "image") -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3):
        raise DataError(f"{name}: expected a 2-D image, got an array of shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"{name}: unsupported number of channels {arr.shape[2]} (expected 1, 3 or 4)")
    if min(arr.shape[:2]) < 8:
        raise DataError(f"{name}: image too small ({arr.shape[1]}x{arr.shape[0]} px)")
    if max(arr.shape[:2]) > MAX_SIDE:
        raise DataError(f"{name}: image too large ({arr.shape[1]}x{arr.shape[0]} px, limit {MAX_SIDE})")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if np.nanmax(arr) <= 1.0 else 1.0
        arr = np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise DataError(f"{name}: integer pixel values outside 0..255 ({arr.dtype})")
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 2:  # LA: grey + alpha, alpha dropped
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif arr.shape[2] == 4:  # alpha dropped: ultrasound frames are opaque
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def mask_from_array(arr: np.ndarray, name: str = "mask") -> np.ndarray:
    """Binary lesion mask from any array: 0/1, 0/255, anti-aliased edges, RGB or RGBA.

    RGBA masks whose colour channels are empty but whose alpha varies use the alpha channel (a
    drawn layer); otherwise the brightest channel is thresholded at half its range.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3:
        if (arr.shape[2] == 4 and arr[:, :, :3].max(initial=0) == 0
                and arr.size and np.ptp(arr[:, :, 3]) > 0):
            arr = arr[:, :, 3]
        else:
            arr = arr[:, :, : min(3, arr.shape[2])].max(axis=2)
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D mask, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.copy()
    arr = arr.astype(np.float64)
    top = arr.max(initial=0)
    if top <= 1.0:
        return arr > 0.5
    full = 65535.0 if top > 255 else 255.0
    return arr > full / 2


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3); a DICOM file's frame k as 'X.dcm#k' (see `dicom`)."""
    return read_image_info(path)[0]


def read_image_info(path: str | Path) -> tuple[np.ndarray, dict]:
    """(uint8 RGB image, info): info has `spacing_mm` ((row, column) mm per pixel, or None) and, for DICOM,
    `study_key` (de-identified) and `frames`. No identifying DICOM attribute is ever returned."""
    from .dicom import is_dicom, read_frame, split_frame

    if is_dicom(path):
        if not split_frame(path)[0].exists():
            raise DataError(f"{split_frame(path)[0]}: file not found")
        img, info = read_frame(path, name=Path(str(path)).name)
        return array_to_rgb_uint8(img, str(path)), {"spacing_mm": info.spacing_mm, "study_key": info.study_key,
                                                    "frames": info.frames}
    return to_rgb_uint8(_open(path), name=str(path)), {"spacing_mm": None}


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a bool (H, W) array."""
    img = _open(path)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode == "1":
        return np.asarray(img, dtype=bool).copy()
    return mask_from_array(np.asarray(img), name=str(path))


def resize_mask(mask: np.ndarray, size, mode: str = "nearest") -> np.ndarray:
    """A bool mask resized to `size` ((H, W), or an int for a square). mode "nearest" keeps every label
    as drawn (display, uploads, exports); "area" averages then thresholds at 0.5, so thin structures
    survive a large reduction (the model's working size)."""
    import cv2

    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if mask.shape == (h, w):
        return np.asarray(mask, bool)
    if mode == "area":
        return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
    if mode != "nearest":
        raise ValueError(f"resize_mask: mode {mode!r} (nearest or area)")
    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(pil.resize((w, h), Image.NEAREST)) > 127


def read_masks_union(paths: list[Path], size_hw: tuple[int, int], image_name: str) -> np.ndarray:
    """Union of all lesion masks of one image, each resized to the image if needed (with a warning)."""
    union = np.zeros(size_hw, dtype=bool)
    for p in paths:
        m = read_mask(p)
        if m.shape != tuple(size_hw):
            msg = (f"{p}: mask is {m.shape[1]}x{m.shape[0]} but its image {image_name} is "
                   f"{size_hw[1]}x{size_hw[0]}; resized (nearest)")
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
            m = resize_mask(m, size_hw)
        union |= m
    return union


def check_mask_matches(image: np.ndarray, mask: np.ndarray, name: str = "mask") -> None:
    if mask.shape != image.shape[:2]:
        raise DataError(f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{image.shape[1]}x{image.shape[0]}")
