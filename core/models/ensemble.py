"""Issue 28: several image classifiers shipped as one checkpoint, their probabilities averaged.

The members are trained alike with different seeds; the ensemble is chosen on the val parts like any other
model and gets its own decision points. One checkpoint holds every member: `<name>.safetensors` with the
members' weights under `members.<i>.` (only what classifying needs: a multi-task member's mask decoder is
left out) and `<name>.json` with `"architecture": "image_ensemble"` and each member's config. It loads
without unpickling, like every checkpoint here.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .supervised import ClassifierConfig, ImageClassifier, MultiTaskClassifier

ARCHITECTURE = "image_ensemble"


class ImageEnsemble(ImageClassifier):
    """Mean of the members' calibrated probabilities (each member's own temperature and flip TTA); used as an
    `ImageClassifier` (`predict`, `grad_cam`, `config`, `decision_points`)."""

    def __init__(self, members: list[ImageClassifier]):
        nn.Module.__init__(self)
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        sizes = {m.config.image_size for m in members}
        classes = {tuple(m.config.classes) for m in members}
        if len(sizes) > 1 or len(classes) > 1:
            raise ValueError(f"an ensemble's members must share image size and classes (got {sorted(sizes)}, "
                             f"{sorted(classes)})")
        for m in members:
            if isinstance(m, MultiTaskClassifier):
                m.drop_decoder()
        self.members = nn.ModuleList(members)
        first = members[0].config
        self.config = replace(first, temperature=1.0, weights_loaded="",
                              extra={"input": "image", "ensemble": len(members)})

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1] -> log of the members' mean probabilities (softmax gives the mean back)."""
        probs = torch.stack([torch.softmax(m(image) / m.config.temperature, 1) for m in self.members])
        return probs.mean(0).clamp_min(1e-12).log()

    @torch.inference_mode()
    def predict(self, image: torch.Tensor, tta: bool = True) -> torch.Tensor:
        """The mean of the members' `predict` (each with its temperature and flip TTA) -> probabilities."""
        self.eval()
        return torch.stack([m.predict(image, tta) for m in self.members]).mean(0)

    def grad_cam(self, image: torch.Tensor, target: int) -> torch.Tensor:
        """The members' Grad-CAMs of class `target`, averaged and scaled to [0, 1]."""
        cam = torch.stack([m.grad_cam(image, target) for m in self.members]).mean(0)
        return cam / cam.max().clamp_min(1e-8)

    def member_configs(self) -> list[dict]:
        return [m.config_dict() for m in self.members]


def build_member(model_meta: dict) -> ImageClassifier:
    """An untrained member from its config (the checkpoint has every weight: ImageNet is not loaded first)."""
    names = set(ClassifierConfig.__dataclass_fields__)
    cfg = ClassifierConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in model_meta.items() if k in names})
    started_from = cfg.weights_loaded
    cfg.weights = "random"
    model = (MultiTaskClassifier if (cfg.extra or {}).get("multitask") else ImageClassifier)(cfg)
    model.config.weights_loaded = started_from
    return model


def save_ensemble(member_paths: list, save_path, half: bool = True):
    """One checkpoint from the members' checkpoints (image classifiers trained on the same split). The
    weights are stored in float16 by default (half the bytes; the ensemble is evaluated from the stored file).
    The decision points are chosen afterwards on the val parts (`evaluate-image-cls --write-points`)."""
    from pathlib import Path

    from .. import checkpoint
    from .loading import load_classifier

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
    meta = {"kind": "classifier", "architecture": ARCHITECTURE, "model": ens.config_dict(), "data": metas[0]["data"],
            "members": [{"name": Path(p).name, **{k: m[k] for k in keep if k in m}}
                        for p, m in zip(member_paths, metas)],
            "weights_dtype": "float16" if half else "float32"}
    return checkpoint.save(save_path, ens.state_dict(), meta, half=half)
