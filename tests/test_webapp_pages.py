"""Who owns a page (webapp/pages.py) and bounded background work (webapp/background.py): issue 26."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from webapp.background import LatestWins
from webapp.pages import Identities, PageRegistry


def test_a_page_belongs_to_the_identity_that_loaded_it():
    reg = PageRegistry()
    reg.register("page-a", "id:alice")
    assert reg.owns("page-a", "id:alice")
    assert not reg.owns("page-a", "id:bob") and not reg.owns("page-a", None)
    assert not reg.owns("never-loaded", "id:alice"), "a session exists only after a page load"
    with pytest.raises(PermissionError):
        reg.register("page-a", "id:bob")     # nobody takes over another's page by naming it
    with pytest.raises(PermissionError):
        reg.register("page-x", None)


def test_a_flood_of_pages_evicts_only_the_flooders_own():
    reg = PageRegistry(per_identity=8, total=50)
    reg.register("real", "id:alice")
    for i in range(10_000):          # one identity reloading (or a script) as fast as it can
        reg.register(f"flood-{i}", "id:mallory")
    assert reg.owns("real", "id:alice") and reg.count("id:mallory") == 8
    refused = 0
    for i in range(10_000):          # as many identities as cookies it can get
        try:
            reg.register(f"many-{i}", f"id:m{i}")
        except PermissionError:
            refused += 1
    assert reg.owns("real", "id:alice"), "never evicted by other identities"
    assert len(reg) <= 50 and refused >= 10_000 - 50


def test_the_identity_cookie_is_signed_and_checked():
    ids = Identities(b"server-secret", single_user=False)
    value = ids.sign("0123456789abcdef0123456789abcdef")
    assert ids.verify(value) == "0123456789abcdef0123456789abcdef"
    assert ids.of({"panet_id": value}) == "id:0123456789abcdef0123456789abcdef"
    forged = Identities(b"another-secret", single_user=False).sign("0123456789abcdef0123456789abcdef")
    assert ids.verify(forged) is None and ids.of({"panet_id": forged}) is None
    assert ids.of({}) is None and ids.of({"panet_id": "x.y"}) is None
    assert ids.of({}, user="ann") == "user:ann"
    assert Identities(b"k", single_user=True).of({}) == "local"


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_a_flood_of_queries_runs_a_bounded_number_of_jobs_in_a_fixed_pool():
    pool = LatestWins(workers=1, max_pending=4)
    started = threading.Event()
    ran = []

    def job(i, image):
        def run():
            started.set()
            time.sleep(0.05)
            ran.append(i)
        return run

    threads = threading.active_count()
    before = _rss_mb()
    for i in range(60):                   # each job holds a 20 MB image until it runs or is dropped
        pool.submit("page-1", job(i, np.full((20 * 2**20,), i % 255, np.uint8)))
    assert threading.active_count() == threads, "no thread per query"
    assert pool.wait_idle(30)
    time.sleep(0.2)
    assert ran[-1] == 59, "the newest query of a page always runs"
    assert len(ran) <= 3, f"stale queries are dropped, not run: {len(ran)} ran"
    assert _rss_mb() - before < 300


def test_pages_do_not_starve_each_other_and_the_queue_is_bounded():
    pool = LatestWins(workers=1, max_pending=4)
    gate = threading.Event()
    pool.submit("blocker", gate.wait)
    time.sleep(0.1)
    for i in range(10):
        pool.submit(f"page-{i}", lambda: None)
    assert pool.pending() == 4 and pool.dropped == 6
    gate.set()
    assert pool.wait_idle(10)


# ---------------------------------------------------------------------------------- the running app
gradio = pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A multi-user app (identity = the server's cookie), LiteMedSAM on, launched for real."""
    from tests.test_webapp import make_checkpoints
    from webapp.context import AppConfig, AppContext
    from webapp.ui import build_app, launch_options

    root = tmp_path_factory.mktemp("pages")
    make_checkpoints(root / "ckpt")
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=root / "ckpt", output_dir=root / "out",
                               single_user=False))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, server_port=None, **launch_options(ctx))
    yield ctx, demo, demo.local_url.rstrip("/")
    demo.close()


class Browser:
    """One browser: its own cookie jar, pages it loads (a page = a session hash registered by the load)."""

    def __init__(self, url: str):
        import http.cookiejar
        import urllib.request

        self.url = url
        self.jar = http.cookiejar.CookieJar()
        self.http = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        r = self.http.open(url + "/")
        self.set_cookie = r.headers.get_all("set-cookie") or []
        config = __import__("json").loads(self.http.open(url + "/config").read())
        self.config = config
        self.canvas = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "query-canvas")

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        import json
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with self.http.open(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def load_page(self, sh: str) -> None:
        status, _ = self.post("/gradio_api/run/open_page", {"data": [], "session_hash": sh})
        assert status == 200

    def call(self, sh: str, fn: str, data: dict) -> tuple[int, dict]:
        return self.post("/gradio_api/component_server",
                         {"session_hash": sh, "component_id": self.canvas, "fn_name": fn, "data": data})


def _query_file(ctx, i: int) -> str:
    """A query as Gradio's upload route leaves it: a file in the app's cache folder."""
    from PIL import Image

    from core.phantom import make_phantom

    d = ctx.cache_dir / "probe"
    d.mkdir(parents=True, exist_ok=True)
    img = make_phantom(i % 7 + 1).image.copy()
    img[:8, :8] = i % 255          # every query a different image (no cache hit)
    p = d / f"q{i}.png"
    Image.fromarray(img).save(p)
    return str(p)


def _session(demo, ctx, sh):
    holder = demo.server_app.state_holder
    return holder[sh] if sh in holder.session_data else None


def test_the_identity_cookie_is_set_by_the_server_httponly_and_the_secret_stays_there(multi):
    ctx, demo, url = multi
    b = Browser(url)
    cookie = next(c for c in b.set_cookie if c.startswith("panet_id="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert (ctx.config.output_dir / ".identity_secret").read_text().strip() not in str(b.config)


def test_a_call_naming_another_identitys_session_is_refused_and_nothing_changes(multi):
    ctx, demo, url = multi
    alice, bob = Browser(url), Browser(url)
    alice.load_page("alice-page")
    status, answer = alice.call("alice-page", "set_query", {"path": _query_file(ctx, 1), "name": "q.png"})
    assert status == 200 and "error" not in answer, answer
    status, answer = bob.call("alice-page", "clear", {})
    assert status == 403 and "not yours" in answer["error"]
    status, answer = bob.call("alice-page", "set_query", {"path": _query_file(ctx, 2), "name": "evil.png"})
    assert status == 403
    bob.load_page("bob-page")
    with pytest.raises(AssertionError):
        bob.load_page("alice-page")          # nor by loading a page under its hash
    status, answer = alice.call("alice-page", "segment", {})   # Alice's query is still hers
    assert status == 200 and "no query" not in str(answer.get("error", "")), answer


def test_ten_thousand_fresh_hashes_create_nothing_and_evict_nobody(multi):
    import resource

    ctx, demo, url = multi
    alice, mallory = Browser(url), Browser(url)
    alice.load_page("alice-2")
    alice.call("alice-2", "set_query", {"path": _query_file(ctx, 3), "name": "q.png"})
    states_before, peak_before = len(demo.server_app.state_holder.session_data), \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(10_000):
        status, _ = mallory.call(f"fresh-{i}", "set_query", {"path": "/etc/passwd"})
        assert status == 403
    assert len(demo.server_app.state_holder.session_data) == states_before, "no state made for a fresh hash"
    status, answer = alice.call("alice-2", "segment", {})
    assert status == 200 and "no query" not in str(answer.get("error", "")), answer
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown < 100, f"peak memory grew {grown:.0f} MB"


def test_sixty_fast_queries_add_at_most_300_mb(multi):
    ctx, demo, url = multi
    if ctx.promptable_model() is None:
        pytest.skip("LiteMedSAM is not installed")
    b = Browser(url)
    b.load_page("fast-page")
    files = [_query_file(ctx, 100 + i) for i in range(60)]
    b.call("fast-page", "set_query", {"path": files[0], "name": "warm.png"})
    ctx.embedding_pool.wait_idle(120)
    time.sleep(2)
    before = _rss_mb()
    threads = threading.active_count()
    for f in files:
        status, answer = b.call("fast-page", "set_query", {"path": f, "name": "q.png"})
        assert status == 200 and "error" not in answer
    assert threading.active_count() <= threads + 1, "no thread per query"
    assert ctx.embedding_pool.wait_idle(300)
    grown = _rss_mb() - before
    assert grown <= 300, f"60 queries added {grown:.0f} MB"


def test_the_gate_keeps_a_requests_other_cookies():
    import asyncio

    from webapp.pages import Identities, PageGate, PageRegistry, _cookies

    seen = {}

    async def app(scope, receive, send):
        seen.update(_cookies(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = []

    async def send(m):
        sent.append(m)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    gate = PageGate(app, PageRegistry(), Identities(b"k", single_user=False))
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"cookie", b"access-token-x=abc; panet_user=u")]}
    asyncio.run(gate(scope, receive, send))
    assert seen["access-token-x"] == "abc" and seen["panet_user"] == "u" and "panet_id" in seen
    assert any(k == b"set-cookie" and b"HttpOnly" in v for k, v in sent[0]["headers"])
