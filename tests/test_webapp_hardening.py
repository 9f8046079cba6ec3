"""The app under careless and hostile use: decode bombs, many layers, bounded memory and disk,
private checkpoints, names never overwritten, concurrent identical requests."""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.phantom import make_phantom
from webapp import exports

from test_webapp import _finetune, _png, app, b64, b64_file, segment, set_supports, support_pair  # noqa: F401  (module fixture)

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402


def _bomb(path: Path, side: int = 10000) -> str:
    """A small PNG that declares side x side pixels (a few hundred KB, gigabytes once decoded)."""
    Image.new("L", (side, side)).save(path, optimize=True)
    return str(path)


def test_a_support_image_over_the_pixel_limit_is_refused_before_decoding(app):
    client, files, _ = app
    bomb = _bomb(files / "bomb.png")
    assert os.path.getsize(bomb) < 1_000_000
    q = b64(make_phantom(3).image)
    with pytest.raises(Exception, match="too large"):
        segment(client, [(b64_file(bomb), support_pair(1)[1])], q)
    with pytest.raises(Exception, match="too large"):
        segment(client, [(support_pair(1)[0], b64_file(bomb))], q)


def test_a_non_image_support_and_a_whole_image_mask_get_clear_messages(app):
    import base64

    client, files, _ = app
    q = b64(make_phantom(3).image)
    with pytest.raises(Exception, match="support 1: not a readable image"):
        segment(client, [(base64.b64encode(b"GIF89a not really").decode(), support_pair(1)[1])], q)
    white = np.full(make_phantom(1).mask.shape, 255, np.uint8)
    with pytest.raises(Exception, match="support 1: the mask covers the whole image"):
        segment(client, [(support_pair(1)[0], b64(white))], q)


def test_session_keeps_at_most_ten_downscaled_corrected_pairs():
    from webapp.handlers import MAX_EXTRA_PAIRS, keep_pair
    from webapp.supports import KEPT_PAIR_SIDE
    pairs = []
    big = np.zeros((3000, 4000, 3), np.uint8)
    mask = np.zeros((3000, 4000), bool)
    mask[1000:2000, 1000:2000] = True
    for i in range(25):
        pairs = keep_pair(pairs, big + i, mask)
    assert len(pairs) == MAX_EXTRA_PAIRS
    assert pairs[-1][0][0, 0, 0] == 24 and pairs[0][0][0, 0, 0] == 15, "the oldest are dropped first"
    assert max(pairs[0][0].shape[:2]) == KEPT_PAIR_SIDE and pairs[0][1].shape == pairs[0][0].shape[:2]
    assert pairs[0][1].mean() == pytest.approx(mask.mean(), abs=0.01)


def test_concurrent_identical_segment_calls_all_succeed(app):
    client, files, _ = app
    q = b64(make_phantom(9).image)
    sups = [support_pair(1), support_pair(2)]
    errors, done = [], []

    def user():
        c = Client(client.src, verbose=False)
        for _ in range(3):
            try:
                segment(c, sups, q)
                done.append(1)
            except Exception as exc:  # the count of failures is the assertion
                errors.append(repr(exc))

    threads = [threading.Thread(target=user) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(done) == 18


def test_gradio_cache_and_exports_live_in_the_output_folder(app):
    client, files, ctx = app
    from webapp import handlers
    from webapp.session import Session

    segment(client, [support_pair(1)], b64(make_phantom(4).image))
    client.predict(api_name="/classify")              # an image answer: Gradio caches it
    sess = Session()
    handlers.set_query(sess, make_phantom(4).image)
    sess.mask = make_phantom(4).mask
    exports.downloads(ctx, sess, 0.4)
    assert os.environ["GRADIO_TEMP_DIR"] == str(ctx.cache_dir)
    cached = [p for p in ctx.cache_dir.rglob("*") if p.is_file()]
    assert any(p.name == "mask.png" for p in cached), "exports are written in the cache"
    assert any(p.suffix in (".png", ".jpeg") and p.name != "mask.png" for p in cached), \
        "Gradio's results are cached there too"


def test_saved_checkpoints_are_private_to_their_session_and_not_served(app):
    client, files, ctx = app
    me = Client(client.src, verbose=False)
    status, _, name = _finetune(me, [support_pair(s) for s in (1, 2, 3)], "private one")
    assert "Saved as **private_one (yours)**" in status
    assert "private_one (yours)" in ctx.checkpoints("panet", me.session_hash)
    stranger = Client(client.src, verbose=False)
    listed = stranger.predict("tiny_panet", api_name="/refresh_checkpoints")
    assert "private_one (yours)" not in json.dumps(listed)
    with pytest.raises(Exception, match="unknown checkpoint"):
        segment(stranger, [support_pair(1)], b64(make_phantom(2).image),
                ckpt="private_one (yours)")
    # its owner, connected before the checkpoint existed, can refresh and use it by name
    assert "private_one (yours)" in json.dumps(me.predict("tiny_panet", api_name="/refresh_checkpoints"))
    report = segment(me, [support_pair(1)], b64(make_phantom(2).image),
                     ckpt="private_one (yours)")["report"]
    assert "1 support(s)" in report
    url = f"{client.src.rstrip('/')}/gradio_api/file={ctx.saved_dir / 'private_one.json'}"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url)
    assert err.value.code in (403, 404)
    body = err.value.read().decode()
    assert str(ctx.saved_dir) not in body and "private_one" not in body, "the refusal echoes no server path"


def test_a_run_that_does_not_beat_its_start_is_not_saved(app, monkeypatch):
    import core.training.fewshot as fs

    client, files, ctx = app
    real = fs.train_fewshot

    def no_better(*a, **k):  # the real run, reported as no better than where it started
        out = real(*a, **k)
        return {**out, "start_val_dice": out["best_val_dice"]}

    monkeypatch.setattr(fs, "train_fewshot", no_better)
    before = set(ctx.saved_dir.iterdir())
    status, _, _ = _finetune(Client(client.src, verbose=False), [support_pair(s) for s in (1, 2, 3)], "x")
    assert "No improvement" in status and "Nothing was saved" in status
    assert set(ctx.saved_dir.iterdir()) == before
    assert not list(ctx.config.output_dir.glob("work_*"))


def test_sweep_removes_expired_exports_and_crashed_jobs_folders(tmp_path):
    from webapp.context import AppConfig, AppContext

    out = tmp_path / "out"
    stale_work = out / "work_crashed"
    stale_work.mkdir(parents=True)
    (stale_work / "owner.pid").write_text("999999999")      # no such process: a crashed run
    (stale_work / "model.safetensors").write_bytes(b"x" * 1000)
    ctx = AppContext(AppConfig(data_dir=None, output_dir=out, cache_ttl=60))
    assert not stale_work.exists(), "a crashed job's folder is removed at start"
    live = ctx.new_work_dir()
    old, fresh = ctx.new_export_dir(), ctx.new_export_dir()
    (old / "mask.png").write_bytes(b"old")
    (fresh / "mask.png").write_bytes(b"new")
    past = time.time() - 120
    os.utime(old / "mask.png", (past, past))
    ctx.sweep()
    assert live.exists(), "a running job's folder stays"
    assert not old.exists() and (fresh / "mask.png").exists()
    assert (out / "checkpoints").is_dir()


def _wait_processing(job, deadline):
    from gradio_client.utils import Status

    while time.time() < deadline and job.status().code != Status.PROCESSING:
        time.sleep(0.2)


def _outputs_so_far(job):
    return [o if isinstance(o, str) else o[0] for o in job.outputs()]


def test_a_second_job_waits_in_the_queue_with_its_position_and_its_owner_can_cancel_it(app):
    """Finding 7: the owner could not cancel a queued fine-tune (it started later anyway)."""
    client, files, _ = app
    first, second, third = (Client(client.src, verbose=False) for _ in range(3))
    sups = [support_pair(s) for s in (1, 2, 3)]
    for c in (first, second, third):
        set_supports(c, sups)
    long_run = first.submit("tiny_panet", "this session's supports and corrected queries", 3, 200, 1e-4, "queued",
                            api_name="/finetune")
    deadline = time.time() + 60
    _wait_processing(long_run, deadline)
    while time.time() < deadline and not any("Fine-tuning on" in o for o in _outputs_so_far(long_run)):
        time.sleep(0.2)
    waiting = second.submit("tiny_panet", 5, api_name="/adapt")
    while time.time() < deadline and not any("1 job(s) ahead" in o for o in _outputs_so_far(waiting)):
        time.sleep(0.2)
    assert any("1 job(s) ahead" in o for o in _outputs_so_far(waiting)), "the waiting job sees its place in line"
    queued = third.submit("tiny_panet", 5, api_name="/adapt")
    while time.time() < deadline and not any("2 job(s) ahead" in o for o in _outputs_so_far(queued)):
        time.sleep(0.2)
    assert "queue" in third.predict(api_name="/cancel_adapt")         # its owner cancels it while it waits
    assert "cancelled while waiting" in queued.result(timeout=60)
    assert "Cancelling" in first.predict(api_name="/cancel_finetune")
    assert "Adapted" in waiting.result(timeout=120), "it runs once the first job is gone"
    assert "Cancelled" in long_run.result(timeout=60)[0]


def test_a_failed_fine_tune_says_so_without_marking_the_checkpoint_menu(app):
    """Finding 7: after a fine-tune error the checkpoint menu showed an "Error" badge."""
    client, files, _ = app
    c = Client(client.src, verbose=False)
    set_supports(c, [support_pair(1)])
    status, _, menu = c.predict("tiny_panet", "this session's supports and corrected queries", 1, 10, 1e-4, "x",
                                api_name="/finetune")
    assert "Not done" in status and "at least 3 annotated images" in status


def test_a_repeated_segment_call_gets_the_same_answer(app):
    """Finding 7: an API client repeating a call within 1 s got an empty update."""
    client, files, _ = app
    c = Client(client.src, verbose=False)
    q = b64(make_phantom(4).image)
    first = segment(c, [support_pair(1)], q)
    again = c.predict(q, "tiny_panet", 0.5, False, False, api_name="/segment")
    assert again["mask_png"] == first["mask_png"] and again["report"] == first["report"]


@pytest.mark.parametrize("value", ["abc", None, "0.4; drop", 1e300])
def test_a_bad_threshold_gets_a_message_naming_it(app, value):
    client, files, _ = app
    c = Client(client.src, verbose=False)
    set_supports(c, [support_pair(1)])
    with pytest.raises(Exception, match="threshold must be"):
        c.predict(b64(make_phantom(4).image), "tiny_panet", value, False, False, api_name="/segment")


@pytest.mark.parametrize("x, y", [(float("nan"), 10.0), (10.0, float("inf")), ("left", 3)])
def test_non_finite_click_coordinates_and_opacity_are_refused(x, y):
    """Finding 6 (JSON cannot carry NaN, so the handlers are called directly, as the page's events do)."""
    from webapp.refine import add_click, refine
    from webapp.session import Session, UserError

    sess = Session()
    sess.query_image = make_phantom(1).image
    sess.probability = np.zeros(sess.query_image.shape[:2], np.float32)
    sess.mask = sess.probability > 0.5
    with pytest.raises(UserError, match="must be a finite number|must be a number"):
        add_click(sess, x, y, "+")
    assert sess.clicks == []
    with pytest.raises(UserError, match="opacity"):
        refine(None, sess, 0.5, float("nan"))


def test_bad_support_files_are_named_at_their_slot(app):
    """Finding 6: truncated files, 16-bit images and degenerate masks."""
    import base64

    client, files, _ = app
    c = Client(client.src, verbose=False)
    good = make_phantom(1)
    raw = base64.b64decode(b64(good.image))
    trunc = base64.b64encode(raw[: len(raw) // 2]).decode()
    with pytest.raises(Exception, match="support 2: not a readable image"):
        set_supports(c, [support_pair(1), (trunc, support_pair(1)[1])])
    image = b64(good.image)
    one_pixel = np.zeros(good.mask.shape, np.uint8)
    one_pixel[5, 5] = 255
    for mask, message in ((np.zeros(good.mask.shape, np.uint8), "support 1: the mask is empty"),
                          (np.full(good.mask.shape, 255, np.uint8), "support 1: the mask covers the whole image"),
                          (one_pixel, "support 1: the mask marks only 1 pixel")):
        with pytest.raises(Exception, match=message):
            set_supports(c, [(image, b64(mask))])
    # a 16-bit support image is accepted through the API, decoded by bit depth (its contrast kept)
    from webapp.script_api import decode_image

    deep = good.image[..., 0].astype(np.uint16) * 257
    assert "1: ready" in set_supports(c, [(b64(deep), support_pair(1)[1])])
    back = decode_image(b64(deep), "support 1")
    assert np.abs(back[..., 0].astype(int) - good.image[..., 0]).max() <= 1


def test_numeric_fields_are_bounded_also_through_the_api(app):
    client, files, _ = app
    c = Client(client.src, verbose=False)
    # Gradio's slider checks its range; the handlers check again (defence in depth)
    with pytest.raises(Exception, match="greater than maximum value 20|epochs must be between"):
        _finetune(c, [support_pair(s) for s in (1, 2, 3)], "x", epochs=10**9)
    set_supports(c, [support_pair(1)])
    with pytest.raises(Exception, match="threshold must be between"):
        c.predict(b64(make_phantom(3).image), "tiny_panet", 7.0, False, False, api_name="/segment")


def test_handlers_check_ranges_themselves():
    from webapp.inputs import bounded
    from webapp.session import UserError

    assert bounded("3", 1, 50, "epochs", integer=True) == 3
    for bad in (float("nan"), float("inf"), 0, 51, "x"):
        with pytest.raises(UserError):
            bounded(bad, 1, 50, "epochs")


def test_session_supports_are_kept_downscaled():
    from webapp import supports
    from webapp.session import Session
    from webapp.supports import KEPT_PAIR_SIDE

    s = Session()
    big = np.zeros((3000, 2000, 3), np.uint8)
    mask = np.zeros((3000, 2000), bool)
    mask[1000:1500, 500:900] = True
    s.slots = supports.put(s.slots, 2, supports.with_image(big, mask, 2))
    img, m = s.supports[1]
    assert max(img.shape[:2]) == KEPT_PAIR_SIDE and m.shape == img.shape[:2] and m.any()


def _post(url: str, body_chunks, headers: dict) -> tuple[int, bytes]:
    """POST, sending the body in chunks and stopping when the server has answered (a refusing server
    closes the connection before a huge body is sent: the client sees the answer, not a broken pipe)."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    con = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    con.putrequest("POST", u.path)
    for k, v in headers.items():
        con.putheader(k, v)
    con.endheaders()
    chunked = headers.get("Transfer-Encoding") == "chunked"
    try:
        for c in body_chunks:
            con.send((f"{len(c):x}\r\n".encode() + c + b"\r\n") if chunked else c)
        if chunked:
            con.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = con.getresponse()
    out = r.status, r.read()
    con.close()
    return out


def test_a_huge_body_is_refused_before_it_is_parsed(app):
    """Issue 27: by Content-Length, and by the streamed byte count when the client sends none."""
    import resource

    client, _, _ = app
    url = client.src.rstrip("/") + "/gradio_api/component_server"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    def chunks():
        yield b'{"data": "'
        for _ in range(50):
            yield b"x" * 2**20
    status, text = _post(url, chunks(), {"Content-Type": "application/json", "Content-Length": str(50 * 2**20 + 10)})
    assert status == 413 and b"over the limit" in text
    status, text = _post(url, chunks(), {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert status == 413, "no Content-Length: counted as it streams"
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"the server's peak grew by {grown_mb:.0f} MB"
    status, _ = _post(url, [b'{"session_hash": "x"}'], {"Content-Type": "application/json", "Content-Length": "21"})
    assert status != 413, "a small body still goes through"


def test_analytics_are_off(app):
    client, _, _ = app
    with urllib.request.urlopen(client.src.rstrip("/") + "/config", timeout=30) as r:
        assert json.loads(r.read())["analytics_enabled"] is False
