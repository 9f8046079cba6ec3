"""Issue 28: decision points and the evaluation of the image-level classifier.

Decision points are chosen on the validation parts only (BUSI val + BUS-BRA val; never a test image):
- **presence**: p(lesion) = 1 - p(normal); the threshold is the highest one that calls at most
  `max_missed` (2%) of the validation lesions "normal";
- **kind**: p(malignant | lesion) = p(m) / (p(b) + p(m)); the threshold that maximises the balanced
  accuracy (benign vs malignant) on the validation lesions.
The test parts are then read once; every read is recorded (`docs/image_classifier_test_reads.json`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..metrics import auc, classification_metrics
from ..models.supervised import CLASSES

B, M, N = (CLASSES.index(c) for c in ("benign", "malignant", "normal"))


def p_lesion(probs: np.ndarray) -> np.ndarray:
    return 1.0 - probs[:, N]


def p_malignant(probs: np.ndarray) -> np.ndarray:
    return probs[:, M] / np.maximum(probs[:, M] + probs[:, B], 1e-9)


def presence_threshold(score: np.ndarray, lesion: np.ndarray, max_missed: float = 0.02) -> float:
    """The highest threshold that calls at most `max_missed` of the lesions 'normal' (score < threshold)."""
    s = np.sort(score[lesion])
    k = int(np.floor(max_missed * len(s)))      # lesions allowed below the threshold
    return float(s[k]) if len(s) else 0.5


def kind_threshold(score: np.ndarray, malignant: np.ndarray) -> float:
    best, best_t = -1.0, 0.5
    for t in np.unique(np.concatenate([score, [0.5]])):
        pred = score >= t
        sens = pred[malignant].mean() if malignant.any() else 0.0
        spec = (~pred[~malignant]).mean() if (~malignant).any() else 0.0
        if (sens + spec) / 2 > best:
            best, best_t = (sens + spec) / 2, float(t)
    return best_t


def decision_points(probs: np.ndarray, y: np.ndarray, max_missed: float = 0.02) -> dict:
    lesion = y != N
    return {"presence_threshold": presence_threshold(p_lesion(probs), lesion, max_missed),
            "malignant_threshold": kind_threshold(p_malignant(probs[lesion]), y[lesion] == M),
            "max_missed_lesions": max_missed, "chosen_on": "validation parts (BUSI val + BUS-BRA val)",
            "n_val": int(len(y)), "n_val_lesions": int(lesion.sum())}


def decide(probs: np.ndarray, points: dict) -> np.ndarray:
    """3-class labels from the decision points: normal below the presence threshold, else the kind."""
    present = p_lesion(probs) >= points["presence_threshold"]
    kind = np.where(p_malignant(probs) >= points["malignant_threshold"], M, B)
    return np.where(present, kind, N)


def top_label_ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    return classification_metrics(probs, y, CLASSES, n_bins)["ece"]


def binary_ece(score: np.ndarray, positive: np.ndarray, n_bins: int = 10) -> float:
    edges = np.linspace(0, 1, n_bins + 1)
    e = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (score >= lo) & ((score < hi) | (hi == 1.0))
        if sel.any():
            e += sel.mean() * abs(positive[sel].mean() - score[sel].mean())
    return float(e)


def part_metrics(probs: np.ndarray, y: np.ndarray, points: dict) -> dict:
    """What a user sees on one part: the decided labels, the ranking quality, the calibration."""
    pred = decide(probs, points)
    lesion, normal = y != N, y == N
    out = {"n": int(len(y)), "n_normal": int(normal.sum()), "n_lesion": int(lesion.sum())}
    if normal.any():
        cm = np.zeros((3, 3), int)
        for t, p in zip(y, pred):
            cm[t, p] += 1
        out.update(accuracy=float((pred == y).mean()),
                   macro_auc=classification_metrics(probs, y, CLASSES)["macro_auc"],
                   balanced_accuracy=float(np.mean([(pred[y == c] == c).mean() for c in range(3) if (y == c).any()])),
                   normal_called_lesion=float((pred[normal] != N).mean()),
                   confusion_matrix=cm.tolist(), ece_top_label=top_label_ece(probs, y),
                   presence_auc=auc(p_lesion(probs), lesion))
    out["lesions_called_normal"] = float((pred[lesion] == N).mean()) if lesion.any() else None
    mal = y[lesion] == M
    score = p_malignant(probs[lesion])
    out.update(benign_malignant_auc=auc(score, mal), benign_malignant_ece=binary_ece(score, mal),
               benign_malignant_balanced_accuracy=float(((score[mal] >= points["malignant_threshold"]).mean()
                                                         + (score[~mal] < points["malignant_threshold"]).mean()) / 2)
               if mal.any() and (~mal).any() else None)
    return out


def record_test_read(path: Path, checkpoint_name: str, parts: list[str]) -> int:
    """Append this read of the test parts to the record; returns how many reads there have been."""
    reads = json.loads(path.read_text()) if path.exists() else []
    reads.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": checkpoint_name, "parts": parts})
    path.write_text(json.dumps(reads, indent=1))
    return len(reads)
