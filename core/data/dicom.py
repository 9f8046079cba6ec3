"""DICOM images and cine loops as the rest of the project sees images: uint8 RGB frames, validated first.

- **Validation before decoding**: the header is read without pixel data (`stop_before_pixels`); the
  frame size, frame count, bit depth, samples and photometric interpretation are checked, and the transfer
  syntax must have an installed decoder (pydicom's own, pylibjpeg + libjpeg/openjpeg, pyjpegls), else a
  plain message names it.
- **Frames**: frame k of a multi-frame file `X.dcm` is the image `X.dcm#k` (k from 0); one frame is
  decoded at a time (`pydicom.pixels.pixel_array(index=k)`).
- **Photometric interpretation**: MONOCHROME2 as is, MONOCHROME1 inverted, RGB, YBR_FULL and
  YBR_FULL_422 converted to RGB (pydicom); more than 8 bits through the VOI LUT / window when the file has
  one, else scaled by the stored bit depth (the same pixels always give the same image).
- **Image region and units**: where the file has a `SequenceOfUltrasoundRegions`, the largest 2-D tissue
  region is cropped out (the scanner's text and scales are left out) and its physical spacing kept (mm per
  pixel); otherwise `PixelSpacing` when present; otherwise none (areas then stay in pixels).
- **Privacy**: nothing identifying leaves this module. A frame comes with a `DicomInfo` that holds only
  sizes, spacing and a de-identified study key (a salted hash of the Study Instance UID); `deidentified`
  returns a copy of a dataset with the identifying tags replaced (for DICOM SEG export).
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MAX_SIDE, DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
MAX_FRAMES = 2000
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422")
STUDY_KEY_SALT = b"panet-studio/deid/v1"
# identifying attributes replaced or removed before anything leaves (DICOM PS3.15 basic profile, the
# subset an ultrasound file carries)
PHI_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
            "OtherPatientIDs", "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers",
            "AccessionNumber", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
            "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "StationName",
            "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime",
            "AcquisitionTime", "ContentTime", "AcquisitionDateTime", "StudyID", "DeviceSerialNumber",
            "RequestingPhysician", "StudyDescription", "SeriesDescription", "PatientComments")


TYPE2_EMPTY = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
               "ReferringPhysicianName", "StudyID")


@dataclass(frozen=True)
class DicomInfo:
    frames: int
    rows: int
    columns: int
    photometric: str
    transfer_syntax: str
    spacing_mm: tuple[float, float] | None     # (row, column) mm per pixel of the returned frame
    region: tuple[int, int, int, int] | None   # (x0, y0, x1, y1) the crop taken from the stored frame
    study_key: str                             # de-identified: a salted hash of the Study Instance UID


def split_frame(ref: str | Path) -> tuple[Path, int | None]:
    """'X.dcm#7' -> (Path('X.dcm'), 7); anything else -> (path, None)."""
    s = str(ref)
    head, sep, tail = s.rpartition("#")
    if sep and tail.isdigit() and head.lower().endswith(DICOM_SUFFIXES):
        return Path(head), int(tail)
    return Path(s), None


def frame_ref(path: str | Path, k: int) -> str:
    return f"{path}#{k}"


def frame_refs(path: str | Path, ref: str) -> list[str]:
    """The images one file holds, named from `ref`: `ref` itself, or 'ref#k' for each frame of a multi-frame
    DICOM (a cine loop). A DICOM whose header cannot be read stays one image (its reader says why later)."""
    path = Path(path)
    if not is_dicom(path):
        return [ref]
    try:
        frames = read_header(path, path.name)[1].frames
    except DataError:
        return [ref]
    return [ref] if frames == 1 else [frame_ref(ref, k) for k in range(frames)]


def frame_order(ref: str | Path) -> tuple[str, int]:
    """Sort key: a file's frames together and in loop order (frame 10 after 9, not after 1)."""
    path, k = split_frame(ref)
    return path.as_posix(), -1 if k is None else k


def frame_stem(ref: str | Path) -> str:
    """The file-name stem of an image for outputs: 'X.png' -> 'X', frame 7 of 'X.dcm' -> 'X_f0007'."""
    path, k = split_frame(ref)
    return path.stem if k is None else f"{path.stem}_f{k:04d}"


def is_dicom(src) -> bool:
    """A DICOM file (by its 'DICM' marker at byte 128, or its name); bytes are checked by the marker."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src[128:132]) == b"DICM"
    path, _ = split_frame(src)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _source(src):
    if isinstance(src, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(src))
    return str(split_frame(src)[0])


def study_key(ds) -> str:
    uid = str(getattr(ds, "StudyInstanceUID", "") or getattr(ds, "SOPInstanceUID", "") or "unknown")
    return "study-" + hashlib.sha256(STUDY_KEY_SALT + uid.encode()).hexdigest()[:12]


def _region(ds) -> tuple[tuple[int, int, int, int] | None, tuple[float, float] | None]:
    """The largest 2-D tissue region of the ultrasound region sequence and its mm per pixel."""
    best, area = None, 0
    for r in getattr(ds, "SequenceOfUltrasoundRegions", []) or []:
        try:
            x0, y0 = int(r.RegionLocationMinX0), int(r.RegionLocationMinY0)
            x1, y1 = int(r.RegionLocationMaxX1) + 1, int(r.RegionLocationMaxY1) + 1
        except (AttributeError, TypeError, ValueError):
            continue
        if int(getattr(r, "RegionSpatialFormat", 1)) != 1 or x1 <= x0 or y1 <= y0:
            continue   # 1 = 2D tissue; M-mode, spectral Doppler, waveforms are not images to outline
        if (x1 - x0) * (y1 - y0) > area:
            best, area = r, (x1 - x0) * (y1 - y0)
    if best is None:
        return None, None
    box = (int(best.RegionLocationMinX0), int(best.RegionLocationMinY0), int(best.RegionLocationMaxX1) + 1,
           int(best.RegionLocationMaxY1) + 1)
    spacing = None
    units_cm = 3
    if int(getattr(best, "PhysicalUnitsXDirection", 0)) == units_cm and int(getattr(best, "PhysicalUnitsYDirection", 0)) == units_cm:
        dx, dy = abs(float(best.PhysicalDeltaX)), abs(float(best.PhysicalDeltaY))
        if dx > 0 and dy > 0:
            spacing = (dy * 10.0, dx * 10.0)
    return box, spacing


def read_header(src, name: str = "image"):
    """(dataset without pixel data, DicomInfo): every check that needs no pixel decoded."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder

    try:
        ds = pydicom.dcmread(_source(src), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DataError(f"{name}: not a readable DICOM file") from exc
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if not rows or not cols:
        raise DataError(f"{name}: a DICOM file without an image (no Rows/Columns)")
    if max(rows, cols) > MAX_SIDE:
        raise DataError(f"{name}: image too large ({cols}x{rows} px, limit {MAX_SIDE})")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if not 1 <= frames <= MAX_FRAMES:
        raise DataError(f"{name}: {frames} frames (at most {MAX_FRAMES} are read)")
    bits, spp = int(getattr(ds, "BitsAllocated", 8)), int(getattr(ds, "SamplesPerPixel", 1))
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if bits not in (8, 16) or spp not in (1, 3):
        raise DataError(f"{name}: {bits}-bit data with {spp} samples per pixel is not supported (8 or 16 bits, "
                        "1 or 3 samples)")
    if photometric not in PHOTOMETRIC:
        raise DataError(f"{name}: photometric interpretation {photometric} is not supported ({', '.join(PHOTOMETRIC)})")
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None:
        raise DataError(f"{name}: no transfer syntax in the file meta information")
    try:
        available = get_decoder(ts).is_available
    except (NotImplementedError, ValueError, KeyError):
        available = False
    if not available:
        raise DataError(f"{name}: transfer syntax {getattr(ts, 'name', ts)} ({ts}) cannot be decoded here "
                        "(supported: uncompressed, RLE, JPEG baseline/lossless, JPEG-LS, JPEG 2000)")
    region, spacing = _region(ds)
    if region is not None:
        x0, y0, x1, y1 = region
        region = (max(0, x0), max(0, y0), min(cols, x1), min(rows, y1))
        if region[2] - region[0] < 8 or region[3] - region[1] < 8:
            region, spacing = None, None
    if spacing is None and getattr(ds, "PixelSpacing", None) is not None:
        try:
            sp = [float(v) for v in ds.PixelSpacing]
            spacing = (sp[0], sp[1]) if len(sp) == 2 and min(sp) > 0 else None
        except (TypeError, ValueError):
            spacing = None
    info = DicomInfo(frames, rows, cols, photometric, str(ts), spacing, region, study_key(ds))
    return ds, info


def _to_uint8(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        from pydicom.pixels import apply_voi_lut

        if photometric.startswith("MONOCHROME") and ("WindowCenter" in ds or "VOILUTSequence" in ds):
            arr = apply_voi_lut(arr, ds).astype(np.float64)
            wc = ds.get("WindowCenter")
            ww = ds.get("WindowWidth")
            if wc is not None and ww is not None:
                c = float(wc[0] if getattr(wc, "VM", 1) > 1 else wc)
                w = float(ww[0] if getattr(ww, "VM", 1) > 1 else ww)
                lo, hi = c - w / 2, c + w / 2
            else:
                lo, hi = float(arr.min()), float(arr.max())
        else:
            stored = int(getattr(ds, "BitsStored", 16) or 16)
            lo, hi = 0.0, float(2 ** stored - 1)
        arr = np.clip((arr.astype(np.float64) - lo) / max(hi - lo, 1e-9) * 255.0, 0, 255).round().astype(np.uint8)
    if photometric == "MONOCHROME1":
        arr = 255 - arr
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def read_frame(src, index: int | None = None, name: str | None = None) -> tuple[np.ndarray, DicomInfo]:
    """Frame `index` (the '#k' of the reference, else 0) as uint8 RGB, cropped to the image region."""
    from pydicom.pixels import pixel_array

    if index is None and not isinstance(src, (bytes, bytearray, memoryview)):
        index = split_frame(src)[1]
    name = name or (Path(str(src)).name if not isinstance(src, (bytes, bytearray, memoryview)) else "image")
    ds, info = read_header(src, name)
    k = 0 if index is None else int(index)
    if not 0 <= k < info.frames:
        raise DataError(f"{name}: frame {k} does not exist (the file has {info.frames})")
    try:
        arr = pixel_array(_source(src), index=k if info.frames > 1 else None)
    except Exception as exc:   # a decoder failing on damaged data raises many types
        raise DataError(f"{name}: the pixel data could not be decoded (truncated or damaged file)") from exc
    if arr.ndim == 4 or (arr.ndim == 3 and info.frames > 1 and arr.shape[0] == info.frames):
        arr = arr[0]
    rgb = _to_uint8(arr, ds, info.photometric)
    if info.region is not None:
        x0, y0, x1, y1 = info.region
        rgb = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    return rgb, info


def frame_count(path: str | Path) -> int:
    return read_header(path, Path(str(path)).name)[1].frames


def deidentified(ds, key: str | None = None):
    """A copy of `ds` with the identifying attributes replaced (name and ID by the study key) or removed;
    UIDs are kept so that a DICOM SEG can reference its source."""
    out = ds.copy()
    key = key or study_key(ds)
    for tag in PHI_TAGS:
        if tag in out:
            delattr(out, tag)
    for tag in TYPE2_EMPTY:        # attributes a derived object must carry, empty when unknown
        setattr(out, tag, "")
    out.PatientName = key + "^"     # one name component, marked as such
    out.PatientID = key
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = "PANet++ Studio: PS3.15 basic subset, salted study key"
    return out
