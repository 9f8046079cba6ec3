"""Issue 28: the lesion-crop benign / malignant head, trained end to end on the CPU (the GPU when present).

The whole-image classifier learns each site's look as well as the lesion's, and a model trained on BUSI
alone ranks BUS-BRA's lesions poorly (AUC 0.717). The kind of a lesion is written in the lesion and its
rim (shape, margin, orientation, posterior shadow; the BI-RADS descriptors), so this head sees only a
square crop around it: the bounding box of the mask's largest component widened by `margin` of its longer
side on every side, zero-padded where it leaves the image, resized to the model's size.

Training crops come from the true masks with the box jittered (its sides moved, its centre shifted, the
margin drawn from a range) so that the head tolerates a segmenter's box; the shared ultrasound intensity
augmentation follows. Selection and temperature on the val parts, with the shipped segmenter's masks (what
`predict` will give the head). Resumable (`<save_path>.resume.pt`), one CSV row per epoch, a progress bar.

Measured (docs/results.md): the hope above did not hold. Trained on BUSI alone it ranks all of BUS-BRA at
0.682 (the whole-image model 0.717); fused with the shipped classifier's kind it ranked better on the val
lesions and worse on the test parts, so it is not shipped.
"""
from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint
from ..data.dataset import augment, to_tensor
from ..metrics import auc
from ..models.crop import CROP_MARGIN, JITTER, KINDS, Box, CropClassifier, lesion_crop
from ..models.supervised import ClassifierConfig
from .image_classifier import US_AUGMENT
from .supervised import SupervisedTrainConfig, fit, fit_temperature

log = logging.getLogger(__name__)

def crop_batch(images: list[np.ndarray], boxes: list[Box | None], idx, size: int,
               rng: np.random.Generator | None, margin: float = CROP_MARGIN) -> torch.Tensor:
    """Crops as a tensor batch; with `rng` the box jitter and the ultrasound augmentation."""
    out = []
    for i in idx:
        crop = lesion_crop(images[i], boxes[i], size, margin, rng)
        if rng is not None:
            crop, _ = augment(crop, np.zeros(crop.shape[:2], bool), rng, US_AUGMENT)
        out.append(to_tensor(np.ascontiguousarray(crop)))
    return torch.stack(out)


@torch.no_grad()
def crop_logits(model: CropClassifier, images: list[np.ndarray], boxes: list[Box | None], device,
                batch_size: int = 32, tta: bool = True) -> torch.Tensor:
    """Logits (before the temperature) of every image's crop; flip TTA."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = crop_batch(images, boxes, range(i, min(len(images), i + batch_size)), model.config.image_size, None,
                       model.config.extra["crop_margin"]).to(device)
        z = model(x)
        out.append(((z + model(x.flip(-1))) / 2 if tta else z).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(KINDS))


def kind_auc(logits: torch.Tensor, y: np.ndarray) -> float:
    return auc(torch.softmax(logits, 1)[:, 1].numpy(), np.asarray(y) == 1)


def train_crop_classifier(model_cfg: ClassifierConfig, cfg: SupervisedTrainConfig, train: dict, val: dict,
                          data_info: dict, progress: bool = True, job=None) -> dict:
    """train: {"images": [full-resolution uint8], "boxes": [true masks' boxes], "y": 0 benign / 1 malignant};
    val: the same with the segmenter's boxes. Selection: val AUC; the temperature is fitted on val."""
    from ..device import pick_device

    device = pick_device(cfg.device)
    model = CropClassifier(model_cfg).to(device)
    y = np.asarray(train["y"])
    counts = np.bincount(y, minlength=2).astype(np.float64)
    weights = torch.tensor(counts.sum() / np.maximum(counts, 1) / 2, dtype=torch.float32, device=device)
    size = model_cfg.image_size

    def step(idx, rng):
        t = torch.as_tensor(y[idx], device=device)
        logits = model(crop_batch(train["images"], train["boxes"], idx, size, rng if cfg.augment else None).to(device))
        loss = F.cross_entropy(logits, t, weight=weights, label_smoothing=0.05)
        return loss, float((logits.argmax(1) == t).float().mean())

    def validate():
        return kind_auc(crop_logits(model, val["images"], val["boxes"], device), val["y"])

    def save_best(score, epoch, seconds):
        z = crop_logits(model, val["images"], val["boxes"], device)
        model.config.temperature = fit_temperature(z, torch.as_tensor(np.asarray(val["y"])))
        checkpoint.save(cfg.save_path, model.state_dict(), {
            "kind": "classifier", "architecture": "lesion_crop", "model": model.config_dict(), "train": asdict(cfg),
            "data": data_info, "val_auc": score, "epoch": epoch, "train_seconds": seconds,
            "selected_by": "val AUC, benign vs malignant, crops from the shipped segmenter's masks",
            "augment": asdict(US_AUGMENT) | {"box_jitter": JITTER}})

    return fit(model, cfg, len(y), step, validate, save_best, f"lesion-crop classifier / {model_cfg.backbone}",
               progress, metric_name="accuracy (train) / AUC (val)", val_name="validation AUC", job=job,
               resume_path=str(cfg.save_path) + ".resume.pt")
