"""Supervised training: the smp segmenter and the 4-channel lesion classifier.

Both use one loop (`fit`): mini-batches with augmentation, validation each epoch, early stopping on
the validation score, the best checkpoint written atomically, a CSV log and a curves plot.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint
from ..data.dataset import AugmentConfig, ImageSet, augment, mask_tensor, resize_image, to_tensor
from ..data.mask_noise import MaskNoise, perturb_mask
from ..losses import bce_dice_loss
from ..metrics import dice
from ..models.supervised import CLASSES, ClassifierConfig, LesionClassifier, Segmenter, SegmenterConfig
from .logs import plot_curves

log = logging.getLogger(__name__)


@dataclass
class SupervisedTrainConfig:
    epochs: int = 30
    lr: float = 3e-4
    batch_size: int = 8
    patience: int = 6
    seed: int = 0
    device: str = "auto"
    save_path: str = "runs/segmenter"
    augment: bool = True


def fit(model: torch.nn.Module, cfg: SupervisedTrainConfig, n_train: int,
        step: Callable[[np.ndarray, np.random.Generator], tuple[torch.Tensor, float]],
        validate: Callable[[], float], save_best: Callable[[float, int, float], None], title: str,
        progress: bool = True,
        metric_name: str = "Dice", val_name: str = "validation Dice", job=None,
        resume_path: str | None = None) -> dict:
    """Mini-batch training on the shared engine. `step(indices, rng)` returns (loss, a training
    metric); higher validate() is better; save_best is called on each improvement."""
    from .engine import BestCheckpoint, CsvLogger, EarlyStopping, Engine, Progress

    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    save_path = Path(cfg.save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    steps_csv, epochs_csv = str(save_path) + ".steps.csv", str(save_path) + ".epochs.csv"
    per_epoch = max(1, sum(1 for i in range(0, n_train, cfg.batch_size) if min(cfg.batch_size, n_train - i) > 1))
    batches: list[np.ndarray] = []

    def step_fn(engine) -> dict:
        if not batches:  # a new epoch: a fresh order; BatchNorm needs 2+ samples per batch
            order = rng.permutation(n_train)
            batches.extend(b for b in (order[i:i + cfg.batch_size] for i in range(0, n_train, cfg.batch_size))
                           if len(b) > 1)
        loss, metric = step(batches.pop(0), rng)
        return {"loss": loss, "dice": float(metric)}

    def validate_fn(engine) -> dict:
        batches.clear()
        return {"val_dice": float(validate())}

    callbacks = [CsvLogger(steps_csv, ["epoch", "step", "loss", "dice"], epochs_csv,
                           ["epoch", "last_step", "val_dice", "seconds"]),
                 Progress(bar=progress, desc="epoch"),
                 BestCheckpoint(lambda e, m: save_best(m["val_dice"], e.state.epoch, e.state.seconds)),
                 EarlyStopping(cfg.patience)]
    engine = Engine(model, opt, step_fn, epochs=cfg.epochs, steps_per_epoch=per_epoch, validate_fn=validate_fn,
                    callbacks=callbacks, job=job, scheduler=sched, monitor="val_dice",
                    resume_path=resume_path)
    if resume_path:
        engine.restore()
    summary = engine.run()
    try:
        plot_curves(steps_csv, epochs_csv, str(save_path) + ".curves.png", title, step_key="step", smooth=20,
                    metric_name=metric_name, val_name=val_name)
    except Exception as exc:
        log.warning("could not plot curves: %s", exc)
    return {"best_val": float(engine.state.best), "best_epoch": engine.state.best_epoch,
            "seconds": summary["seconds"], "cancelled": summary["cancelled"], "diverged": summary["diverged"],
            "status": summary["status"]}


def _batch(data: ImageSet, idx, rng, size: int | None = None, masks: np.ndarray | None = None,
           mask_fn: Callable[[int, np.ndarray, np.random.Generator], np.ndarray] | None = None):
    imgs, msks = [], []
    for i in idx:
        img, m = data.images[i], (data.masks[i] if masks is None else masks[i])
        if mask_fn is not None and rng is not None:
            m = mask_fn(i, m, rng)
        if rng is not None:
            img, m = augment(img, m, rng, AugmentConfig())
        if size and img.shape[0] != size:
            img = resize_image(img, size)
            m = resize_image(m.astype(np.uint8), size) > 0
        imgs.append(to_tensor(img))
        msks.append(mask_tensor(m))
    return torch.stack(imgs), torch.stack(msks)


@torch.no_grad()
def predict_masks(model: Segmenter, data: ImageSet, device, batch_size: int = 8) -> np.ndarray:
    """Binary masks (N, S, S) predicted at the set's working size."""
    out = []
    for i in range(0, len(data), batch_size):
        x, _ = _batch(data, range(i, min(len(data), i + batch_size)), None)
        out.append((model.predict(x.to(device))[:, 0] > 0).cpu().numpy())
    return np.concatenate(out)


def segmentation_scores(pred: np.ndarray, data: ImageSet) -> dict:
    """Per-image Dice/IoU on lesion images, and the false-positive rate on lesion-free images."""
    from ..metrics import iou, mean_ci95

    lesion = [i for i in range(len(data)) if data.has_lesion(i)]
    normal = [i for i in range(len(data)) if not data.has_lesion(i)]
    d = [dice(pred[i], data.masks[i]) for i in lesion]
    j = [iou(pred[i], data.masks[i]) for i in lesion]
    by_class = {}
    for label in sorted({data.samples[i].label for i in lesion}):
        sel = [k for k, i in enumerate(lesion) if data.samples[i].label == label]
        by_class[label] = {"dice": float(np.mean([d[k] for k in sel])), "n": len(sel)}
    m, lo, hi = mean_ci95(d)
    return {"dice": m, "dice_ci95": [lo, hi], "iou": float(np.mean(j)), "n_lesion": len(lesion),
            "per_class": by_class,
            "normal_false_positive_rate": float(np.mean([pred[i].any() for i in normal])) if normal else None,
            "n_normal": len(normal)}


def train_segmenter(model_cfg: SegmenterConfig, cfg: SupervisedTrainConfig, train: ImageSet, val: ImageSet,
                    data_info: dict, progress: bool = True) -> dict:
    from ..device import pick_device

    device = pick_device(cfg.device)
    model = Segmenter(model_cfg).to(device)

    def step(idx, rng):
        x, y = _batch(train, idx, rng if cfg.augment else None)
        logits = model(x.to(device))[:, 0]
        y = y.to(device)
        return bce_dice_loss(logits, y), dice(logits.detach() > 0, y > 0.5)

    def validate():
        return segmentation_scores(predict_masks(model, val, device), val)["dice"]

    def save_best(score, epoch, seconds):
        checkpoint.save(cfg.save_path, model.state_dict(), {
            "kind": "segmenter", "model": model.config_dict(), "train": asdict(cfg), "data": data_info,
            "val_dice": score, "epoch": epoch, "train_seconds": seconds})

    summary = fit(model, cfg, len(train), step, validate, save_best,
                  f"{model_cfg.arch} / {model_cfg.encoder}", progress)
    return summary


# ----------------------------------------------------------------------------------- classifier
def class_index(data: ImageSet) -> np.ndarray:
    labels = [s.label for s in data.samples]
    unknown = sorted({l for l in labels if l not in CLASSES})
    if unknown:
        raise ValueError(f"classifier needs class folders named {CLASSES}; found {unknown}")
    return np.array([CLASSES.index(l) for l in labels])


@torch.no_grad()
def classifier_logits(model: LesionClassifier, data: ImageSet, masks: np.ndarray, device,
                      batch_size: int = 16) -> torch.Tensor:
    model.eval()
    size = model.config.image_size
    out = []
    for i in range(0, len(data), batch_size):
        x, m = _batch(data, range(i, min(len(data), i + batch_size)), None, size, masks)
        out.append(model(x.to(device), m[:, None].to(device)).cpu())
    return torch.cat(out)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature T minimising the validation NLL of softmax(logits / T) (grid + refinement)."""
    grid = torch.exp(torch.linspace(np.log(0.2), np.log(10), 200))
    nll = torch.stack([F.cross_entropy(logits / t, labels) for t in grid])
    return float(grid[int(nll.argmin())])


def train_classifier(model_cfg: ClassifierConfig, cfg: SupervisedTrainConfig, train: ImageSet, val: ImageSet,
                     train_masks: np.ndarray, val_masks: np.ndarray, data_info: dict,
                     progress: bool = True, mask_noise: MaskNoise | None = None,
                     alt_masks: np.ndarray | None = None, alt_share: float = 0.0, select_by: str = "nll") -> dict:
    """`mask_noise`: train on masks with a segmenter's kinds of error (`core.data.mask_noise`), so that
    the classifier does not learn "empty mask = normal" from ground-truth masks. `alt_masks` (e.g.
    out-of-fold predicted masks) replace a training image's mask with probability `alt_share`."""
    from ..device import pick_device

    device = pick_device(cfg.device)
    model = LesionClassifier(model_cfg).to(device)
    y_train, y_val = class_index(train), class_index(val)
    counts = np.bincount(y_train, minlength=len(CLASSES)).astype(np.float64)
    # class imbalance: inverse-frequency weights, normalised to mean 1
    weights = torch.tensor(counts.sum() / np.maximum(counts, 1) / len(CLASSES), dtype=torch.float32, device=device)

    donors = [m for m in train_masks if m.any()]

    def noisy(i, m, rng):
        if alt_masks is not None and rng.random() < alt_share:
            return alt_masks[i]
        return perturb_mask(m, rng, donors, mask_noise) if mask_noise is not None else m

    use_fn = mask_noise is not None or (alt_masks is not None and alt_share > 0)

    def step(idx, rng):
        x, m = _batch(train, idx, rng if cfg.augment else None, model_cfg.image_size, train_masks,
                      noisy if use_fn else None)
        logits = model(x.to(device), m[:, None].to(device))
        y = torch.as_tensor(y_train[idx], device=device)
        loss = F.cross_entropy(logits, y, weight=weights)
        return loss, float((logits.argmax(1) == y).float().mean())

    def validate():
        logits = classifier_logits(model, val, val_masks, device)
        if select_by == "auc":   # macro one-vs-rest AUC: ranking quality, which temperature scaling cannot fix
            from ..metrics import classification_metrics
            auc = classification_metrics(torch.softmax(logits, 1).numpy(), y_val, CLASSES)["macro_auc"]
            return auc if auc == auc else 0.0   # NaN (a class missing from val): no information
        # score for early stopping: minus the validation NLL (higher is better)
        return -float(F.cross_entropy(logits, torch.as_tensor(y_val)))

    def save_best(score, epoch, seconds):
        logits = classifier_logits(model, val, val_masks, device)
        model.config.temperature = fit_temperature(logits, torch.as_tensor(y_val))
        acc = float((logits.argmax(1).numpy() == y_val).mean())
        nll = float(F.cross_entropy(logits / model.config.temperature, torch.as_tensor(y_val)))
        checkpoint.save(cfg.save_path, model.state_dict(), {
            "kind": "classifier", "model": model.config_dict(), "train": asdict(cfg), "data": data_info,
            "val_nll": -score if select_by == "nll" else nll, "val_accuracy": acc, "epoch": epoch,
            "train_seconds": seconds, "selected_by": select_by,
            **({"val_macro_auc": score} if select_by == "auc" else {}),
            "mask_noise": asdict(mask_noise) if mask_noise is not None else None,
            "alt_mask_share": alt_share if alt_masks is not None else 0.0})

    return fit(model, cfg, len(train), step, validate, save_best, f"classifier / {model_cfg.backbone}", progress,
               metric_name="accuracy (train) / " + ("macro AUC" if select_by == "auc" else "-NLL") + " (val)",
               val_name="validation macro AUC" if select_by == "auc" else "validation -NLL")
