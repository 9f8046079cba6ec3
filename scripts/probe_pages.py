"""Issue 26, cases 1-4 against the running app (multi-user, LiteMedSAM on), as an attacker or a careless
client would try them, over plain HTTP with cookie jars of their own and through the script API:

    python scripts/probe_pages.py [--fresh 10000] [--queries 60]

1. a propagation runs; meanwhile the same page segments a new query; then Stop: is the page's query (and its
   mask) still there when the propagation has ended?

2. `--queries` set_query calls on one page as fast as the client can send them: the server's RSS growth
   once the embedding pool is idle, and its thread count;
3. a call naming another identity's page (another browser's cookie, no cookie); `--fresh` calls with
   fresh session hashes: answers, Gradio sessions created, whether a real page still works, peak RSS growth;
4. two tabs of one user on one project: one decides, then Undo in the other (which decided nothing).
Writes docs/results_pages.json and re-renders docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def propagation_then_stop(url: str, ckpt: str, tmp: Path) -> dict:
    """Case 1 through the script API: Propagate, a new query segmented meanwhile, Stop; then Segment again."""
    from gradio_client import Client
    from probe_common import phantom_inputs, segment, set_supports

    _, good, query = phantom_inputs(tmp)
    c = Client(url, verbose=False, download_files=str(tmp / "client"))
    set_supports(c, [good])
    c.predict("probe-1", api_name="/annotate_open")
    job = c.submit(ckpt, False, api_name="/annotate_propagate")
    t = time.time()
    while time.time() - t < 120 and len(job.outputs()) < 2 and not job.done():
        time.sleep(0.1)
    during = segment(c, query, ckpt)
    running = not job.done()
    stopped = c.predict(api_name="/annotate_stop")
    last = job.result(timeout=300)
    try:
        after, error = segment(c, "", ckpt), None
    except Exception as exc:   # "no query image" was the bug
        after, error = None, str(exc).splitlines()[0][:160]
    return {"propagation_running_when_segmented": running,
            "stop_answer": stopped[:80], "propagation_last_line": str(last)[:80],
            "segment_after_stop_error": error,
            "query_and_mask_kept": after is not None and after["mask_png"] == during["mask_png"]}


def undo_in_another_tab(url: str, ckpt: str, tmp: Path) -> dict:
    """Case 4: two tabs of one user (the same browser key) on one project; tab A accepts, tab B undoes."""
    from gradio_client import Client
    from probe_common import phantom_inputs, set_supports

    _, good, _ = phantom_inputs(tmp)
    cookie = {"Cookie": "panet_user=" + "4b1d" * 8}
    a, b = (Client(url, verbose=False, headers=cookie, download_files=str(tmp / "client")) for _ in range(2))
    set_supports(a, [good])
    a.predict("probe-4", api_name="/annotate_open")
    a.predict(ckpt, False, api_name="/annotate_propagate")
    shown = a.predict(api_name="/annotate_view")
    decided = a.predict("accept", shown["token"], api_name="/annotate_decide")
    b.predict("probe-4", api_name="/annotate_open")
    try:
        b.predict("undo", "", api_name="/annotate_decide")
        refused = None
    except Exception as exc:
        refused = str(exc).splitlines()[0][:160]
    still = a.predict(api_name="/annotate_view")["project"]
    return {"tab_a_decided": "accepted 1" in decided["project"], "tab_b_undo_refused": refused,
            "tab_a_decision_kept": "accepted 1" in still}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--fresh", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=60)
    args = p.parse_args(argv)
    from probe_common import rss_mb

    from core.evaluation.report import DOCS, save_result
    from tests.test_webapp_pages import Browser, _query_file
    from webapp.context import AppConfig, AppContext
    from webapp.ui import build_app, launch_options

    from PIL import Image

    from core.phantom import make_phantom

    tmp = Path(tempfile.mkdtemp())
    (tmp / "scans").mkdir()
    for i in range(200):         # a folder to propagate over (cases 1 and 4)
        Image.fromarray(make_phantom(200 + i, size=(240, 320)).image).save(tmp / "scans" / f"scan{i:02d}.png")
    ctx = AppContext(AppConfig(data_dir=tmp / "scans", output_dir=tmp / "out", single_user=False))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(ctx))
    url = demo.local_url.rstrip("/")
    res: dict = {"promptable": ctx.promptable_model() is not None}
    try:
        ckpt = ctx.default_checkpoint("panet")
        res["1_propagation_then_stop"] = propagation_then_stop(url, ckpt, tmp)
        res["4_undo_in_another_tab"] = undo_in_another_tab(url, ckpt, tmp)
        alice, mallory = Browser(url), Browser(url)
        alice.load_page("alice")
        files = [_query_file(ctx, i) for i in range(args.queries + 1)]
        alice.call("alice", "set_query", {"path": files[0], "name": "warm.png"})
        ctx.embedding_pool.wait_idle(300)
        time.sleep(1)
        before, threads, t = rss_mb(), threading.active_count(), time.perf_counter()
        for f in files[1:]:
            alice.call("alice", "set_query", {"path": f, "name": "q.png"})
        sent = time.perf_counter() - t
        most_threads = threading.active_count()
        ctx.embedding_pool.wait_idle(600)
        res["2_fast_queries"] = {"calls": args.queries, "seconds_to_send": round(sent, 2),
                                 "rss_growth_mb": round(rss_mb() - before), "threads_before": threads,
                                 "threads_during": most_threads, "embeddings_run": ctx.embedding_pool.ran,
                                 "dropped_as_stale": ctx.embedding_pool.dropped}
        status_other, _ = mallory.call("alice", "clear", {})
        nocookie = Browser.__new__(Browser)
        nocookie.__dict__.update(alice.__dict__)
        import urllib.request

        nocookie.http = urllib.request.build_opener()
        status_none, _ = nocookie.call("alice", "clear", {})
        states = len(demo.server_app.state_holder.session_data)
        peak0, t = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
        codes: dict[int, int] = {}
        for i in range(args.fresh):
            code, _ = mallory.call(f"fresh-{i}", "set_query", {"path": files[0]})
            codes[code] = codes.get(code, 0) + 1
        status, answer = alice.call("alice", "segment", {})
        res["3_other_identity"] = {"another_browser_http": status_other, "no_cookie_http": status_none,
                                   "fresh_hash_calls": args.fresh, "answers": codes,
                                   "seconds": round(time.perf_counter() - t, 1),
                                   "gradio_sessions_created": len(demo.server_app.state_holder.session_data) - states,
                                   "peak_rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                - peak0) / 1024),
                                   "real_page_still_works": status == 200 and "no query" not in str(answer)}
    finally:
        demo.close()
    print(json.dumps(res, indent=2))
    save_result(res, DOCS / "results_pages.json")
    return res


if __name__ == "__main__":
    main()
