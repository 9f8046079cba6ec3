"""Screenshot of the app in use for the README (docs/screenshot.png), through a real browser.

    python scripts/screenshot.py [--data $BUSI_DIR]

Picks three gallery images (held-out BUSI test images with their ground-truth masks, or the synthetic
phantoms) into support slots 1-3, picks a fourth as the query, clicks Segment, and saves the page.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    args = p.parse_args()
    import tempfile

    from playwright.sync_api import sync_playwright

    from webapp.context import AppConfig, AppContext
    from webapp.ui import build_app, launch_options

    ctx = AppContext(AppConfig(data_dir=Path(args.data) if args.data else None,
                               output_dir=Path(tempfile.mkdtemp())))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(ctx))
    data_first = 8 if args.data else 0  # the 8 phantoms come first in the gallery
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(demo.local_url)
        thumbs = page.locator("#gallery button.thumbnail-item")
        thumbs.first.wait_for(timeout=30_000)
        for slot, idx in ((1, data_first + 0), (2, data_first + 1), (3, data_first + 3)):
            thumbs.nth(idx).click()
            page.wait_for_timeout(500)
            page.get_by_role("button", name="Put in support slot").click()
            page.locator("#support-canvas .pc-slots").get_by_text(f"{slot}: ready").wait_for(timeout=30_000)
        thumbs.nth(data_first + 4).click()
        page.get_by_role("button", name="Use as query").click()
        page.wait_for_timeout(1500)
        page.locator("#segment-button").click()
        page.locator("#query-canvas .pc-status").get_by_text("support(s)").wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    demo.close()
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
