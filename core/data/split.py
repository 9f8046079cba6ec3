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

# Same-lesion pairs the automatic grouping misses (found by inspection from outside the project).
# (anchor, other): `other` joins the anchor's group and part. malignant 23/24/25 are frames of one lesion.
MANUAL_LINKS: tuple[tuple[str, str], ...] = (
    ("malignant/malignant (24).png", "malignant/malignant (23).png"),
    ("malignant/malignant (24).png", "malignant/malignant (25).png"),
)


def apply_manual_links(parts: dict[str, list[str]], group_of: dict[str, int],
                       links=MANUAL_LINKS) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Merge each linked image's whole group into its anchor's group and part.

    Applied after the random assignment so that the rest of the split stays exactly as it was."""
    parts = {k: list(v) for k, v in parts.items()}
    group_of = dict(group_of)
    for anchor, other in links:
        if anchor not in group_of or other not in group_of:
            continue
        old, new = group_of[other], group_of[anchor]
        target = next(p for p, names in parts.items() if anchor in names)
        moved = [n for n, g in group_of.items() if g == old]
        for n in moved:
            group_of[n] = new
            for p, names in parts.items():
                if n in names and p != target:
                    names.remove(n)
                    parts[target].append(n)
    return {k: sorted(v) for k, v in parts.items()}, group_of


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
    parts, group_of = apply_manual_links(parts, group_of)
    return {
        "dataset": "BUSI (Dataset_BUSI_with_GT)",
        "seed": seed,
        "method": "near-duplicate groups (32x32 thumbnail MAD < 4 grey levels, or EfficientNet-Lite0 "
                  "embedding cosine > 0.93 over whole/central-crop views), whole groups split 70/10/20 "
                  "stratified by majority class; then the manual same-lesion links (MANUAL_LINKS) move "
                  "a linked image's group to its anchor's part",
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
