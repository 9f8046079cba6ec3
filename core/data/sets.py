"""Load the parts of a split (or a whole folder without a split) as ImageSets."""
from __future__ import annotations

import os
from pathlib import Path

from .dataset import ImageSet, load_image_set
from .discover import discover
from .split import DEFAULT_SPLIT_FILE, load_split, select

ENV_DATA = "BUSI_DIR"


def shared_data_dir(env_var: str, name: str) -> Path | None:
    """$env_var if set, else ../shared/data/<name> beside the project when that folder exists."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    guess = Path(__file__).resolve().parents[3] / "shared" / "data" / name
    return guess if guess.is_dir() else None


def default_data_dir() -> Path | None:
    """The BUSI folder from $BUSI_DIR, else ../shared/data/Dataset_BUSI_with_GT beside the project."""
    return shared_data_dir(ENV_DATA, "Dataset_BUSI_with_GT")


def split_sets(data_dir: str | Path, parts: tuple[str, ...], size: int,
               split_file: str | Path = DEFAULT_SPLIT_FILE, progress: bool = True) -> dict[str, ImageSet]:
    """The named parts of the committed split, loaded at `size`, with duplicate groups attached."""
    found = discover(data_dir)
    doc = load_split(split_file)
    groups = {k: int(v) for k, v in doc.get("groups", {}).items()}
    return {p: load_image_set(select(found.samples, doc[p]), size, groups, progress) for p in parts}


def folder_set(data_dir: str | Path, size: int, progress: bool = True) -> ImageSet:
    """Every pair in a folder (any supported layout), each image its own duplicate group."""
    return load_image_set(discover(data_dir).samples, size, None, progress)


def data_dir(arg: str | Path | None = None) -> Path:
    """The BUSI folder: `arg`, else $BUSI_DIR / the shared copy; a clear error when there is none."""
    d = arg or default_data_dir()
    if d is None:
        raise ValueError("no data folder: pass --data DIR or set BUSI_DIR")
    return Path(d)
