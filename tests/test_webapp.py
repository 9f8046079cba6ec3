"""The web app through its HTTP API (gradio_client), launched in the test with tiny random models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import checkpoint
from core.models.panet import PANetConfig, PANetPlusPlus
from core.models.supervised import ClassifierConfig, LesionClassifier
from core.phantom import make_phantom

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

EMPTY = {"background": None, "layers": [], "composite": None}


def make_checkpoints(folder: Path) -> None:
    torch.manual_seed(0)
    m = PANetPlusPlus(PANetConfig(image_size=128, weights="random"))
    checkpoint.save(folder / "tiny_panet", m.state_dict(), {"kind": "panet", "model": m.config_dict()})
    c = LesionClassifier(ClassifierConfig(image_size=64, weights="random"))
    checkpoint.save(folder / "tiny_classifier", c.state_dict(), {"kind": "classifier", "model": c.config_dict()})
    # a checkpoint that is listed but cannot load
    (folder / "broken.json").write_text(json.dumps({"kind": "panet", "model": m.config_dict()}))
    (folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    (folder / "DEFAULTS.json").write_text(json.dumps({"panet": "tiny_panet"}))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from webapp.context import AppConfig, AppContext
    from webapp.ui import build_app, launch_options

    root = tmp_path_factory.mktemp("app")
    make_checkpoints(root / "ckpt")
    ctx = AppContext(AppConfig(data_dir=None, checkpoints_dir=root / "ckpt", output_dir=root / "out"))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, server_port=None, **launch_options(ctx))
    client = Client(demo.local_url, verbose=False)
    files = root / "files"
    files.mkdir()
    yield client, files, ctx
    demo.close()


def _png(path: Path, arr) -> str:
    Image.fromarray(arr).save(path)
    return str(path)


def support_editor(files: Path, seed: int = 1, mask=True):
    p = make_phantom(seed)
    layer = np.zeros((*p.mask.shape, 4), np.uint8)
    if mask:
        layer[p.mask] = (255, 0, 0, 128)
    return {"background": handle_file(_png(files / f"s{seed}.png", p.image)),
            "layers": [handle_file(_png(files / f"l{seed}_{mask}.png", layer))], "composite": None}


def set_supports(client, editors, masks=(None,) * 5):
    editors = list(editors) + [EMPTY] * (5 - len(editors))
    return client.predict(*editors, *masks, api_name="/set_supports")


def segment(client, editors, query, masks=(None,) * 5, ckpt="tiny_panet"):
    """Set the session's supports, then Segment (which never receives the supports itself)."""
    set_supports(client, editors, masks)
    return client.predict(ckpt, query, 0.5, 0.4, False, api_name="/segment")


def test_segment_returns_a_mask_of_the_query_size(app):
    client, files, _ = app
    q = make_phantom(5, size=(300, 410))
    out = segment(client, [support_editor(files, 1), support_editor(files, 2)],
                  handle_file(_png(files / "q.png", q.image)))
    overlay, prob, heatmaps, report = out[:4]
    assert "2 support(s)" in report
    downloads = client.predict(0.4, api_name="/downloads")
    mask = Image.open([d for d in downloads if d.endswith("mask.png")][0])
    assert mask.size == (410, 300), "the downloaded mask has the query's size"
    assert Image.open(overlay).size == (410, 300)
    captions = [h["caption"] for h in heatmaps]
    assert "cosine similarity: foreground" in captions and "cosine similarity: background" in captions
    assert not any("support 2" in c for c in captions), "per-support maps only on request"
    per = client.predict("tiny_panet", handle_file(_png(files / "q.png", q.image)), 0.5, 0.4, True,
                         api_name="/segment")[2]
    assert any("support 2 foreground" in h["caption"] for h in per)


def test_classify_after_segment(app):
    client, files, _ = app
    q = make_phantom(6)
    segment(client, [support_editor(files, 1)], handle_file(_png(files / "q6.png", q.image)))
    label, text, shown = client.predict(None, api_name="/classify")
    assert "Predicted class:" in text
    assert Image.open(shown).size == q.image.shape[1::-1], "the page shows the mask the classifier was given"
    assert {c["label"] for c in label["confidences"]} == {"benign", "malignant", "normal"}


@pytest.mark.parametrize("case, message", [
    ("no_support", "no support"),
    ("empty_mask", "support 1: no mask yet"),
    ("no_query", "no query image"),
    ("mask_size", "but its image is"),
    ("too_large", "too large"),
    ("not_an_image", "not a readable image"),
    ("broken_checkpoint", "checkpoint could not be loaded"),
])
def test_bad_input_gives_a_clear_message(app, case, message):
    client, files, _ = app
    q = handle_file(_png(files / "qq.png", make_phantom(3).image))
    good = [support_editor(files, 1)]
    kwargs = {}
    if case == "no_support":
        editors = []
    elif case == "empty_mask":
        editors = [support_editor(files, 1, mask=False)]
    elif case == "no_query":  # a fresh session: no query uploaded nor picked
        editors, q, client = good, None, Client(client.src, verbose=False)
    elif case == "mask_size":
        editors = good
        kwargs["masks"] = (handle_file(_png(files / "small_mask.png", np.full((50, 60), 255, np.uint8))),) + (None,) * 4
    elif case == "too_large":
        editors, q = good, handle_file(_png(files / "huge.png", np.zeros((64, 5000), np.uint8)))
    elif case == "not_an_image":
        bad = files / "fake.png"
        bad.write_bytes(b"this is not a PNG")
        editors, q = good, handle_file(str(bad))
    elif case == "broken_checkpoint":
        editors, kwargs["ckpt"] = good, "broken"
    with pytest.raises(Exception, match=message):
        segment(client, editors, q, **kwargs)


def test_odd_modes_are_accepted(app):
    client, files, _ = app
    q = make_phantom(4)
    p16 = files / "q16.png"
    Image.fromarray(q.image[..., 0].astype(np.uint16) * 257).save(p16)
    prgba = _png(files / "qrgba.png", np.dstack([q.image, np.full(q.mask.shape, 255, np.uint8)]))
    ppal = files / "qpal.png"
    Image.fromarray(q.image).convert("P").save(ppal)
    for path in (p16, prgba, ppal):
        report = segment(client, [support_editor(files, 1)], handle_file(str(path)))[3]
        assert "1 support(s)" in report


def test_sessions_do_not_share_state(app):
    """Classifying in a fresh session must not see another session's segmentation."""
    client, files, _ = app
    segment(client, [support_editor(files, 1)], handle_file(_png(files / "q7.png", make_phantom(7).image)))
    other = Client(client.src, verbose=False)
    with pytest.raises(Exception, match="segment a query first"):
        other.predict(None, api_name="/classify")


def test_outputs_stay_in_the_output_folder(app):
    client, files, ctx = app
    segment(client, [support_editor(files, 1)], handle_file(_png(files / "q8.png", make_phantom(8).image)))
    written = [p for p in ctx.config.output_dir.rglob("*") if p.is_file()]
    assert written and all(ctx.config.output_dir in p.parents for p in written)


def test_layer_mask_handles_the_three_layer_shapes():
    from webapp.handlers import editor_value, layer_mask

    image = np.zeros((60, 80, 3), np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:20, 30:50] = True
    value = editor_value(image, mask)            # canvas-size layer, mask at the top-left
    assert value["layers"][0].shape[:2] == (800, 800)
    np.testing.assert_array_equal(layer_mask(value, (60, 80)), mask)
    drawn = np.zeros((60, 80, 4), np.uint8)      # drawn in the page: the background's size
    drawn[mask] = (255, 0, 0, 128)
    np.testing.assert_array_equal(layer_mask({"background": image, "layers": [drawn]}, (60, 80)), mask)
    scaled = drawn[::2, ::2]                     # returned downscaled (Gradio #10298)
    back = layer_mask({"background": image, "layers": [scaled]}, (60, 80))
    assert (back == mask).mean() > 0.97
    big = np.zeros((1000, 1200, 3), np.uint8)    # larger than the canvas: shown downscaled
    big_mask = np.zeros((1000, 1200), bool)
    big_mask[100:300, 600:900] = True
    v = editor_value(big, big_mask)
    assert max(v["background"].shape[:2]) == 800
    assert (layer_mask(v, (1000, 1200)) == big_mask).mean() > 0.99


def _finetune(client, editors, name, epochs=1, episodes=20, lr=1e-3):
    """A short run that improves the tiny random model (a run that does not is not saved)."""
    set_supports(client, editors)
    return client.predict("tiny_panet", "this session's supports and corrected queries", epochs, episodes, lr, name,
                          api_name="/finetune")


def test_finetune_saves_a_new_checkpoint_atomically(app):
    client, files, ctx = app
    status, _, ckpt = _finetune(client, [support_editor(files, s) for s in (1, 2, 3)], "../../evil name")
    assert "Saved as" in status and "the starting checkpoint" in status
    saved = list((ctx.config.output_dir / "checkpoints").glob("*.json"))
    assert [p.stem for p in saved] == ["evil_name"], "the name is sanitised and stays in outputs/checkpoints"
    assert saved[0].with_suffix(".safetensors").exists()
    assert "evil_name (yours)" in ctx.checkpoints("panet", client.session_hash)
    meta = json.loads(saved[0].read_text())
    assert str(ctx.config.output_dir) not in saved[0].read_text() and "save_path" not in meta["train"]
    assert not list(ctx.config.output_dir.glob("work_*")), "the work folder is removed"
    assert (Path(ctx.config.checkpoints_dir) / "tiny_panet.json").exists()  # shipped one untouched


def test_finetune_needs_three_images(app):
    client, files, _ = app
    fresh = Client(client.src, verbose=False)
    status = _finetune(fresh, [support_editor(files, 1)], "x")[0]     # said in the status, not raised
    assert "at least 3 annotated images" in status


def test_cancelled_finetune_saves_nothing_and_only_its_owner_can_cancel(app):
    import threading
    import time

    client, files, ctx = app
    owner = Client(client.src, verbose=False)
    before = set((ctx.config.output_dir / "checkpoints").iterdir())
    result = {}

    def go():
        result["out"] = _finetune(owner, [support_editor(files, s) for s in (1, 2, 3)], "cancelled", 3, 200)

    t = threading.Thread(target=go)
    t.start()
    time.sleep(6)
    stranger = Client(client.src, verbose=False).predict(api_name="/cancel_finetune")
    assert "no fine-tuning" in stranger, "another session must not be able to cancel this job"
    time.sleep(1)
    assert t.is_alive(), "the job kept running after a stranger's cancel"
    assert "Cancelling" in owner.predict(api_name="/cancel_finetune")
    t.join(timeout=120)
    assert "Cancelled" in result["out"][0]
    assert set((ctx.config.output_dir / "checkpoints").iterdir()) == before
    assert not list(ctx.config.output_dir.glob("work_*"))


def test_finetune_refuses_a_learning_rate_that_would_diverge(app):
    client, files, _ = app
    status = _finetune(Client(client.src, verbose=False), [support_editor(files, s) for s in (1, 2, 3)], "x",
                       lr=1e9)[0]
    assert "learning rate" in status and "Not done" in status


def test_adapt_then_segment_uses_the_adapted_model_for_this_session_only(app):
    client, files, ctx = app
    me = Client(client.src, verbose=False)
    sups = [support_editor(files, s) for s in (1, 2)]
    set_supports(me, sups)
    status = me.predict("tiny_panet", 5, api_name="/adapt")
    assert "Adapted" in status and "leave-one-out Dice" in status
    seg = ctx.fewshot("tiny_panet")
    assert len(seg._adapted) == 1
    (owner, _), = seg._adapted.keys()
    assert owner == me.session_hash, "the adapted copy belongs to the session that asked for it"
    assert "no fine-tuning, adaptation" in Client(client.src, verbose=False).predict(api_name="/cancel_adapt")
    theirs = Client(client.src, verbose=False)
    set_supports(theirs, sups)
    with pytest.raises(Exception, match="Adapt to these supports first"):
        theirs.predict("tiny_panet", "theirs", api_name="/save_adapted")
    msg, _ = me.predict("tiny_panet", "../my adapted", api_name="/save_adapted")
    assert "my_adapted (yours)" in msg
    assert (ctx.config.output_dir / "checkpoints" / "my_adapted.safetensors").exists()
    assert "my_adapted (yours)" in ctx.checkpoints("panet", me.session_hash)
    assert "my_adapted (yours)" not in ctx.checkpoints("panet", Client(client.src, verbose=False).session_hash)


def test_segment_never_receives_the_supports_again(app, monkeypatch):
    from tests.conftest import count_calls
    from webapp import handlers

    client, files, _ = app
    decodes = count_calls(monkeypatch, handlers, "editor_pair")
    segments = count_calls(monkeypatch, handlers, "segment")
    params = [p["parameter_name"] for p in client.view_api(print_info=False, return_format="dict")
              ["named_endpoints"]["/segment"]["parameters"]]
    assert not any("support" in p.lower() or "editor" in p.lower() for p in params), params
    q = handle_file(_png(files / "q_twice.png", make_phantom(11).image))
    segment(client, [support_editor(files, 1), support_editor(files, 2)], q)
    decoded = decodes[0]
    assert decoded >= 2
    for thr in (0.45, 0.55):
        report = client.predict("tiny_panet", q, thr, 0.4, False, api_name="/segment")[3]
        assert "2 support(s)" in report
    assert decodes[0] == decoded, "a second Segment decodes no support"
    calls = segments[0]
    client.predict("tiny_panet", q, 0.55, 0.4, False, api_name="/segment")   # the same, at once: a double click
    assert segments[0] == calls, "an immediate identical repeat is dropped"


def test_clicks_on_the_overlay_refine_the_mask_and_undo(app):
    client, files, ctx = app
    me = Client(client.src, verbose=False)
    q = make_phantom(12)
    segment(me, [support_editor(files, 1)], handle_file(_png(files / "q12.png", q.image)))
    ys, xs = np.nonzero(q.mask)
    x, y = int(xs.mean()), int(ys.mean())
    ov, text, = me.predict(x, y, "+", 0.5, 0.4, api_name="/click")[:2]
    assert "1 positive" in text
    # the session's mask (downloads) has the lesion at the click
    mask = np.asarray(Image.open([d for d in me.predict(0.4, api_name="/downloads") if d.endswith("mask.png")][0]))
    assert mask[y, x] > 0
    me.predict(x, y, "-", 0.5, 0.4, api_name="/click")
    mask = np.asarray(Image.open([d for d in me.predict(0.4, api_name="/downloads") if d.endswith("mask.png")][0]))
    assert mask[y, x] == 0, "a negative click on the same spot removes it"
    _, text = me.predict(0.5, 0.4, api_name="/undo_click")[:2]
    assert "1 positive and 0 negative" in text
    me.predict(0.5, 0.4, api_name="/clear_clicks")
    me.predict(5, 5, "box", 0.5, 0.4, api_name="/click")
    _, text = me.predict(60, 60, "box", 0.5, 0.4, api_name="/click")[:2]
    assert "box" in text
    mask = np.asarray(Image.open([d for d in me.predict(0.4, api_name="/downloads") if d.endswith("mask.png")][0]))
    assert not mask[70:].any() and not mask[:, 70:].any(), "nothing outside the box"


def test_a_dicom_query_is_read_cropped_and_measured_in_mm_without_its_tags(app):
    pytest.importorskip("pydicom")
    from tests.dicom_factory import PHI, make_dicom

    client, files, _ = app
    q = make_phantom(7, size=(200, 240))
    grey = q.image[..., 0] if q.image.ndim == 3 else q.image
    frame = np.zeros((230, 260), np.uint8)
    frame[10:210, 10:250] = grey                      # the scanner's frame around the image region
    p = make_dicom(files / "q.dcm", frame, region=(10, 10, 249, 209), delta_cm=(0.01, 0.01))
    out = segment(client, [support_editor(files, 1)], handle_file(str(p)))
    overlay, report = out[0], out[3]
    assert Image.open(overlay).size == (240, 200), "cropped to the ultrasound region"
    if "lesion predicted on 0.0%" not in report:
        assert "mm²" in report and "longest diameter" in report
    for v in PHI.values():
        assert v not in report
    bad = files / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 40)
    with pytest.raises(Exception, match="query image"):
        client.predict("tiny_panet", handle_file(str(bad)), 0.5, 0.4, False, api_name="/segment")


def test_the_readme_script_example_runs_as_written(app, tmp_path, monkeypatch):
    """Issue 26: the README's gradio_client example, run against the app (only its URL is this test's)."""
    import re

    client, _, _ = app
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- script-api-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    assert 'Client("http://127.0.0.1:7860/")' in code
    code = code.replace("http://127.0.0.1:7860/", client.src)
    s, q = make_phantom(1), make_phantom(7, size=(150, 210))
    Image.fromarray(s.image).save(tmp_path / "S.png")
    Image.fromarray(s.mask.astype(np.uint8) * 255).save(tmp_path / "S_mask.png")
    Image.fromarray(q.image).save(tmp_path / "Q.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    mask = np.asarray(Image.open(tmp_path / "Q_mask.png")) > 0
    assert mask.shape == (150, 210) and mask.any()


def test_the_script_api_checks_its_input_before_decoding(app, tmp_path):
    import base64
    import io
    import struct
    import zlib

    from gradio_client.exceptions import AppError

    client, _, _ = app

    def b64(arr):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    s = make_phantom(2)
    img, mask = b64(s.image), b64(s.mask.astype(np.uint8) * 255)
    call = lambda *a: client.predict(*a, api_name="/segment_image")
    with pytest.raises(AppError, match="1-5 support images and as many masks"):
        call([img, img], [mask], img, "", 0.5)
    with pytest.raises(AppError, match="not base64"):
        call([img], [mask], "%%%", "", 0.5)
    with pytest.raises(AppError, match="mask is"):
        call([img], [b64(np.zeros((10, 10), np.uint8) + 255)], img, "", 0.5)
    # a PNG whose header claims 5000 x 5000 px: refused from the header, nothing decoded
    ihdr = struct.pack(">IIBBBBB", 5000, 5000, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    with pytest.raises(AppError, match="too large"):
        call([img], [mask], base64.b64encode(bomb).decode(), "", 0.5)
