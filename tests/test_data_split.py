"""Leak-free split: grouping logic, the committed split file, and the real-data leak test."""

import numpy as np

from core.data.dedup import group_near_duplicates
from core.data.discover import Sample, discover
from core.data.split import load_split, split_groups


def _sample(name, label):
    from pathlib import Path
    return Sample(Path(name), (), name, label)


def test_grouping_links_pixels_and_features():
    rng = np.random.default_rng(0)
    thumbs = rng.uniform(0, 255, (4, 1024)).astype(np.float32)
    thumbs[1] = thumbs[0] + 1.0           # a rescaled copy: near-identical thumbnails
    embs = rng.normal(size=(4, 2, 16))
    embs /= np.linalg.norm(embs, axis=2, keepdims=True)
    embs[3, 1] = embs[2, 0]               # a re-crop: its central crop matches the other's whole image
    r = group_near_duplicates(thumbs, embs)
    assert r.groups[0] == r.groups[1]
    assert r.groups[2] == r.groups[3]
    assert r.groups[0] != r.groups[2]
    assert r.n_groups == 2


def test_split_keeps_groups_whole_and_is_seeded():
    samples = [_sample(f"benign/{i}.png", "benign") for i in range(60)] + \
              [_sample(f"malignant/{i}.png", "malignant") for i in range(40)]
    groups = [i // 3 for i in range(100)]  # groups of 3
    a = split_groups(samples, groups, seed=1)
    b = split_groups(samples, groups, seed=1)
    assert a == b
    where = {n: part for part, names in a.items() for n in names}
    for g in set(groups):
        members = {where[s.rel_path] for s, gg in zip(samples, groups) if gg == g}
        assert len(members) == 1, "a duplicate group was split"
    assert 0.6 <= len(a["train"]) / 100 <= 0.8 and 0.1 <= len(a["test"]) / 100 <= 0.3


def test_committed_split_file_is_well_formed():
    doc = load_split()
    names = doc["train"] + doc["val"] + doc["test"]
    assert len(names) == len(set(names)) == 780
    assert set(doc["groups"]) == set(names)
    group_parts = {}
    for part in ("train", "val", "test"):
        for n in doc[part]:
            group_parts.setdefault(doc["groups"][n], set()).add(part)
    assert all(len(p) == 1 for p in group_parts.values()), "a group spans two parts"
    for part, lo, hi in (("train", 0.65, 0.75), ("val", 0.07, 0.13), ("test", 0.17, 0.23)):
        assert lo <= len(doc[part]) / 780 <= hi
    for label in ("benign", "malignant", "normal"):
        share = sum(n.startswith(label) for n in doc["test"]) / sum(n.startswith(label) for n in names)
        assert 0.15 <= share <= 0.25, f"test share of {label} is {share:.2f}"


def test_known_duplicates_share_a_group():
    """Pairs named in the dataset's README must never be separated."""
    g = load_split()["groups"]
    pairs = [("benign/benign (433).png", "malignant/malignant (145).png"),
             ("benign/benign (233).png", "benign/benign (299).png"),
             ("benign/benign (399).png", "malignant/malignant (93).png"),
             ("benign/benign (42).png", "malignant/malignant (51).png"),
             ("benign/benign (131).png", "malignant/malignant (51).png"),
             ("malignant/malignant (4).png", "malignant/malignant (5).png"),
             ("normal/normal (97).png", "normal/normal (98).png")]
    for a, b in pairs:
        assert g[a] == g[b], f"{a} and {b} are near-duplicates but in different groups"


def test_no_test_or_val_image_has_a_near_duplicate_in_train(busi_dir):
    """Independent check on the real images: grey 64x64 thumbnails (the README's criterion, MAD < 3)
    and 3 scales of central crops, compared across the split."""
    from PIL import Image

    doc = load_split()
    found = {s.rel_path: s for s in discover(busi_dir).samples}
    assert set(found) == set(doc["groups"]), "split file and data folder disagree"

    def thumbs(name):
        im = Image.open(found[name].image_path).convert("L")
        w, h = im.size
        out = []
        for crop in (1.0, 0.85, 0.7):
            dw, dh = int(w * (1 - crop) / 2), int(h * (1 - crop) / 2)
            out.append(np.asarray(im.crop((dw, dh, w - dw, h - dh)).resize((64, 64), Image.BILINEAR), np.float32))
        return np.stack(out)

    train = np.stack([thumbs(n) for n in doc["train"]])           # (T, 3, 64, 64)
    for part in ("val", "test"):
        for n in doc[part]:
            t = thumbs(n)
            # every scale of this image against every scale of every training image
            mad = np.abs(train[:, :, None] - t[None, None]).mean(axis=(3, 4)).min(axis=(1, 2))
            k = int(mad.argmin())
            assert mad[k] >= 3.0, f"{part} image {n} nearly duplicates train image {doc['train'][k]} (MAD {mad[k]:.2f})"
