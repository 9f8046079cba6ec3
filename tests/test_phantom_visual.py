"""Synthetic demo phantoms and the overlay/heatmap pictures."""
import numpy as np

from core.phantom import demo_set, make_phantom
from core.visual import colorize, heatmap_panel, overlay


def test_phantoms_are_deterministic_and_have_a_dark_lesion():
    a, b = make_phantom(3), make_phantom(3)
    np.testing.assert_array_equal(a.image, b.image)
    assert "synthetic" in a.name
    assert 0.005 < a.mask.mean() < 0.2
    grey = a.image[..., 0].astype(float)
    assert grey[a.mask].mean() < grey[~a.mask & (grey > 0)].mean()  # hypoechoic, as real lesions
    assert len({p.name for p in demo_set(8)}) == 8


def test_overlay_colours_only_the_mask_region():
    img = np.full((40, 50, 3), 100, np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:20, 10:30] = True
    out = overlay(img, mask, opacity=0.5)
    assert out.shape == img.shape
    assert out[15, 20, 0] > 150 and tuple(out[35, 45]) == (100, 100, 100)


def test_colorize_and_heatmap_panel(tmp_path):
    c = colorize(np.array([[-1.0, 1.0]]))
    assert c.shape == (1, 2, 3) and c[0, 0].sum() < c[0, 1].sum()
    rgb = heatmap_panel(np.zeros((30, 40, 3), np.uint8), {"foreground": np.zeros((30, 40))}, tmp_path / "h.png")
    assert rgb.ndim == 3 and (tmp_path / "h.png").exists()
