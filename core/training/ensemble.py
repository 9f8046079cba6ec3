"""Issue 28: building an ensemble checkpoint from trained image classifiers (`ensemble-image-cls`)."""
from __future__ import annotations

from pathlib import Path

from .. import checkpoint
from ..models.ensemble import ARCHITECTURE, ImageEnsemble
from ..models.loading import load_classifier
from ..models.supervised import ImageClassifier
from .oof import fold_cover


def save_ensemble(member_paths: list, save_path, half: bool = True):
    """One checkpoint from the members' checkpoints (image classifiers trained on the same split). The
    weights are stored in float16 by default (half the bytes; the ensemble is evaluated from the stored file).
    The decision points are chosen afterwards on the val parts (`evaluate-image-cls --write-points`)."""
    metas = [checkpoint.load_meta(p) for p in member_paths]
    splits = {(m.get("data") or {}).get("split_hash") for m in metas}
    sites = {bool((m.get("data") or {}).get("busbra")) for m in metas}
    if len(splits) > 1 or len(sites) > 1:
        raise checkpoint.CheckpointError("an ensemble's members must be trained on the same split and sites "
                                         f"(split hashes {sorted(map(str, splits))}); otherwise one member's "
                                         "val images may be another's training images")
    models = [load_classifier(p) for p in member_paths]
    if not all(isinstance(m, ImageClassifier) and not isinstance(m, ImageEnsemble) for m in models):
        raise checkpoint.CheckpointError("an ensemble's members must be image classifiers (not ensembles)")
    ens = ImageEnsemble(models)
    keep = ("model", "epoch", "val_score", "val_macro_auc", "train", "train_seconds", "selected_by", "augment")
    meta = {"kind": "classifier", "architecture": ARCHITECTURE, "model": ens.config_dict(), "data": _ensemble_data(metas),
            "members": [{"name": Path(p).name, **{k: m[k] for k in keep if k in m}}
                        for p, m in zip(member_paths, metas)],
            "weights_dtype": "float16" if half else "float32"}
    return checkpoint.save(save_path, ens.state_dict(), meta, half=half)


def _ensemble_data(metas: list[dict]) -> dict:
    """The members' data record. Members of one cross-validation (`train-image-cls --fold I K`) make a k-fold
    ensemble: every fold 0..K-1 once, recorded as {"folds": {"k", "indices"}} (no member saw its own fold; every
    training image was seen by K-1 members). Fold and full-data members are not mixed, nor folds of two K."""
    folds = [(m.get("data") or {}).get("fold") for m in metas]
    data = {k: v for k, v in (metas[0].get("data") or {}).items() if k != "fold"}
    if not any(folds):
        return data
    k, index = fold_cover(folds)
    if k is None:
        raise checkpoint.CheckpointError("a k-fold ensemble needs every fold 0..K-1 of one K once, and no member "
                                         f"trained on all the training parts (got fold indices {index}, -1: all)")
    return {**data, "folds": {"k": k, "indices": index}}
