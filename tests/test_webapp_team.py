"""Two app processes on one PostgreSQL (`python app.py --db URL`), signed-in team members calling the
team API (webapp/team_api.py) through gradio_client: what one process hands out, the other respects."""
from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import phantom_folder
from tests.team_apps import App, make_project


@pytest.fixture(scope="module")
def apps(tmp_path_factory, postgres):
    tmp = tmp_path_factory.mktemp("team")
    url = postgres.new_database()
    data = phantom_folder(tmp / "data", 6)
    for name, overlap in (("study", 0), ("lease", 0), ("review", 0), ("overlap", 1.0)):
        make_project(url, tmp / "out", name, data, overlap)
    # one output folder, as replicas on one host share it (the second start finds LiteMedSAM's ONNX ready)
    pair = [App(url, data, tmp / "out", lease_s=2).wait()]
    try:
        pair.append(App(url, data, tmp / "out", lease_s=2).wait())
        yield pair
    finally:
        for a in pair:
            a.stop()


def _png_b64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _square(k=0):
    m = np.zeros((40, 50), bool)
    m[5 + k:20 + k, 10:30] = True
    return m


def test_members_see_their_projects_and_only_the_owner_adds_members(apps):
    from gradio_client.exceptions import AppError

    owner, ann = apps[0].client("olga"), apps[1].client("ann9")
    assert owner.predict(api_name="/team_projects") == ["lease", "overlap", "review", "study"]
    with pytest.raises(AppError, match="needs an owner"):
        ann.predict("study", "ann10", "reviewer", api_name="/team_add_member")
    members = owner.predict("study", "ann10", "reviewer", api_name="/team_add_member")
    assert members["ann10"] == "reviewer"
    from core.annotate.store import ProjectStore
    ProjectStore(apps[0].output, "solo", db_url=apps[0].db_url, user="ann2")       # ann2's own project
    assert "solo" in apps[1].client("ann2").predict(api_name="/team_projects")
    assert "solo" not in apps[1].client("ann1").predict(api_name="/team_projects")
    with pytest.raises(AppError, match="not a member"):
        apps[0].client("ann1").predict("solo", api_name="/team_claim")


def test_two_annotators_in_two_processes_never_hold_the_same_image(apps):
    a, b = apps[0].client("ann1"), apps[1].client("ann2")
    seen = []
    while True:
        ja, jb = a.predict("study", api_name="/team_claim"), b.predict("study", api_name="/team_claim")
        if not ja and not jb:
            break
        if ja and jb:
            assert ja["rel_path"] != jb["rel_path"], "one image, two holders"
        for c, j in ((a, ja), (b, jb)):
            if j:
                c.predict("study", j["rel_path"], "no lesion", j["token"], "", api_name="/team_decide")
                seen.append(j["rel_path"])
    assert sorted(seen) == [f"img{i:04d}.png" for i in range(6)], "every image decided exactly once"
    status = apps[1].client("olga").predict("study", api_name="/team_status")
    assert status["status"] == {"no lesion": 6}
    assert status["progress"]["ann1"]["decided"] + status["progress"]["ann2"]["decided"] == 6


def test_an_expired_lease_is_taken_over_across_processes_and_the_late_decision_refused(apps):
    from gradio_client.exceptions import AppError

    a, b = apps[0].client("ann1"), apps[1].client("ann2")
    ja = a.predict("lease", api_name="/team_claim")
    jb = b.predict("lease", api_name="/team_claim")
    assert jb["rel_path"] != ja["rel_path"]
    time.sleep(2.5)                                  # both leases (2 s in this test) expire
    b.predict("lease", jb["rel_path"], "skip", jb["token"], _png_b64(_square()), api_name="/team_decide")
    taken = b.predict("lease", api_name="/team_claim")
    assert taken["rel_path"] == ja["rel_path"], "ann1's expired image goes to ann2"
    with pytest.raises(AppError, match="held by ann2"):
        a.predict("lease", ja["rel_path"], "no lesion", ja["token"], "", api_name="/team_decide")
    status = apps[0].client("olga").predict("lease", api_name="/team_status")
    assert {x["rel_path"]: x["holder"] for x in status["leases"]}[ja["rel_path"]] == "ann2"


def test_a_reviewer_in_one_process_sends_back_and_the_annotator_in_the_other_sees_it(apps):
    ann, rev = apps[0].client("ann3"), apps[1].client("rev")
    j = ann.predict("review", api_name="/team_claim")
    ann.predict("review", j["rel_path"], "correct", j["token"], _png_b64(_square()), api_name="/team_decide")
    rev.predict("review", j["rel_path"], "send back", "the lower margin is cut", api_name="/team_review")
    back = ann.predict("review", api_name="/team_sent_back")
    assert [(x["rel_path"], x["review_note"], x["reviewer"]) for x in back] == [
        (j["rel_path"], "the lower margin is cut", "rev")]
    again = ann.predict("review", api_name="/team_claim")
    assert again["rel_path"] == j["rel_path"] and again["review_note"] == "the lower margin is cut"


def test_the_agreement_report_on_an_overlap_sample_from_two_processes(apps):
    a, b = apps[0].client("ann4"), apps[1].client("ann5")
    for c, k in ((a, 0), (b, 3)):
        while j := c.predict("overlap", api_name="/team_claim"):
            c.predict("overlap", j["rel_path"], "correct", j["token"], _png_b64(_square(k)), api_name="/team_decide")
    rep = apps[1].client("olga").predict("overlap", api_name="/team_agreement")
    assert rep["images"] == 6
    assert rep["per_pair"]["ann4 / ann5"]["n"] == 6
    assert rep["mean_dice"] == pytest.approx(2 * 12 * 20 / (2 * 15 * 20))
