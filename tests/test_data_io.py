"""core.data.io: every image and mask mode reads to the same tensor; bad files give clear errors."""
import numpy as np
import pytest
from PIL import Image

from core.data.io import DataError, mask_from_array, read_image, read_mask, read_masks_union
from tests.conftest import blob_image, save_png


def test_image_modes_give_identical_pixels(tmp_path):
    grey, _ = blob_image()
    ref = np.repeat(grey[:, :, None], 3, axis=2)
    save_png(tmp_path / "l.png", grey)
    save_png(tmp_path / "rgb.png", ref)
    rgba = np.dstack([ref, np.full(grey.shape, 255, np.uint8)])
    save_png(tmp_path / "rgba.png", rgba)
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    for name in ("l", "rgb", "rgba", "p", "i16"):
        arr = read_image(tmp_path / f"{name}.png")
        assert arr.dtype == np.uint8 and arr.shape == ref.shape, name
        np.testing.assert_array_equal(arr, ref, err_msg=name)


def test_mask_encodings_agree(tmp_path):
    _, mask = blob_image()
    u8 = mask.astype(np.uint8)
    save_png(tmp_path / "bit.png", u8 * 255, "1")
    save_png(tmp_path / "l255.png", u8 * 255)
    save_png(tmp_path / "l01.png", u8)
    save_png(tmp_path / "rgb.png", np.dstack([u8 * 255] * 3))
    save_png(tmp_path / "rgba.png", np.dstack([u8 * 255] * 3 + [np.full_like(u8, 255)]))
    # anti-aliased edge: values 1..127 are background, 128..255 foreground
    soft = u8 * 200 + (1 - u8) * 60
    save_png(tmp_path / "soft.png", soft.astype(np.uint8))
    for name in ("bit", "l255", "l01", "rgb", "rgba", "soft"):
        np.testing.assert_array_equal(read_mask(tmp_path / f"{name}.png"), mask, err_msg=name)


def test_drawn_layer_alpha_is_the_mask():
    layer = np.zeros((20, 30, 4), np.uint8)
    layer[5:10, 5:10, 3] = 255
    m = mask_from_array(layer)
    assert m.sum() == 25 and m[7, 7]


def test_opaque_black_rgba_is_an_empty_mask():
    layer = np.zeros((20, 30, 4), np.uint8)
    layer[..., 3] = 255
    assert not mask_from_array(layer).any()


def test_mask_of_other_size_is_resized_with_warning(tmp_path):
    small = np.zeros((50, 60), np.uint8)
    small[10:20, 10:20] = 255
    p = save_png(tmp_path / "m.png", small)
    with pytest.warns(UserWarning, match="resized"):
        m = read_masks_union([p], (100, 120), "x.png")
    assert m.shape == (100, 120) and m[30, 30] and not m[5, 5]


def test_truncated_and_missing_files_name_the_file(tmp_path):
    grey, _ = blob_image()
    p = save_png(tmp_path / "ok.png", grey)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated.png"):
        read_image(bad)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="text.png: not a readable image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(DataError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")


def test_oversized_image_is_refused():
    with pytest.raises(DataError, match="too large"):
        from core.data.io import array_to_rgb_uint8
        array_to_rgb_uint8(np.zeros((10, 5000), np.uint8))
