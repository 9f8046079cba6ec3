"""DICOM SEG export (highdicom) for masks drawn on DICOM sources: one binary Segmentation per source
file, referencing the source instance, its frames in the source's full frame (a mask made on the cropped
ultrasound region is put back where the region was). Built from a de-identified copy of the source
header built from an allow-list (`core.data.dicom.deidentified`: PS3.15 Annex E basic profile, hashed
UIDs): the SEG carries the study key, and nothing of the source's patient, physicians, dates, free text,
private tags or sequences.

Multi-frame sources (cine loops) are left out, with the reason in the export summary: highdicom builds a
SEG of a multi-frame source only when the source has a patient coordinate system (plane positions), which
ultrasound frames do not have; their masks are in the PNG export, one per frame."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .dicom import deidentified, mark_deidentified, open_dataset, read_header

SOFTWARE = "PANet++ Studio"


def segmentation(source_path: str | Path, masks: list[tuple[int | None, np.ndarray]]):
    """A highdicom Segmentation of the source file from (frame index or None, mask on the read frame)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    ds, info = read_header(source_path, Path(source_path).name)
    if info.frames > 1:
        raise NotImplementedError(f"{Path(source_path).name}: a multi-frame source (highdicom needs a patient "
                                  "coordinate system for those; ultrasound has none)")
    fp = open_dataset(source_path, Path(source_path).name)   # deflated: inflated under the cap
    try:
        full = pydicom.dcmread(fp)                      # highdicom reads the source's pixel attributes
    finally:
        fp.close()
    src = deidentified(full, info.study_key)
    arr = np.zeros((1, info.rows, info.columns), np.uint8)
    x0, y0 = (info.region[0], info.region[1]) if info.region else (0, 0)
    for k, m in masks:
        h, w = m.shape
        arr[k or 0, y0:y0 + h, x0:x0 + w] = m.astype(np.uint8)
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=SOFTWARE, version="1", family=codes.DCM.ArtificialIntelligence))
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=arr[0],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[desc],
        series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=SOFTWARE, manufacturer_model_name=SOFTWARE, software_versions="1", device_serial_number="0")
    mark_deidentified(seg)
    return seg


def write_segmentations(store, sources: dict[str, list], out_dir: Path) -> tuple[list[Path], list[str]]:
    """One `<source stem>_seg.dcm` per single-frame DICOM source of the export; (written, left out + why)."""
    from ..io import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for rel, masks in sources.items():
        try:
            seg = segmentation(store.image_path(rel), masks)
        except (NotImplementedError, DataError) as exc:   # one odd file never stops the export
            skipped.append(str(exc))
            continue
        target = out_dir / (rel.replace("/", "__").rsplit(".", 1)[0] + "_seg.dcm")
        atomic_write(target, lambda tmp, seg=seg: seg.save_as(tmp))
        written.append(target)
    return written, skipped
