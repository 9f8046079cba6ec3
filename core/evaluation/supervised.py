"""Test-split metrics of the supervised segmenter and the lesion classifier."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import checkpoint
from ..data.dataset import ImageSet
from ..metrics import auc as _auc, classification_metrics  # noqa: F401  (re-exported for old callers)
from ..io import atomic_write_json


def plot_confusion(cm, classes, out_png, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def evaluate_supervised(data, split, seg_path, cls_path, out=None, part: str = "test") -> dict:
    """Metrics on the split's `part` ("test"; "val" to choose between candidates without touching test)."""
    from ..data.sets import data_dir as _data_dir
    from ..data.dataset import resize_image, resize_mask
    from ..data.sets import split_sets
    from ..data.split import DEFAULT_SPLIT_FILE
    from ..inference import load_classifier, load_segmenter
    from ..models.supervised import CLASSES
    from ..training.supervised import class_index, classifier_logits, predict_masks, segmentation_scores

    data_dir = _data_dir(data)
    split_file = split or DEFAULT_SPLIT_FILE
    result: dict = {"data": Path(data_dir).name, "split": Path(split_file).name, "part": part,
                    "seg_model": str(seg_path) if seg_path else None, "cls_model": str(cls_path) if cls_path else None}
    seg = load_segmenter(seg_path) if seg_path else None
    size = seg.config.image_size if seg else 256
    test = split_sets(data_dir, (part,), size, split_file)[part]
    pred_masks = None
    if seg:
        pred_masks = predict_masks(seg, test, "cpu")
        result["segmenter"] = segmentation_scores(pred_masks, test)
    if cls_path:
        clf = load_classifier(cls_path)
        labels = class_index(test)
        csize = clf.config.image_size
        small = ImageSet(test.samples, np.stack([resize_image(i, csize) for i in test.images]),
                         np.stack([resize_mask(m, csize) for m in test.masks]), test.groups)
        sources = {"gt": small.masks}
        if pred_masks is not None:
            sources["predicted"] = np.stack([resize_mask(m, csize) for m in pred_masks])
        result["classifier"] = {}
        for name, masks in sources.items():
            logits = classifier_logits(clf, small, masks, "cpu") / clf.config.temperature
            probs = torch.softmax(logits, 1).numpy()
            m = classification_metrics(probs, labels, CLASSES)
            result["classifier"][f"{name}_masks"] = m
            if out:
                from .external import plot_reliability

                stem = Path(out).with_name(Path(out).stem)
                plot_confusion(m["confusion_matrix"], CLASSES, f"{stem}_confusion_{name}.png",
                               f"{part}, {name} masks: acc {m['accuracy']:.2f}")
                plot_reliability(probs.max(1), probs.argmax(1) == labels, f"{stem}_reliability_{name}.png",
                                 f"{part}, {name} masks: top-class confidence vs accuracy (ECE {m['ece']:.3f})")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, result, indent=2)
    return result


def select_classifier(data, split, seg_path, candidates: list[str], out=None) -> dict:
    """Score each candidate classifier on the VALIDATION split with the segmenter's predicted masks (as
    the pipeline runs), and pick the best by macro AUC (accuracy breaks ties). The test split is not read."""
    rows = {}
    for c in candidates:
        r = evaluate_supervised(data, split, seg_path, c, None, part="val")["classifier"]["predicted_masks"]
        meta = checkpoint.load_meta(c)
        rows[str(c)] = {"val_accuracy": r["accuracy"], "val_macro_auc": r["macro_auc"], "val_ece": r["ece"],
                        "val_confusion_matrix": r["confusion_matrix"],
                        "backbone": meta.get("model", {}).get("backbone"),
                        "mask_source": meta.get("data", {}).get("mask_source"),
                        "oof_share": meta.get("data", {}).get("oof_share"),
                        "mask_noise": bool(meta.get("mask_noise")), "epoch": meta.get("epoch"),
                        "selected_by": meta.get("selected_by", "nll"),
                        "train_seconds": meta.get("train_seconds")}
    best = max(rows, key=lambda k: (rows[k]["val_macro_auc"], rows[k]["val_accuracy"]))
    result = {"part": "val", "masks": "predicted", "seg_model": str(seg_path), "candidates": rows, "chosen": best,
              "rule": "highest validation macro AUC with predicted masks (accuracy breaks ties)"}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, result, indent=2)
    return result
