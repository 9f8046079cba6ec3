"""Checkpoints: `<name>.safetensors` (weights, no pickled code) + `<name>.json` (config and metrics).

Writes are atomic: both files go to temporary names in the target folder and are renamed into place
(JSON last, and a checkpoint counts only when its JSON exists), so an interrupted save never leaves a
half-written checkpoint under the final name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .io import atomic_write


class CheckpointError(ValueError):
    """Missing, corrupt or incompatible checkpoint."""


def paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    # append, never replace: a dot in a name ("model_v1.5") is part of the name, not an extension
    return stem.parent / f"{stem.name}.safetensors", stem.parent / f"{stem.name}.json"


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
    atomic_write(weights_path, lambda tmp: save_file(tensors, tmp))
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
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


def publish(src: str | Path, folder: str | Path, name: str, max_tries: int = 1000) -> Path:
    """Move the finished checkpoint `src` into `folder` under `name`, or `name_2`, `name_3`, ... : the
    first name that is free. Never replaces a file: each name is claimed by a hard link, which fails
    if the target exists (atomic, also against another process claiming the same name at the same
    moment). Weights first, JSON last, as in `save`. Returns the published path (without extension)."""
    src_w, src_j = paths(src)
    if not (src_w.exists() and src_j.exists()):
        raise CheckpointError(f"{src}: nothing to publish (incomplete checkpoint)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, max_tries + 1):
        final = folder / (name if n == 1 else f"{name}_{n}")
        dst_w, dst_j = paths(final)
        try:
            os.link(src_w, dst_w)
        except FileExistsError:
            continue
        try:
            os.link(src_j, dst_j)
        except FileExistsError:      # a stray JSON with that name: leave it, try the next name
            os.unlink(dst_w)
            continue
        except BaseException:
            os.unlink(dst_w)
            raise
        os.unlink(src_w)
        os.unlink(src_j)
        return final
    raise CheckpointError(f"no free checkpoint name like {name!r} in {folder.name}/")


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
FALLBACK_DEFAULTS = {"panet": "panet_lite0", "segmenter": "segmenter_deeplabv3plus_lite0", "classifier": "classifier_lite0"}


def read_defaults(folder: str | Path = SHIPPED_DIR) -> dict:
    """checkpoints/DEFAULTS.json: the default checkpoint of each kind and the ones listed for users."""
    try:
        doc = json.loads((Path(folder) / "DEFAULTS.json").read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def default_kind_head(folder: str | Path = SHIPPED_DIR) -> Path | None:
    """The lesion-crop head DEFAULTS.json pairs with the default classifier (`"kind_head"`), if it names one
    that is installed."""
    name = read_defaults(folder).get("kind_head")
    return Path(folder) / name if name and (Path(folder) / f"{name}.json").exists() else None


def default_checkpoint(kind: str = "panet", folder: str | Path = SHIPPED_DIR) -> Path:
    """The shipped default checkpoint of `kind` ("panet", "segmenter", "classifier") named in DEFAULTS.json."""
    name = read_defaults(folder).get(kind) or FALLBACK_DEFAULTS[kind]
    return Path(folder) / name
