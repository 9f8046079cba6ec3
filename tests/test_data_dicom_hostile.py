"""Issue 27: hostile and careless DICOM files. A deflate bomb is refused before it inflates, an odd header
fails that file only, the frame count is what is stored, spacing is finite or absent, and a DICOM SEG
carries nothing of the source but what an allow-list keeps (every element walked, sequences included)."""
from __future__ import annotations

import io
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("pydicom")

import pydicom  # noqa: E402

from core.data.dicom import frame_refs, hashed_uid, read_frame, read_header  # noqa: E402
from core.data.errors import DataError  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.dicom_factory import MARKERS, PHI, deflated_file, make_dicom, plant_markers  # noqa: E402

GREY = (np.arange(64 * 80).reshape(64, 80) % 251).astype(np.uint8)


def test_deflate_bomb_is_refused_within_seconds_under_2_gb(tmp_path):
    bomb = tmp_path / "bomb.dcm"
    deflated_file(bomb, 1 << 30)
    assert bomb.stat().st_size < 2 << 20, "a small file..."
    # the child's own peak: VmHWM starts afresh at exec (ru_maxrss would carry the test runner's own peak)
    code = ("import sys, time\nfrom core.data.dicom import read_header\nfrom core.data.errors import DataError\n"
            "t = time.time()\ntry:\n    read_header(sys.argv[1])\n    print('READ')\nexcept DataError as e:\n"
            "    print('REFUSED', e)\nhwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(time.time() - t, hwm.split()[1])")
    r = subprocess.run([sys.executable, "-c", code, str(bomb)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = r.stdout.strip().splitlines()
    assert out[0].startswith("REFUSED") and "inflates to more than" in out[0], r.stdout + r.stderr[-2000:]
    seconds, peak_kb = (float(v) for v in out[-1].split())
    assert seconds < 10 and peak_kb < 2 * 1024 * 1024, (seconds, peak_kb)


def test_a_small_deflated_file_still_reads(tmp_path):
    p = tmp_path / "small.dcm"
    deflated_file(p, 64 * 80, rows=64, cols=80)
    img, info = read_frame(p)
    assert img.shape == (64, 80, 3) and info.frames == 1 and not img.any()


@pytest.mark.parametrize("field, value", [("NumberOfFrames", "abc"), ("Rows", ["64", "64"]), ("BitsAllocated", "x")])
def test_an_odd_header_is_a_data_error_for_that_file_only(tmp_path, field, value):
    p = make_dicom(tmp_path / "odd.dcm", GREY)
    ds = pydicom.dcmread(p)
    ds.add(pydicom.DataElement(pydicom.datadict.tag_for_keyword(field), "LO", value))  # as a careless export writes it
    ds.save_as(p)
    with pytest.raises(DataError, match="odd.dcm"):
        read_header(p, "odd.dcm")
    assert frame_refs(p, "odd.dcm") == ["odd.dcm"], "listing a folder never raises: the reader says why later"


def test_a_multi_valued_region_field_leaves_the_region_out_and_the_file_readable(tmp_path):
    p = make_dicom(tmp_path / "r.dcm", GREY, region=(4, 4, 59, 49), delta_cm=(0.01, 0.01))
    ds = pydicom.dcmread(p)
    ds.SequenceOfUltrasoundRegions[0].RegionLocationMinX0 = [4, 9]
    ds.save_as(p)
    img, info = read_frame(p)
    assert img.shape == (64, 80, 3) and info.region is None


def test_frames_are_what_is_stored_not_what_is_declared(tmp_path):
    frames = np.stack([GREY] * 6)
    p = make_dicom(tmp_path / "loop.dcm", frames, frames=True)
    ds = pydicom.dcmread(p)
    ds.NumberOfFrames = 2000
    ds.save_as(p)
    assert read_header(p)[1].frames == 6
    assert len(frame_refs(p, "loop.dcm")) == 6


@pytest.mark.parametrize("spacing", [("inf", "inf"), ("0", "0"), ("nan", "0.1")])
def test_non_finite_or_zero_spacing_means_no_physical_size(tmp_path, spacing):
    p = make_dicom(tmp_path / "s.dcm", GREY)
    ds = pydicom.dcmread(p)
    ds.PixelSpacing = list(spacing)
    ds.save_as(p)
    assert read_header(p)[1].spacing_mm is None


def walk(ds):
    """Every element of a dataset, nested sequence items included."""
    for elem in ds.iterall():
        yield elem


def test_segmentation_keeps_nothing_but_the_allow_list(tmp_path):
    from core.data.dicom_seg import segmentation

    p = plant_markers(make_dicom(tmp_path / "phi.dcm", GREY))
    src = pydicom.dcmread(p)
    seg = segmentation(p, [(None, GREY > 128)])
    buf = io.BytesIO()
    seg.save_as(buf)
    raw = buf.getvalue()
    planted = list(MARKERS) + list(PHI.values()) + [str(src.StudyInstanceUID), str(src.SOPInstanceUID),
                                                    str(src.SeriesInstanceUID)]
    for elem in walk(seg):
        text = str(elem.value) if elem.VR not in ("OB", "OW", "UN") else ""
        for m in planted:
            assert m not in text, f"{m} in {elem.keyword or elem.tag}"
    for m in planted:
        assert m.encode() not in raw, m
    assert not any(e.tag.is_private for e in walk(seg))
    assert seg.PatientIdentityRemoved == "YES" and seg.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert seg.StudyInstanceUID == hashed_uid(src.StudyInstanceUID)


def test_the_header_budget_never_reads_a_huge_text_value(tmp_path):
    p = make_dicom(tmp_path / "big.dcm", GREY)
    ds = pydicom.dcmread(p)
    ds.add_new(0x00324000, "LT", "x" * (8 << 20))     # StudyComments: 8 MB of free text
    ds.save_as(p)
    t = time.time()
    hdr, info = read_header(p)
    assert info.rows == 64 and time.time() - t < 5
    assert hdr.get_item(0x00324000, keep_deferred=True).value is None, "deferred, never read"
