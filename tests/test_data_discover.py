"""core.data.discover: the three layouts, union of masks, and clear messages for bad folders."""
import numpy as np
import pytest

from core.data.dataset import load_pair
from core.data.discover import discover
from core.data.io import DataError
from tests.conftest import blob_image, save_png


def test_kaggle_layout_pairs_and_mask_union(kaggle_dir):
    found = discover(kaggle_dir)
    assert found.layout == "class-folders"
    labels = sorted(s.label for s in found.samples)
    assert labels == ["benign", "benign", "malignant", "malignant", "normal"]
    first = next(s for s in found.samples if s.rel_path == "benign/benign (0).png")
    assert len(first.mask_paths) == 2
    image, mask = load_pair(first)
    assert mask[10, 10], "the second mask file must be part of the union"
    assert mask[40, 50], "the first mask file must be part of the union"


def test_flat_images_masks_layout(tmp_path):
    for i, mask_name in enumerate(["a_mask.png", "b.png"]):
        img, m = blob_image(seed=i)
        save_png(tmp_path / "images" / f"{mask_name[0]}.png", img)
        save_png(tmp_path / "masks" / mask_name, m.astype(np.uint8) * 255)
    save_png(tmp_path / "images" / "lonely.png", blob_image()[0])
    found = discover(tmp_path)
    assert found.layout == "images-masks-flat"
    assert sorted(s.rel_path for s in found.samples) == ["images/a.png", "images/b.png"]
    assert all(s.label is None for s in found.samples)
    assert [p.name for p in found.unmatched_images] == ["lonely.png"]


def test_class_subfolder_layout(tmp_path):
    for label in ("benign", "malignant"):
        img, m = blob_image()
        save_png(tmp_path / "images" / label / "x.png", img)
        save_png(tmp_path / "masks" / label / "x_mask.png", m.astype(np.uint8) * 255)
    found = discover(tmp_path)
    assert found.layout == "images-masks-classes"
    assert sorted(s.label for s in found.samples) == ["benign", "malignant"]


def test_missing_folder_and_no_pairs(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        discover(tmp_path / "nope")
    save_png(tmp_path / "only" / "x.png", blob_image()[0])
    with pytest.raises(DataError, match="no image/mask pairs found.*1 images without a mask"):
        discover(tmp_path / "only")
