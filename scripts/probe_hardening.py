"""Probe the running app as a careless user and an attacker would, and measure what it costs the server.

    python scripts/probe_hardening.py [--clients 10] [--calls 5]

Launches the app (shipped checkpoints, a temporary output folder) in this process, then through its script
API (gradio_client): a 10000 x 10000 PNG (a small file) as a support image, as a support mask and as a query;
twenty support sets with a 4000 x 4000 support on one session (a body over the 3 MB call limit is refused); `clients` x `calls` concurrent identical Segment
calls; a download of a saved checkpoint by URL. Server memory is this process's resident set size. Writes
docs/results_hardening.json and docs/results.md. Then issue 26's cases 1-4 against a running multi-user app
(scripts/probe_pages.py) and the DICOM cases of issue 27 (scripts/probe_dicom.py: a deflate bomb, planted
markers, an odd header among good files, declared vs stored frames) against the CLI and the app.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from probe_common import b64, finish, phantom_inputs, rss_mb, run_clients, segment, set_supports  # noqa: E402




def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--calls", type=int, default=5)
    args = p.parse_args()
    from gradio_client import Client

    from core.evaluation.report import DOCS
    from webapp.context import AppConfig, AppContext
    from webapp.ui import build_app, launch_options

    tmp = Path(tempfile.mkdtemp())
    ctx = AppContext(AppConfig(data_dir=None, output_dir=tmp / "out"))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(ctx))
    started = time.time()
    # the client's downloads go to a folder of their own, so that the temp-folder check sees the server only
    client = Client(demo.local_url, verbose=False, download_files=str(tmp / "client"))
    ckpt = ctx.default_checkpoint("panet")
    png, good, query = phantom_inputs(tmp)
    set_supports(client, [good])
    segment(client, query, ckpt)  # the model is loaded: later memory deltas are the probes' own
    res = {"server_rss_start_mb": round(rss_mb())}
    Image.new("L", (10000, 10000)).save(tmp / "bomb.png", optimize=True)
    bomb = b64(tmp / "bomb.png")
    res["bomb_file_kb"] = round(os.path.getsize(tmp / "bomb.png") / 1024)
    for name, call in (("bomb_as_support_image", lambda: set_supports(client, [(bomb, good[1])])),
                       ("bomb_as_support_mask", lambda: set_supports(client, [(good[0], bomb)])),
                       ("bomb_as_query", lambda: segment(client, bomb, ckpt))):
        before, t = rss_mb(), time.perf_counter()
        try:
            call()
            outcome = "accepted"
        except Exception as exc:  # the refusal message is what we record
            outcome = str(exc).splitlines()[0][:160]
        res[name] = {"seconds": round(time.perf_counter() - t, 2), "rss_delta_mb": round(rss_mb() - before),
                     "outcome": outcome}

    ramp = np.linspace(0, 255, 4000, dtype=np.float32)
    big = b64(png("big.png", np.dstack([np.add.outer(ramp, ramp) / 2] * 3).astype(np.uint8)))   # compresses well
    big_mask = np.zeros((4000, 4000), np.uint8)
    big_mask[1000:2000, 1500:2500] = 255
    big_pair = (big, b64(png("big_mask.png", big_mask)))
    me = Client(demo.local_url, verbose=False, download_files=str(tmp / "client"))
    set_supports(me, [big_pair])
    before = rss_mb()    # after the first 4000 x 4000 support: what 20 more support sets cost
    accepted = 0
    for _ in range(20):
        with contextlib.suppress(Exception):
            set_supports(me, [big_pair, good])
            accepted += 1
    res["big_support_sets_x20"] = {"accepted": accepted, "rss_delta_mb": round(rss_mb() - before)}
    # retained or only held by the allocator? give freed memory back to the system and measure again
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    res["big_support_sets_after_trim_rss_delta_mb"] = round(rss_mb() - before)

    errors, done = [], []

    def user():
        c = Client(demo.local_url, verbose=False, download_files=str(tmp / "client"))
        set_supports(c, [good])
        for _ in range(args.calls):
            try:   # every client asks for the very same result
                segment(c, query, ckpt)
                done.append(1)
            except Exception as exc:
                errors.append(repr(exc)[:200])

    seconds = run_clients(args.clients, user)
    res["concurrent_identical_segments"] = {"clients": args.clients, "calls_each": args.calls, "ok": len(done),
                                            "failed": len(errors), "seconds": round(seconds, 1),
                                            "first_error": errors[0] if errors else None}
    saved = ctx.saved_dir / "probe.json"
    saved.write_text(json.dumps({"kind": "panet"}))
    try:
        code = urllib.request.urlopen(f"{demo.local_url.rstrip('/')}/gradio_api/file={saved}").status
    except urllib.error.HTTPError as exc:
        code = exc.code
    res["saved_checkpoint_by_url_http_status"] = code
    res["files_outside_output_folder"] = [str(p) for p in Path(tempfile.gettempdir(), "gradio").rglob("*")
                                          if p.is_file() and p.stat().st_mtime >= started][:5]
    finish(res, demo, DOCS / "results_hardening.json")
    import probe_pages       # issue 26: cases 1-4 against a running multi-user app

    probe_pages.main([])
    import probe_dicom       # issue 27: the DICOM cases, against the CLI and a fresh app

    probe_dicom.main()


if __name__ == "__main__":
    main()
