"""Loading checkpoints into models (safetensors weights + JSON config; no pickled code is run)."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint
from .panet import PANetConfig, PANetPlusPlus
from .supervised import ClassifierConfig, ImageClassifier, LesionClassifier, MultiTaskClassifier, Segmenter, SegmenterConfig


def _known_fields(cls, d: dict) -> dict:
    names = set(cls.__dataclass_fields__)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}


def _load_state(model: torch.nn.Module, path, meta) -> None:
    try:
        model.load_state_dict(checkpoint.load_weights(path))
    except RuntimeError as exc:
        raise checkpoint.CheckpointError(f"{path}: weights do not fit the model in its config ({str(exc)[:200]})") from exc


def load_panet(path: str | Path, device: str | torch.device = "cpu") -> tuple[PANetPlusPlus, dict]:
    meta = checkpoint.load_meta(path)
    checkpoint.expect_kind(meta, "panet", path)
    cfg = PANetConfig(**_known_fields(PANetConfig, meta["model"]))
    loaded = cfg.weights_loaded
    cfg.weights = "random"  # the checkpoint has all the weights: skip loading ImageNet first
    model = PANetPlusPlus(cfg)
    cfg.weights_loaded = loaded
    _load_state(model, path, meta)
    return model.to(device).eval(), meta


def _load_supervised(path, kind: str, config_cls, model_cls, device):
    meta = checkpoint.load_meta(path)
    checkpoint.expect_kind(meta, kind, path)
    cfg = config_cls(**_known_fields(config_cls, meta["model"]))
    started_from = cfg.weights_loaded
    cfg.weights = "random"  # the checkpoint has all the weights: skip loading ImageNet first
    model = model_cls(cfg)
    model.config.weights_loaded = started_from
    _load_state(model, path, meta)
    return model.to(device).eval()


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    return _load_supervised(path, "segmenter", SegmenterConfig, Segmenter, device)


def load_classifier(path: str | Path, device: str | torch.device = "cpu"):
    """A lesion classifier: the 4-channel CNN (`LesionClassifier`) or the LiteMedSAM probe (`LesionProbe`,
    its JSON says `"architecture": "lesion_probe"`)."""
    meta = checkpoint.load_meta(path)
    checkpoint.expect_kind(meta, "classifier", path)
    if meta.get("architecture") == "lesion_probe":
        from .lesion_probe import LesionProbe
        return LesionProbe.load(path)
    if meta.get("architecture") == "image_ensemble":   # issue 28: several image classifiers, one checkpoint
        return load_ensemble(path, meta, device)
    if meta.get("architecture") == "lesion_crop":     # issue 28: the lesion-crop benign / malignant head
        from .crop import CropClassifier
        return _load_supervised(path, "classifier", ClassifierConfig, CropClassifier, device)
    extra = meta.get("model", {}).get("extra") or {}
    if extra.get("input") == "image":     # issue 28: image only (with a segmentation decoder when multitask)
        cls = MultiTaskClassifier if extra.get("multitask") else ImageClassifier
        model = _load_supervised(path, "classifier", ClassifierConfig, cls, device)
        model.decision_points = meta.get("decision_points")
        return model
    return _load_supervised(path, "classifier", ClassifierConfig, LesionClassifier, device)


def load_ensemble(path, meta: dict, device="cpu"):
    """An `ImageEnsemble` checkpoint: each member built from its config, every weight from the one file."""
    from .ensemble import ImageEnsemble, build_member

    members = meta.get("members")
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, dict) for m in members):
        raise checkpoint.CheckpointError(f"{path}: an ensemble checkpoint must list at least two members' configs")
    try:
        model = ImageEnsemble([build_member(m.get("model") or {}) for m in members])
    except (TypeError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"{path}: an ensemble member's config does not build ({exc})") from exc
    _load_state(model, path, meta)
    model.decision_points = meta.get("decision_points")
    return model.to(device).eval()
