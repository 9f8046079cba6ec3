"""The breast-lesion classification data: BUSI (benign / malignant / normal) and BUS-BRA (biopsy-proven
benign / malignant, another country), each in its committed patient-group split.

Parts: `busi_trainval`, `busi_test`, `bb_trainval`, `bb_test`. Cross-validation and selection read only
the `*_trainval` parts; the test parts are read once, at the end. Every row has a group key
(`busi:<near-duplicate group>`, `bb:<patient>`) so that folds keep groups whole.
"""
from __future__ import annotations

from pathlib import Path

from .discover import discover
from .multidomain import default_multidomain_dir, load_multidomain_split, set_samples
from .sets import default_data_dir
from .split import load_split

BUSBRA = "busbra_breast"


def busbra_labels(root: Path) -> dict[str, str]:
    """BUS-BRA image id -> pathology ('benign' / 'malignant'), from its labels.csv."""
    out = {}
    for line in (root / BUSBRA / "labels.csv").read_text().splitlines()[1:]:
        parts = line.split(",")
        if len(parts) >= 2:
            out[parts[0]] = parts[1]
    return out


def _split_rows(busi_dir: str | Path | None, md_dir: str | Path | None) -> dict[str, list[dict]]:
    """`busi_<part>` / `bb_<part>` (part = train, val, test of each committed split) -> rows {name, label, group,
    sample}; a source that is not on this machine gives no keys."""
    out: dict[str, list[dict]] = {}
    busi_dir = busi_dir or default_data_dir()
    if busi_dir is not None and Path(busi_dir).is_dir():
        doc = load_split()
        table = {s.rel_path: s for s in discover(busi_dir).samples}
        for part in ("train", "val", "test"):
            out[f"busi_{part}"] = [{"name": n, "label": table[n].label, "group": f"busi:{doc['groups'].get(n, n)}",
                                    "sample": table[n]} for n in doc[part] if n in table]
    md_dir = md_dir or default_multidomain_dir()
    if md_dir is not None and (Path(md_dir) / BUSBRA).is_dir():
        md_dir = Path(md_dir)
        doc = load_multidomain_split()["sets"][BUSBRA]
        table = {s.rel_path: s for s in set_samples(md_dir, BUSBRA)}
        labels = busbra_labels(md_dir)
        for part in ("train", "val", "test"):
            out[f"bb_{part}"] = [{"name": n, "label": labels[Path(n).stem], "group": f"bb:{doc['groups'][n]}",
                                  "sample": table[n]} for n in doc[part] if n in table and Path(n).stem in labels]
    return out


def lesion_parts(busi_dir: str | Path | None = None, md_dir: str | Path | None = None) -> dict[str, list[dict]]:
    """part -> rows {name, label, group, sample}; a source that is not on this machine gives empty parts."""
    rows = _split_rows(busi_dir, md_dir)
    return {f"{site}_{part}": (rows.get(f"{site}_train", []) + rows.get(f"{site}_val", []) if part == "trainval"
                               else rows.get(f"{site}_test", []))
            for site in ("busi", "bb") for part in ("trainval", "test")}


def kind_parts(busi_dir: str | Path | None = None, md_dir: str | Path | None = None) -> dict[str, list[dict]]:
    """The lesions alone (benign / malignant), part by part of each committed split: `busi_train`,
    `busi_val`, `busi_test`, `bb_train`, `bb_val`, `bb_test`; rows as in `lesion_parts`."""
    return {k: [r for r in v if r["label"] in ("benign", "malignant")] for k, v in _split_rows(busi_dir, md_dir).items()}
