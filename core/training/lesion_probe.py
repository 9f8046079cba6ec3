"""Fitting the lesion probe (`core.models.lesion_probe`) on cached features, with selection you can trust.

Selection reads only the training parts (`busi_trainval`, `bb_trainval`): 5 folds by patient /
near-duplicate group (`group_folds`: a group never straddles two folds). For each head the L2 strength
(and for the type head the feature groups) is chosen by the out-of-fold AUC; the temperature is fitted
on the out-of-fold logits; the presence threshold is the highest that keeps out-of-fold missed lesions
at most 1% (so the lesion Dice loss from "no lesion" answers is at most 0.01).

`data` maps part -> dict of arrays, as `scripts/lesion_probe_features.py` caches them: name, label,
group, presence (n, IMAGE_DIM), gt (n, LESION_DIM; NaN for normal images), and on held-out parts pred
(features with the segmenter's mask), pred_dice.
"""
from __future__ import annotations

import numpy as np
import torch

from ..metrics import auc, bootstrap_ci
from ..models.lesion_probe import SHAPE_NAMES, LesionProbe, LinearHead

TRAIN_PARTS = ("busi_trainval", "bb_trainval")

# feature groups of the type head's vector (see lesion_features)
GROUPS = {"global": slice(0, 256), "region": slice(256, 768), "crop": slice(768, 1536),
          "shape": slice(1536, 1536 + len(SHAPE_NAMES))}
TYPE_CANDIDATES = {
    "region": ["global", "region"],
    "region+shape": ["global", "region", "shape"],
    "region+crop": ["global", "region", "crop"],
    "all": ["global", "region", "crop", "shape"],
    "crop+shape": ["crop", "shape"],
}
L2 = (1e-2, 1e-1, 1.0, 10.0, 100.0)


def columns(names) -> np.ndarray:
    return np.concatenate([np.arange(GROUPS[n].start, GROUPS[n].stop) for n in names])


def fit_binary(x: np.ndarray, y: np.ndarray, l2: float, balanced: bool = True, steps: int = 300) -> LinearHead:
    """Logistic regression on standardised x (L2 on the weights), class-balanced."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    pos = float(y.mean())
    w = torch.where(yt > 0, 0.5 / max(pos, 1e-3), 0.5 / max(1 - pos, 1e-3)) if balanced else torch.ones_like(yt)
    lin = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = lin(xt)[:, 0]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none") * w).mean()
        loss = loss + l2 * (lin.weight ** 2).sum() / len(y) * 100
        loss.backward()
        return loss

    opt.step(closure)
    return LinearHead(lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy(), mu, sd)


def fit_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the out-of-fold negative log-likelihood (Guo et al. 2017)."""
    zt, yt = torch.from_numpy(z.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(zt / log_t.exp(), yt)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def group_folds(groups, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index per row; every group lands whole in one fold."""
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    fold_of = {g: i % k for i, g in enumerate(rng.permutation(uniq))}
    return np.array([fold_of[g] for g in groups])


def oof_logits(x, y, folds, l2, cols=None) -> np.ndarray:
    z = np.zeros(len(y), np.float32)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        xs = x if cols is None else x[:, cols]
        head = fit_binary(xs[tr], y[tr], l2)
        z[te] = head.logits(xs[te])[:, 0]
    return z


def sens_at_spec(score, positive, spec: float = 0.80) -> float:
    neg = np.sort(score[~positive])
    if not len(neg) or not positive.any():
        return float("nan")
    t = neg[min(len(neg) - 1, int(np.ceil(spec * len(neg))) - 1)]
    return float((score[positive] > t).mean())


def binary_report(score, positive, groups, n_boot=2000) -> dict:
    score, positive, groups = np.asarray(score, float), np.asarray(positive, bool), np.asarray(groups)
    out = {"n": int(len(score)), "auc": auc(score, positive),
           "auc_ci95": list(bootstrap_ci(lambda i: auc(score[i], positive[i]), groups, n_boot)),
           "sensitivity_at_specificity_0.80": sens_at_spec(score, positive),
           "accuracy_at_0.5": float(((score > 0.5) == positive).mean())}
    return out


def select_presence(data, folds_of) -> tuple[dict, dict]:
    """Presence head: which training data (BUSI only, or BUSI + BUS-BRA lesions) and which L2, by the
    out-of-fold AUC on BUSI (the only part with normal images)."""
    tv, bb = data["busi_trainval"], data["bb_trainval"]
    rows = {}
    for use_bb in (False, True):
        x = np.concatenate([tv["presence"]] + ([bb["presence"]] if use_bb else []))
        y = np.concatenate([tv["label"] != "normal"] + ([np.ones(len(bb["label"]), bool)] if use_bb else []))
        g = list(tv["group"]) + (list(bb["group"]) if use_bb else [])
        folds = folds_of(g)
        is_busi = np.arange(len(y)) < len(tv["label"])
        for l2 in L2:
            z = oof_logits(x, y.astype(np.float32), folds, l2)
            rows[f"{'busi+busbra' if use_bb else 'busi'} l2={l2}"] = {
                "use_busbra": use_bb, "l2": l2, "busi_oof_auc": auc(z[is_busi], y[is_busi]), "z": z, "y": y,
                "is_busi": is_busi}
            print(f"presence {'busi+bb' if use_bb else 'busi'} l2={l2}: OOF AUC on BUSI "
                  f"{rows[list(rows)[-1]]['busi_oof_auc']:.3f}", flush=True)
    best = max(rows, key=lambda k: rows[k]["busi_oof_auc"])
    return rows, rows[best] | {"name": best}


def choose_threshold(p: np.ndarray, lesion: np.ndarray, max_missed: float = 0.01) -> float:
    """The highest threshold whose share of lesion images called 'no lesion' is at most max_missed."""
    lp = np.sort(p[lesion])
    k = int(np.floor(max_missed * len(lp)))      # this many lesions may fall below the threshold
    return float(lp[k] - 1e-6) if k < len(lp) else 0.5


def select_type(data, folds_of) -> tuple[dict, dict]:
    """Type head: feature groups, L2, and whether to also train on the segmenter's masks, by the
    out-of-fold AUC scored on the masks a user's image gets: the segmenter's where they are honest
    (BUS-BRA, which the segmenter never saw), the true masks on BUSI (the segmenter trained on it)."""
    tv, bb = data["busi_trainval"], data["bb_trainval"]
    keep_b = tv["label"] != "normal"
    n_busi = int(keep_b.sum())
    x_gt = np.concatenate([tv["gt"][keep_b], bb["gt"]])
    has_pred = "pred" in bb
    x_eval = np.concatenate([tv["gt"][keep_b], bb["pred"]]) if has_pred else x_gt
    y = np.concatenate([tv["label"][keep_b] == "malignant", bb["label"] == "malignant"]).astype(np.float32)
    folds = folds_of(list(tv["group"][keep_b]) + list(bb["group"]))
    rows = {}
    for aug in ((False, True) if has_pred else (False,)):
        for name, groups in TYPE_CANDIDATES.items():
            cols = columns(groups)
            for l2 in L2:
                z = np.zeros(len(y), np.float32)
                for f in np.unique(folds):
                    tr, te = folds != f, folds == f
                    xt, yt = x_gt[tr][:, cols], y[tr]
                    if aug:      # the same BUS-BRA training images once more, with the segmenter's masks
                        extra = tr.copy()
                        extra[:n_busi] = False
                        xt, yt = np.concatenate([xt, x_eval[extra][:, cols]]), np.concatenate([yt, y[extra]])
                    z[te] = fit_binary(xt, yt, l2).logits(x_eval[te][:, cols])[:, 0]
                key = f"{name}{' +segmenter masks' if aug else ''} l2={l2}"
                rows[key] = {"features": name, "l2": l2, "with_predicted_masks": aug, "oof_auc": auc(z, y > 0),
                             "oof_auc_busbra_predicted_masks": auc(z[n_busi:], y[n_busi:] > 0), "z": z, "y": y}
                print(f"type {key}: OOF AUC {rows[key]['oof_auc']:.3f} (BUS-BRA, segmenter's masks "
                      f"{rows[key]['oof_auc_busbra_predicted_masks']:.3f})", flush=True)
    best = max(rows, key=lambda k: rows[k]["oof_auc"])
    return rows, rows[best] | {"name": best}


def type_training(data, parts, with_predicted_masks: bool = False):
    xs, ys = [], []
    for part in parts:
        d = data[part]
        keep = d["label"] != "normal"
        xs.append(d["gt"][keep])
        ys.append(d["label"][keep] == "malignant")
        if with_predicted_masks and "pred" in d and part.startswith("bb_"):
            xs.append(d["pred"][keep])
            ys.append(d["label"][keep] == "malignant")
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32)


def presence_training(data, parts):
    x = np.concatenate([data[p]["presence"] for p in parts])
    y = np.concatenate([data[p]["label"] != "normal" for p in parts]).astype(np.float32)
    return x, y


def fit_final(data, p_best, t_best, t_pres, t_type, threshold, type_parts=("busi_trainval", "bb_trainval"),
              presence_parts=None) -> LesionProbe:
    presence_parts = presence_parts or (("busi_trainval", "bb_trainval") if p_best["use_busbra"] else ("busi_trainval",))
    x, y = presence_training(data, presence_parts)
    pres = fit_binary(x, y, p_best["l2"])
    pres.temperature = t_pres
    cols = columns(TYPE_CANDIDATES[t_best["features"]])
    x, y = type_training(data, type_parts, t_best.get("with_predicted_masks", False))
    kind = fit_binary(x[:, cols], y, t_best["l2"])
    kind.columns, kind.temperature = cols, t_type
    return LesionProbe(pres, kind, threshold)


def three_class(probe: LesionProbe, presence_x, type_x) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) probabilities in CLASSES order and the decided class (normal iff p(lesion) < threshold)."""
    pl = probe.presence.prob(presence_x)
    pm = probe.kind.prob(np.nan_to_num(type_x))
    probs = np.stack([pl * (1 - pm), pl * pm, 1 - pl], 1)
    decided = np.where(pl < probe.threshold, 2, (pm >= 0.5).astype(int))
    return probs, decided
