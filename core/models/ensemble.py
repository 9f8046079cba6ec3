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
        self.config = replace(first, temperature=1.0, extra={"input": "image", "ensemble": len(members)})

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1] -> log of the members' mean probabilities (softmax gives the mean back)."""
        probs = torch.stack([torch.softmax(m(image) / m.config.temperature, 1) for m in self.members])
        return probs.mean(0).clamp_min(1e-12).log()

    @torch.no_grad()
    def predict_with_features(self, image: torch.Tensor, tta: bool = True) -> tuple[torch.Tensor, list]:
        """The mean of the members' probabilities (each with its temperature and flip TTA; `predict` is this
        without the maps), and each member's feature map of the image (for `grad_cam` of the same image)."""
        self.eval()
        out = [m.predict_with_features(image, tta) for m in self.members]
        return torch.stack([p for p, _ in out]).mean(0), [f for _, f in out]

    def grad_cam(self, image: torch.Tensor, target: int, features: list | None = None) -> torch.Tensor:
        """The members' Grad-CAMs of class `target`, averaged and scaled to [0, 1]; `features`: the members'
        feature maps of this image from `predict_with_features`."""
        feats = features or [None] * len(self.members)
        cam = torch.stack([m.grad_cam(image, target, f) for m, f in zip(self.members, feats)]).mean(0)
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

