"""Issue 28: the lesion-crop head's data and its scores.

Crops are cut at full resolution: from the true masks for training, from the shipped segmenter's masks for
selection and scoring (what `predict` gives the head). The segmenter was trained on BUSI's training split
alone, so its masks on BUSI val/test and on all of BUS-BRA are honest. Its boxes are cached per image
(`runs/crop_boxes.json`, keyed by the segmenter's checkpoint and the image) because segmenting a part takes
minutes on the CPU.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..data.dataset import load_pair
from ..metrics import auc, bootstrap_ci
from ..models.crop import KINDS, lesion_box
from .image_classifier import binary_ece


def load_lesions(rows: list[dict], progress: bool = False) -> dict:
    """rows (from `kind_parts`) -> {"images": full-resolution uint8, "boxes": the true masks' boxes,
    "y": 0 benign / 1 malignant, "names", "groups"}."""
    from tqdm import tqdm

    images, boxes = [], []
    for r in tqdm(rows, desc="images", disable=not progress, leave=False):
        image, mask = load_pair(r["sample"])
        images.append(image)
        boxes.append(lesion_box(mask))
    return {"images": images, "boxes": boxes, "y": np.array([KINDS.index(r["label"]) for r in rows]),
            "names": [r["name"] for r in rows], "groups": np.array([r["group"] for r in rows])}


def segmenter_boxes(data: dict, segmenter: str | Path, cache: str | Path, progress: bool = False) -> list:
    """The boxes of the segmenter's masks on `data`'s images (None where it finds nothing), cached."""
    from tqdm import tqdm

    from ..inference import SupervisedPipeline
    from ..io import atomic_write_json

    cache = Path(cache)
    key = hashlib.sha256(Path(str(segmenter) + ".safetensors").read_bytes()).hexdigest()[:16]
    doc = json.loads(cache.read_text()) if cache.exists() else {}
    table = doc.setdefault(key, {})
    todo = [i for i, n in enumerate(data["names"]) if n not in table]
    if todo:
        pipe = SupervisedPipeline(segmenter, None)
        for k, i in enumerate(tqdm(todo, desc="segmenter masks", disable=not progress, leave=False)):
            box = lesion_box(pipe.segment(data["images"][i]))
            table[data["names"][i]] = list(box) if box is not None else None
            if (k + 1) % 100 == 0 or k + 1 == len(todo):
                atomic_write_json(cache, doc)
    return [tuple(table[n]) if table[n] is not None else None for n in data["names"]]


def kind_scores(prob: np.ndarray, y: np.ndarray, groups: np.ndarray, n_boot: int = 1000) -> dict:
    """AUC with a 95% CI over whole patient groups, ECE of p(malignant), the counts."""
    mal = np.asarray(y) == 1
    lo, hi = bootstrap_ci(lambda i: auc(prob[i], mal[i]), groups, n_boot=n_boot)
    return {"n": int(len(y)), "n_malignant": int(mal.sum()), "auc": auc(prob, mal), "auc_ci95": [lo, hi],
            "ece": binary_ece(prob, mal)}


def kind_probabilities(cls_model, crop_model, parts: dict) -> tuple[dict, dict]:
    """Per part: the image classifier's calibrated p(malignant | lesion) on the whole image (as `predict`
    gives it) and the crop head's p(malignant) on the crop of `boxes`."""
    import torch

    from ..inference import SupervisedPipeline
    from ..models.loading import load_classifier
    from ..models.presence import calibrate_kind
    from ..training.crop_classifier import crop_logits

    pipe = SupervisedPipeline(None, cls_model)
    classes = list(pipe.classifier.config.classes)
    b, m = classes.index("benign"), classes.index("malignant")
    cal = (pipe.classifier.decision_points or {}).get("kind_calibration")
    head = load_classifier(crop_model)
    p_img, p_crop = {}, {}
    for name, d in parts.items():
        probs = calibrate_kind(np.stack([pipe.image_probabilities(im) for im in d["images"]]), cal, classes)
        p_img[name] = probs[:, m] / np.maximum(probs[:, m] + probs[:, b], 1e-9)
        z = crop_logits(head, d["images"], d["boxes"], "cpu")
        p_crop[name] = torch.softmax(z / head.config.temperature, 1)[:, 1].numpy()
    return p_img, p_crop


def fit_fusion(p_img: np.ndarray, p_crop: np.ndarray, y: np.ndarray) -> dict:
    """The fusion's Platt scaling, its kind threshold (balanced accuracy) and the mix it was fitted at."""
    from ..models.crop import fuse_kind
    from ..models.presence import kind_logit
    from .image_classifier import fit_logistic, kind_threshold

    mal = np.asarray(y) == 1
    z = (kind_logit(p_img) + kind_logit(p_crop)) / 2
    cal = [float(v) for v in fit_logistic(z, mal.astype(float), l2=1e-3, balanced=False)]
    fused = fuse_kind(p_img, p_crop, {"calibration": cal})
    return {"calibration": cal, "malignant_threshold": kind_threshold(fused, mal),
            "kind_odds": float(mal.sum() / max((~mal).sum(), 1)), "n_val_lesions": int(len(y)),
            "chosen_on": "val lesions (BUSI val + BUS-BRA val), the shipped segmenter's masks"}


def fusion_report(p_img: dict, p_crop: dict, y: dict, fusion: dict) -> dict:
    """Per val part: AUC and ECE of the image classifier alone, the crop head alone and the fusion (the
    AUCs compare rankings no fitted weight touched; the ECEs of the fusion are on its own fitting data)."""
    from ..models.crop import fuse_kind

    out = {}
    for name in p_img:
        mal = y[name] == 1
        fused = fuse_kind(p_img[name], p_crop[name], fusion)
        out[name] = {k: {"auc": auc(p, mal), "ece": binary_ece(p, mal)}
                     for k, p in (("image", p_img[name]), ("crop", p_crop[name]), ("fused", fused))}
    return out


def pipeline_answers(pipe, rows: list[dict]) -> dict:
    """`predict` end to end on every image of `rows`: the probabilities (benign, malignant, normal), the
    label shown, the truth."""
    import time

    classes = ("benign", "malignant", "normal")
    probs, shown, y, seconds = [], [], [], 0.0
    for r in rows:
        image, _ = load_pair(r["sample"])
        t0 = time.perf_counter()
        out = pipe.predict(image)
        seconds += time.perf_counter() - t0
        probs.append([out.probabilities[c] for c in classes])
        shown.append(classes.index(out.label))
        y.append(classes.index(r["label"]))
    return {"probs": np.array(probs), "shown": np.array(shown), "y": np.array(y),
            "groups": np.array([r["group"] for r in rows]), "seconds_per_image": seconds / max(len(rows), 1)}


def answer_scores(a: dict) -> dict:
    """What a user of `predict` meets on one part: the 3-class answer where there are normal images, and
    the kind on the lesions (AUC, ECE and balanced accuracy of p(malignant | lesion) and the label)."""
    from ..metrics import classification_metrics
    from .image_classifier import top_label_ece

    probs, shown, y = a["probs"], a["shown"], a["y"]
    lesion = y != 2
    mal = y[lesion] == 1
    p_mal = probs[lesion, 1] / np.maximum(probs[lesion, 0] + probs[lesion, 1], 1e-9)
    said = shown[lesion]
    out = {"n": int(len(y)), "seconds_per_image": a.get("seconds_per_image"), "kind_auc": auc(p_mal, mal), "kind_ece": binary_ece(p_mal, mal),
           "kind_balanced_accuracy": float(((said[mal] == 1).mean() + (said[~mal] == 0).mean()) / 2)
           if mal.any() and (~mal).any() else None,
           "lesions_called_normal": float((said == 2).mean())}
    if (~lesion).any():
        m = classification_metrics(probs, y, ("benign", "malignant", "normal"))
        out.update(accuracy=float((shown == y).mean()), macro_auc=m["macro_auc"], ece_top_label=top_label_ece(probs, y),
                   normal_called_lesion=float((shown[~lesion] != 2).mean()),
                   confusion_matrix=[[int(((y == i) & (shown == j)).sum()) for j in range(3)] for i in range(3)])
    return out


CROP_RULE = ("the BUSI-only crop head is trained once with the command's defaults (Lite0, 224 px, 30 epochs, patience "
             "8, seed 0), its epoch and temperature chosen on BUSI val with the segmenter's masks; then all of BUS-BRA "
             "is read once, and its AUC is reported whether it beats 0.717 or not; nothing is changed after that read")
FUSION_RULE = ("on the val lesions the fused ranking must be at least as good as the image classifier's alone on both "
               "val parts (AUC); then, on one read of the test parts with predict end to end (both rows from that "
               "read), the crop head becomes the default only if, against the image classifier alone, BUS-BRA test and "
               "BUSI test kind AUC are not lower by more than 0.005, BUSI 3-class accuracy drops by at most one image "
               "(1/155), BUS-BRA kind balanced accuracy drops by at most 0.01 and the kind's ECE on BUS-BRA test is not "
               "higher")


def fusion_goes_to_test(val: dict) -> bool:
    """Step 1 of FUSION_RULE (val parts only)."""
    return all(v["fused"]["auc"] >= v["image"]["auc"] for v in val.values())


def kind_head_ships(rows: dict) -> tuple[bool, list[str]]:
    """Step 2 of FUSION_RULE: (ships?, the failed conditions) from `evaluate-kind-head`'s rows."""
    old, new = rows["image classifier"], rows["with the crop head"]
    checks = {"BUS-BRA kind AUC": new["bb_test"]["kind_auc"] >= old["bb_test"]["kind_auc"] - 0.005,
              "BUSI kind AUC": new["busi_test"]["kind_auc"] >= old["busi_test"]["kind_auc"] - 0.005,
              "BUSI accuracy": new["busi_test"]["accuracy"] >= old["busi_test"]["accuracy"] - 1 / 155 - 1e-9,
              "BUS-BRA balanced accuracy": new["bb_test"]["kind_balanced_accuracy"]
              >= old["bb_test"]["kind_balanced_accuracy"] - 0.01,
              "BUS-BRA kind ECE": new["bb_test"]["kind_ece"] <= old["bb_test"]["kind_ece"]}
    failed = [k for k, ok in checks.items() if not ok]
    return not failed, failed
