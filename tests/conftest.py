"""Shared fixtures. Tests that need the real BUSI data skip only when BUSI_DIR is unset (CI sets it)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def busi_dir() -> Path:
    d = os.environ.get("BUSI_DIR")
    if not d:
        pytest.skip("BUSI_DIR is not set: real-data test skipped")
    path = Path(d)
    assert path.is_dir(), f"BUSI_DIR={d} is not a folder"
    return path


def blob_image(size=(120, 100), center=(50, 60), radius=18, seed=0):
    """A speckled grey image with a dark round 'lesion', and its mask. size = (W, H)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 < radius ** 2
    img = np.clip(rng.normal(150, 20, (h, w)), 0, 255)
    img[mask] = np.clip(rng.normal(50, 10, mask.sum()), 0, 255)
    return img.astype(np.uint8), mask


def save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path)
    return path


@pytest.fixture
def kaggle_dir(tmp_path) -> Path:
    """A small BUSI-like folder: benign (with a two-mask image), malignant, normal."""
    root = tmp_path / "busi"
    for i, (label, seed) in enumerate([("benign", 1), ("benign", 2), ("malignant", 3), ("malignant", 4)]):
        img, mask = blob_image(seed=seed, center=(40 + 5 * i, 50 + 4 * i))
        save_png(root / label / f"{label} ({i}).png", img)
        save_png(root / label / f"{label} ({i})_mask.png", mask.astype(np.uint8) * 255, "1")
    second = np.zeros((100, 120), np.uint8)
    second[5:15, 5:15] = 255
    save_png(root / "benign" / "benign (0)_mask_1.png", second)
    img, _ = blob_image(seed=9)
    save_png(root / "normal" / "normal (1).png", img)
    save_png(root / "normal" / "normal (1)_mask.png", np.zeros((100, 120, 3), np.uint8))
    return root


def phantom_folder(folder: Path, n: int, size=(40, 50)) -> Path:
    """`n` synthetic ultrasound-like images img0000.png... in `folder` (no masks: a folder to annotate)."""
    from core.phantom import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(make_phantom(i, size=size).image).save(folder / f"img{i:04d}.png")
    return folder


def save_tiny_panet(folder: Path, image_size: int = 64, seed: int = 0) -> Path:
    """A small random-weight PANet++ checkpoint (no pretrained weights): fast for tests of plumbing."""
    from core import checkpoint
    from core.models.panet import PANetConfig, PANetPlusPlus

    torch.manual_seed(seed)
    m = PANetPlusPlus(PANetConfig(image_size=image_size, weights="random"))
    checkpoint.save(folder / "p", m.state_dict(), {"kind": "panet", "model": m.config_dict()})
    return folder / "p"


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """A FewShotSegmenter on a tiny random checkpoint, one per test module."""
    from core.inference import FewShotSegmenter

    return FewShotSegmenter(save_tiny_panet(tmp_path_factory.mktemp("ck")))


def count_calls(monkeypatch, module, name: str) -> list:
    """Replace module.name with a wrapper that counts its calls; returns the one-item counter."""
    calls = [0]
    real = getattr(module, name)

    def counted(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster for the session. Skipped where the server is not installed, except in
    CI, where a missing server fails (scripts/test.sh installs it)."""
    from tests.postgres import Cluster

    try:
        cluster = Cluster()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    yield cluster
    from core.annotate import db
    for url in list(db._engines):
        if url.startswith("postgresql"):
            db.dispose(url)
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """None (the embedded SQLite file of each project) or a fresh PostgreSQL database: store tests run on both."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").new_database()


# test kinds (pytest -m): `server` launches the Gradio app, `browser` drives Chromium, `slow` runs the CLI
# in subprocesses or trains; `pytest -m "not slow and not server and not browser"` is the fast subset
_MODULE_MARKS = {"test_webapp.py": ("server",), "test_webapp_hardening.py": ("server",),
                 "test_webapp_annotate.py": ("server",),
                 "test_webapp_team.py": ("server",), "test_webapp_browser.py": ("server", "browser"),
                 "test_webapp_annotate_browser.py": ("server", "browser"), "test_cli.py": ("slow",),
                 "test_cli_dicom.py": ("slow",), "test_training_ddp.py": ("slow",), "test_training.py": ("slow",)}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in _MODULE_MARKS.get(item.path.name, ()):
            item.add_marker(getattr(pytest.mark, mark))


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"   # Debian's Chromium, driven by Playwright (no download)


@contextlib.contextmanager
def app_page(ctx, height: int = 1700):
    """The app of `ctx` launched for real and one Chromium page (1400 x `height`) open on it."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from webapp.ui import build_app, launch_options

    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(ctx))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.goto(demo.local_url)
            yield page
            browser.close()
    finally:
        demo.close()


def open_project_with_a_gallery_support(page, project: str) -> None:
    """In the page: the gallery's first image (with its mask) into support slot 1, until the slot says ready;
    then *Annotate a folder*, the project `project` opened (created)."""
    page.locator("#gallery img").first.click()
    page.get_by_text("Selected:").wait_for(timeout=30_000)
    page.get_by_role("button", name="Put in support slot").click()
    page.locator("#support-canvas .pc-slots").get_by_text("1: ready").wait_for(timeout=30_000)
    page.get_by_role("tab", name="Annotate a folder").click()
    page.locator("#project-name textarea, #project-name input").first.fill(project)
    page.get_by_role("button", name="Open / create").click()


def fold_files(tmp_path, k=3, n=300, scale=3.0, seed=0, split="abc"):
    """k out-of-fold files as `train-image-cls --fold I K` writes them, from an over-confident synthetic model
    (true log-odds times `scale`), with the fold checkpoints' JSON beside them."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 1.5, (n, 3))                  # calibrated logits: the labels are drawn from them
    p = np.exp(true) / np.exp(true).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    paths = []
    for f in range(k):
        ckpt = tmp_path / f"f{f}"
        (tmp_path / f"f{f}.safetensors").write_bytes(b"")
        (tmp_path / f"f{f}.json").write_text(json.dumps({"data": {"fold": {"index": f, "k": k}, "split_hash": split}}))
        sel = np.arange(n) % k == f
        doc = {"checkpoint": str(ckpt), "classes": ["benign", "malignant", "normal"],
               "sets": {"busi": {"names": [f"{i}.png" for i in np.flatnonzero(sel)], "labels": y[sel].tolist(),
                                 "logits": (scale * true[sel]).tolist()}}}
        paths.append(tmp_path / f"f{f}.oof.json")
        paths[-1].write_text(json.dumps(doc))
    return paths

