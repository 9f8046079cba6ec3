"""Issue 28: why a calibration fitted on the cross-validation's fold models did not transfer to the ensemble.

    python scripts/fold_diagnostics.py --folds runs/cls_mt_k3_f0 runs/cls_mt_k3_f1 runs/cls_mt_k3_f2 \
        --out docs/results_image_classifier_folds.json

For each fold model (the multi-task recipe trained without one of 3 folds of the training parts): its
threshold-free figures on the val parts (`evaluate-image-cls --cls-model FOLD --no-test --out FOLD_val.json`,
run first; the val parts are outside every fold) beside those on the fold it never saw (FOLD.oof.json).
No test image is read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.evaluation import image_classifier as ev  # noqa: E402
from core.metrics import auc, classification_metrics  # noqa: E402


def held_out(oof_path: Path) -> dict:
    sets = json.loads(oof_path.read_text())["sets"]
    z, y = np.array(sets["busi"]["logits"]), np.array(sets["busi"]["labels"])
    p = ev.softmax(z)
    zb, yb = np.array(sets["busbra"]["logits"]), np.array(sets["busbra"]["labels"])
    pb = ev.softmax(zb)
    les = yb != ev.N
    return {"busi_macro_auc": classification_metrics(p, y, ev.CLASSES)["macro_auc"],
            "busi_presence_auc": auc(ev.p_lesion(p), y != ev.N),
            "busbra_kind_auc": auc(ev.p_malignant(pb[les]), yb[les] == ev.M), "n": len(y) + len(yb)}


def on_val(val_path: Path) -> dict:
    parts = json.loads(val_path.read_text())["parts"]
    b, bb = parts["busi_val"], parts["busbra_val"]
    return {"busi_macro_auc": b["macro_auc"], "busi_presence_auc": b["presence_auc"],
            "busbra_kind_auc": bb["benign_malignant_auc"], "n": b["n"] + bb["n"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", nargs="+", required=True, help="fold checkpoints (FOLD.oof.json and FOLD_val.json beside)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = [{"fold": Path(f).name, "val": on_val(Path(f + "_val.json")), "held_out": held_out(Path(f + ".oof.json"))}
            for f in args.folds]
    Path(args.out).write_text(json.dumps({"folds": rows}, indent=2))
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
