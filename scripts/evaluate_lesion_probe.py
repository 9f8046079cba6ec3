"""Issue 18, step 3 (and issue 28): a shipped lesion classifier measured end to end, as a user meets it.

    python scripts/evaluate_lesion_probe.py [--classifier checkpoints/classifier_medsam_probe] [--out JSON]

1. `predict` (SupervisedPipeline.predict: presence head, segmenter, type head) on every BUSI test image:
   3-class accuracy, macro AUC, normal images called "lesion", and the benign-vs-malignant AUC.
2. `annotate --no-lesion` (the project propagation with `presence_check`, which is also the app's Segment
   with "no lesion" ticked: FewShotSegmenter.predict(presence=...)): the default few-shot checkpoint with 5
   supports from BUSI's training split (fixed seed) on every BUSI test image, with and without the presence
   decision: normal images given a mask, lesion Dice (an empty answer on a lesion image scores 0).
Writes docs/results_lesion_probe_pipeline.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classifier", default=str(ROOT / "checkpoints" / "classifier_medsam_probe"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results_lesion_probe_pipeline.json"))
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from core import checkpoint
    from core.annotate.propagate import propagate
    from core.annotate.store import ProjectStore
    from core.data.dataset import load_pair
    from core.data.lesion_sets import lesion_parts
    from core.inference import FewShotSegmenter, SupervisedPipeline
    from core.metrics import auc, classification_metrics, dice
    from core.models.lesion_probe import CLASSES

    parts = lesion_parts()
    test = parts["busi_test"][: args.limit] if args.limit else parts["busi_test"]
    pipe = SupervisedPipeline(checkpoint.default_checkpoint("segmenter"), args.classifier)
    res = {"command": "python scripts/evaluate_lesion_probe.py", "classifier": Path(args.classifier).name, "n": len(test)}
    if pipe.is_image and not args.limit:      # issue 28 keeps a record of every read of the test parts
        from core.evaluation.image_classifier import record_test_read
        from core.evaluation.report import DOCS

        res["test_reads"] = record_test_read(DOCS / "image_classifier_test_reads.json", Path(args.classifier).name,
                                             ["busi_test (predict end to end, annotate --no-lesion)"])

    # 1. predict
    t0 = time.time()
    probs, y, pm, truths, masks = [], [], [], [], []
    for r in test:
        img, truth = load_pair(r["sample"])
        out = pipe.predict(img)
        probs.append([out.probabilities[c] for c in CLASSES])
        y.append(CLASSES.index(r["label"]))
        pm.append(out.label)
        truths.append(truth)
        masks.append(out.mask)
    probs, y = np.array(probs), np.array(y)
    decided = np.array([CLASSES.index(c) for c in pm])
    m = classification_metrics(probs, y, CLASSES)
    lesion = y < 2
    res["predict"] = {"accuracy": float((decided == y).mean()), "macro_auc": m["macro_auc"], "auc": m["auc"],
                      "confusion_matrix": np.array([[int(((y == a) & (decided == b)).sum()) for b in range(3)]
                                                    for a in range(3)]).tolist(),
                      "normal_called_lesion": float((decided[y == 2] != 2).mean()),
                      "normal_given_a_mask": float(np.mean([masks[i].any() for i in np.flatnonzero(y == 2)])),
                      "benign_vs_malignant_auc": auc(probs[lesion, 1] / (probs[lesion, 0] + probs[lesion, 1] + 1e-9),
                                                     y[lesion] == 1),
                      "lesion_dice_segmenter": float(np.mean([dice(masks[i], truths[i], empty="one")
                                                              for i in np.flatnonzero(lesion)])),
                      "seconds_per_image": (time.time() - t0) / len(test)}
    print(json.dumps(res["predict"], indent=1), flush=True)

    # 2. annotate --no-lesion (= Segment with "no lesion" ticked): the few-shot model with 5 training supports
    rng = np.random.default_rng(0)
    train_lesions = [r for r in parts["busi_trainval"] if r["label"] != "normal"]
    supports = [load_pair(train_lesions[i]["sample"]) for i in rng.choice(len(train_lesions), 5, replace=False)]
    seg = FewShotSegmenter(checkpoint.default_checkpoint("panet"))
    tmp = Path(tempfile.mkdtemp())
    folder = tmp / "images"
    folder.mkdir()
    for r in test:
        os.symlink(r["sample"].image_path, folder / r["name"].replace("/", "__"))
    rows = {}
    for name, presence in (("without", None), ("with", pipe.presence)):
        store = ProjectStore(tmp / f"out_{name}", "busi_test")
        store.add_folder(folder)
        t0 = time.time()
        propagate(store, seg, supports, seg.support_key(supports), "default", presence=presence)
        d, fp = [], []
        for r, truth in zip(test, truths):
            mk = store.mask(r["name"].replace("/", "__"))
            mk = np.zeros_like(truth) if mk is None else mk
            if truth.any():
                d.append(dice(mk, truth, empty="one"))
            else:
                fp.append(bool(mk.any()))
        rows[name] = {"lesion_dice": float(np.mean(d)), "normal_given_a_mask": float(np.mean(fp)),
                      "n_lesion": len(d), "n_normal": len(fp), "seconds_per_image": (time.time() - t0) / len(test)}
        print(name, json.dumps(rows[name]), flush=True)
    rows["dice_loss"] = rows["without"]["lesion_dice"] - rows["with"]["lesion_dice"]
    res["fewshot_annotate"] = rows
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
