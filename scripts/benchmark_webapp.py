"""Click-to-mask latency of the web app: through its script API, and in a real browser.

    python scripts/benchmark_webapp.py [--data $BUSI_DIR] [--shots 5] [--repeats 40] [--browser]

Launches the app with the shipped checkpoints, sets `--shots` supports once (BUSI test images with their
ground-truth masks, or the synthetic phantoms without data), then times /segment calls on the session's query
from the client's request to the response with the mask (alternating between two thresholds), /click and
/box refinements. With --browser, Chromium (Playwright) times in the page, each from the user's event to the
animation frame after the canvas drew the server's answer: a support made ready (its image, then its mask
file, into a slot on the supports' canvas), a gallery pick into a slot, Segment on a new query, Segment
clicked the moment a new query shows, Segment right after a slot change, a click on the query's canvas,
opening a project of 100 images, and Enter in the review queue. Writes docs/results_webapp.json and
docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def b64(path: Path) -> str:
    import base64

    return base64.b64encode(Path(path).read_bytes()).decode()


def pct(xs, q):
    return round(float(np.percentile(xs, q)))


def browser_timing(url: str, files: list[tuple[Path, Path]], queries: list[Path], repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    times, server = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        page.goto(url)
        page.wait_for_function("() => window.panetSupports !== undefined", timeout=60_000)
        ready = [_time_support_ready(page, k, img, mask) for k, (img, mask) in enumerate(files, 1)]
        # timed inside the page: from the click (capture phase) to the canvas's next "drawn" signal, which it
        # gives on the frame after the new mask is drawn (so that the measuring does not poll the page)
        _watch(page, "#query-canvas", "click", "#segment-button")
        page.wait_for_function("() => window.panetCanvas !== undefined", timeout=60_000)
        for r in range(repeats + 1):
            # a query never seen before each time (nothing cached for it), shown on the canvas; a person takes a
            # moment before pressing Segment, in which its LiteMedSAM embedding is computed in the background
            page.locator("#query-canvas input.pc-file").set_input_files(str(queries[r % len(queries)]))
            page.wait_for_timeout(1500)
            page.evaluate("() => { window.__t0 = null; window.__t1 = null; }")
            page.locator("#segment-button").click()
            page.wait_for_function("() => window.__t1 !== null && window.__t1 !== undefined", timeout=60_000,
                                   polling=100)
            times.append(page.evaluate("() => window.__t1 - window.__t0"))
            if r:
                PHASES.setdefault("segment_new_query", []).append(_phases(page))
            status = page.locator("#query-canvas .pc-status").inner_text()
            assert "support(s)" in status or "No lesion" in status, status
            server.append(float(status.split(" ms")[-2].split()[-1]))      # the server's own time, last on the line
        soon = _time_segment_as_soon_as_shown(page, queries, 8)
        after, ready_again = _time_segment_after_slot_change(page, files, 12)
        picks = _time_gallery_picks(page, 6)
        clicks = _time_overlay_clicks(page, 10)
        classify_first, classify, classify_cam = _time_classify(page, queries, 8)
        opened, keys = _time_keyboard_accepts(page, 10)
        browser.close()
    rest = times[1:]
    return {"browser_repeats": len(rest), "browser_median_ms": pct(rest, 50), "browser_p95_ms": pct(rest, 95),
            "browser_server_median_ms": pct(server[1:], 50), "browser_server_ms": [round(v) for v in server],
            "browser_ms": [round(v) for v in times],
            "browser_first_ms": round(times[0]), "browser_click_median_ms": pct(clicks, 50),
            "browser_click_p95_ms": pct(clicks, 95), "browser_accept_median_ms": pct(keys, 50),
            "browser_accept_p95_ms": pct(keys, 95), "browser_clicks": len(clicks), "browser_accepts": len(keys),
            "segment_as_soon_as_shown_p50_ms": pct(soon[0], 50), "segment_as_soon_as_shown_p95_ms": pct(soon[0], 95),
            "segment_as_soon_as_shown_redraw_p50_ms": pct(soon[1], 50) if soon[1] else None,
            "segment_as_soon_as_shown_n": len(soon[0]),
            "segment_after_slot_change_p50_ms": pct(after, 50) if after else None,
            "segment_after_slot_change_p95_ms": pct(after, 95) if after else None,
            "segment_after_slot_change_n": len(after),
            "support_ready_p50_ms": pct(ready + ready_again, 50), "support_ready_p95_ms": pct(ready + ready_again, 95),
            "support_ready_n": len(ready + ready_again),
            "support_gallery_pick_p50_ms": pct(picks, 50), "support_gallery_pick_p95_ms": pct(picks, 95),
            "classify_p50_ms": pct(classify, 50), "classify_p95_ms": pct(classify, 95), "classify_n": len(classify),
            "classify_first_ms": round(classify_first),
            "classify_gradcam_p50_ms": pct(classify_cam, 50), "classify_gradcam_p95_ms": pct(classify_cam, 95),
            "open_project_100_p50_ms": pct(opened, 50), "open_project_100_p95_ms": pct(opened, 95),
            "open_project_100_first_ms": round(opened[0]), "open_project_100_n": len(opened),
            # the names for the same figures (the new-query Segment and the click, in the page)
            "segment_new_query_p50_ms": pct(rest, 50), "segment_new_query_p95_ms": pct(rest, 95),
            "click_p50_ms": pct(clicks, 50), "click_p95_ms": pct(clicks, 95), **phase_medians()}


def _watch(page, target: str, start_event: str, start_selector: str | None) -> None:
    """In the page: t0 at the start event (capture phase), t1 at the next "drawn" signal of the canvas
    `target` (given on the animation frame after it drew the server's answer)."""
    page.evaluate("""([target, ev, sel]) => {
        const start = (e) => { if (ev !== 'keydown' || e.key === 'Enter') { window.__t0 = performance.now(); window.__t1 = null; } };
        if (sel) document.querySelector(sel).addEventListener(ev, start, true);
        else document.addEventListener(ev, start, true);
        document.querySelector(target).addEventListener('panet-drawn', (e) => {
            if (window.__t0 && !window.__t1) window.__t1 = e.detail.t;
        });
    }""", [target, start_event, start_selector])


def _time_segment_as_soon_as_shown(page, queries: list[Path], n: int) -> tuple[list[float], list[float]]:
    """A new query, Segment clicked the moment the canvas says the query is ready (its LiteMedSAM embedding
    has only just started): to the first mask drawn, and to LiteMedSAM's redraw drawn when it follows."""
    first, redraw = [], []
    for r in range(n):
        page.locator("#query-canvas input.pc-file").set_input_files(str(queries[(r + 7) % len(queries)]))
        page.locator("#query-canvas .pc-status").get_by_text("ready: press").wait_for(timeout=60_000)
        page.evaluate("""() => { window.__t0 = null; window.__t1 = null; window.__t2 = null;
            const c = document.querySelector('#query-canvas');
            const second = (e) => { if (window.__t1 && e.detail.t > window.__t1) { window.__t2 = e.detail.t;
                c.removeEventListener('panet-drawn', second); } };
            c.addEventListener('panet-drawn', second); }""")
        page.locator("#segment-button").click()
        page.wait_for_function("() => window.__t1 !== null && window.__t1 !== undefined", timeout=60_000, polling=50)
        first.append(page.evaluate("() => window.__t1 - window.__t0"))
        status = page.locator("#query-canvas .pc-status").inner_text()
        if "follows" in status:
            page.wait_for_function("() => window.__t2 !== null", timeout=60_000, polling=50)
            redraw.append(page.evaluate("() => window.__t2 - window.__t0"))
        page.wait_for_timeout(300)
    return first, redraw


SUPPORT_WATCH = """() => {
    window.__s0 = null; window.__s1 = null;
    const c = document.querySelector('#support-canvas');
    if (!window.__swatched) {
        window.__swatched = true;
        c.addEventListener('change', () => { if (window.__s0 === null) window.__s0 = performance.now(); }, true);
        c.addEventListener('panet-drawn', (e) => {
            const st = window.panetSupports.state();
            if (window.__s0 !== null && window.__s1 === null && st.slots[st.slot - 1] === 'ready') window.__s1 = e.detail.t;
        });
    }
}"""


def _time_support_ready(page, k: int, img: Path, mask: Path) -> float:
    """Slot k: from the image chosen (its change event) to the frame in which the slot shows ready, its mask
    file chosen as soon as the image shows (the automation's own wait is inside the figure)."""
    page.evaluate(f"() => window.panetSupports.show({k})")
    page.wait_for_function(f"() => window.panetSupports.state().slot === {k} && window.panetSupports.state().busy === 0")
    page.evaluate(SUPPORT_WATCH)
    page.locator("#support-canvas input.pc-file").set_input_files(str(img))
    page.wait_for_function(f"() => window.panetSupports.state().slots[{k - 1}] === 'waiting' && "
                           "window.panetSupports.state().busy === 0", timeout=60_000, polling=20)
    page.locator("#support-canvas input.pc-maskfile").set_input_files(str(mask))
    page.wait_for_function("() => window.__s1 !== null", timeout=60_000, polling=50)
    return page.evaluate("() => window.__s1 - window.__s0")


def _time_segment_after_slot_change(page, files, n: int) -> tuple[list[float], list[float]]:
    """Support slot 1 changed (a new image and mask, until the slot says ready), then Segment at once: to the
    first mask drawn on the query's canvas. Also returns each slot change's own time."""
    out, ready = [], []
    for r in range(n):
        img, mask = files[(r + 1) % len(files)]
        ready.append(_time_support_ready(page, 1, img, mask))
        page.evaluate("() => { window.__t0 = null; window.__t1 = null; }")
        page.locator("#segment-button").click()
        page.wait_for_function("() => window.__t1 !== null && window.__t1 !== undefined", timeout=60_000, polling=50)
        out.append(page.evaluate("() => window.__t1 - window.__t0"))
        page.wait_for_function("() => window.panetCanvas.state().busy === 0", timeout=60_000)
        page.wait_for_timeout(500)
    return out, ready


def _time_gallery_picks(page, n: int) -> list[float]:
    """A gallery image (with its mask) put into a slot: the button's click to the frame that shows it ready."""
    out = []
    for r in range(n):
        page.locator("#gallery img").nth(r % 4).click()
        page.wait_for_timeout(600)
        page.evaluate("() => window.panetSupports.show(2)")
        page.wait_for_function("() => window.panetSupports.state().busy === 0")
        page.evaluate("""() => { window.__s0 = null; window.__s1 = null; const b = [...document.querySelectorAll('button')]
            .find((x) => x.textContent.trim() === 'Put in support slot');
            b.addEventListener('click', () => { window.__s0 = performance.now(); }, {capture: true, once: true}); }""")
        page.get_by_role("button", name="Put in support slot").click()
        page.wait_for_function("() => window.__s1 !== null", timeout=60_000, polling=50)
        out.append(page.evaluate("() => window.__s1 - window.__s0"))
    return out


def _time_overlay_clicks(page, n: int) -> list[float]:
    """A click on the canvas (add/remove) to the refined mask drawn. As a person refines a result: after a
    Segment (not timed here) and a look at its mask (1.5 s), so that the slot changes before (whose
    background work the Segment waits out) are settled."""
    before = page.evaluate("() => window.panetCanvas.state().drawn")
    page.locator("#segment-button").click()
    page.wait_for_function(f"() => window.panetCanvas.state().drawn > {before} && !window.panetCanvas.state().busy",
                           timeout=60_000)
    page.wait_for_timeout(1500)
    _watch(page, "#query-canvas", "pointerdown", "#query-canvas .pc-marks")
    out = []
    box = page.locator("#query-canvas .pc-marks").bounding_box()
    for r in range(n):
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.keyboard.press("a" if r % 2 else "r")
        page.evaluate("() => { window.__t0 = null; window.__t1 = null; }")
        page.mouse.click(box["x"] + box["width"] * (0.3 + 0.04 * r), box["y"] + box["height"] * 0.5)
        page.wait_for_function("() => window.__t1 !== null && window.__t1 !== undefined", timeout=60_000, polling=50)
        out.append(page.evaluate("() => window.__t1 - window.__t0"))
        PHASES.setdefault("click", []).append(_phases(page))
        assert "click(s)" in page.locator("#query-canvas .pc-status").inner_text()
    return out


CLASSIFY_WATCH = """() => { window.__c0 = null; window.__c1 = null; window.__c2 = null;
    const b = document.querySelector('#classify-button');
    const before = document.querySelector('#classify-text').textContent;
    b.addEventListener('click', () => { window.__c0 = performance.now(); }, {capture: true, once: true});
    const text = document.querySelector('#classify-text');
    const seen = new MutationObserver(() => {
        const t = text.textContent;
        const answered = t.includes('Predicted class') || t.includes('No lesion');
        // the old answer stays in the text (with Gradio's progress note beside it) until the new one replaces it
        const fresh = !(before.includes('Predicted class') || before.includes('No lesion')) || !t.includes(before);
        if (window.__c0 && !window.__c1 && answered && fresh) {
            requestAnimationFrame(() => { window.__c1 = performance.now(); });
        }
        // where the classifier looked (Grad-CAM) follows the answer: its note joins the text with the picture
        if (window.__c0 && !window.__c2 && answered && fresh && t.includes('Grad-CAM')) {
            seen.disconnect();
            requestAnimationFrame(() => { window.__c2 = performance.now(); });
        } });
    seen.observe(text, {childList: true, subtree: true, characterData: true}); }"""


def _time_classify(page, queries: list[Path], n: int) -> tuple[float, list[float], list[float]]:
    """A new query (never classified), Segment, a 1.5 s look at its mask, then the Classify tab and its button:
    from the click to the frame after the answer's text shows (probabilities and text), and to the frame after
    where the classifier looked (Grad-CAM) shows (the same frame when both come in one message). The cold path of the classifier (a new image
    each time); the first Classify of the page, which loads the classifier, is returned apart."""
    out, cams = [], []
    for r in range(n + 1):
        page.get_by_role("tab", name="Segment", exact=True).click()
        page.locator("#query-canvas input.pc-file").set_input_files(str(queries[(r + 3) % len(queries)]))
        page.locator("#query-canvas .pc-status").get_by_text("ready: press").wait_for(timeout=60_000)
        page.evaluate("() => { window.__t0 = null; window.__t1 = null; }")
        page.locator("#segment-button").click()
        page.wait_for_function("() => window.__t1 !== null && window.__t1 !== undefined", timeout=60_000, polling=100)
        page.wait_for_timeout(1500)
        page.get_by_role("tab", name="Classify", exact=True).click()
        page.evaluate(CLASSIFY_WATCH)
        page.locator("#classify-button").click()
        try:        # an answer whose text equals the last one's changes nothing in the page: not timed
            page.wait_for_function("() => window.__c1 !== null", timeout=120_000, polling=100)
        except Exception:           # noqa: BLE001 - playwright's timeout
            continue
        out.append(page.evaluate("() => window.__c1 - window.__c0"))
        page.wait_for_function("() => window.__c2 !== null", timeout=120_000, polling=100)
        cams.append(page.evaluate("() => window.__c2 - window.__c0"))
    page.get_by_role("tab", name="Segment", exact=True).click()
    if not out:
        raise RuntimeError("no Classify answer showed in the page")
    return out[0], out[1:], cams[1:]


PHASES: dict = {}     # where the time of the page's timed calls went (the canvas's own timing of its last call)


def _phases(page) -> dict:
    """The canvas's last call: event -> request sent, request -> answer (the server, the network, Gradio's
    component server), answer -> the frame after it was drawn."""
    return page.evaluate("""() => { const t = window.panetCanvas.state().timing;
        return {before_send: t.sent - window.__t0, request: t.answered - t.sent, draw: window.__t1 - t.answered}; }""")


def phase_medians() -> dict:
    return {f"{name}_{k}_p50_ms": pct([p[k] for p in rows], 50) for name, rows in PHASES.items() for k in rows[0]}


OPEN_WATCH = """() => { window.__o0 = null; window.__o1 = null;
    const b = [...document.querySelectorAll('button')].find((x) => x.textContent.trim() === 'Open / create');
    b.addEventListener('click', () => { window.__o0 = performance.now(); }, {capture: true, once: true});
    const c = document.querySelector('#review-canvas');
    const seen = (e) => { if (window.__o0 && c.querySelector('.pc-project').textContent.includes('unlabelled')) {
        window.__o1 = e.detail.t; c.removeEventListener('panet-drawn', seen); } };
    c.addEventListener('panet-drawn', seen); }"""


def _time_keyboard_accepts(page, n: int, opens: int = 6) -> tuple[list[float], list[float]]:
    """Opening a project of the data folder (100 images; the first Open creates it): the button's click to the
    review canvas's frame that shows it; then in the review queue, Enter (accept) to the next image drawn."""
    page.get_by_role("tab", name="Annotate a folder").click()
    page.locator("#project-name textarea, #project-name input").first.fill("bench")
    opened = []
    for _ in range(opens):
        page.evaluate(OPEN_WATCH)
        page.get_by_role("button", name="Open / create").click()
        page.wait_for_function("() => window.__o1 !== null", timeout=60_000, polling=50)
        opened.append(page.evaluate("() => window.__o1 - window.__o0"))
        page.wait_for_timeout(400)
    page.locator("#propagate-button").click()
    page.locator("#propagate-status").get_by_text("Done:").wait_for(timeout=600_000)
    page.locator("#review-canvas .pc-project").get_by_text("predicted").wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    _watch(page, "#review-canvas", "keydown", None)
    out = []
    for k in range(n):
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.evaluate("() => { window.__t0 = null; window.__t1 = null; }")
        page.keyboard.press("Enter")
        page.wait_for_function("() => window.__t1 !== null && window.__t1 !== undefined", timeout=60_000, polling=50)
        out.append(page.evaluate("() => window.__t1 - window.__t0"))
        page.locator("#review-canvas .pc-project").get_by_text(f"accepted {k + 1}").wait_for(timeout=30_000)
        page.wait_for_timeout(300)
    return opened, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=None)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--browser", action="store_true", help="also time it in Chromium (Playwright)")
    p.add_argument("--browser-repeats", type=int, default=15)
    args = p.parse_args()
    from gradio_client import Client

    from core.data.dataset import load_pair
    from core.data.discover import discover
    from core.data.sets import default_data_dir
    from core.data.split import load_split
    from core.evaluation.report import DOCS, save_result
    from webapp.context import AppConfig, AppContext
    from webapp.ui import build_app, launch_options

    tmp = Path(tempfile.mkdtemp())
    data = Path(args.data) if args.data else default_data_dir()
    if data:
        found = {s.rel_path: s for s in discover(data).samples}
        test = [n for n in load_split()["test"] if not n.startswith("normal")]
        pairs = [load_pair(found[n]) for n in test[: args.shots + max(2, args.browser_repeats + 1)]]
    else:
        from core.phantom import make_phantom
        pairs = [(ph.image, ph.mask) for ph in (make_phantom(k) for k in range(args.shots + max(2, args.browser_repeats + 1)))]
    files, images, masks = [], [], []
    for i, (img, mask) in enumerate(pairs[: args.shots]):
        Image.fromarray(img).save(tmp / f"s{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / f"m{i}.png")
        files.append((tmp / f"s{i}.png", tmp / f"m{i}.png"))
        images.append(b64(tmp / f"s{i}.png"))
        masks.append(b64(tmp / f"m{i}.png"))
    queries = []
    for j, (q, _) in enumerate(pairs[args.shots:]):
        Image.fromarray(q).save(tmp / f"q{j}.png")
        queries.append(tmp / f"q{j}.png")
    scans = tmp / "scans"            # a folder to annotate (the keyboard timing in the review queue)
    scans.mkdir()
    for n in range(100):       # 100 different images (identical files would share one URL): flips and gains
        q = pairs[n % len(pairs)][0]
        k = n // len(pairs)
        v = np.ascontiguousarray(np.flip(q, axis=(1,) if k % 4 == 1 else (0,) if k % 4 == 2 else (0, 1))
                                 if k % 4 else q)
        Image.fromarray(np.clip(v.astype(np.int16) + 8 * (k // 4), 0, 255).astype(np.uint8)).save(
            scans / f"scan{n:03d}.png")
    ctx = AppContext(AppConfig(data_dir=scans, output_dir=tmp / "out"))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(ctx))
    client = Client(demo.local_url, verbose=False)
    ckpt = ctx.default_checkpoint("panet")
    client.predict(images, masks, api_name="/set_supports")
    query = b64(queries[0])
    times = []
    for r in range(args.repeats + 1):
        t = time.perf_counter()
        client.predict(query if r == 0 else "", ckpt, 0.5 if r % 2 == 0 else 0.55, False, False, api_name="/segment")
        times.append(1000 * (time.perf_counter() - t))
    rng = np.random.default_rng(0)
    q0 = pairs[args.shots][0]
    click_ms, click_server = [], []
    for r in range(10):
        client.predict("", ckpt, 0.5 if r % 2 else 0.55, False, False, api_name="/segment")   # clicks start afresh
        x, y = rng.integers(0, q0.shape[1]), rng.integers(0, q0.shape[0])
        t = time.perf_counter()
        text = client.predict(float(x) * min(1, 640 / max(q0.shape[:2])), float(y) * min(1, 640 / max(q0.shape[:2])),
                              "+" if r % 2 else "-", 0.5, api_name="/click")["status"]
        click_ms.append(1000 * (time.perf_counter() - t))
        click_server.append(float(text.split("*")[-2].split(" ms")[0]))
    # LiteMedSAM: a box around the target, then 3 clicks, with the query's embedding computed in the
    # background after Segment (a user takes more than a second to draw a box)
    box_server, sam_click_server = [], []
    scale = min(1, 640 / max(q0.shape[:2]))
    truth = pairs[args.shots][1]
    ys, xs = np.nonzero(truth)
    for r in range(5):
        client.predict("", ckpt, 0.5 if r % 2 else 0.55, False, False, api_name="/segment")
        time.sleep(2.0)
        text = client.predict(float(xs.min() - 5) * scale, float(ys.min() - 5) * scale, float(xs.max() + 5) * scale,
                              float(ys.max() + 5) * scale, 0.5, api_name="/box")["status"]
        box_server.append(float(text.split("*")[-2].split(" ms")[0]))
        for k in range(3):
            x, y = rng.integers(xs.min(), xs.max() + 1), rng.integers(ys.min(), ys.max() + 1)
            text = client.predict(float(x) * scale, float(y) * scale, "+" if k % 2 else "-", 0.5,
                                  api_name="/click")["status"]
            sam_click_server.append(float(text.split("*")[-2].split(" ms")[0]))
    rest = times[1:]
    res = {"shots": args.shots, "repeats": args.repeats, "query_size": f"{q0.shape[1]}x{q0.shape[0]}",
           "first_ms": round(times[0]), "median_ms": pct(rest, 50), "p95_ms": pct(rest, 95), "p90_ms": pct(rest, 90),
           "click_round_trip_median_ms": pct(click_ms, 50), "click_server_median_ms": pct(click_server, 50),
           "click_server_max_ms": round(max(click_server)),
           "litemedsam": ctx.promptable_model() is not None,
           "box_server_median_ms": pct(box_server, 50), "box_server_max_ms": round(max(box_server)),
           "litemedsam_click_server_median_ms": pct(sam_click_server, 50),
           "litemedsam_click_server_max_ms": round(max(sam_click_server)),
           "source": "BUSI test split" if data else "phantoms", "threads": __import__("torch").get_num_threads()}
    if args.browser:
        res.update(browser_timing(demo.local_url, files, queries, args.browser_repeats))
    demo.close()
    print(json.dumps(res, indent=2))
    save_result(res, DOCS / "results_webapp.json")


if __name__ == "__main__":
    main()
