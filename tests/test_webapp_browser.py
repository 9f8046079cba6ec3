"""A real browser (Debian's Chromium driven by Playwright): upload a support and drag a box around its target
(LiteMedSAM draws the mask), fill slot 2 with an image and its mask file, upload a query, double-click Segment (it runs once),
then on the canvas: a click is drawn at once and then the new mask, undo, a dragged box, a brush
correction and its undo. Saves a screenshot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.phantom import make_phantom
from tests.conftest import CHROMIUM, app_page, open_project_with_a_gallery_support

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshot_test.png"


def test_draw_a_support_mask_and_segment(tmp_path, monkeypatch):
    from tests.test_webapp import make_checkpoints
    from webapp.context import AppConfig, AppContext
    from webapp import handlers

    make_checkpoints(tmp_path / "ckpt")
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=tmp_path / "ckpt", output_dir=tmp_path / "out"))
    from tests.conftest import count_calls
    decodes = count_calls(monkeypatch, handlers, "read_upload")
    segments = count_calls(monkeypatch, handlers, "segment")
    support, query = make_phantom(1), make_phantom(2)
    Image.fromarray(support.image).save(tmp_path / "support.png")
    Image.fromarray(query.image).save(tmp_path / "query.png")
    with app_page(ctx) as page:
        page.wait_for_function("() => window.panetCanvas !== undefined", timeout=60_000)   # the page is up
        page.wait_for_timeout(1000)
        # a support: its image uploaded on the supports' canvas, a box dragged around the target (LiteMedSAM
        # draws the mask), read on the server once
        sc = "#support-canvas"
        page.locator(f"{sc} input.pc-file").set_input_files(str(tmp_path / "support.png"))
        page.wait_for_function("() => window.panetSupports && window.panetSupports.state().w > 0", timeout=30_000)
        sb = page.locator(f"{sc} .pc-marks").bounding_box()
        ys, xs = np.nonzero(support.mask)
        h, w = support.mask.shape
        page.mouse.move(sb["x"] + sb["width"] * (xs.min() - 4) / w, sb["y"] + sb["height"] * (ys.min() - 4) / h)
        page.mouse.down()
        page.mouse.move(sb["x"] + sb["width"] * (xs.max() + 4) / w, sb["y"] + sb["height"] * (ys.max() + 4) / h,
                        steps=5)
        page.mouse.up()
        page.locator(f"{sc} .pc-slots").get_by_text("1: ready").wait_for(timeout=30_000)
        assert page.evaluate("window.panetSupports.state().slots[0]") == "ready"
        # slot 2 by its key, then an image and its mask file
        page.keyboard.press("2")
        page.wait_for_function("() => window.panetSupports.state().slot === 2", timeout=10_000)
        Image.fromarray(make_phantom(3).image).save(tmp_path / "support2.png")
        Image.fromarray(make_phantom(3).mask.astype(np.uint8) * 255).save(tmp_path / "support2_mask.png")
        page.locator(f"{sc} input.pc-file").set_input_files(str(tmp_path / "support2.png"))
        page.locator(f"{sc} .pc-status").get_by_text("Support 2: now drag a box").wait_for(timeout=30_000)
        page.locator(f"{sc} input.pc-maskfile").set_input_files(str(tmp_path / "support2_mask.png"))
        page.locator(f"{sc} .pc-slots").get_by_text("2: ready").wait_for(timeout=30_000)
        decoded = decodes[0]
        page.locator("#query-canvas input.pc-file").set_input_files(str(tmp_path / "query.png"))
        # the canvas shows the query as soon as it is uploaded
        page.wait_for_function("() => window.panetCanvas && window.panetCanvas.state().w > 0", timeout=30_000)
        calls = segments[0]
        page.locator("#segment-button").dblclick()
        status = page.locator("#query-canvas .pc-status")
        status.get_by_text("support(s)").wait_for(timeout=60_000)   # the report under the canvas
        idle = "() => window.panetCanvas.state().busy === 0"
        page.wait_for_function(idle, timeout=30_000)
        assert segments[0] == calls + 1, "a double click runs Segment once"
        page.locator("#segment-button").click()
        page.wait_for_function(idle, timeout=30_000)
        assert decodes[0] == decoded + 1, "Segment clicks send no support images (one read: the query)"
        mask_png = "() => document.querySelector('#query-canvas .pc-mask').toDataURL()"
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.keyboard.press("b")      # a shortcut: the box mode
        assert page.evaluate("window.panetCanvas.state().mode") == "box"
        page.keyboard.press("a")
        assert page.evaluate("window.panetCanvas.state().mode") == "+"
        before = page.evaluate(mask_png)
        ob = page.locator("#query-canvas .pc-marks").bounding_box()
        px, py = ob["x"] + ob["width"] * 0.3, ob["y"] + ob["height"] * 0.3
        # the click is drawn at once: in the same task as the click, before any answer can arrive
        drawn_now, waiting = page.evaluate("""([x, y]) => {
            const c = document.querySelector('#query-canvas .pc-marks'), r = c.getBoundingClientRect();
            const opts = {bubbles: true, clientX: x, clientY: y, button: 0, pointerId: 1, isPrimary: true};
            c.dispatchEvent(new PointerEvent('pointerdown', opts));
            c.dispatchEvent(new PointerEvent('pointerup', opts));
            const px = c.getContext('2d').getImageData(Math.round((x - r.left) * c.width / r.width),
                                                        Math.round((y - r.top) * c.height / r.height), 1, 1);
            return [px.data[3], window.panetCanvas.state().busy];
        }""", [px, py])
        assert drawn_now > 0 and waiting == 1, "the click is shown before the server answers"
        status.get_by_text("1 positive").wait_for(timeout=30_000)
        page.wait_for_function(idle, timeout=30_000)
        assert page.evaluate(mask_png) != before, "the click changed the mask"
        # undo (z): the click goes, and with no click left the Segment result is back (issue 26)
        page.keyboard.press("z")
        status.get_by_text("the Segment result").wait_for(timeout=30_000)
        assert page.evaluate("window.panetCanvas.state().clicks") == 0
        page.wait_for_function(idle, timeout=30_000)
        assert page.evaluate(mask_png) == before, "the mask Segment showed, not PANet++'s raw map"
        # a box, dragged with the mouse (drawn while dragging); the mode chosen with the mouse too
        page.locator('#query-canvas button[data-mode="box"]').click()
        assert page.evaluate("window.panetCanvas.state().mode") == "box"
        page.mouse.move(ob["x"] + ob["width"] * 0.2, ob["y"] + ob["height"] * 0.2)
        page.mouse.down()
        page.mouse.move(ob["x"] + ob["width"] * 0.7, ob["y"] + ob["height"] * 0.7, steps=5)
        page.mouse.up()
        status.get_by_text(", box").wait_for(timeout=30_000)
        assert page.evaluate("window.panetCanvas.state().box") is not None
        # a brush stroke corrects the mask; z restores the one before
        page.wait_for_function(idle, timeout=30_000)
        before = page.evaluate(mask_png)
        page.keyboard.press("p")
        page.mouse.move(ob["x"] + ob["width"] * 0.8, ob["y"] + ob["height"] * 0.85)
        page.mouse.down()
        page.mouse.move(ob["x"] + ob["width"] * 0.95, ob["y"] + ob["height"] * 0.9, steps=5)
        page.mouse.up()
        status.get_by_text("Corrected by hand").wait_for(timeout=30_000)
        assert page.evaluate(mask_png) != before
        page.keyboard.press("z")
        status.get_by_text("Undone").wait_for(timeout=30_000)
        page.wait_for_function(idle, timeout=30_000)
        assert page.evaluate(mask_png) == before, "undo restores the mask before the brush stroke"
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    shot = np.asarray(Image.open(SCREENSHOT))
    assert shot.shape[0] > 500 and shot.std() > 10


def test_first_use_segment_in_view_and_gallery_picks_fill_the_next_slot(tmp_path):
    """Issue 16, finding 8: at 1400 x 900 Segment is on screen without scrolling; three gallery picks fill
    slots 1, 2, 3 (they all replaced slot 1)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.test_webapp import make_checkpoints
    from webapp.context import AppConfig, AppContext

    make_checkpoints(tmp_path / "ckpt")
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=tmp_path / "ckpt", output_dir=tmp_path / "out",
                               promptable=False))
    with app_page(ctx, 900) as page:
        button = page.locator("#segment-button")
        button.wait_for(state="visible", timeout=30_000)
        box = button.bounding_box()
        assert box and box["y"] + box["height"] <= 900, f"Segment at y={box and box['y']}: below the fold"
        for k in range(3):
            before = page.locator("#picked-text").inner_text()
            page.locator("#gallery img").nth(k).click()
            # what a user sees before the next step: the selection named
            sync_api.expect(page.locator("#picked-text")).not_to_have_text(before, timeout=30_000)
            page.get_by_role("button", name="Put in support slot").click()
            page.locator("#support-canvas .pc-slots").get_by_text(f"{k + 1}: ready").wait_for(timeout=30_000)
        status = page.locator("#support-canvas .pc-slots").inner_text()
        assert all(f"{k}: ready" in status for k in (1, 2, 3)), status
        # a fourth pick as the query: the canvas shows it (the canvas's own call)
        before = page.locator("#picked-text").inner_text()
        page.locator("#gallery img").nth(3).click()
        sync_api.expect(page.locator("#picked-text")).not_to_have_text(before, timeout=30_000)
        page.get_by_role("button", name="Use as query").click()
        page.wait_for_function("() => window.panetCanvas && window.panetCanvas.state().w > 0", timeout=30_000)
        assert "Press Segment" in page.locator("#query-canvas .pc-status").inner_text()


def test_a_propagation_that_ends_keeps_the_canvas_work_and_a_reload_brings_the_page_back(tmp_path):
    """Issue 26, case 1 in the browser: propagate a folder, meanwhile segment a query on the canvas, then Stop;
    the canvas's query and mask are still the session's (the next Segment works). Then a reload brings back
    the supports, the query with its mask and the open project (they belong to the user, not to the tab)."""
    from tests.test_webapp import make_checkpoints
    from webapp.context import AppConfig, AppContext

    make_checkpoints(tmp_path / "ckpt")
    data = tmp_path / "scans"
    data.mkdir()
    for i in range(150):
        Image.fromarray(make_phantom(100 + i, size=(96, 128)).image).save(data / f"scan{i:03d}.png")
    ctx = AppContext(AppConfig(data_dir=data, checkpoints_dir=tmp_path / "ckpt", output_dir=tmp_path / "out",
                               promptable=False))
    with app_page(ctx) as page:
        page.wait_for_function("() => window.panetSupports !== undefined", timeout=60_000)
        open_project_with_a_gallery_support(page, "ward_9")     # a synthetic phantom with its mask
        page.locator("#review-canvas .pc-project").get_by_text("unlabelled 150").wait_for(timeout=30_000)
        page.locator("#propagate-button").click()
        page.locator("#propagate-status").get_by_text("of 150").wait_for(timeout=60_000)   # it runs
        # meanwhile, on the Segment tab: a query and its Segment
        page.get_by_role("tab", name="Segment").click()
        Image.fromarray(make_phantom(7).image).save(tmp_path / "q.png")
        page.locator("#query-canvas input.pc-file").set_input_files(str(tmp_path / "q.png"))
        page.wait_for_function("() => window.panetCanvas.state().w > 0", timeout=30_000)
        page.locator("#segment-button").click()
        status = page.locator("#query-canvas .pc-status")
        status.get_by_text("support(s)").wait_for(timeout=60_000)
        # then Stop: the propagation ends while the canvas holds its query and mask
        page.get_by_role("tab", name="Annotate a folder").click()
        page.get_by_role("button", name="Stop").click()
        # ended: stopped, or done before the Stop arrived (then Stop answers that no job is running)
        page.wait_for_function("""() => /(Stopped|Done): \\d+ of 150|no fine-tuning, adaptation or propagation/.test(
            document.querySelector('#propagate-status').innerText)""", timeout=120_000)
        page.wait_for_timeout(1500)
        page.get_by_role("tab", name="Segment").click()
        page.locator("#segment-button").click()
        page.wait_for_function("() => window.panetCanvas.state().busy === 0", timeout=60_000)
        assert "no query image" not in status.inner_text(), status.inner_text()
        assert "support(s)" in status.inner_text()
        # a reload: the same user finds the supports, the query with its mask, and the project
        page.reload()
        page.wait_for_function("() => window.panetSupports !== undefined", timeout=60_000)
        page.locator("#support-canvas .pc-slots").get_by_text("1: ready").wait_for(timeout=30_000)
        page.wait_for_function("() => window.panetCanvas.state().w > 0", timeout=30_000)
        status.get_by_text("Restored").wait_for(timeout=30_000)
        page.get_by_role("tab", name="Annotate a folder").click()
        page.locator("#review-canvas .pc-project").get_by_text("Project ward_9").wait_for(timeout=30_000)
