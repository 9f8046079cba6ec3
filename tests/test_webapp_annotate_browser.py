"""Annotate a folder in a real browser (Chromium, Playwright): a gallery support, propagate, accept one
image (Enter), skip one (the canvas's button, with the mouse), go back to it (left arrow), correct one with a
brush stroke on the canvas and Enter (the corrected mask is saved), export."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.phantom import make_phantom
from tests.conftest import CHROMIUM, app_page, open_project_with_a_gallery_support

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def test_annotate_a_folder_in_the_browser(tmp_path):
    from tests.test_webapp import make_checkpoints
    from webapp.context import AppConfig, AppContext

    make_checkpoints(tmp_path / "ckpt")
    data = tmp_path / "scans"
    data.mkdir()
    for i in range(3):
        Image.fromarray(make_phantom(40 + i, size=(120, 160)).image).save(data / f"scan{i}.png")
    ctx = AppContext(AppConfig(data_dir=data, checkpoints_dir=tmp_path / "ckpt", output_dir=tmp_path / "out"))
    with app_page(ctx) as page:
        open_project_with_a_gallery_support(page, "ward_3")     # a synthetic phantom with its mask
        project = page.locator("#review-canvas .pc-project")
        project.get_by_text("unlabelled 3").wait_for(timeout=30_000)
        page.locator("#propagate-button").click()
        page.locator("#propagate-status").get_by_text("Done: 3 of 3").wait_for(timeout=60_000)
        project.get_by_text("predicted 3").wait_for(timeout=30_000)     # the canvas shows the first image
        text = page.locator("#review-canvas .pc-status")
        # the keyboard: ? lists the shortcuts; Enter accepts, s skips, left arrow goes back (nothing changes)
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.keyboard.press("?")
        page.locator("#shortcut-help-overlay").get_by_text("no lesion").wait_for(timeout=5_000)
        page.keyboard.press("Escape")
        first = text.inner_text().split(":")[0]
        page.keyboard.press("Enter")
        project.get_by_text("accepted 1").wait_for(timeout=30_000)
        page.wait_for_function("t => document.querySelector('#review-canvas .pc-status').innerText.split(':')[0] !== t",
                               arg=first, timeout=30_000)   # the next image is shown
        shown = text.inner_text()      # the image skipped next (with the mouse alone: the canvas's button)
        page.locator("#review-skip").click()
        project.get_by_text("skipped 1").wait_for(timeout=30_000)
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("t => document.querySelector('#review-canvas .pc-status').innerText.split(':')[0] === t",
                               arg=shown.split(":")[0], timeout=30_000)     # the same image (now skipped)
        assert "accepted 1" in project.inner_text()
        # a reload is the same user: the project (and its decisions) come back under its name
        page.reload()
        page.get_by_role("tab", name="Annotate a folder").click()
        page.locator("#project-name textarea, #project-name input").first.fill("ward_3")
        page.get_by_role("button", name="Open / create").click()
        project.get_by_text("accepted 1").wait_for(timeout=30_000)
        page.wait_for_function("() => window.panetReview && window.panetReview.state().w > 0", timeout=30_000)
        # a brush stroke on the canvas, then Enter: the corrected mask is what is saved
        corrected = text.inner_text().split(":")[0]
        page.keyboard.press("p")
        box = page.locator("#review-canvas .pc-marks").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx - 20, cy)
        page.mouse.down()
        for dx in range(-20, 21, 4):
            page.mouse.move(cx + dx, cy + dx % 8, steps=2)
        page.mouse.up()
        assert page.evaluate("window.panetReview.state().painted")
        # Enter after a brush stroke saves the mask the person sees (a correction, not the prediction)
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.keyboard.press("Enter")
        project.get_by_text("corrected 1").wait_for(timeout=30_000)
        page.get_by_role("button", name="Export (masks, manifest, COCO)").click()
        page.get_by_text(".zip").first.wait_for(timeout=30_000)
    from core.annotate.store import ProjectStore
    (folder,) = (ctx.config.output_dir / "projects" / "users").iterdir()   # one user made it, in their namespace
    store = ProjectStore(ctx.config.output_dir, "ward_3", namespace=folder.name)
    assert store.counts().get("accepted") == 1 and store.counts().get("corrected") == 1
    # the stroke (40 px wide at the canvas's size, across its middle) is in the saved mask of that image
    m = store.mask(corrected)
    assert m is not None and m.any() and m[m.shape[0] // 2].any()
