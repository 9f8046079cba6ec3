"""Issue 28: the image-level lesion classifier, trained end to end on the CPU (the GPU when present).

Data from two sites: BUSI's training split (benign / malignant / normal) and BUS-BRA's training part
(benign / malignant, biopsy-proven). Selection on the validation parts only (BUSI val: 3-class macro AUC;
BUS-BRA val: benign-vs-malignant AUC; their mean). Ultrasound augmentation: the shared geometric and
intensity transforms (speckle, gain, gamma), plus a random depth crop (the bottom of the image cut off and
the rest stretched back, as when the sonographer changes the depth). Temperature fitted on the
validation parts. Resumable (`<save_path>.resume.pt`), one CSV row per epoch, a progress bar.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint
from ..data.dataset import AugmentConfig, ImageSet, augment, to_tensor
from ..metrics import auc, classification_metrics
from ..models.supervised import CLASSES, ClassifierConfig, ImageClassifier
from .supervised import SupervisedTrainConfig, fit, fit_temperature

log = logging.getLogger(__name__)

US_AUGMENT = AugmentConfig(hflip=0.5, rotate_deg=10.0, scale=(0.85, 1.15), translate=0.08, brightness=0.2,
                           contrast=0.25, gamma=(0.7, 1.4), speckle=0.15, blur=0.1)


def busbra_labels(set_dir: str | Path) -> dict[str, str]:
    """BUS-BRA's `labels.csv`: image id -> 'benign' / 'malignant' (biopsy-proven)."""
    with open(Path(set_dir) / "labels.csv", newline="") as f:
        return {r["id"]: r["pathology"].strip().lower() for r in csv.DictReader(f)}


def labelled(data: ImageSet, labels: dict[str, str] | None = None) -> np.ndarray:
    """Class index per image: from the class folder (BUSI) or from `labels` keyed by file stem."""
    out = []
    for s in data.samples:
        name = s.label if labels is None else labels.get(Path(s.rel_path).stem)
        if name not in CLASSES:
            raise ValueError(f"{s.rel_path}: no class label (got {name!r})")
        out.append(CLASSES.index(name))
    return np.array(out)


def depth_crop(image: np.ndarray, rng: np.random.Generator, max_cut: float = 0.2,
               mask: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Cut up to `max_cut` of the image's depth (its bottom) and stretch the rest back (the same cut for
    `mask` when given; then both are returned)."""
    h, w = image.shape[:2]
    keep = int(round(h * (1 - rng.uniform(0, max_cut))))
    out = cv2.resize(np.ascontiguousarray(image[:keep]), (w, h), interpolation=cv2.INTER_LINEAR)
    if mask is None:
        return out
    return out, cv2.resize(np.ascontiguousarray(mask[:keep], dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0


def lesion_free_crops(data: ImageSet, size: int, rng: np.random.Generator, share: float = 0.35,
                      min_side: float = 0.45, max_side: float = 0.7, tries: int = 30) -> np.ndarray:
    """Extra "normal" evidence from lesion images: for a random `share` of them, one square crop of the
    full-resolution image (side `min_side`-`max_side` of the shorter side) that does not touch the lesion's
    bounding box widened by 10% of the image, resized to `size`. Images whose lesion leaves no such crop
    give none. Teaches "tissue without a lesion" on every site, including BUS-BRA, which has no normal scans."""
    from ..data.dataset import load_pair, resize_image

    out = []
    for i in np.flatnonzero(rng.random(len(data)) < share):
        if not data.has_lesion(int(i)):
            continue
        img, mask = load_pair(data.samples[int(i)])
        h, w = mask.shape
        ys, xs = np.nonzero(mask)
        m = 0.1 * max(h, w)
        y0, y1, x0, x1 = ys.min() - m, ys.max() + m, xs.min() - m, xs.max() + m
        for _ in range(tries):
            side = int(min(h, w) * rng.uniform(min_side, max_side))
            cy, cx = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            if cy + side <= y0 or cy >= y1 or cx + side <= x0 or cx >= x1:
                out.append(resize_image(np.ascontiguousarray(img[cy:cy + side, cx:cx + side]), size))
                break
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def image_batch(images: np.ndarray, idx, rng: np.random.Generator | None,
                masks: np.ndarray | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Images (and, when `masks` is given, their masks under the same augmentation) as tensors."""
    out, out_masks = [], []
    for i in idx:
        img = images[i]
        mask = masks[i] if masks is not None else np.zeros(img.shape[:2], bool)
        if rng is not None:
            img, mask = augment(img, mask, rng, US_AUGMENT)
            if rng.random() < 0.5:
                img, mask = depth_crop(img, rng, mask=mask)
        out.append(to_tensor(np.ascontiguousarray(img)))
        out_masks.append(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)))
    if masks is None:
        return torch.stack(out)
    return torch.stack(out), torch.stack(out_masks)[:, None]


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice on the images that have a lesion (BCE alone on lesion-free ones)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    has = target.flatten(1).sum(1) > 0
    if not has.any():
        return bce
    inter = (p * target).flatten(1).sum(1)[has]
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(1)[has] + target.flatten(1).sum(1)[has] + 1)
    return bce + dice.mean()


@torch.no_grad()
def logits_of(model: ImageClassifier, images: np.ndarray, device, batch_size: int = 32, tta: bool = True) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = image_batch(images, range(i, min(len(images), i + batch_size)), None).to(device)
        z = model(x)
        if tta:
            z = (z + model(x.flip(-1))) / 2
        out.append(z.cpu())
    return torch.cat(out)


def malignancy_score(probs: np.ndarray) -> np.ndarray:
    """p(malignant | lesion): the benign-vs-malignant score used on BUS-BRA."""
    b, m = CLASSES.index("benign"), CLASSES.index("malignant")
    return probs[:, m] / np.maximum(probs[:, m] + probs[:, b], 1e-9)


def validation_score(probs_busi: np.ndarray, y_busi: np.ndarray, probs_bb: np.ndarray, y_bb: np.ndarray) -> dict:
    busi = classification_metrics(probs_busi, y_busi, CLASSES)["macro_auc"]
    bb = auc(malignancy_score(probs_bb), y_bb == CLASSES.index("malignant")) if len(y_bb) else float("nan")
    parts = [v for v in (busi, bb) if v == v]
    return {"busi_macro_auc": busi, "busbra_auc": bb, "score": float(np.mean(parts)) if parts else 0.0}


def train_image_classifier(model_cfg: ClassifierConfig, cfg: SupervisedTrainConfig, train: dict, val: dict,
                           data_info: dict, progress: bool = True, job=None, crops_share: float = 0.0,
                           multitask: bool = False) -> dict:
    """train/val: {"busi": (ImageSet, labels), "busbra": (ImageSet, labels)} ("busbra" may be absent).
    crops_share > 0: lesion-free crops of that share of the training lesion images join as "normal".
    multitask: DeepLabV3+ with the classification head on its encoder, trained on the masks too."""
    from ..device import pick_device
    from ..models.supervised import MultiTaskClassifier

    device = pick_device(cfg.device)
    model = (MultiTaskClassifier if multitask else ImageClassifier)(model_cfg).to(device)
    images = np.concatenate([s.images for s, _ in train.values()])
    masks = np.concatenate([s.masks for s, _ in train.values()])
    y = np.concatenate([l for _, l in train.values()])
    if crops_share > 0:
        rng = np.random.default_rng(cfg.seed + 1)
        crops = [lesion_free_crops(s, model_cfg.image_size, rng, crops_share) for s, _ in train.values()]
        data_info = {**data_info, "lesion_free_crops": {k: len(c) for k, c in zip(train, crops)},
                     "lesion_free_crops_share": crops_share}
        images = np.concatenate([images, *crops])
        masks = np.concatenate([masks, np.zeros((len(images) - len(masks), *masks.shape[1:]), bool)])
        y = np.concatenate([y, np.full(sum(len(c) for c in crops), CLASSES.index("normal"))])
    counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
    weights = torch.tensor(counts.sum() / np.maximum(counts, 1) / len(CLASSES), dtype=torch.float32, device=device)
    (vb, yb) = val["busi"]
    vbb, ybb = val.get("busbra", (None, np.zeros(0, int)))

    def step(idx, rng):
        t = torch.as_tensor(y[idx], device=device)
        if multitask:
            x, m = image_batch(images, idx, rng if cfg.augment else None, masks)
            mask_logits, logits = model.forward_both(x.to(device))
            extra = mask_loss(mask_logits, m.to(device))
        else:
            logits, extra = model(image_batch(images, idx, rng if cfg.augment else None).to(device)), 0.0
        loss = F.cross_entropy(logits, t, weight=weights, label_smoothing=0.05) + extra
        return loss, float((logits.argmax(1) == t).float().mean())

    def val_logits():
        zb = logits_of(model, vb.images, device)
        zbb = logits_of(model, vbb.images, device) if vbb is not None else torch.zeros(0, len(CLASSES))
        return zb, zbb

    def validate():
        zb, zbb = val_logits()
        return validation_score(torch.softmax(zb, 1).numpy(), yb, torch.softmax(zbb, 1).numpy(), ybb)["score"]

    def save_best(score, epoch, seconds):
        zb, zbb = val_logits()
        z = torch.cat([zb, zbb])
        t = torch.as_tensor(np.concatenate([yb, ybb]))
        model.config.temperature = fit_temperature(z, t)
        probs_b = torch.softmax(zb / model.config.temperature, 1).numpy()
        m = classification_metrics(probs_b, yb, CLASSES)
        checkpoint.save(cfg.save_path, model.state_dict(), {
            "kind": "classifier", "model": model.config_dict(), "train": asdict(cfg), "data": data_info,
            "val_score": score, "val_accuracy": m["accuracy"], "val_macro_auc": m["macro_auc"],
            "epoch": epoch, "train_seconds": seconds, "selected_by": "mean of BUSI val macro AUC and BUS-BRA val AUC",
            "augment": asdict(US_AUGMENT) | {"depth_crop": 0.2}})

    return fit(model, cfg, len(images), step, validate, save_best, f"image classifier / {model_cfg.backbone}",
               progress, metric_name="accuracy (train) / AUC (val)", val_name="validation AUC", job=job,
               resume_path=str(cfg.save_path) + ".resume.pt")


def fold_parts(train: dict, fold: int, k: int, seed: int = 0) -> tuple[dict, dict]:
    """(the training parts without fold `fold`, fold `fold`) for out-of-fold probabilities: each set is cut
    into k folds of whole groups (patient / near-duplicate: a group never sits on both sides), each class
    spread evenly over the folds (`group_folds`)."""
    from .oof import group_folds

    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} of {k}: the fold must be 0..{k - 1}")
    keep, held = {}, {}
    for name, (data, y) in train.items():
        f = group_folds(list(data.groups), [CLASSES[v] for v in y], k, seed)
        keep[name] = (data.subset(np.flatnonzero(f != fold).tolist()), y[f != fold])
        held[name] = (data.subset(np.flatnonzero(f == fold).tolist()), y[f == fold])
    return keep, held


def save_out_of_fold(model_path: str | Path, held: dict, out: str | Path, device="cpu") -> dict:
    """The trained checkpoint's logits (flip TTA, before its temperature) on the fold it never trained on,
    per set with names and labels: what a calibration fitted out of fold reads. Written atomically."""
    from ..io import atomic_write_json

    model = load_image_classifier(model_path, device)
    doc = {"checkpoint": str(model_path), "temperature": model.config.temperature, "classes": list(CLASSES),
           "sets": {name: {"names": data.names, "labels": [int(v) for v in y],
                           "logits": logits_of(model, data.images, device).tolist()}
                    for name, (data, y) in held.items()}}
    atomic_write_json(out, doc)
    return doc


def load_image_classifier(path: str | Path, device="cpu") -> ImageClassifier:
    from ..models.loading import load_classifier

    model = load_classifier(path, device)
    if not isinstance(model, ImageClassifier):
        raise checkpoint.CheckpointError(f"{Path(path).name}: not an image-level classifier")
    return model
