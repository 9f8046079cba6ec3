"""Out-of-fold predicted masks: a segmenter's masks for every training image, each from a model
that never trained on that image (nor on its near-duplicates), for training the classifier on the
masks it will get at inference.

The training split is cut into k folds of whole near-duplicate groups (stratified by class); fold f's
masks come from a segmenter trained on the other folds, early-stopped on the validation split (never
on the fold it predicts, so the masks are not selected to look good). Those segmenters train on
(k-1)/k of the data and for a short budget, so their masks are, if anything, worse than the shipped
segmenter's: the classifier learns from masks no better than inference gives.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..data.dataset import ImageSet


def fold_cover(folds: list) -> tuple[int | None, list[int]]:
    """(K, the fold indices sorted) of the fold records {"index", "k"} of `train-image-cls --fold I K` runs (None
    or {} for a run on all the training parts); K is None unless they are every fold 0..K-1 of one K, once each."""
    folds = [f or {} for f in folds]
    ks = {f.get("k") for f in folds}
    index = sorted(f.get("index", -1) for f in folds)
    k = next(iter(ks)) if len(ks) == 1 else None
    return (k if k is not None and index == list(range(k)) else None), index


def group_folds(groups: list[int], labels: list[str | None], k: int, seed: int = 0) -> np.ndarray:
    """Fold index per sample: whole groups, each class spread evenly over the folds (greedy by size)."""
    if k < 2:
        raise ValueError("out-of-fold masks need at least 2 folds")
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    if len(members) < k:
        raise ValueError(f"{len(members)} groups cannot make {k} folds")
    strata: dict[str, list[int]] = {}
    for g, idx in sorted(members.items()):
        strata.setdefault(Counter(labels[i] or "none" for i in idx).most_common(1)[0][0], []).append(g)
    folds = np.full(len(groups), -1)
    load = np.zeros(k)
    rng = random.Random(seed)
    for label in sorted(strata):
        gs = strata[label]
        rng.shuffle(gs)
        per_class = np.zeros(k)
        for g in sorted(gs, key=lambda g: -len(members[g])):
            f = int(np.lexsort((load, per_class))[0])   # the fold with fewest of this class, then fewest overall
            folds[members[g]] = f
            per_class[f] += len(members[g])
            load[f] += len(members[g])
    return folds


def subset(data: ImageSet, idx) -> ImageSet:
    idx = list(idx)
    return data.subset(idx)


def out_of_fold_masks(train: ImageSet, val: ImageSet, k: int, model_cfg, train_cfg, workdir: str | Path,
                      data_info: dict, progress: bool = True) -> dict:
    """Train k segmenters and return {"masks": (N, S, S) bool at train's size, "folds": (N,),
    "trained_on": [names each fold's model trained on], "val_dice": [...]}"""
    from ..device import pick_device
    from ..models.loading import load_segmenter
    from .supervised import predict_masks, segmentation_scores, train_segmenter

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    folds = group_folds(train.groups, [s.label for s in train.samples], k, train_cfg.seed)
    masks = np.zeros(train.masks.shape, bool)
    trained_on, val_dice, fold_dice = [], [], []
    device = pick_device(train_cfg.device)
    for f in range(k):
        fit_idx, held = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        cfg = replace(train_cfg, save_path=str(workdir / f"fold{f}"))
        summary = train_segmenter(model_cfg, cfg, subset(train, fit_idx), val, {**data_info, "fold": f, "folds": k},
                                  progress)
        seg = load_segmenter(workdir / f"fold{f}", str(device))
        held_set = subset(train, held)
        masks[held] = predict_masks(seg, held_set, device)
        trained_on.append(sorted(train.samples[i].rel_path for i in fit_idx))
        val_dice.append(summary["best_val"])
        fold_dice.append(segmentation_scores(masks[held], held_set)["dice"])
    return {"masks": masks, "folds": folds, "trained_on": trained_on, "val_dice": val_dice,
            "held_out_dice": fold_dice}


def save_oof(path: str | Path, names: list[str], result: dict) -> None:
    """Masks (packed bits) + fold per image + what each fold's model trained on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path.with_suffix(".npz"), masks=np.packbits(result["masks"], axis=-1),
                        shape=np.array(result["masks"].shape), folds=result["folds"], names=np.array(names))
    path.with_suffix(".json").write_text(json.dumps(
        {"names": names, "folds": result["folds"].tolist(), "trained_on": result["trained_on"],
         "val_dice": result["val_dice"], "held_out_dice": result["held_out_dice"]}, indent=1))


def load_oof(path: str | Path, names: list[str]) -> np.ndarray:
    """The saved masks in the order of `names` (every name must be there)."""
    z = np.load(Path(path).with_suffix(".npz"), allow_pickle=False)
    shape = tuple(z["shape"])
    masks = np.unpackbits(z["masks"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)
    index = {n: i for i, n in enumerate(z["names"].tolist())}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"{len(missing)} training image(s) have no out-of-fold mask, e.g. {missing[0]}")
    return masks[[index[n] for n in names]]
