"""DICOM through the command line (issue 21): segment, annotate a folder with a cine loop, export (PNG
per frame, sizes in mm, DICOM SEG), predict; no identifying tag in any output."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pydicom")

from tests.conftest import ROOT, save_tiny_panet  # noqa: E402
from tests.dicom_factory import PHI, disc_frames, make_dicom  # noqa: E402


def run(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture
def study(tmp_path):
    frames, masks = disc_frames(4)
    (tmp_path / "imgs").mkdir()
    make_dicom(tmp_path / "imgs" / "loop.dcm", frames, frames=True, region=(10, 5, 149, 114), delta_cm=(0.01, 0.012))
    make_dicom(tmp_path / "imgs" / "single.dcm", frames[0], pixel_spacing=(0.1, 0.1))
    make_dicom(tmp_path / "sup.dcm", frames[1])
    Image.fromarray(masks[1].astype(np.uint8) * 255).save(tmp_path / "sup_mask.png")
    save_tiny_panet(tmp_path)
    return tmp_path


def no_phi_in(folder):
    for f in folder.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for v in PHI.values():
                assert v.encode() not in data, f"{v} leaked into {f.name}"


def test_segment_reads_dicom_supports_and_queries(study):
    r = run("segment", "--checkpoint", str(study / "p"), "--support", str(study / "sup.dcm"), str(study / "sup_mask.png"),
            "--query", f"{study / 'imgs' / 'loop.dcm'}#2", "--out", str(study / "o.png"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert Image.open(study / "o.png").size == (140, 110), "the frame's ultrasound region, not the whole frame"


def test_annotate_export_a_folder_of_dicom_with_a_loop(study):
    out = study / "out"
    r = run("annotate", "--images", str(study / "imgs"), "--support", str(study / "sup.dcm"), str(study / "sup_mask.png"),
            "--project", "dcm", "--checkpoint", str(study / "p"), "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["new_images"] == 5, "4 frames of the loop + 1 single frame"
    r = run("export", "--project", "dcm", "--out", str(study / "ex"), "--output", str(out), "--all", "--dicom-seg")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["dicom_seg"] == 1 and "multi-frame" in summary["dicom_seg_left_out"][0]
    names = sorted(p.name for p in (study / "ex" / "masks").iterdir())
    assert names == ["loop_f0000_mask.png", "loop_f0001_mask.png", "loop_f0002_mask.png", "loop_f0003_mask.png",
                     "single_mask.png"]
    rows = {r["file"]: r for r in csv.DictReader(open(study / "ex" / "manifest.csv"))}
    assert rows["loop.dcm#2"]["study_key"].startswith("study-")
    if int(rows["loop.dcm#2"]["lesion_area_px"]):
        assert float(rows["loop.dcm#2"]["lesion_area_mm2"]) == pytest.approx(int(rows["loop.dcm#2"]["lesion_area_px"]) * 0.012, abs=0.006)
    import pydicom
    seg = pydicom.dcmread(study / "ex" / "dicom_seg" / "single_seg.dcm")
    src = pydicom.dcmread(study / "imgs" / "single.dcm")
    from core.data.dicom import hashed_uid
    # the reference survives de-identification as the source's UID hashed the same way (PS3.15 "U")
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert ref == hashed_uid(src.SOPInstanceUID) and ref != src.SOPInstanceUID
    assert seg.PatientIdentityRemoved == "YES"
    no_phi_in(study / "ex")
    no_phi_in(out)       # the project's database and masks


def test_predict_on_a_folder_of_dicom(study):
    r = run("predict", "--image", str(study / "imgs"), "--save-mask", str(study / "pred"))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(study / "pred" / "predictions.csv")))
    assert [r["file"] for r in rows] == ["loop.dcm#0", "loop.dcm#1", "loop.dcm#2", "loop.dcm#3", "single.dcm"]
    assert all(r["study_key"].startswith("study-") and not r["error"] for r in rows)
    assert (study / "pred" / "loop_f0003_mask.png").exists()
    no_phi_in(study / "pred")


def test_one_odd_file_never_stops_a_folder_and_no_planted_marker_leaves(study):
    """Issue 27: an odd header among good files (annotate and export exit 0, name it, export the rest), and
    markers planted in nested sequences, free text and private tags appear nowhere in the outputs."""
    import pydicom

    from tests.dicom_factory import MARKERS, plant_markers

    plant_markers(study / "imgs" / "single.dcm")
    odd = make_dicom(study / "imgs" / "odd.dcm", disc_frames(1)[0][0])
    ds = pydicom.dcmread(odd)
    ds.add(pydicom.DataElement(0x00280008, "LO", "abc"))    # NumberOfFrames = "abc"
    ds.save_as(odd)
    out = study / "out"
    r = run("annotate", "--images", str(study / "imgs"), "--support", str(study / "sup.dcm"), str(study / "sup_mask.png"),
            "--project", "odd", "--checkpoint", str(study / "p"), "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert any(e.startswith("odd.dcm: an odd DICOM header") for e in summary["errors"]), summary
    r = run("export", "--project", "odd", "--out", str(study / "ex"), "--output", str(out), "--all", "--dicom-seg")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["exported"] == 5 and "odd.dcm" in summary["left_out_unreadable"], summary
    assert summary["dicom_seg"] == 1
    for folder in (study / "ex", out):
        for f in folder.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                for m in MARKERS:
                    assert m.encode() not in data, f"{m} leaked into {f.name}"
