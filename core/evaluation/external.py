"""The supervised pipeline on another hospital's images: segmenter Dice and benign-vs-malignant
discrimination, with 95% bootstrap confidence intervals over patients.

Folder: `<root>/images/<id>.<ext>`, `<root>/masks/<id>_mask.png` (any layout `discover` reads),
`<root>/labels.csv` with columns `id,pathology` (benign / malignant; other columns are ignored) and,
optionally, `<root>/groups.csv` (`id,group`: the patient; the bootstrap resamples whole patients, as
images of one patient are not independent). BUS-BRA (`../shared/data/multidomain/busbra_breast`) is
such a folder: 900 images of 514 patients with biopsy-proven pathology.

The pipeline is the one a user runs (`SupervisedPipeline`: segment at the image's size, classify
image + predicted mask). "normal" is not a label there, so the score of malignancy is
p_malignant / (p_benign + p_malignant), and the decision is malignant when p_malignant > p_benign.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.dataset import load_pair
from ..data.discover import discover
from ..data.io import DataError
from ..metrics import dice
from ..metrics import auc as _auc, bootstrap_ci
from ..io import atomic_write_json


def read_labels(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(id -> benign/malignant, id -> patient group) from labels.csv and groups.csv."""
    path = root / "labels.csv"
    if not path.exists():
        raise DataError(f"{root.name}: no labels.csv (columns id,pathology)")
    labels, groups = {}, {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            p = (row.get("pathology") or "").strip().lower()
            if p in ("benign", "malignant"):
                labels[row["id"].strip()] = p
    if not labels:
        raise DataError(f"{path.name}: no row with pathology benign or malignant")
    if (root / "groups.csv").exists():
        with open(root / "groups.csv", newline="") as f:
            groups = {r["id"].strip(): r["group"].strip() for r in csv.DictReader(f)}
    return labels, groups


def binary_metrics(score: np.ndarray, malignant: np.ndarray, groups: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    pred = score > 0.5
    acc = lambda i: float((pred[i] == malignant[i]).mean())
    auc = lambda i: _auc(score[i], malignant[i])
    sens = lambda i: float(pred[i][malignant[i]].mean()) if malignant[i].any() else float("nan")
    spec = lambda i: float((~pred[i][~malignant[i]]).mean()) if (~malignant[i]).any() else float("nan")
    every = np.arange(len(score))
    out = {}
    for name, f in (("auc", auc), ("accuracy", acc), ("sensitivity", sens), ("specificity", spec)):
        out[name] = f(every)
        out[name + "_ci95"] = list(bootstrap_ci(f, groups, n_boot, seed))
    out["balanced_accuracy"] = (out["sensitivity"] + out["specificity"]) / 2
    return out


def evaluate_external(root, seg_path, cls_path, n_boot: int = 2000, limit: int = 0, out=None,
                      device: str = "cpu", progress: bool = True) -> dict:
    from ..inference import SupervisedPipeline

    root = Path(root)
    labels, groups = read_labels(root)
    samples = [s for s in discover(root).samples if Path(s.rel_path).stem in labels]
    if limit:
        samples = samples[:limit]
    if not samples:
        raise DataError(f"{root.name}: no image matches an id of labels.csv")
    pipe = SupervisedPipeline(seg_path, cls_path, device)
    classes = pipe.classes
    rows = []
    for s in tqdm(samples, desc=f"{root.name}: segment + classify", disable=not progress):
        image, truth = load_pair(s)
        mask = pipe.segment(image)
        pred = pipe.classify(image, mask)
        with_truth = pipe.classify(image, truth)
        sid = Path(s.rel_path).stem
        rows.append({"id": sid, "group": groups.get(sid, sid), "malignant": labels[sid] == "malignant",
                     "dice": dice(mask, truth) if truth.any() else float("nan"),
                     "empty_prediction": not mask.any(),
                     **{f"p_{c}": pred.probabilities[c] for c in classes},
                     "class": pred.label, "p_malignant_gt_mask": with_truth.probabilities["malignant"],
                     "p_benign_gt_mask": with_truth.probabilities["benign"]})
    g = np.array([r["group"] for r in rows])
    mal = np.array([r["malignant"] for r in rows])
    d = np.array([r["dice"] for r in rows])
    score = lambda b, m: np.array(m) / np.maximum(np.array(b) + np.array(m), 1e-12)
    pred_score = score([r["p_benign"] for r in rows], [r["p_malignant"] for r in rows])
    gt_score = score([r["p_benign_gt_mask"] for r in rows], [r["p_malignant_gt_mask"] for r in rows])
    result = {
        "data": root.name, "n_images": len(rows), "n_patients": int(len(np.unique(g))),
        "n_malignant": int(mal.sum()), "n_benign": int((~mal).sum()),
        "segmenter": str(seg_path), "classifier": str(cls_path), "bootstrap": {"resamples": n_boot, "unit": "patient"},
        "segmenter_dice": float(np.nanmean(d)),
        "segmenter_dice_ci95": list(bootstrap_ci(lambda i: float(np.nanmean(d[i])), g, n_boot)),
        "empty_prediction_rate": float(np.mean([r["empty_prediction"] for r in rows])),
        "called_normal_rate": float(np.mean([r["class"] == "normal" for r in rows])),
        "pipeline": binary_metrics(pred_score, mal, g, n_boot),
        "classifier_with_gt_masks": binary_metrics(gt_score, mal, g, n_boot),
    }
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, result, indent=2)
        with open(out.with_suffix(".csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        plot_reliability(pred_score, mal, out.with_name(out.stem + "_reliability.png"),
                         f"{root.name}: P(malignant | benign or malignant), pipeline")
    return result


def plot_reliability(prob: np.ndarray, positive: np.ndarray, out_png, title: str, n_bins: int = 10) -> None:
    """Reliability diagram: observed frequency against predicted probability, with bin counts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, n_bins + 1)
    centres, freq, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (prob >= lo) & ((prob < hi) | (hi == 1.0))
        if sel.any():
            centres.append(prob[sel].mean())
            freq.append(positive[sel].mean())
            counts.append(int(sel.sum()))
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "--", color="0.6", label="perfect calibration")
    ax.plot(centres, freq, "o-", color="C3", label="observed")
    for x, y, n in zip(centres, freq, counts):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
