"""Issue 18 experiment: does a medical encoder (LiteMedSAM's image encoder) make a better lesion classifier?

    python scripts/experiment_classifier_features.py [--limit N]

Features of every image from LiteMedSAM's image embedding (256 x 64 x 64, one encoder pass per image):
the mean over the image, the mean inside the lesion mask (dilated), the mean over a ring around it, and
the mask's area share. A multinomial logistic regression (standardised features, L2) is chosen by 5-fold
cross-validation by patient/near-duplicate group on the training data (BUSI train + val, BUS-BRA train +
val; BUS-BRA has no normal class), with ground-truth masks. Then read once: BUSI test (3 classes) with the
ground-truth masks and with the shipped segmenter's masks, and BUS-BRA's test part (benign vs malignant)
with the segmenter's masks. Beside it, the same probe trained on BUSI only and scored on all of BUS-BRA.
Writes docs/experiment_classifier_features.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLASSES = ["benign", "malignant", "normal"]


def pooled(feats: np.ndarray, resized, mask: np.ndarray) -> np.ndarray:
    """[global mean, mean inside the dilated mask, ring mean, area share] of a (256, 64, 64) embedding."""
    nh, nw = (max(1, round(v / 4)) for v in resized)
    f = feats[:, :nh, :nw]
    glob = f.mean((1, 2))
    m = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_AREA) > 0
    if m.any():
        k = np.ones((3, 3), np.uint8)
        inside = cv2.dilate(m.astype(np.uint8), k) > 0
        ring = (cv2.dilate(inside.astype(np.uint8), k, iterations=3) > 0) & ~inside
        fin = f[:, inside].mean(1)
        fring = f[:, ring].mean(1) if ring.any() else glob
    else:
        fin, fring = glob, glob
    return np.concatenate([glob, fin, fring, [mask.mean()]]).astype(np.float32)


def fit_logreg(x, y, n_classes, l2, w=None, steps=200):
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    lin = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    wt = torch.ones(n_classes) if w is None else torch.tensor(w, dtype=torch.float32)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt, weight=wt) + l2 * (lin.weight ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def predict_proba(lin, x):
    with torch.no_grad():
        return torch.softmax(lin(torch.from_numpy(x)), 1).numpy()


def standardise(train, *others):
    mu, sd = train.mean(0), train.std(0) + 1e-6
    return [(a - mu) / sd for a in (train, *others)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=0, help="at most this many images per part (a smoke run)")
    p.add_argument("--out", default=str(ROOT / "docs" / "experiment_classifier_features.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    from core.data.dataset import load_pair
    from core.data.discover import discover
    from core.data.multidomain import default_multidomain_dir, load_multidomain_split, set_samples
    from core.data.sets import default_data_dir
    from core.data.split import load_split
    from core.inference import SupervisedPipeline
    from core.evaluation.supervised import _auc

    def auc_binary(positive, score):
        return _auc(np.asarray(score, np.float64), np.asarray(positive, bool))
    from core.models.promptable import PromptableSegmenter

    sam = PromptableSegmenter(cache_size=2)
    seg = SupervisedPipeline(ROOT / "checkpoints" / "segmenter_deeplabv3plus_lite0", None)
    busi_doc = load_split()
    busi = {s.rel_path: s for s in discover(default_data_dir()).samples}
    md = default_multidomain_dir()
    bb_doc = load_multidomain_split()["sets"]["busbra_breast"]
    bb = {s.rel_path: s for s in set_samples(md, "busbra_breast")}
    labels = {}
    for line in (md / "busbra_breast" / "labels.csv").read_text().splitlines()[1:]:
        parts = line.split(",")
        labels[parts[0]] = parts[1]

    def rows(names, table, label_of, group_of, need_pred):
        out = []
        names = names[: args.limit] if args.limit else names
        for n in names:
            s = table[n]
            image, mask = load_pair(s)
            emb = sam.embed(image)
            feats = emb.features[0].cpu().numpy()
            r = {"name": n, "label": label_of(s), "group": group_of(n), "gt": pooled(feats, emb.resized, mask)}
            if need_pred:
                r["pred"] = pooled(feats, emb.resized, seg.segment(image))
            out.append(r)
        return out

    t0 = time.time()
    busi_label = lambda s: s.label
    busi_group = lambda n: f"busi:{busi_doc['groups'].get(n, n)}"
    bb_label = lambda s: labels[Path(s.rel_path).stem]
    bb_group = lambda n: f"bb:{bb_doc['groups'][n]}"
    data = {
        "busi_trainval": rows(busi_doc["train"] + busi_doc["val"], busi, busi_label, busi_group, False),
        "busi_test": rows(busi_doc["test"], busi, busi_label, busi_group, True),
        "bb_trainval": rows(bb_doc["train"] + bb_doc["val"], bb, bb_label, bb_group, False),
        "bb_test": rows(bb_doc["test"], bb, bb_label, bb_group, True),
    }
    print(f"features in {time.time() - t0:.0f} s", flush=True)
    res = {"command": "python scripts/experiment_classifier_features.py" + (f" --limit {args.limit}" if args.limit else ""),
           "n": {k: len(v) for k, v in data.items()}, "feature_seconds": round(time.time() - t0)}

    def xy(rs, key="gt"):
        return np.stack([r[key] for r in rs]), np.array([CLASSES.index(r["label"]) for r in rs]), [r["group"] for r in rs]

    train = data["busi_trainval"] + data["bb_trainval"]
    x, y, g = xy(train)
    uniq = sorted(set(g))
    rng = np.random.default_rng(0)
    fold_of = {k: i % 5 for i, k in enumerate(rng.permutation(uniq))}
    folds = np.array([fold_of[k] for k in g])
    cv = {}
    for l2 in (1e-4, 1e-3, 1e-2, 1e-1):
        probs = np.zeros((len(y), 3), np.float32)
        for f in range(5):
            tr, te = folds != f, folds == f
            xtr, xte = standardise(x[tr], x[te])
            lin = fit_logreg(xtr, y[tr], 3, l2)
            probs[te] = predict_proba(lin, xte)
        acc = float((probs.argmax(1) == y).mean())
        bm = y < 2
        auc_bm = float(auc_binary(y[bm] == 1, probs[bm, 1] / (probs[bm, 0] + probs[bm, 1] + 1e-9)))
        cv[str(l2)] = {"accuracy": acc, "benign_vs_malignant_auc": auc_bm}
        print(f"l2={l2}: CV accuracy {acc:.3f}, benign-vs-malignant AUC {auc_bm:.3f}", flush=True)
    best = max(cv, key=lambda k: cv[k]["benign_vs_malignant_auc"] + cv[k]["accuracy"])
    res["cv"], res["chosen_l2"] = cv, float(best)
    xtr, = standardise(x)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    lin = fit_logreg(xtr, y, 3, float(best))

    def score(rs, key, three=True):
        xs, ys, _ = xy(rs, key)
        pr = predict_proba(lin, (xs - mu) / sd)
        out = {"n": len(ys)}
        if three:
            out["accuracy"] = float((pr.argmax(1) == ys).mean())
            out["macro_auc"] = float(np.mean([auc_binary(ys == c, pr[:, c]) for c in range(3)]))
        bm = ys < 2
        out["benign_vs_malignant_auc"] = float(auc_binary(ys[bm] == 1, pr[bm, 1] / (pr[bm, 0] + pr[bm, 1] + 1e-9)))
        return out

    res["busi_test_gt_masks"] = score(data["busi_test"], "gt")
    res["busi_test_predicted_masks"] = score(data["busi_test"], "pred")
    res["busbra_test_predicted_masks"] = score(data["bb_test"], "pred", three=False)
    # cross-site: BUSI only -> all of BUS-BRA (its train+val with ground truth masks, test with predicted ones)
    xb, yb, _ = xy(data["busi_trainval"])
    mu_b, sd_b = xb.mean(0), xb.std(0) + 1e-6
    lin_b = fit_logreg((xb - mu_b) / sd_b, yb, 3, float(best))
    allbb = [r["gt"] for r in data["bb_trainval"]] + [r["pred"] for r in data["bb_test"]]
    ybb = np.array([CLASSES.index(r["label"]) for r in data["bb_trainval"] + data["bb_test"]])
    pr = predict_proba(lin_b, (np.stack(allbb) - mu_b) / sd_b)
    res["busi_only_on_all_busbra"] = {"n": len(ybb), "benign_vs_malignant_auc": float(
        auc_binary(ybb == 1, pr[:, 1] / (pr[:, 0] + pr[:, 1] + 1e-9)))}
    print(json.dumps(res, indent=1))
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
