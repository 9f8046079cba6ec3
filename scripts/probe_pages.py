"""Issue 26, cases 2-4 against the running app (multi-user, LiteMedSAM on), as an attacker or a careless
client would try them, over plain HTTP with cookie jars of their own:

    python scripts/probe_pages.py [--fresh 10000] [--queries 60]

2. `--queries` set_query calls on one page as fast as the client can send them: the server's RSS growth
   once the embedding pool is idle, and its thread count;
3. a call naming another identity's page (another browser's cookie, no cookie); `--fresh` calls with
   fresh session hashes: answers, Gradio sessions created, whether a real page still works, peak RSS growth;
4. undo in a review tab that decided nothing (the core of the refusal: webapp/tabs/review.py) is covered
   by tests/test_webapp_canvas.py::test_undo_in_a_tab_that_decided_nothing_is_refused and reported there.
Case 1 (a propagation that ends) is covered by tests/test_webapp_canvas.py.
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


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--fresh", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=60)
    args = p.parse_args()
    from probe_common import rss_mb

    from core.evaluation.report import DOCS, save_result
    from tests.test_webapp_pages import Browser, _query_file
    from webapp.context import AppConfig, AppContext
    from webapp.ui import build_app, launch_options

    tmp = Path(tempfile.mkdtemp())
    ctx = AppContext(AppConfig(data_dir=None, output_dir=tmp / "out", single_user=False))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(ctx))
    url = demo.local_url.rstrip("/")
    res: dict = {"promptable": ctx.promptable_model() is not None}
    try:
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
