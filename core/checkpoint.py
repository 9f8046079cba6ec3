"""Checkpoints: `<name>.safetensors` (weights, no pickled code) + `<name>.json` (config and metrics).

Writes are atomic: both files go to temporary names in the target folder and are renamed into place
(JSON last, and a checkpoint counts only when its JSON exists), so an interrupted save never leaves a
half-written checkpoint under the final name.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """Missing, corrupt or incompatible checkpoint."""


def paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    # append, never replace: a dot in a name ("model_v1.5") is part of the name, not an extension
    return stem.parent / f"{stem.name}.safetensors", stem.parent / f"{stem.name}.json"


def _atomic_write(target: Path, write) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict, half: bool = False) -> Path:
    """Save weights + metadata. `meta` must contain 'kind' (e.g. 'panet', 'segmenter', 'classifier')."""
    if "kind" not in meta:
        raise ValueError("checkpoint metadata needs a 'kind'")
    weights_path, json_path = paths(path)
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.clone()
    _atomic_write(weights_path, lambda tmp: save_file(tensors, tmp))
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    _atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    return weights_path


def load_meta(path: str | Path) -> dict:
    weights_path, json_path = paths(path)
    if not json_path.exists() or not weights_path.exists():
        raise CheckpointError(f"{path}: checkpoint not found (need {weights_path.name} and {json_path.name})")
    try:
        return json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{json_path}: unreadable checkpoint config ({exc})") from exc


def load_weights(path: str | Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    weights_path, _ = paths(path)
    try:
        sd = load_file(str(weights_path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights_path}: corrupt or unreadable weights ({exc})") from exc
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}


def expect_kind(meta: dict, kind: str, path) -> None:
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path}: this is a '{meta.get('kind')}' checkpoint, expected a '{kind}' checkpoint")
