"""Propagation: run the supports over every image a person has not decided on yet; export a dataset."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..delineate import segment_from_supports
from ..data.dicom import frame_order, frame_stem, split_frame
from ..metrics import fmt_or_blank as _num, lesion_size
from ..data.io import DataError, read_image
from ..metrics import spearman
from .store import DONE, ProjectStore


def uncertainty(prob: np.ndarray, band: int = 5) -> float:
    """Mean binary entropy (bits) of the probability map over the predicted region and a band around its
    edge (the whole image when nothing is predicted): high where the model hesitates."""
    import cv2

    p = np.clip(prob.astype(np.float64), 1e-6, 1 - 1e-6)
    ent = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    fg = (prob > 0.5).astype(np.uint8)
    if not fg.any():
        return float(ent.mean())
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    region = cv2.dilate(fg, k) > 0
    return float(ent[region].mean())


def propagate(store: ProjectStore, seg, supports, support_key: str, model_name: str, who: str = "propagation",
              job=None, on_progress: Callable[[dict], None] | None = None,
              presence=None, owner: str = "", delineate_with=None, temporal: bool = False) -> dict:
    """Predict every image not accepted, corrected or marked "no lesion" and not already predicted with
    these supports (so a stopped run resumes where it was). Results land image by image; `job`
    (`core.training.engine.Job`): cancelling it stops after the current image. `owner`: the
    session whose adapted model (for exactly these supports) is used, if it adapted one. `delineate_with`:
    a promptable model (LiteMedSAM) that redraws each predicted mask from the box of its largest part
    (the uncertainty stays PANet++'s). `temporal`: frames of a loop ('X.dcm#k') are predicted in frame
    order with the previous frame's mask (a person's where they decided, else the one just predicted) as
    the prompt (`core.annotate.cine`); a frame whose mask jumps from the previous one is flagged in the
    summary (`abrupt`) for review."""
    if temporal:
        support_key = f"{support_key}:temporal"
    if delineate_with is not None:   # a delineated run is another prediction than PANet++'s alone
        support_key = f"{support_key}:litemedsam"
    if callable(presence):           # so is one with the lesion probe's "no lesion" decision
        support_key = f"{support_key}:presence"
    todo = [r for r in store.rows() if r["status"] not in DONE + ("unreadable",)
            and not (r["status"] == "predicted" and r["support_key"] == support_key)]
    todo.sort(key=lambda r: frame_order(r["rel_path"]))      # frame 10 after frame 9, not after frame 1
    t0, done, errors, abrupt = time.time(), 0, [], []
    prev_logits: dict[str, object] = {}
    for r in todo:
        if job is not None and job.cancel_requested:
            break
        try:
            img = read_image(store.image_path(r["rel_path"]))
        except DataError as exc:
            # named by its place in the project, never by a server path; it leaves the review queue
            errors.append(f"{r['rel_path']}: {reason_of(exc)}")
            store.mark_unreadable(r["rel_path"], who=who, reason=reason_of(exc))
            continue
        prev_ref = _previous_frame(r["rel_path"]) if temporal else None
        prev = store.mask(prev_ref) if prev_ref is not None and _known(store, prev_ref) else None
        follow = prev is not None and prev.any() and prev.shape == img.shape[:2]
        # the one rule (PANet++, presence, LiteMedSAM's redraw where trusted); a loop's frame follows the
        # previous frame's mask instead of the redraw
        out = segment_from_supports(seg, img, supports, sam=None if follow else delineate_with, presence=presence,
                                    heatmaps=False, owner=owner)
        res, mask = out.result, out.mask
        if follow and getattr(res, "lesion_present", True):
            from .cine import ABRUPT_IOU, temporal_mask
            from ..metrics import iou

            mask, prev_logits[r["rel_path"]] = temporal_mask(mask, prev, img, delineate_with, prev_logits.get(prev_ref))
            if iou(mask, prev, empty="one") < ABRUPT_IOU:
                abrupt.append(r["rel_path"])
        store.record(r["rel_path"], "predicted", mask, who=who,
                     model=model_name + ("+litemedsam" if delineate_with is not None else ""),
                     uncertainty=uncertainty(res.probability), lesion_score=res.lesion_score,
                     support_key=support_key, only_if_not_done=True)
        done += 1
        if on_progress:
            el = time.time() - t0
            on_progress({"done": done, "total": len(todo), "images_per_s": done / max(el, 1e-9),
                         "seconds_left": (len(todo) - done) * el / done})
    return {"predicted": done, "to_do": len(todo), "errors": errors, "seconds": time.time() - t0,
            "stopped": done + len(errors) < len(todo), **({"abrupt": abrupt} if temporal else {})}


def reason_of(exc: Exception) -> str:
    """Why a file could not be read, without the file's name or path (the caller names it by its place
    in the project): readers' messages are 'name: reason'."""
    return str(exc).split(": ", 1)[-1][:200] or "not a readable image"


def _previous_frame(rel_path: str) -> str | None:
    path, k = split_frame(rel_path)
    return None if not k else f"{rel_path.rpartition('#')[0]}#{k - 1}"


def _known(store: ProjectStore, rel_path: str) -> bool:
    try:
        return store.row(rel_path)["status"] in DONE + ("predicted",)
    except DataError:
        return False


def _export_image(store: ProjectStore, rel_path: str, out: Path):
    """(stem, exported image path, (h, w), info). Ordinary images are linked (or copied); a DICOM frame is
    written as PNG (decoded, cropped to its image region, no DICOM attribute), named X_f<kkkk>."""
    import shutil

    from ..data.dicom import is_dicom
    from ..data.io import read_image_info

    src = store.image_path(rel_path)
    stem = frame_stem(rel_path.replace("/", "__"))
    if is_dicom(src):
        img, info = read_image_info(src)
        dst = out / "images" / f"{stem}.png"
        if not dst.exists():
            Image.fromarray(img).save(dst)
        return stem, dst, img.shape[:2], info
    dst = out / "images" / (stem + src.suffix.lower())
    if not dst.exists():
        try:
            dst.symlink_to(src.resolve())
        except OSError:
            shutil.copy2(src, dst)
    with Image.open(src) as im:
        width, height = im.size
    return stem, dst, (height, width), {}


def export(store: ProjectStore, out_dir: str | Path, statuses=DONE, dicom_seg: bool = False,
           reviewed_only: bool = False, annotator: str | None = None) -> dict:
    """Masks (PNG at each image's size) for images with `statuses`, a CSV manifest, COCO JSON (polygons
    from OpenCV contours), laid out as images/ + masks/ so that `train-seg --images-dir/--masks-dir`
    trains on it directly (images are linked, or copied where links are impossible; DICOM frames are
    written as PNG). dicom_seg=True also writes a DICOM SEG per DICOM source (de-identified; highdicom).
    reviewed_only: only decisions a reviewer approved; annotator: only that person's decisions. The manifest
    records who decided each mask and who reviewed it."""
    import cv2

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    rows = store.rows(statuses, reviewed_only=reviewed_only, annotator=annotator)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "lesion"}],
            "info": {"project": store.name, "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}}
    seg_sources: dict[str, list] = {}
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "status", "lesion_area_px", "lesion_area_mm2", "longest_diameter_px",
                    "longest_diameter_mm", "study_key", "uncertainty", "lesion_score", "who", "when", "review",
                    "reviewer"])
        left_out = {}
        for i, r in enumerate(rows, 1):
            try:
                stem, dst, (height, width), info = _export_image(store, r["rel_path"], out)
            except DataError as exc:       # one file that became unreadable never stops an export
                left_out[r["rel_path"]] = reason_of(exc)
                continue
            mask = store.mask(r["rel_path"])
            if mask is None:
                mask = np.zeros((height, width), bool)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{stem}_mask.png")
            size = lesion_size(mask, info.get("spacing_mm"))
            w.writerow([r["rel_path"], r["status"], int(mask.sum()), _num(size["area_mm2"]), _num(size["diameter_px"]),
                        _num(size["diameter_mm"]), info.get("study_key", ""),
                        "" if r["uncertainty"] is None else f"{r['uncertainty']:.4f}",
                        "" if r["lesion_score"] is None else f"{r['lesion_score']:.4f}", r["who"] or "",
                        time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r["updated"] or 0)),
                        r.get("review") or "", r.get("reviewer") or ""])
            if dicom_seg and "study_key" in info:
                seg_sources.setdefault(split_frame(r["rel_path"])[0].as_posix(), []).append(
                    (split_frame(r["rel_path"])[1], mask))
            coco["images"].append({"id": i, "file_name": dst.name, "width": width, "height": height})
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            for c in contours:
                if len(c) < 3:
                    continue
                x, y, bw, bh = cv2.boundingRect(c)
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": 1,
                                            "segmentation": [c.reshape(-1).astype(float).tolist()],
                                            "area": float(cv2.contourArea(c)), "bbox": [x, y, bw, bh], "iscrowd": 0})
    seg_note = {}
    if seg_sources:
        from ..data.dicom_seg import write_segmentations
        written, skipped = write_segmentations(store, seg_sources, out / "dicom_seg")
        seg_note = {"dicom_seg": len(written), "dicom_seg_left_out": skipped}
    (out / "annotations.json").write_text(json.dumps(coco))
    unreadable = {**store.unreadable(), **left_out}
    return {"exported": len(rows) - len(left_out), "out": str(out), **seg_note,
            **({"left_out_unreadable": unreadable} if unreadable else {})}


def uncertainty_ranking(seg, qset, shots: int = 5, seed: int = 5) -> dict:
    """Does the uncertainty score rank errors? One k-shot episode per lesion image of `qset`."""
    from ..evaluation.fewshot import make_episodes
    from ..metrics import dice

    n = sum(qset.has_lesion(i) for i in range(len(qset)))
    scores, dices = [], []
    for ep in make_episodes(qset, None, shots, n, seed):
        res = seg.predict(qset.images[ep.query], [(qset.images[j], qset.masks[j]) for j in ep.support], heatmaps=False)
        scores.append(uncertainty(res.probability))
        dices.append(dice(res.mask, qset.masks[ep.query]))
    scores, dices = np.array(scores), np.array(dices)
    top = scores >= np.quantile(scores, 0.8)
    return {"n": int(len(scores)), "shots": shots, "spearman_uncertainty_vs_1_minus_dice": spearman(scores, 1 - dices),
            "dice_most_uncertain_20pct": float(dices[top].mean()), "dice_rest": float(dices[~top].mean()),
            "mean_dice": float(dices.mean())}
