"""Multidomain sets: group-aware splits (committed and regenerated), loading, and the BUSI hole closed."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.multidomain import (DEFAULT_MULTIDOMAIN_SPLIT, domain_set, load_multidomain_split,
                                   make_multidomain_split, split_digest)
from core.data.split import apply_manual_links, load_split
from tests.conftest import blob_image

EXPECTED_SETS = {"busbra_breast", "cvc_clinicdb_polyp", "hc18_fetal_head", "kvasir_polyp", "mmotu_ovarian_tumour",
                 "muscle_aponeurosis", "ph2_skin_lesion", "usgra_structure1", "usgra_structure2",
                 "psfhs_pubic_symphysis", "psfhs_fetal_head"}


def _flat_set(root: Path, n: int, groups: dict[str, str] | None = None, copies: dict[int, int] | None = None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    images = {}
    for i in range(n):
        src = (copies or {}).get(i)
        img, mask = images[src] if src is not None else blob_image(seed=100 + i, center=(30 + 3 * i % 40, 50))
        images[i] = (img, mask)
        Image.fromarray(img).save(root / "images" / f"id{i}.jpg", quality=95)
        Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(root / "masks" / f"id{i}_mask.png")
    rows = ["id,group"] + [f"id{i},{(groups or {}).get(f'id{i}', f'id{i}')}" for i in range(n)]
    (root / "groups.csv").write_text("\n".join(rows) + "\n")


def test_committed_multidomain_split_keeps_groups_whole():
    doc = load_multidomain_split()
    assert set(doc["sets"]) == EXPECTED_SETS
    # the two PSFHS targets are drawn on the same images: the same image is on the same side in both
    a, b = doc["sets"]["psfhs_pubic_symphysis"], doc["sets"]["psfhs_fetal_head"]
    assert all(sorted(a[p]) == sorted(b[p]) for p in ("train", "val", "test"))
    for name, e in doc["sets"].items():
        names = e["train"] + e["val"] + e["test"]
        assert len(names) == len(set(names)) == e["n_images"] == len(e["groups"]), name
        where = {n: p for p in ("train", "val", "test") for n in e[p]}
        parts_of_group: dict[int, set] = {}
        for n, g in e["groups"].items():
            parts_of_group.setdefault(g, set()).add(where[n])
        assert all(len(p) == 1 for p in parts_of_group.values()), f"{name}: a group spans two parts"
        assert 0.1 <= len(e["test"]) / e["n_images"] <= 0.3, name


def test_published_groups_and_near_duplicates_are_joined(tmp_path):
    root = tmp_path / "md"
    # id0/id1 share a published patient; id5 is a pixel copy of id4 (no id says so)
    _flat_set(root / "toy", 10, groups={"id0": "p0", "id1": "p0"}, copies={5: 4})
    doc = make_multidomain_split(root, seed=0, progress=False)
    g = doc["sets"]["toy"]["groups"]
    assert g["images/id0.jpg"] == g["images/id1.jpg"]
    assert g["images/id4.jpg"] == g["images/id5.jpg"]
    assert len({g[f"images/id{i}.jpg"] for i in (0, 2, 3, 4, 6)}) == 5
    loaded = domain_set(root, "toy", "all", 64, doc, progress=False)
    assert len(loaded) == 10 and loaded.images.shape[1:] == (64, 64, 3)
    with pytest.raises(Exception, match="not in the multidomain split"):
        domain_set(root, "nope", "test", 64, doc, progress=False)


def test_real_multidomain_sets_load_by_part():
    from core.data.multidomain import default_multidomain_dir

    root = default_multidomain_dir()
    if root is None:
        pytest.skip("no multidomain folder beside the project")
    doc = load_multidomain_split(DEFAULT_MULTIDOMAIN_SPLIT)
    test = domain_set(root, "ph2_skin_lesion", "test", 64, doc, progress=False)
    assert len(test) == len(doc["sets"]["ph2_skin_lesion"]["test"])
    assert all(test.has_lesion(i) for i in range(len(test)))


def test_busi_frames_of_one_lesion_share_a_group_and_a_part():
    doc = load_split()
    names = [f"malignant/malignant ({i}).png" for i in (23, 24, 25)]
    assert len({doc["groups"][n] for n in names}) == 1
    parts = {p for p in ("train", "val", "test") for n in names if n in doc[p]}
    assert parts == {"train"}, "the linked frames sit on one side (the anchor's: train)"
    # the link rule on a toy split: the other image's whole group moves to the anchor's part
    parts, groups = apply_manual_links({"train": ["a", "b"], "test": ["c", "d"]}, {"a": 0, "b": 1, "c": 2, "d": 2},
                                       links=(("a", "c"),))
    assert parts == {"train": ["a", "b", "c", "d"], "test": []} and groups["c"] == groups["d"] == 0


def test_frames_of_one_video_link_and_a_scene_change_cuts(tmp_path):
    """Issue 29: frame-numbered sets (CVC-ClinicDB) group consecutive frames of one video; a clear scene
    change between two frames is where one video ends."""
    from core.data.discover import discover
    from core.data.multidomain import sequence_links

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    scenes = {1: (200, 80, 60), 2: (40, 120, 200)}      # two videos: reddish, then bluish
    for fid in (3, 4, 6, 7, 9, 12, 13, 15):
        base = np.array(scenes[1 if fid < 10 else 2], float)
        img = np.clip(base + rng.normal(0, 12, (48, 64, 3)) + fid, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "images" / f"{fid}.png")
        Image.fromarray((np.arange(48 * 64).reshape(48, 64) % 7 == 0).astype(np.uint8) * 255).save(
            tmp_path / "masks" / f"{fid}_mask.png")
    samples = discover(tmp_path).samples
    ids = [int(Path(s.rel_path).stem) for s in samples]
    linked = {tuple(sorted((ids[a], ids[b]))) for a, b in sequence_links(samples)}
    assert linked == {(3, 4), (4, 6), (6, 7), (7, 9), (12, 13), (13, 15)}, "one cut, between 9 and 12"


def test_committed_cvc_split_never_puts_frames_of_one_run_in_two_parts():
    split = load_multidomain_split()["sets"]["cvc_clinicdb_polyp"]
    assert "consecutive frames of one video" in split["grouping"]
    part = {p: name for name in ("train", "val", "test") for p in split[name]}
    order = sorted(part, key=lambda p: int(Path(p).stem))
    changes = [(a, b) for a, b in zip(order, order[1:]) if part[a] != part[b]]
    assert all(split["groups"][a] != split["groups"][b] for a, b in changes), "a part boundary inside a group"
    assert len(changes) <= 12, "the parts are a few runs of whole videos, not interleaved frames"


def test_a_row_measured_before_a_re_split_is_recognised():
    """Results carry each set's split fingerprint: the report marks a row measured on an older split."""
    from core.evaluation.report import _before_resplit

    split = load_multidomain_split()
    now = split_digest("cvc_clinicdb_polyp", split)
    assert now and now == split_digest("cvc_clinicdb_polyp")
    moved = {"sets": {"cvc_clinicdb_polyp": {**split["sets"]["cvc_clinicdb_polyp"]}}}
    entry = moved["sets"]["cvc_clinicdb_polyp"]
    entry["test"], entry["val"] = entry["val"], entry["test"]
    assert split_digest("cvc_clinicdb_polyp", moved) != now
    assert _before_resplit("cvc_clinicdb_polyp", {}) and not _before_resplit("cvc_clinicdb_polyp", {"split": now})
    assert not _before_resplit("busi", {}), "only a set that was re-split is marked"
