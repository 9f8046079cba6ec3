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
from gradio_client import Client  # noqa: E402


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


def b64(arr) -> str:
    """An array as a base64 PNG (what the script API takes)."""
    import base64
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def b64_file(path) -> str:
    import base64

    return base64.b64encode(Path(path).read_bytes()).decode()


def support_pair(seed: int = 1, mask=True) -> tuple[str, str]:
    """A phantom support as the script API takes it: (image, mask), base64 PNGs."""
    p = make_phantom(seed)
    m = p.mask if mask is True else (mask if mask is not False else np.zeros_like(p.mask))
    return b64(p.image), b64(m.astype(np.uint8) * 255)


def set_supports(client, pairs):
    return client.predict([i for i, _ in pairs], [m for _, m in pairs], api_name="/set_supports")


def segment(client, pairs, query: str, ckpt="tiny_panet", per_support=False) -> dict:
    """Set the session's supports, then Segment (which never receives the supports itself)."""
    set_supports(client, pairs)
    return client.predict(query, ckpt, 0.5, per_support, False, api_name="/segment")


def mask_of(answer: dict) -> np.ndarray:
    from webapp.session_api import mask_of as decode

    return decode(answer)


def test_segment_returns_a_mask_of_the_query_size(app):
    client, files, _ = app
    q = make_phantom(5, size=(300, 410))
    out = segment(client, [support_pair(1), support_pair(2)], b64(q.image))
    assert "2 support(s)" in out["report"]
    assert mask_of(out).shape == (300, 410), "the mask has the query's size"
    captions = out["heatmaps"]
    assert "cosine similarity: foreground" in captions and "cosine similarity: background" in captions
    assert not any("support 2" in c for c in captions), "per-support maps only on request"
    per = client.predict("", "tiny_panet", 0.5, True, False, api_name="/segment")["heatmaps"]
    assert any("support 2 foreground" in c for c in per)


def test_classify_after_segment(app):
    client, files, _ = app
    q = make_phantom(6)
    segment(client, [support_pair(1)], b64(q.image))
    label, text, shown = client.predict(api_name="/classify")
    assert "Predicted class:" in text
    assert Image.open(shown).size == q.image.shape[1::-1], "the page shows the mask the classifier was given"
    assert {c["label"] for c in label["confidences"]} == {"benign", "malignant", "normal"}


@pytest.mark.parametrize("case, message", [
    ("no_support", "1-5 support images"),
    ("empty_mask", "support 1: the mask is empty"),
    ("no_query", "no query image"),
    ("mask_size", "support mask 1"),
    ("too_large", "too large"),
    ("not_an_image", "not a readable image"),
    ("broken_checkpoint", "checkpoint could not be loaded"),
])
def test_bad_input_gives_a_clear_message(app, case, message):
    import base64

    client, files, _ = app
    q = b64(make_phantom(3).image)
    good = [support_pair(1)]
    kwargs = {}
    if case == "no_support":
        pairs = []
    elif case == "empty_mask":
        pairs = [support_pair(1, mask=False)]
    elif case == "no_query":  # a fresh session: no query uploaded nor picked
        pairs, q, client = good, "", Client(client.src, verbose=False)
    elif case == "mask_size":
        pairs = [(good[0][0], b64(np.full((50, 60), 255, np.uint8)))]
    elif case == "too_large":
        pairs, q = good, b64(np.zeros((64, 5000), np.uint8))
    elif case == "not_an_image":
        pairs, q = good, base64.b64encode(b"this is not a PNG").decode()
    elif case == "broken_checkpoint":
        pairs, kwargs["ckpt"] = good, "broken"
    with pytest.raises(Exception, match=message):
        segment(client, pairs, q, **kwargs)


def test_odd_modes_are_accepted(app):
    client, files, _ = app
    q = make_phantom(4)
    p16 = files / "q16.png"
    Image.fromarray(q.image[..., 0].astype(np.uint16) * 257).save(p16)
    prgba = _png(files / "qrgba.png", np.dstack([q.image, np.full(q.mask.shape, 255, np.uint8)]))
    ppal = files / "qpal.png"
    Image.fromarray(q.image).convert("P").save(ppal)
    for path in (p16, prgba, ppal):
        report = segment(client, [support_pair(1)], b64_file(path))["report"]
        assert "1 support(s)" in report


def test_sessions_do_not_share_state(app):
    """Classifying in a fresh session must not see another session's segmentation."""
    client, files, _ = app
    segment(client, [support_pair(1)], b64(make_phantom(7).image))
    other = Client(client.src, verbose=False)
    with pytest.raises(Exception, match="segment a query first"):
        other.predict(api_name="/classify")


def test_outputs_stay_in_the_output_folder(app):
    client, files, ctx = app
    segment(client, [support_pair(1)], b64(make_phantom(8).image))
    written = [p for p in ctx.config.output_dir.rglob("*") if p.is_file()]
    assert written and all(ctx.config.output_dir in p.parents for p in written)


def _finetune(client, pairs, name, epochs=1, episodes=20, lr=1e-3):
    """A short run that improves the tiny random model (a run that does not is not saved)."""
    set_supports(client, pairs)
    return client.predict("tiny_panet", "this session's supports and corrected queries", epochs, episodes, lr, name,
                          api_name="/finetune")


def test_finetune_saves_a_new_checkpoint_atomically(app):
    client, files, ctx = app
    status, _, ckpt = _finetune(client, [support_pair(s) for s in (1, 2, 3)], "../../evil name")
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
    status = _finetune(fresh, [support_pair(1)], "x")[0]     # said in the status, not raised
    assert "at least 3 annotated images" in status


def test_cancelled_finetune_saves_nothing_and_only_its_owner_can_cancel(app):
    import threading
    import time

    client, files, ctx = app
    owner = Client(client.src, verbose=False)
    before = set((ctx.config.output_dir / "checkpoints").iterdir())
    result = {}

    def go():
        result["out"] = _finetune(owner, [support_pair(s) for s in (1, 2, 3)], "cancelled", 3, 200)

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
    status = _finetune(Client(client.src, verbose=False), [support_pair(s) for s in (1, 2, 3)], "x",
                       lr=1e9)[0]
    assert "learning rate" in status and "Not done" in status


def test_adapt_then_segment_uses_the_adapted_model_for_this_session_only(app):
    client, files, ctx = app
    me = Client(client.src, verbose=False)
    sups = [support_pair(s) for s in (1, 2)]
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
    from webapp import script_api, session_api

    client, files, _ = app
    decodes = count_calls(monkeypatch, session_api, "decode_image")
    params = [p["parameter_name"] for p in client.view_api(print_info=False, return_format="dict")
              ["named_endpoints"]["/segment"]["parameters"]]
    assert not any(p.lower().startswith(("support", "image", "mask")) for p in params), params
    segment(client, [support_pair(1), support_pair(2)], b64(make_phantom(11).image))
    decoded = decodes[0]
    assert decoded >= 4 and script_api.decode_image is not None
    for thr in (0.45, 0.55):
        report = client.predict("", "tiny_panet", thr, False, False, api_name="/segment")["report"]
        assert "2 support(s)" in report
    assert decodes[0] == decoded, "a second Segment decodes no support"


def test_clicks_refine_the_mask_and_undo(app):
    client, files, ctx = app
    me = Client(client.src, verbose=False)
    q = make_phantom(12)
    segment(me, [support_pair(1)], b64(q.image))
    ys, xs = np.nonzero(q.mask)
    x, y = int(xs.mean()), int(ys.mean())
    out = me.predict(x, y, "+", 0.5, api_name="/click")
    assert "1 positive" in out["status"]
    assert mask_of(out)[y, x], "the session's mask has the target at the click"
    out = me.predict(x, y, "-", 0.5, api_name="/click")
    assert not mask_of(out)[y, x], "a negative click on the same spot removes it"
    assert "1 positive and 0 negative" in me.predict(0.5, api_name="/undo")["status"]
    me.predict(0.5, api_name="/clear")
    out = me.predict(5, 5, 60, 60, 0.5, api_name="/box")
    assert "box" in out["status"]
    mask = mask_of(out)
    assert not mask[70:].any() and not mask[:, 70:].any(), "nothing outside the box"
    fresh = Client(client.src, verbose=False)
    assert fresh.predict(0.5, api_name="/undo")["status"] == "Nothing to undo."


def test_a_dicom_query_is_read_cropped_and_measured_in_mm_without_its_tags(app):
    pytest.importorskip("pydicom")
    from tests.dicom_factory import PHI, make_dicom

    client, files, _ = app
    q = make_phantom(7, size=(200, 240))
    grey = q.image[..., 0] if q.image.ndim == 3 else q.image
    frame = np.zeros((230, 260), np.uint8)
    frame[10:210, 10:250] = grey                      # the scanner's frame around the image region
    p = make_dicom(files / "q.dcm", frame, region=(10, 10, 249, 209), delta_cm=(0.01, 0.01))
    out = segment(client, [support_pair(1)], b64_file(p))
    report = out["report"]
    assert mask_of(out).shape == (200, 240), "cropped to the ultrasound region"
    if "lesion predicted on 0.0%" not in report:
        assert "mm²" in report and "longest diameter" in report
    for v in PHI.values():
        assert v not in report
    bad = files / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 40)
    with pytest.raises(Exception, match="query image"):
        client.predict(b64_file(bad), "tiny_panet", 0.5, False, False, api_name="/segment")


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
