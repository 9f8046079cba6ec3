"""Many segmentation sets (one target each) for meta-training and leave-set-out evaluation.

Each set sits in the flat layout `<set>/images/<id>.jpg`, `<set>/masks/<id>_mask.png` with
`<set>/groups.csv` (`id,group`: one patient or case). Splits are by group, and where a source
publishes no patient ids (every image its own group) consecutive frames of one patient may be near
duplicates, so the project's near-duplicate grouping (core/data/dedup.py) links them first. The
committed split (`multidomain_split.json`) records every image's group; supports and queries of an
episode always come from different groups.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .dataset import ImageSet, load_image_set
from .discover import Sample, discover
from .io import DataError

DEFAULT_MULTIDOMAIN_SPLIT = Path(__file__).with_name("multidomain_split.json")
ENV_MULTIDOMAIN = "MULTIDOMAIN_DIR"
BUSI = "busi"   # the name BUSI's training split goes by among the meta-training sets
# a component holding more than this share of a set means the feature test chains unrelated images
# (homogeneous sets such as fetal heads): then only the pixel test links images of that set
MAX_COMPONENT_SHARE = 0.1


def default_multidomain_dir() -> Path | None:
    """$MULTIDOMAIN_DIR, else ../shared/data/multidomain beside the project."""
    from .sets import shared_data_dir

    return shared_data_dir(ENV_MULTIDOMAIN, "multidomain")


def list_sets(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: multidomain folder not found")
    names = sorted(d.name for d in root.iterdir() if (d / "images").is_dir() and (d / "masks").is_dir())
    if not names:
        raise DataError(f"{root}: no sets found (expected <set>/images and <set>/masks)")
    return names


def read_groups(set_dir: Path) -> dict[str, str]:
    """id -> group from groups.csv (every image its own group if the file is absent)."""
    path = set_dir / "groups.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {row["id"]: row["group"] for row in csv.DictReader(f)}


def set_samples(root: str | Path, name: str) -> list[Sample]:
    return discover(Path(root) / name).samples


def _components(n: int, pairs) -> list[int]:
    from .dedup import _union_find
    return _union_find(n, pairs)


# Sets whose image ids are frame numbers of videos: consecutive frames of one video are one group. The
# source publishes no frame -> video table, so videos are found where the picture changes abruptly between
# consecutive frames, and only the clearest changes count (colour-histogram intersection < 0.5 or pixel
# correlation < 0.45 of 64/32 px copies): several videos may share a group (stricter), one video is never cut.
FRAME_SEQUENCE_SETS = {"cvc_clinicdb_polyp": "frames of 29 colonoscopy videos, ids are frame numbers"}
SCENE_CUT = (0.5, 0.45)


def _frame_signature(path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        small = np.asarray(rgb.resize((32, 32)), float).ravel()
        hist_img = np.asarray(rgb.resize((64, 64)))
    small -= small.mean()
    hist = np.concatenate([np.histogram(hist_img[..., c], bins=16, range=(0, 256))[0] for c in range(3)]).astype(float)
    return small / (np.linalg.norm(small) + 1e-9), hist / hist.sum()


def sequence_links(samples: list[Sample]) -> list[tuple[int, int]]:
    """Links between consecutive frames (by numeric id) unless the scene changes clearly between them."""
    order = sorted(range(len(samples)), key=lambda i: int(Path(samples[i].rel_path).stem))
    sig = {i: _frame_signature(samples[i].image_path) for i in order}
    links = []
    for a, b in zip(order, order[1:]):
        corr = float(sig[a][0] @ sig[b][0])
        shared = float(np.minimum(sig[a][1], sig[b][1]).sum())
        if not (shared < SCENE_CUT[0] or corr < SCENE_CUT[1]):
            links.append((a, b))
    return links


def group_set(samples: list[Sample], id_groups: dict[str, str], progress: bool = True,
              frames: bool = False) -> tuple[list[int], str]:
    """Group ids per sample: published groups joined with near-duplicate links (and, for `frames`, runs of
    consecutive frames of one video: see FRAME_SEQUENCE_SETS).

    Returns (groups, how) where `how` says which tests linked images."""
    from .dedup import group_near_duplicates, image_signatures

    names = [Path(s.rel_path).stem for s in samples]
    published = [id_groups.get(n, n) for n in names]
    by_group: dict[str, int] = {}
    pairs = []
    for i, g in enumerate(published):
        if g in by_group:
            pairs.append((by_group[g], i))
        else:
            by_group[g] = i
    thumbs, embs = image_signatures(samples, progress=progress)
    # BUSI's threshold first; on homogeneous sets (every fetal head looks alike) the feature test can
    # chain unrelated images into one giant group: then a stricter cosine, then pixels only
    seq = sequence_links(samples) if frames else []
    seq_how = (" + runs of consecutive frames of one video (cut only at clear scene changes: histogram "
               f"intersection < {SCENE_CUT[0]} or pixel correlation < {SCENE_CUT[1]})") if frames else ""
    for min_cosine in (0.93, 0.96, 0.98):
        dup = group_near_duplicates(thumbs, embs, min_cosine=min_cosine)
        both = _components(len(samples), pairs + [(a, b) for a, b, _, _ in dup.links])
        if np.bincount(both).max() <= MAX_COMPONENT_SHARE * len(samples):
            both = _components(len(samples), pairs + seq + [(a, b) for a, b, _, _ in dup.links])
            return both, f"published groups + near-duplicate links (pixels, or feature cosine > {min_cosine})" + seq_how
    pixel_links = [(a, b) for a, b, reason, _ in dup.links if reason == "pixels"]
    both = _components(len(samples), pairs + seq + pixel_links)
    how = ("published groups + near-duplicate links (pixels only: the feature test chained more than "
           f"{MAX_COMPONENT_SHARE:.0%} of this set into one group even at cosine 0.98)") + seq_how
    return both, how


def make_multidomain_split(root: str | Path, seed: int = 0, names: list[str] | None = None,
                           progress: bool = True) -> dict:
    from .split import split_groups

    root = Path(root)
    doc = {"seed": seed, "fractions": "70/10/20 by group", "sets": {}}
    for name in names or list_sets(root):
        samples = set_samples(root, name)
        groups, how = group_set(samples, read_groups(root / name), progress, frames=name in FRAME_SEQUENCE_SETS)
        parts = split_groups(samples, groups, seed)
        doc["sets"][name] = {"n_images": len(samples), "n_groups": len(set(groups)), "grouping": how, **parts,
                             "groups": {s.rel_path: int(g) for s, g in zip(samples, groups)}}
    return doc


def load_multidomain_split(path: str | Path = DEFAULT_MULTIDOMAIN_SPLIT) -> dict:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: multidomain split not found (python -m core make-split-multidomain)")
    return json.loads(path.read_text())


def split_digest(name: str, split: dict | None = None) -> str:
    """A short fingerprint of one set's entry in the split (its train/val/test lists): a result carries it,
    so that a row measured before the set was re-split is recognised as such."""
    import hashlib

    entry = (split or load_multidomain_split())["sets"].get(name)
    return hashlib.sha1(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:12] if entry else ""


def domain_set(root: str | Path, name: str, part: str, size: int, split: dict | None = None,
               progress: bool = True) -> ImageSet:
    """One part ('train', 'val', 'test' or 'all') of one set, at `size`, with its groups."""
    split = split or load_multidomain_split()
    if name not in split["sets"]:
        raise DataError(f"set '{name}' is not in the multidomain split (known: {', '.join(split['sets'])})")
    entry = split["sets"][name]
    wanted = set(entry["train"] + entry["val"] + entry["test"]) if part == "all" else set(entry[part])
    samples = [s for s in set_samples(root, name) if s.rel_path in wanted]
    if not samples:
        raise DataError(f"{Path(root) / name}: none of the split's '{part}' images were found")
    return load_image_set(samples, size, entry["groups"], progress)
