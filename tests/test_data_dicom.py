"""DICOM input (issue 21): synthetic files made with pydicom here, read as the rest of the project reads
images; strict validation; image region and spacing; frames of a cine loop; no identifying tag leaks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")

from core.data.dicom import deidentified, read_header, split_frame  # noqa: E402
from core.data.io import DataError, check_header, read_image, read_image_info  # noqa: E402
from tests.dicom_factory import PHI, disc_frames, make_dicom  # noqa: E402

RGB = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
GREY = np.random.default_rng(1).integers(0, 256, (40, 56), dtype=np.uint8)


@pytest.mark.parametrize("photometric,pixels,compress,tol", [
    ("MONOCHROME2", GREY, None, 0), ("MONOCHROME2", GREY, "rle", 0), ("MONOCHROME2", GREY, "jpeg2000", 0),
    ("MONOCHROME2", GREY, "jpegls", 0), ("RGB", RGB, None, 0), ("RGB", RGB, "rle", 0), ("YBR_FULL", RGB, None, 2)])
def test_every_photometric_and_common_compression_reads_the_same_pixels(tmp_path, photometric, pixels, compress, tol):
    p = make_dicom(tmp_path / "x.dcm", pixels, photometric, compress=compress)
    img = read_image(p)
    want = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, 2)
    assert img.dtype == np.uint8 and img.shape == want.shape
    assert np.abs(img.astype(int) - want).max() <= tol


def test_jpeg_baseline_as_scanners_write_it(tmp_path):
    smooth = np.repeat(np.repeat(GREY[::8, ::8], 8, 0), 8, 1)[:40, :56]
    img = read_image(make_dicom(tmp_path / "g.dcm", smooth, compress="jpeg"))
    assert np.abs(img[..., 0].astype(int) - smooth).mean() < 3
    colour = np.repeat(np.repeat(RGB[::8, ::8], 8, 0), 8, 1)[:40, :56]
    img = read_image(make_dicom(tmp_path / "c.dcm", colour, "RGB", compress="jpeg"))   # stored as YBR_FULL_422
    assert np.abs(img.astype(int) - colour).mean() < 8, "YBR converted to RGB, not shown as YBR"


def test_monochrome1_is_inverted_and_16_bit_scaled_by_bit_depth(tmp_path):
    assert (read_image(make_dicom(tmp_path / "m1.dcm", 255 - GREY, "MONOCHROME1"))[..., 0] == GREY).all()
    img = read_image(make_dicom(tmp_path / "b16.dcm", GREY.astype(np.uint16) * 16, bits=16))   # 12 bits stored
    assert np.abs(img[..., 0].astype(int) - GREY).max() <= 1


def test_frames_of_a_loop_are_images_of_their_own(tmp_path):
    frames, _ = disc_frames(5)
    p = make_dicom(tmp_path / "loop.dcm", frames, frames=True)
    assert read_header(p)[1].frames == 5
    assert (read_image(f"{p}#3")[..., 0] == frames[3]).all()
    assert (read_image(p)[..., 0] == frames[0]).all(), "no frame given: the first"
    with pytest.raises(DataError, match="frame 7 does not exist"):
        read_image(f"{p}#7")
    assert split_frame("a/b/X.dcm#12") == (Path("a/b/X.dcm"), 12) and split_frame("x#1.png")[1] is None


def test_ultrasound_region_is_cropped_and_spacing_kept(tmp_path):
    frames, masks = disc_frames(1)
    p = make_dicom(tmp_path / "r.dcm", frames[0], region=(10, 5, 149, 114), delta_cm=(0.01, 0.012))
    img, info = read_image_info(p)
    assert img.shape[:2] == (110, 140) and (img[..., 0] == frames[0][5:115, 10:150]).all()
    assert info["spacing_mm"] == pytest.approx((0.12, 0.1))
    q = make_dicom(tmp_path / "s.dcm", frames[0], pixel_spacing=(0.2, 0.25))
    assert read_image_info(q)[1]["spacing_mm"] == pytest.approx((0.2, 0.25))
    assert read_image_info(make_dicom(tmp_path / "n.dcm", frames[0]))[1]["spacing_mm"] is None


def test_lesion_size_in_mm(tmp_path):
    from core.metrics import lesion_size

    m = np.zeros((100, 100), bool)
    m[10:30, 20:60] = True            # 20 rows x 40 columns
    s = lesion_size(m, (0.5, 0.25))
    assert s["area_mm2"] == pytest.approx(800 * 0.125)
    assert s["diameter_mm"] == pytest.approx(np.hypot(39 * 0.25, 19 * 0.5) + 0.25, rel=1e-6)
    assert lesion_size(m)["area_mm2"] is None and lesion_size(m)["diameter_px"] > 40


def test_validation_refuses_before_decoding(tmp_path):
    p = tmp_path / "fake.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    with pytest.raises(DataError, match="not a readable DICOM|without an image"):
        read_image(p)
    big = make_dicom(tmp_path / "big.dcm", GREY)
    import pydicom
    ds = pydicom.dcmread(big)
    ds.Rows = 6000                      # the header says 6000 rows: refused on the header alone
    ds.save_as(big)
    with pytest.raises(DataError, match="too large"):
        check_header(big.read_bytes(), "query image")
    mpeg = make_dicom(tmp_path / "v.dcm", GREY)
    ds = pydicom.dcmread(mpeg)
    from pydicom.encaps import encapsulate
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"      # MPEG-2 video: no decoder installed
    ds.PixelData = encapsulate([b"\0\0\1\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.save_as(mpeg)
    with pytest.raises(DataError, match="cannot be decoded here"):
        read_image(mpeg)


def test_no_identifying_tag_leaves_the_reader(tmp_path):
    p = make_dicom(tmp_path / "phi.dcm", GREY)
    img, info = read_image_info(p)
    text = repr(info) + repr(read_header(p)[1])
    for v in PHI.values():
        assert v not in text
    assert info["study_key"].startswith("study-")
    clean = deidentified(read_header(p)[0])
    dump = str(clean)
    for v in PHI.values():
        assert v not in dump, v
    assert str(clean.PatientID) == info["study_key"]
