"""Repeat issue 16's findings against the running app (its HTTP API), and measure load and memory.

    python scripts/probe_integrity.py [--clients 20] [--calls 10] [--sessions 20]

Launches the app (shipped checkpoints; a temporary data folder with 6 phantom scans and one truncated
file; a temporary output folder) in this process, then, as API clients would: Accept on an image with
no prediction; the review reaching an unreadable file; two users opening the same project name; a
user key bound to a new browser session (a reload) and its saved checkpoint; bad inputs (truncated
editor file, degenerate masks, non-numbers); a queued job cancelled by its owner; a repeated call;
the 403 body; `sessions` new sessions each segmenting a 4000 x 4000 query (server RSS after
`malloc_trim`); `clients` x `calls` concurrent Segment calls (p50/p95). Writes
docs/results_integrity.json and docs/results.md.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
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

from probe_common import finish, phantom_inputs, rss_mb, run_clients, segment as seg, set_supports  # noqa: E402




def trimmed_rss() -> float:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mb()


def outcome(fn) -> str:
    try:
        fn()
        return "accepted"
    except Exception as exc:  # the refusal message is what is recorded
        return str(exc).splitlines()[0][:200]


def main() -> None:  # noqa: C901 (one probe after another, in order)
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--sessions", type=int, default=20)
    args = p.parse_args()
    from gradio_client import Client

    from core.evaluation.report import DOCS
    from core.phantom import make_phantom
    from webapp.context import AppConfig, AppContext, owner_tag
    from webapp.ui import build_app, launch_options

    tmp = Path(tempfile.mkdtemp())
    data = tmp / "scans"
    data.mkdir()
    for i in range(6):
        Image.fromarray(make_phantom(50 + i, size=(120, 160)).image).save(data / f"scan{i}.png")
    Image.fromarray(make_phantom(60).image).save(data / "scan0b.png")
    (data / "scan0b.png").write_bytes((data / "scan0b.png").read_bytes()[:300])        # truncated
    ctx = AppContext(AppConfig(data_dir=data, output_dir=tmp / "out"))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(ctx))
    url = demo.local_url
    new = lambda: Client(url, verbose=False, download_files=str(tmp / "client"))   # noqa: E731
    ckpt = ctx.default_checkpoint("panet")
    png, good, query = phantom_inputs(tmp)
    ph = make_phantom(1)

    def supports(c, pairs=(good,)):
        return set_supports(c, list(pairs))

    def segment(c, q=query, thr=0.5):
        return seg(c, q, ckpt, thr)

    res: dict = {"server_rss_start_mb": round(rss_mb())}
    a = new()
    supports(a)
    segment(a)
    # 1. Accept right after Open (no prediction yet)
    token = a.predict("probe", api_name="/annotate_open")["token"]
    res["1_accept_without_prediction"] = outcome(lambda: a.predict("accept", token, api_name="/annotate_decide"))
    status_after = a.predict("probe", api_name="/annotate_open")["project"]
    res["1_accepted_count_after"] = "accepted" in status_after
    # 2. the review reaches an unreadable file
    a.predict(ckpt, False, api_name="/annotate_propagate")
    view = a.predict("probe", api_name="/annotate_open")
    text, token = view["text"], view["token"]
    rows = ctx.fewshot  # noqa: F841 (the model is loaded)
    from core.annotate.store import ProjectStore

    key_ns = next((tmp / "out" / "projects" / "users").iterdir()).name
    store = ProjectStore(tmp / "out", "probe", namespace=key_ns)
    res["2_unreadable_status"] = store.row("scan0b.png")["status"]
    res["2_unreadable_versions"] = [h["status"] for h in store.history("scan0b.png")]
    shown = text.split("**")[1] if "**" in text else None
    before = {r["rel_path"]: r["version"] for r in store.rows()}
    a.predict("no lesion", token, api_name="/annotate_decide")
    after = {r["rel_path"]: r["version"] for r in store.rows()}
    res["2_decision_wrote_to"] = sorted(k for k in after if after[k] != before[k])
    res["2_image_shown"] = shown
    res["2_message_has_server_path"] = str(data) in json.dumps(a.predict("probe", api_name="/annotate_open"))
    # 3. another user, the same project name
    b = new()
    res["3_other_user_same_name_sees"] = b.predict("probe", api_name="/annotate_open")["project"]
    # 4. a reload: the same browser key in a new session finds its saved checkpoint
    key = "5eed" * 8     # the key a browser keeps and sends as its cookie

    class Req:
        username = None

        def __init__(self, sh, cookie=None):
            self.session_hash, self.cookies = sh, ({"panet_user": cookie} if cookie else {})

    src = ctx.checkpoints("panet")[ckpt]
    from core import checkpoint as ck

    meta = ck.load_meta(src.with_suffix(".json"))
    meta["owner"] = owner_tag(ctx.owner(Req("probe-tab-1", key)))
    tensors = ck.load_weights(src)
    if tensors is not None:
        ck.save(ctx.saved_dir / "probe_mine", tensors, meta)
        res["4_saved_checkpoint_listed_after_reload"] = "probe_mine (yours)" in ctx.checkpoints(
            "panet", ctx.owner(Req("probe-tab-2", key)))
        res["4_listed_to_a_stranger"] = "probe_mine (yours)" in ctx.checkpoints("panet", ctx.owner(Req("x")))
    # 6. bad input
    c = new()
    big = Path(png("trunc_src.png", ph.image))
    (tmp / "trunc.png").write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    from probe_common import b64

    res["6_truncated_support_file"] = outcome(lambda: supports(c, [(b64(tmp / "trunc.png"), good[1])]))
    for name, m in (("empty", np.zeros(ph.mask.shape, np.uint8)), ("full", np.full(ph.mask.shape, 255, np.uint8))):
        res[f"6_{name}_mask"] = outcome(lambda m=m: supports(c, [(good[0], b64(m))]))
    supports(c)
    res["6_threshold_abc"] = outcome(lambda: segment(c, thr="abc"))
    res["6_threshold_null"] = outcome(lambda: segment(c, thr=None))
    # 7. a repeated call gets the first answer
    first = segment(c)
    again = segment(c)
    res["7_repeat_gets_result"] = bool(again["mask_png"]) and again["report"] == first["report"]
    # 8. the 403 body
    saved = ctx.saved_dir / "x.json"
    saved.write_text("{}")
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/gradio_api/file={saved}")
        res["8_403_body"] = "served!"
    except urllib.error.HTTPError as exc:
        res["8_403_body"] = f"{exc.code} {exc.read().decode()[:120]}"
    res["8_checkpoint_menu"] = [label for label, _ in ctx.checkpoint_choices("panet")]
    # 5. memory: new sessions, each segmenting a 4000 x 4000 query
    ramp = np.linspace(0, 255, 4000, dtype=np.float32)
    big_q = b64(png("big.png", np.dstack([np.add.outer(ramp, ramp) / 2] * 3).astype(np.uint8)))
    warm = new()
    supports(warm)
    segment(warm, big_q)
    base = trimmed_rss()
    for _ in range(args.sessions):
        s = new()
        supports(s)
        segment(s, big_q)
    res["5_sessions"] = args.sessions
    res["5_rss_delta_mb"] = round(trimmed_rss() - base)
    # load: clients x calls Segment
    lat, errors = [], []

    def user():
        u = new()
        supports(u)
        for i in range(args.calls):
            t = time.perf_counter()
            try:
                segment(u, thr=0.5 if i % 2 == 0 else 0.45)
                lat.append(1000 * (time.perf_counter() - t))
            except Exception as exc:
                errors.append(repr(exc)[:200])

    seconds = run_clients(args.clients, user)
    lat.sort()
    res["load"] = {"clients": args.clients, "calls_each": args.calls, "ok": len(lat), "failed": len(errors),
                   "p50_ms": round(statistics.median(lat)) if lat else None,
                   "p95_ms": round(lat[int(0.95 * (len(lat) - 1))]) if lat else None,
                   "seconds": round(seconds, 1), "first_error": errors[0] if errors else None}
    finish(res, demo, DOCS / "results_integrity.json")


if __name__ == "__main__":
    main()
