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

from test_webapp import _finetune, _png, app, segment, set_supports, support_editor  # noqa: F401  (module fixture)

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402


def _bomb(path: Path, side: int = 10000) -> str:
    """A small PNG that declares side x side pixels (a few hundred KB, gigabytes once decoded)."""
    Image.new("L", (side, side)).save(path, optimize=True)
    return str(path)


def test_an_editor_image_over_the_pixel_limit_is_refused_before_decoding(app):
    client, files, _ = app
    bomb = _bomb(files / "bomb.png")
    assert os.path.getsize(bomb) < 1_000_000
    q = handle_file(_png(files / "qb.png", make_phantom(3).image))
    editor = {"background": handle_file(bomb), "layers": [], "composite": None}
    with pytest.raises(Exception, match="too large"):
        segment(client, [editor], q)
    as_layers = dict(support_editor(files, 1), layers=[handle_file(bomb)] * 2)
    with pytest.raises(Exception, match="too large"):
        segment(client, [as_layers], q)


def test_the_number_of_editor_layers_is_limited(app):
    client, files, _ = app
    q = handle_file(_png(files / "ql.png", make_phantom(3).image))
    many = support_editor(files, 1)
    many = dict(many, layers=many["layers"] * 6)
    with pytest.raises(Exception, match="layers"):
        segment(client, [many], q)


def test_a_non_image_support_and_a_whole_image_mask_get_clear_messages(app):
    client, files, _ = app
    q = handle_file(_png(files / "qm.png", make_phantom(3).image))
    fake = files / "fake_support.png"
    fake.write_bytes(b"GIF89a not really")
    with pytest.raises(Exception, match="Support 1 image: not a readable image"):
        segment(client, [{"background": handle_file(str(fake)), "layers": [], "composite": None}], q)
    white = np.full(make_phantom(1).mask.shape, 255, np.uint8)
    masks = (handle_file(_png(files / "white.png", white)),) + (None,) * 4
    with pytest.raises(Exception, match="support 1: the mask covers the whole image"):
        segment(client, [support_editor(files, 1)], q, masks=masks)


def test_session_keeps_at_most_ten_downscaled_corrected_pairs():
    from webapp.handlers import KEPT_PAIR_SIDE, MAX_EXTRA_PAIRS, keep_pair

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
    q = _png(files / "same.png", make_phantom(9).image)
    sups = [support_editor(files, 1), support_editor(files, 2)]
    errors, done = [], []

    def user():
        c = Client(client.src, verbose=False)
        for _ in range(3):
            try:
                segment(c, sups, handle_file(q))
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
    segment(client, [support_editor(files, 1)], handle_file(_png(files / "qc.png", make_phantom(4).image)))
    client.predict(0.4, api_name="/downloads")
    assert os.environ["GRADIO_TEMP_DIR"] == str(ctx.cache_dir)
    cached = [p for p in ctx.cache_dir.rglob("*") if p.is_file()]
    assert any(p.name == "mask.png" for p in cached), "exports are written in the cache"
    assert any(p.suffix in (".png", ".jpeg") and p.name != "mask.png" for p in cached), \
        "Gradio's results are cached there too"


def test_saved_checkpoints_are_private_to_their_session_and_not_served(app):
    client, files, ctx = app
    me = Client(client.src, verbose=False)
    status, _, name = _finetune(me, [support_editor(files, s) for s in (1, 2, 3)], "private one")
    assert "Saved as **private_one (yours)**" in status
    assert "private_one (yours)" in ctx.checkpoints("panet", me.session_hash)
    stranger = Client(client.src, verbose=False)
    listed = stranger.predict("tiny_panet", api_name="/refresh_checkpoints")
    assert "private_one (yours)" not in json.dumps(listed)
    with pytest.raises(Exception, match="unknown checkpoint"):
        segment(stranger, [support_editor(files, 1)], handle_file(_png(files / "qp.png", make_phantom(2).image)),
                ckpt="private_one (yours)")
    # its owner, connected before the checkpoint existed, can refresh and use it by name
    assert "private_one (yours)" in json.dumps(me.predict("tiny_panet", api_name="/refresh_checkpoints"))
    report = segment(me, [support_editor(files, 1)], handle_file(_png(files / "qo.png", make_phantom(2).image)),
                     ckpt="private_one (yours)")[3]
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
    status, _, _ = _finetune(Client(client.src, verbose=False), [support_editor(files, s) for s in (1, 2, 3)], "x")
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
    sups = [support_editor(files, s) for s in (1, 2, 3)] + [{"background": None, "layers": [], "composite": None}] * 2
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
    set_supports(c, [support_editor(files, 1)])
    status, _, menu = c.predict("tiny_panet", "this session's supports and corrected queries", 1, 10, 1e-4, "x",
                                api_name="/finetune")
    assert "Not done" in status and "at least 3 annotated images" in status


def test_a_repeated_segment_call_gets_the_first_answer(app):
    """Finding 7: an API client repeating a call within 1 s got an empty update."""
    client, files, _ = app
    c = Client(client.src, verbose=False)
    q = handle_file(_png(files / "qr.png", make_phantom(4).image))
    first = segment(c, [support_editor(files, 1)], q)
    again = c.predict("tiny_panet", q, 0.5, 0.4, False, api_name="/segment")
    assert again[0] and again[3] == first[3], "the same overlay and report, not an empty update"


@pytest.mark.parametrize("field, value, message", [
    ("threshold", "abc", "Threshold: must be a finite number"),
    ("threshold", None, "Threshold: must be a finite number"),
    ("opacity", "0.4; drop", "Overlay opacity: must be a finite number"),
])
def test_bad_numbers_get_a_message_naming_the_field(app, field, value, message):
    client, files, _ = app
    c = Client(client.src, verbose=False)
    q = handle_file(_png(files / "qn.png", make_phantom(4).image))
    set_supports(c, [support_editor(files, 1)])
    args = {"threshold": 0.5, "opacity": 0.4}
    args[field] = value
    with pytest.raises(Exception, match=message):
        c.predict("tiny_panet", q, args["threshold"], args["opacity"], False, api_name="/segment")


@pytest.mark.parametrize("x, y", [(float("nan"), 10.0), (10.0, float("inf")), ("left", 3)])
def test_non_finite_click_coordinates_and_opacity_are_refused(x, y):
    """Finding 6 (JSON cannot carry NaN, so the handlers are called directly, as the page's events do)."""
    from webapp.handlers import Session, UserError, add_click, refine

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
    client, files, _ = app
    c = Client(client.src, verbose=False)
    good = make_phantom(1)
    png = Path(_png(files / "trunc_src.png", good.image))
    trunc = files / "trunc.png"
    trunc.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    with pytest.raises(Exception, match="Support 2 image: not a readable image \\(truncated"):
        set_supports(c, [support_editor(files, 1), {"background": handle_file(str(trunc)), "layers": [],
                                                     "composite": None}])
    for mask, message in ((np.zeros(good.mask.shape, np.uint8), "support 1: the mask is empty"),
                          (np.full(good.mask.shape, 255, np.uint8), "support 1: the mask covers the whole image")):
        name = f"m{int(mask.max())}.png"
        editor = {"background": handle_file(_png(files / "bg.png", good.image)), "layers": [], "composite": None}
        with pytest.raises(Exception, match=message):
            set_supports(c, [editor], masks=(handle_file(_png(files / name, mask)),) + (None,) * 4)
    one_pixel = np.zeros(good.mask.shape, np.uint8)
    one_pixel[5, 5] = 255
    with pytest.raises(Exception, match="support 1: the mask marks only 1 pixel"):
        set_supports(c, [editor], masks=(handle_file(_png(files / "m1px.png", one_pixel)),) + (None,) * 4)
    # a 16-bit support image is accepted through the API...
    deep = (good.image[..., 0].astype(np.uint16) * 257)
    Image.fromarray(deep).save(files / "deep.png")
    editor16 = dict(support_editor(files, 1), background=handle_file(str(files / "deep.png")))
    assert "1: ready" in set_supports(c, [editor16])


def test_a_16_bit_editor_image_keeps_its_contrast(tmp_path):
    """...and decoded by bit depth (Gradio's own conversion clipped it to white)."""
    from gradio.data_classes import FileData

    from webapp.uploads import SafeImageEditor

    grey = make_phantom(1).image[..., 0]
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    ed = SafeImageEditor(label="Support 1: x", type="numpy", image_mode="RGBA")
    arr = ed.convert_and_format_image(FileData(path=str(tmp_path / "deep.png")))
    assert arr.shape[2] == 4 and np.abs(arr[..., 0].astype(int) - grey).max() <= 1


def test_numeric_fields_are_bounded_also_through_the_api(app):
    client, files, _ = app
    c = Client(client.src, verbose=False)
    # Gradio's slider checks its range; the handlers check again (defence in depth)
    with pytest.raises(Exception, match="greater than maximum value 20|epochs must be between"):
        _finetune(c, [support_editor(files, s) for s in (1, 2, 3)], "x", epochs=10**9)
    q = handle_file(_png(files / "qn.png", make_phantom(3).image))
    set_supports(c, [support_editor(files, 1)])
    with pytest.raises(Exception, match="greater than maximum value|threshold must be between"):
        c.predict("tiny_panet", q, 7.0, 0.4, False, api_name="/segment")


def test_handlers_check_ranges_themselves():
    from webapp.handlers import UserError, bounded

    assert bounded("3", 1, 50, "epochs", integer=True) == 3
    for bad in (float("nan"), float("inf"), 0, 51, "x"):
        with pytest.raises(UserError):
            bounded(bad, 1, 50, "epochs")


def test_session_supports_are_kept_downscaled():
    from webapp.handlers import KEPT_PAIR_SIDE, Session, set_slot_pair

    s = Session()
    big = np.zeros((3000, 2000, 3), np.uint8)
    mask = np.zeros((3000, 2000), bool)
    mask[1000:1500, 500:900] = True
    set_slot_pair(s, 2, big, mask)
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
