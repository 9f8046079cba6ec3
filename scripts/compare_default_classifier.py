"""Issue 18: should the default classifier change? Both candidates on the same held-out images, without
reading a test part: BUS-BRA's training part (train+val), which the shipped CNN (`classifier_lite0`,
trained on BUSI only) and the shipped segmenter never saw, with the segmenter's masks; the lesion probe's
numbers there are out-of-fold (5 group folds: each image scored by a probe that did not train on it).

    python scripts/compare_default_classifier.py      # after scripts/train_lesion_probe.py --cv-only
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    torch.set_num_threads(2)
    from core import checkpoint
    from core.data.dataset import load_pair
    from core.data.lesion_sets import lesion_parts
    from core.inference import SupervisedPipeline
    from core.metrics import auc, bootstrap_ci

    rows = lesion_parts()["bb_trainval"]
    pipe = SupervisedPipeline(checkpoint.default_checkpoint("segmenter"), ROOT / "checkpoints" / "classifier_lite0")
    score, y, g = [], [], []
    for r in rows:
        img, _ = load_pair(r["sample"])
        p = pipe.predict(img).probabilities
        score.append(p["malignant"] / (p["malignant"] + p["benign"] + 1e-9))
        y.append(r["label"] == "malignant")
        g.append(r["group"])
    score, y, g = np.array(score), np.array(y), np.array(g)
    cnn = {"auc": auc(score, y), "auc_ci95": list(bootstrap_ci(lambda i: auc(score[i], y[i]), g, 2000))}
    probe = json.loads((ROOT / "docs" / "lesion_probe_cv.json").read_text())
    out = {"command": "python scripts/compare_default_classifier.py", "images": "BUS-BRA train+val (719), segmenter's masks",
           "classifier_lite0": cnn, "lesion_probe_out_of_fold": probe["chosen_oof_busbra_predicted_masks"]}
    (ROOT / "docs" / "lesion_probe_default_choice.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
