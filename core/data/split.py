"""Leak-free train / val / test split: whole near-duplicate groups, stratified by class, seeded."""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from .dedup import DedupResult
from .discover import Sample
from .io import DataError

DEFAULT_SPLIT_FILE = Path(__file__).with_name("busi_split.json")
FRACTIONS = (0.7, 0.1, 0.2)


def split_groups(samples: list[Sample], groups: list[int], seed: int = 0,
                 fractions: tuple[float, float, float] = FRACTIONS) -> dict[str, list[str]]:
    """Assign whole groups to train/val/test, per class stratum (a group's class = its majority class).

    Within a stratum the groups are shuffled with `seed`, then filled greedily by image count so that
    each part gets close to its fraction of the stratum's images.
    """
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    strata: dict[str, list[int]] = {}
    for g, idx in sorted(members.items()):
        label = Counter(samples[i].label or "none" for i in idx).most_common(1)[0][0]
        strata.setdefault(label, []).append(g)
    parts = {"train": [], "val": [], "test": []}
    names = ("train", "val", "test")
    rng = random.Random(seed)
    for label in sorted(strata):
        gs = strata[label]
        rng.shuffle(gs)
        total = sum(len(members[g]) for g in gs)
        target = {n: f * total for n, f in zip(names, fractions)}
        count = dict.fromkeys(names, 0)
        # val and test first (the small parts), then everything else goes to train
        for g in gs:
            need = {n: target[n] - count[n] for n in ("test", "val")}
            part = max(need, key=need.get)
            if need[part] < len(members[g]) / 2:
                part = "train"
            count[part] += len(members[g])
            parts[part] += [samples[i].rel_path for i in members[g]]
    return {k: sorted(v) for k, v in parts.items()}


def build_split_document(samples: list[Sample], dedup: DedupResult, seed: int) -> dict:
    parts = split_groups(samples, dedup.groups, seed)
    group_of = {s.rel_path: g for s, g in zip(samples, dedup.groups)}
    return {
        "dataset": "BUSI (Dataset_BUSI_with_GT)",
        "seed": seed,
        "method": "near-duplicate groups (32x32 thumbnail MAD < 4 grey levels, or EfficientNet-Lite0 "
                  "embedding cosine > 0.93 over whole/central-crop views), whole groups split 70/10/20 "
                  "stratified by majority class",
        "n_groups": dedup.n_groups,
        "n_duplicate_groups": len(dedup.duplicate_groups()),
        **parts,
        "groups": {k: group_of[k] for k in sorted(group_of)},
    }


def load_split(path: str | Path = DEFAULT_SPLIT_FILE) -> dict:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: split file not found (python -m core make-split --data DIR)")
    doc = json.loads(path.read_text())
    for key in ("train", "val", "test"):
        if key not in doc:
            raise DataError(f"{path}: split file has no '{key}' list")
    return doc


def split_hash(doc: dict) -> str:
    """Short hash of the split's membership: stored in checkpoint configs."""
    payload = json.dumps({k: doc[k] for k in ("train", "val", "test")}, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:12]


def select(samples: list[Sample], names: list[str]) -> list[Sample]:
    """Samples whose rel_path is in `names` (in the order of `samples`). Warns via error if none match."""
    wanted = set(names)
    chosen = [s for s in samples if s.rel_path in wanted]
    if not chosen:
        raise DataError("none of the split's images were found in the data folder: is --data the BUSI root?")
    return chosen
