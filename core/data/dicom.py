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
  builds a new dataset from an allow-list with hashed UIDs (for DICOM SEG export; the profile is stated
  at `KEEP_ATTRIBUTES` and in docs/dicom.md).
- **Bounded reading**: a deflated dataset is inflated in a stream under a cap, large header values are
  never read, and the declared pixel data is checked against what is stored; an odd header is a
  DataError for that file only.
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
# Bounded reading (issue 27): header elements over HEADER_DEFER bytes are never read into memory, a
# deflated dataset is inflated in a stream and refused past MAX_INFLATED, and the pixel data a header
# declares (rows x columns x frames x bytes per sample) is checked against what the file stores before
# any pixel is decoded.
HEADER_DEFER = 64 * 1024
MAX_INFLATED = 256 * 1024 * 1024
MAX_PIXEL_BYTES = 1024 * 1024 * 1024   # one file's declared pixel data, all frames (a 2000-frame 720p loop)


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


def _inflate_capped(fp, out, name: str, cap: int = MAX_INFLATED) -> None:
    """The raw-deflate stream from `fp` inflated chunk by chunk into `out`; refused as soon as it passes `cap`."""
    import zlib

    d = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    while True:
        chunk = fp.read(1 << 16)
        if not chunk:
            break
        while chunk:
            part = d.decompress(chunk, cap + 1 - size)
            size += len(part)
            if size > cap:
                raise DataError(f"{name}: the deflated DICOM data inflates to more than {cap // 2**20} MB: refused "
                                "(a decompression bomb, or a file too large to read here)")
            out.write(part)
            chunk = d.unconsumed_tail
    try:
        out.write(d.flush())
    except zlib.error as exc:
        raise DataError(f"{name}: damaged deflated DICOM data") from exc


def open_dataset(src, name: str):
    """A file object pydicom can read without surprises: the file (or bytes) itself, or, for the deflated
    transfer syntax, the dataset inflated under MAX_INFLATED and re-wrapped as explicit VR little endian.
    pydicom would otherwise inflate the whole dataset in one call before any check."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filewriter import write_file_meta_info

    fp = (io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview))
          else open(split_frame(src)[0], "rb"))  # noqa: SIM115 (returned open to the caller, closed on error)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        deflated = meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian
        if not deflated:
            fp.seek(0)
            return fp
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        out = io.BytesIO()     # in memory, one buffer written as it inflates (never a temporary file)
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=False)
        try:
            _inflate_capped(fp, out, name)
        except BaseException:
            out.close()
            raise
        fp.close()
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        fp.close()
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{name}: not a readable DICOM file") from exc
    out.seek(0)
    return out


def _stored_frames(ds, frame_bytes: int, encapsulated: bool) -> int | None:
    """How many frames the pixel data really holds (None: no pixel data)."""
    elem = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    if elem is None:
        return None
    value = elem.value     # None when deferred (a large native pixel data): its length says what is stored
    if not encapsulated:
        length = int(elem.length) if value is None else len(value)
        return length // max(1, frame_bytes)
    from pydicom.encaps import parse_basic_offsets, parse_fragments

    buf = io.BytesIO(value if value is not None else b"")
    offsets = parse_basic_offsets(buf)
    n_fragments, _ = parse_fragments(buf)
    return len(offsets) if offsets else n_fragments


def _int(ds, keyword: str, default: int) -> int:
    """A header integer; a multi-valued or non-numeric value is an odd header (DataError by the caller)."""
    v = getattr(ds, keyword, None)
    if v is None or v == "":
        return default
    return int(str(v).strip())


def _positive_finite(values) -> tuple[float, float] | None:
    import math

    v = tuple(float(x) for x in values)
    return v if len(v) == 2 and all(math.isfinite(x) and x > 0 for x in v) else None


def study_key(ds) -> str:
    uid = str(getattr(ds, "StudyInstanceUID", "") or getattr(ds, "SOPInstanceUID", "") or "unknown")
    return "study-" + hashlib.sha256(STUDY_KEY_SALT + uid.encode()).hexdigest()[:12]


def _region_box(r) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of one 2-D tissue region; None for another kind of region or an odd entry."""
    try:
        if _int(r, "RegionSpatialFormat", 1) != 1:
            return None   # 1 = 2D tissue; M-mode, spectral Doppler, waveforms are not images to outline
        x0, y0 = _int(r, "RegionLocationMinX0", 0), _int(r, "RegionLocationMinY0", 0)
        x1, y1 = _int(r, "RegionLocationMaxX1", -1) + 1, _int(r, "RegionLocationMaxY1", -1) + 1
    except (AttributeError, TypeError, ValueError):
        return None      # multi-valued or non-numeric: this region is ignored, the file still reads
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _region(ds) -> tuple[tuple[int, int, int, int] | None, tuple[float, float] | None]:
    """The largest 2-D tissue region of the ultrasound region sequence and its mm per pixel."""
    best, box, area = None, None, 0
    try:
        regions = list(getattr(ds, "SequenceOfUltrasoundRegions", []) or [])
    except (TypeError, ValueError):
        regions = []
    for r in regions:
        b = _region_box(r)
        if b is not None and (b[2] - b[0]) * (b[3] - b[1]) > area:
            best, box, area = r, b, (b[2] - b[0]) * (b[3] - b[1])
    if best is None:
        return None, None
    units_cm = 3
    try:
        if _int(best, "PhysicalUnitsXDirection", 0) == units_cm and _int(best, "PhysicalUnitsYDirection", 0) == units_cm:
            return box, _positive_finite((abs(float(best.PhysicalDeltaY)) * 10.0, abs(float(best.PhysicalDeltaX)) * 10.0))
    except (AttributeError, TypeError, ValueError):
        pass
    return box, None


def read_header(src, name: str = "image"):
    """(dataset without pixel values, DicomInfo): every check that needs no pixel decoded. Any header this
    cannot make sense of (a non-numeric frame count, a multi-valued size...) is a DataError naming the
    file, so that one odd file is marked unreadable and never stops a folder."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    fp = open_dataset(src, name)
    try:
        ds = pydicom.dcmread(fp, defer_size=HEADER_DEFER)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{name}: not a readable DICOM file") from exc
    finally:
        fp.close()
    try:
        return ds, _header_info(ds, name)
    except DataError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError, IndexError) as exc:
        raise DataError(f"{name}: an odd DICOM header ({type(exc).__name__}: {str(exc)[:80]})") from exc


def _header_info(ds, name: str) -> DicomInfo:
    from pydicom.pixels import get_decoder

    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    if rows <= 0 or cols <= 0:
        raise DataError(f"{name}: a DICOM file without an image (no Rows/Columns)")
    if max(rows, cols) > MAX_SIDE:
        raise DataError(f"{name}: image too large ({cols}x{rows} px, limit {MAX_SIDE})")
    declared = _int(ds, "NumberOfFrames", 1)
    if not 1 <= declared <= MAX_FRAMES:
        raise DataError(f"{name}: {declared} frames (at most {MAX_FRAMES} are read)")
    bits, spp = _int(ds, "BitsAllocated", 8), _int(ds, "SamplesPerPixel", 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip()
    if bits not in (8, 16) or spp not in (1, 3):
        raise DataError(f"{name}: {bits}-bit data with {spp} samples per pixel is not supported (8 or 16 bits, "
                        "1 or 3 samples)")
    if photometric not in PHOTOMETRIC:
        raise DataError(f"{name}: photometric interpretation {photometric} is not supported ({', '.join(PHOTOMETRIC)})")
    frame_bytes = rows * cols * spp * bits // 8
    if frame_bytes * declared > MAX_PIXEL_BYTES:
        raise DataError(f"{name}: declares {frame_bytes * declared / 2**20:.0f} MB of pixel data "
                        f"(limit {MAX_PIXEL_BYTES // 2**20} MB)")
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
    stored = _stored_frames(ds, frame_bytes, ts.is_compressed)
    if stored is None or stored < 1:
        raise DataError(f"{name}: no pixel data (or less than one frame of it)")
    frames = min(declared, stored)    # what is stored, never more than what is declared
    region, spacing = _region(ds)
    if region is not None:
        x0, y0, x1, y1 = region
        region = (max(0, x0), max(0, y0), min(cols, x1), min(rows, y1))
        if region[2] - region[0] < 8 or region[3] - region[1] < 8:
            region, spacing = None, None
    if spacing is None and getattr(ds, "PixelSpacing", None) is not None:
        try:
            spacing = _positive_finite(ds.PixelSpacing)
        except (TypeError, ValueError):
            spacing = None
    return DicomInfo(frames, rows, cols, photometric, str(ts), spacing, region, study_key(ds))


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
    multi = _int(ds, "NumberOfFrames", 1) > 1
    fp = open_dataset(src, name)      # a deflated file: inflated under the cap again, never by pydicom
    try:
        arr = pixel_array(fp, index=k if multi else None)
        if arr.ndim == 4 or (arr.ndim == 3 and spp_is_one(info)):   # a stack, not one frame
            arr = arr[0]
        rgb = _to_uint8(arr, ds, info.photometric)
    except Exception as exc:   # a decoder failing on damaged data raises many types
        raise DataError(f"{name}: the pixel data could not be decoded (truncated or damaged file)") from exc
    finally:
        fp.close()
    if info.region is not None:
        x0, y0, x1, y1 = info.region
        rgb = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    return rgb, info


def spp_is_one(info: DicomInfo) -> bool:
    return not info.photometric.startswith(("RGB", "YBR"))


def frame_count(path: str | Path) -> int:
    return read_header(path, Path(str(path)).name)[1].frames


# De-identification (issue 27). A derived object (the DICOM SEG) is built from a *new* dataset holding only
# the attributes below: what highdicom needs to describe and reference the source image and its geometry.
# Every other attribute is left out, which is the "X" (remove) action of the DICOM PS3.15 Annex E Basic
# Application Level Confidentiality Profile for every attribute it lists, and stricter for those it
# does not list (private tags, free text, nested sequences): an allow-list, not a block-list, so that a tag
# nobody thought of cannot leak. UIDs are replaced by salted hashes ("U" action, consistent: the same
# source UID always maps to the same new UID), so a SEG still matches a source de-identified the same way.
# Options of the profile applied: none (no Retain UIDs, no Retain Device Identity, no Retain Dates).
KEEP_ATTRIBUTES = ("SOPClassUID", "Modality", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                   "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration",
                   "NumberOfFrames", "PixelSpacing", "ImagerPixelSpacing", "LossyImageCompression")
HASHED_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
DEID_METHOD = "PS3.15 E.1 Basic Application Level Confidentiality Profile (allow-list); UIDs salted-hashed"


def hashed_uid(uid: str) -> str:
    """A UID that replaces `uid` everywhere the project writes it: '2.25.' + a 128-bit salted hash, the UUID
    form of PS3.5 B.2 (deterministic: the same source UID always gives the same new UID)."""
    digest = hashlib.sha256(STUDY_KEY_SALT + b"/uid/" + str(uid).encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big"))


def mark_deidentified(ds) -> None:
    """Patient Identity Removed and the method, as PS3.15 E.1.1 asks of a de-identified object."""
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    code = Dataset()
    c = codes.DCM.BasicApplicationConfidentialityProfile
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = c.value, c.scheme_designator, c.meaning
    ds.DeidentificationMethodCodeSequence = [code]


def deidentified(ds, key: str | None = None):
    """A new dataset with only KEEP_ATTRIBUTES of `ds`, hashed UIDs, the study key as patient name and ID,
    empty type-2 attributes, and the pixel data (highdicom reads the source's pixel description)."""
    from pydicom.dataset import Dataset, FileMetaDataset

    key = key or study_key(ds)
    out = Dataset()
    for name in KEEP_ATTRIBUTES:
        if name in ds:
            out[name] = ds[name]
    for name in HASHED_UIDS:
        if name in ds:
            setattr(out, name, hashed_uid(getattr(ds, name)))
    if "PixelData" in ds:
        out["PixelData"] = ds["PixelData"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.SOPClassUID
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    out.file_meta = meta
    for tag in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
                "ReferringPhysicianName"):
        setattr(out, tag, "")       # type 2: present, empty
    out.StudyID = ""
    out.PatientName = key + "^"     # one name component, marked as such
    out.PatientID = key
    mark_deidentified(out)
    return out
