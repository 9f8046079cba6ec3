"""Synthetic DICOM files made with pydicom in the test itself: single and multi-frame, MONOCHROME1/2, RGB,
YBR_FULL, 16-bit, compressed, with an ultrasound region and spacing, and full of identifying tags."""
from __future__ import annotations

from pathlib import Path

import numpy as np

PHI = {"PatientName": "Doe^Jane", "PatientID": "MRN-778899", "PatientBirthDate": "19610214",
       "AccessionNumber": "ACC-55443", "InstitutionName": "St Example Hospital", "StudyDate": "20240102",
       "ReferringPhysicianName": "House^Greg", "StationName": "US-ROOM-3"}


def make_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", frames: bool = False,
               region: tuple[int, int, int, int] | None = None, delta_cm: tuple[float, float] | None = None,
               pixel_spacing: tuple[float, float] | None = None, bits: int = 8, compress: str | None = None,
               phi: bool = True, study_uid: str | None = None) -> Path:
    """pixels: (H, W) grey, (H, W, 3) RGB, or with frames=True a leading frame axis. YBR_FULL: given RGB,
    stored converted. region=(x0, y0, x1, y1) inclusive max, delta_cm=(dx, dy) cm per pixel."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import convert_color_space
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1" if frames else "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "US"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientSex = "F"
    ds.StudyID = "1"
    ds.Manufacturer = "Synthetic"
    if phi:
        for k, v in PHI.items():
            setattr(ds, k, v)
    else:
        ds.PatientName, ds.PatientID = "anon", "anon"
    arr = np.asarray(pixels)
    stored_photometric = photometric
    if photometric == "YBR_FULL":
        arr = convert_color_space(arr, "RGB", "YBR_FULL")
    if bits == 16:
        arr = arr.astype(np.uint16)
    ds.set_pixel_data(arr, stored_photometric, bits if bits == 8 else 12)
    if frames:
        ds.NumberOfFrames = arr.shape[0]
    if region is not None:
        r = Dataset()
        r.RegionSpatialFormat = 1
        r.RegionDataType = 1
        r.RegionFlags = 0
        r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = region
        if delta_cm is not None:
            r.PhysicalUnitsXDirection, r.PhysicalUnitsYDirection = 3, 3
            r.PhysicalDeltaX, r.PhysicalDeltaY = delta_cm
        ds.SequenceOfUltrasoundRegions = [r]
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if compress == "jpeg":     # JPEG baseline as scanners write it (Pillow encodes; colour as YBR_FULL_422)
        import io

        from PIL import Image
        from pydicom import uid
        from pydicom.encaps import encapsulate

        items = []
        for f in (np.asarray(pixels) if frames else np.asarray(pixels)[None]):
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="JPEG", quality=95)
            items.append(buf.getvalue())
        ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
        ds.PixelData = encapsulate(items)
        ds["PixelData"].VR = "OB"
        if np.asarray(pixels).ndim == (4 if frames else 3):
            ds.PhotometricInterpretation = "YBR_FULL_422"
        compress = None
    if compress:
        from pydicom import uid
        ds.compress({"rle": uid.RLELossless, "jpeg2000": uid.JPEG2000Lossless, "jpegls": uid.JPEGLSLossless}[compress])
    ds.save_as(path, enforce_file_format=True)
    return path


def disc_frames(n: int = 6, h: int = 120, w: int = 160, r: int = 18, step: int = 6, seed: int = 0):
    """A dark disc moving right frame by frame in speckle: (frames, masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    frames, masks = [], []
    for t in range(n):
        m = (yy - h // 2) ** 2 + (xx - (40 + step * t)) ** 2 <= r ** 2
        img = np.clip(rng.normal(150, 20, (h, w)), 0, 255)
        img[m] = np.clip(rng.normal(45, 8, m.sum()), 0, 255)
        frames.append(img.astype(np.uint8))
        masks.append(m)
    return np.stack(frames), np.stack(masks)


# Issue 27: what a careless export carries beyond the usual tags: nested sequences, free text, private tags.
MARKERS = ("MARK-OTHER-ID-4411", "MARK-HISTORY Jane Roe 12 Elm Street", "MARK-PHYS-OF-RECORD", "MARK-READER",
           "MARK-OCCUPATION", "MARK-ISSUER", "MARK-REQ-SERVICE", "MARK-PRIVATE", "MARK-NESTED-ID")


def plant_markers(path: Path) -> Path:
    """Add every MARKERS value to an existing DICOM file, some of them nested two sequences deep."""
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(path)
    other = Dataset()
    other.PatientID = MARKERS[0]
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.AdditionalPatientHistory = MARKERS[1]
    ds.PhysiciansOfRecord = MARKERS[2]
    ds.NameOfPhysiciansReadingStudy = MARKERS[3]
    ds.Occupation = MARKERS[4]
    ds.IssuerOfPatientID = MARKERS[5]
    ds.RequestingService = MARKERS[6]
    block = ds.private_block(0x0011, "PANET TEST", create=True)
    block.add_new(0x01, "LO", MARKERS[7])
    inner = Dataset()
    inner.PatientID = MARKERS[8]
    outer = Dataset()
    outer.ReferencedPatientSequence = [inner]
    ds.RequestAttributesSequence = [outer]
    ds.save_as(path, enforce_file_format=True)
    return path


def deflated_file(path, pixel_bytes: int, rows: int = 512, cols: int = 512, frames: int = 1) -> None:
    """A DICOM in the deflated transfer syntax whose pixel data is `pixel_bytes` zeros, compressed as a
    stream (a 1 GB payload makes a file of about 1 MB)."""
    import io
    import struct
    import zlib

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "US"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    body = pydicom.filebase.DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = False, True
    pydicom.filewriter.write_dataset(body, ds)   # explicit VR little endian, as the deflated syntax holds
    raw = body.getvalue()
    # the pixel data element written by hand: (7FE0,0010) OB, 4-byte length
    raw += struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", pixel_bytes)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(raw)]
    chunk = bytes(1 << 24)
    left = pixel_bytes
    while left:
        n = min(left, len(chunk))
        parts.append(comp.compress(chunk[:n]))
        left -= n
    parts.append(comp.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(out, meta, enforce_standard=True)
    path.write_bytes(out.getvalue() + b"".join(parts))
