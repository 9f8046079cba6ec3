"""Team projects on both engines: members and roles, leases (one image to one annotator at a time), a
reviewer's pass, the overlap sample's agreement report, the event log, export filters."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from core.annotate.propagate import export
from core.annotate.store import ProjectStore, StaleDecision, project_names
from core.data.io import DataError
from core.phantom import make_phantom
from tests.conftest import phantom_folder, save_tiny_panet


@pytest.fixture
def folder(tmp_path):
    return phantom_folder(tmp_path / "data" / "scans", 8)


def team(tmp_path, folder, db_url, **roles):
    """The owner's store with the folder added and `roles` (user -> role) as members."""
    owner = ProjectStore(tmp_path / "out", "team", db_url=db_url, user="olga")
    owner.add_folder(folder)
    for user, role in roles.items():
        owner.add_member(user, role)
    return owner


def as_user(tmp_path, db_url, user):
    return ProjectStore(tmp_path / "out", "team", db_url=db_url, user=user, create=False)


def square(k=0):
    m = np.zeros((40, 50), bool)
    m[5 + k:20 + k, 10:30] = True
    return m


def test_members_roles_and_who_sees_what(tmp_path, folder, db_url):
    owner = team(tmp_path, folder, db_url, ann="annotator", rev="reviewer")
    assert owner.members() == {"ann": "annotator", "olga": "owner", "rev": "reviewer"}
    with pytest.raises(DataError, match="not a member"):
        as_user(tmp_path, db_url, "mallory")
    ann = as_user(tmp_path, db_url, "ann")
    with pytest.raises(DataError, match="needs an owner"):
        ann.add_member("mallory", "owner")
    with pytest.raises(DataError, match="needs a reviewer"):
        ann.review("img0000.png", "approve")
    if db_url:   # a server database: each user sees the projects they belong to, and nothing else
        ProjectStore(tmp_path / "out", "private", db_url=db_url, user="someone")
        assert project_names(tmp_path / "out", db_url=db_url, user="ann") == ["team"]
        assert project_names(tmp_path / "out", db_url=db_url, user="someone") == ["private"]
        assert project_names(tmp_path / "out", db_url=db_url) == ["private", "team"]   # the local admin
    assert [e["action"] for e in owner.events()] == ["member"] * 3


def test_two_annotators_never_hold_the_same_image(tmp_path, folder, db_url):
    team(tmp_path, folder, db_url, a="annotator", b="annotator")
    stores = {u: as_user(tmp_path, db_url, u) for u in ("a", "b")}
    got, errors = {"a": [], "b": []}, []

    def work(user):
        s = stores[user]
        try:
            while (r := s.claim()) is not None:
                got[user].append(r["rel_path"])
                time.sleep(0.05)          # a person looks at the image
                s.decide(r["rel_path"], "no lesion", r["id"], r["version"])
        except Exception as exc:    # counted below
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(u,)) for u in stores]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert sorted(got["a"] + got["b"]) == [f"img{i:04d}.png" for i in range(8)], "each image to exactly one"
    assert got["a"] and got["b"], "both worked"
    assert {e["who"] for e in stores["a"].events() if e["action"] == "no lesion"} == {"a", "b"}


def test_an_expired_lease_is_taken_over_and_the_late_decision_refused(tmp_path, folder, db_url):
    team(tmp_path, folder, db_url, a="annotator", b="annotator")
    a, b = as_user(tmp_path, db_url, "a"), as_user(tmp_path, db_url, "b")
    first = a.claim(lease_s=0.3)
    assert first["lease_holder"] == "a" and first["lease_until"] > time.time()
    assert b.claim()["rel_path"] != first["rel_path"], "held: b gets another image"
    with pytest.raises(StaleDecision, match="held by a"):
        b.decide(first["rel_path"], "no lesion", first["id"], first["version"])
    time.sleep(0.4)
    b.release(b.leases()[0]["rel_path"] if b.leases()[0]["holder"] == "b" else b.leases()[1]["rel_path"])
    taken = b.claim()
    assert taken["rel_path"] == first["rel_path"], "the expired lease is taken over"
    assert any(x["holder"] == "a" and x["expired"] is False for x in a.leases()) is False
    with pytest.raises(StaleDecision, match="held by b now"):
        a.decide(first["rel_path"], "no lesion", first["id"], first["version"])
    assert a.row(first["rel_path"])["status"] == "unlabelled", "the late decision wrote nothing"
    with pytest.raises(StaleDecision, match="held by b"):
        a.renew(first["rel_path"])
    b.decide(taken["rel_path"], "no lesion", taken["id"], taken["version"])
    assert a.row(first["rel_path"])["who"] == "b"


def test_a_reviewer_sends_a_decision_back_and_the_annotator_sees_it(tmp_path, folder, db_url):
    team(tmp_path, folder, db_url, ann="annotator", rev="reviewer")
    ann, rev = as_user(tmp_path, db_url, "ann"), as_user(tmp_path, db_url, "rev")
    r = ann.claim()
    ann.decide(r["rel_path"], "correct", r["id"], r["version"], mask=square())
    with pytest.raises(DataError, match="say why"):
        rev.review(r["rel_path"], "send back")
    assert [p["rel_path"] for p in rev.review_pending()] == [r["rel_path"]]
    rev.review(r["rel_path"], "send back", "the margin misses the posterior shadow", seen_version=1)
    back = ann.sent_back()
    assert back == [{"rel_path": r["rel_path"], "review_note": "the margin misses the posterior shadow",
                     "reviewer": "rev", "version": 1}]
    again = ann.claim()
    assert again["rel_path"] == r["rel_path"], "sent back comes first"
    ann.decide(again["rel_path"], "correct", again["id"], again["version"], mask=square(3))
    assert ann.sent_back() == [] and rev.review_pending()[0]["rel_path"] == r["rel_path"]
    rev.review(r["rel_path"], "approve")
    progress = rev.progress()
    assert progress["ann"]["decided"] == 1 and progress["ann"]["approved"] == 1
    actions = [e["action"] for e in rev.events(r["rel_path"])]
    assert actions == ["corrected", "review send back", "corrected", "review approve"]
    out = export(rev, tmp_path / "ex", reviewed_only=True)
    assert out["exported"] == 1
    import csv
    row = next(csv.DictReader(open(tmp_path / "ex" / "manifest.csv")))
    assert row["who"] == "ann" and row["reviewer"] == "rev" and row["review"] == "approved"
    assert export(rev, tmp_path / "ex2", annotator="nobody")["exported"] == 0


def test_the_overlap_sample_is_labelled_twice_and_compared(tmp_path, folder, db_url):
    owner = team(tmp_path, folder, db_url, a="annotator", b="annotator")
    n = owner.set_overlap(0.5)
    assert 0 < n < 8
    a, b = as_user(tmp_path, db_url, "a"), as_user(tmp_path, db_url, "b")
    for s, k in ((a, 0), (b, 2)):
        while (r := s.claim()) is not None:
            s.decide(r["rel_path"], "correct", r["id"], r["version"], mask=square(k))
    rep = owner.agreement()
    assert rep["images"] == n, "every overlap image was labelled by both"
    expected = 2 * (13 * 20) / (15 * 20 * 2)       # two 15-row squares shifted by 2 rows
    assert rep["per_pair"]["a / b"]["n"] == n
    assert rep["per_pair"]["a / b"]["mean_dice"] == pytest.approx(expected)
    overlap = {r["rel_path"] for r in owner.rows() if r["overlap"]}
    assert {p["rel_path"] for p in rep["per_image"]} == overlap
    assert all(r["version"] == 1 for r in owner.rows()), "a second opinion never replaces the first decision"


def _cli_setup(tmp_path, n, size=(40, 50)):
    d = phantom_folder(tmp_path / f"scans{n}", n, size)
    save_tiny_panet(tmp_path, image_size=128)
    s = make_phantom(99)
    Image.fromarray(s.image).save(tmp_path / "s.png")
    Image.fromarray(s.mask.astype(np.uint8) * 255).save(tmp_path / "sm.png")
    return d


def _cli(tmp_path, *args):
    import sys

    from tests.conftest import ROOT
    return [sys.executable, "-m", "core", *args, "--output", str(tmp_path / "out")], ROOT


def _annotate_cmd(tmp_path, images, project, url):
    return _cli(tmp_path, "annotate", "--images", str(images), "--support", str(tmp_path / "s.png"),
                str(tmp_path / "sm.png"), "--project", project, "--checkpoint", str(tmp_path / "p"), "--db", url)


@pytest.mark.slow
def test_annotate_and_export_on_postgresql_two_runs_at_once(tmp_path, postgres):
    """12 images in, 12 masks out; two `annotate` runs at once into two projects of one database."""
    import json
    import subprocess

    url = postgres.new_database()
    images = _cli_setup(tmp_path, 12)
    procs = [subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, cwd in (_annotate_cmd(tmp_path, images, p, url) for p in ("one", "two"))]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        assert json.loads(out[out.index("{"):])["status"] == {"predicted": 12}
    cmd, cwd = _cli(tmp_path, "export", "--project", "one", "--out", str(tmp_path / "ex"), "--all", "--db", url)
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "ex" / "masks").glob("*_mask.png"))) == 12
    assert not (tmp_path / "out" / "projects").exists() or not list((tmp_path / "out" / "projects").rglob("*.sqlite"))


@pytest.mark.slow
def test_kill_9_during_annotate_on_postgresql_then_again(tmp_path, postgres):
    """kill -9 in the middle of `annotate` of 30 images, then the same command: it completes, and the export
    holds each image exactly once."""
    import csv
    import os
    import signal
    import subprocess

    import psycopg

    url = postgres.new_database()
    images = _cli_setup(tmp_path, 30, size=(200, 260))
    cmd, cwd = _annotate_cmd(tmp_path, images, "k", url)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, n = time.time() + 300, 0
    while time.time() < deadline and n < 3:
        try:
            with psycopg.connect(url) as con:
                n = con.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
        except psycopg.Error:
            pass           # the schema is not there yet
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with psycopg.connect(url) as con:
        landed = con.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
    assert 3 <= landed < 30, "killed in the middle"
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cmd, cwd = _cli(tmp_path, "export", "--project", "k", "--out", str(tmp_path / "ex"), "--all", "--db", url)
    assert subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600).returncode == 0
    files = [row["file"] for row in csv.DictReader(open(tmp_path / "ex" / "manifest.csv"))]
    assert sorted(files) == [f"img{i:04d}.png" for i in range(30)], "each image exactly once"
    with psycopg.connect(url) as con:
        assert con.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 30, "no image predicted twice"


@pytest.mark.slow
def test_the_team_command_adds_members_and_reports(tmp_path, folder):
    import json
    import subprocess

    ProjectStore(tmp_path / "out", "t", user="olga").add_folder(folder)
    cmd, cwd = _cli(tmp_path, "team", "--project", "t", "--user", "olga", "--add", "ann", "annotator",
                    "--add", "rev", "reviewer", "--overlap", "0.5", "--agreement")
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["members"] == {"ann": "annotator", "olga": "owner", "rev": "reviewer"}
    assert 0 < out["overlap_images"] < 8 and out["agreement"]["images"] == 0
    cmd, cwd = _cli(tmp_path, "team", "--project", "t", "--user", "ann", "--add", "x", "owner")
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "needs an owner" in r.stderr
