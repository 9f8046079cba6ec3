"""The Annotate tab through the app's API: open a project on the data folder, propagate the session's
supports, review (accept, no lesion, promote, undo), two sessions on one project, export."""
from __future__ import annotations

import zipfile

import pytest
from PIL import Image

from core.phantom import make_phantom

from test_webapp import make_checkpoints, set_supports, support_pair

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402


@pytest.fixture(scope="module")
def annot_app(tmp_path_factory):
    from webapp.context import AppConfig, AppContext
    from webapp.ui import build_app, launch_options

    root = tmp_path_factory.mktemp("annot")
    make_checkpoints(root / "ckpt")
    data = root / "scans"
    data.mkdir()
    for i in range(5):
        Image.fromarray(make_phantom(30 + i, size=(90, 120)).image).save(data / f"scan{i}.png")
    ctx = AppContext(AppConfig(data_dir=data, checkpoints_dir=root / "ckpt", output_dir=root / "out"))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(ctx))
    files = root / "files"
    files.mkdir()
    yield Client(demo.local_url, verbose=False), files, ctx
    demo.close()


def _view(d: dict) -> tuple:
    return d["project"], d["image"], d["text"], d["token"]


def decide(client, action, token=""):
    """One review decision through the script API: (project status, image shown next, text, token)."""
    return _view(client.predict(action, token, api_name="/annotate_decide"))


def open_project(client, name) -> tuple:
    return _view(client.predict(name, api_name="/annotate_open"))


def propagate(client, presence=False) -> tuple:
    """The propagation (its last progress line) and the review's view after it."""
    line = client.predict("tiny_panet", presence, api_name="/annotate_propagate")
    return (line,) + _view(client.predict(api_name="/annotate_view"))[1:]


def test_propagate_review_and_export(annot_app, tmp_path):
    client, files, ctx = annot_app
    set_supports(client, [support_pair(1), support_pair(2)])
    status, _, text, token = open_project(client, "ward 7")
    assert "Project ward_7" in status and "unlabelled 5" in status and token
    line, _, text, token = propagate(client)
    assert "Done: 5 of 5" in line and "predicted" in text, "the review now shows a predicted image"
    status, _, first, _ = decide(client, "accept", token)
    assert "accepted 1" in status and "predicted 4" in status
    decide(client, "promote")            # the image just accepted
    status, _, _, _ = decide(client, "no lesion")
    assert "no lesion 1" in status and "supports promoted: 1" in status
    status, _, text, _ = decide(client, "undo")   # the "no lesion" is taken back
    assert "no lesion" not in status and "predicted" in text
    status, _, _, _ = decide(client, "no lesion")
    assert "no lesion 1" in status
    # another user's project of the same name is another project: it sees none of these decisions
    other = Client(client.src, verbose=False)
    status2, _, _, _ = open_project(other, "ward_7")
    assert "unlabelled 5" in status2 and "accepted" not in status2
    # the promoted image can become a support of this session
    assert "1: ready" in client.predict(api_name="/annotate_use_promoted")
    zpath = client.predict(api_name="/annotate_export")
    with zipfile.ZipFile(zpath) as z:
        names = z.namelist()
    assert "ward_7/manifest.csv" in names and "ward_7/annotations.json" in names
    assert sum(n.startswith("ward_7/masks/") and n.endswith("_mask.png") for n in names) == 2
    from core.annotate.store import ProjectStore
    stores = [ProjectStore(ctx.config.output_dir, "ward_7", namespace=p.parent.parent.name)
              for p in (ctx.config.output_dir / "projects").rglob("ward_7/project.sqlite")]
    store = next(s for s in stores if "accepted" in s.counts())      # this client's (the other's has none)
    decided = [r["rel_path"] for r in store.rows(("accepted",))]
    assert decided and all(store.mask(r).ndim == 2 for r in decided)


def test_accept_without_a_prediction_is_refused_and_saves_nothing(annot_app):
    """Finding 1: Accept on the image shown right after Open (no prediction yet) recorded an empty mask."""
    client, files, _ = annot_app
    c = Client(client.src, verbose=False)
    status, _, text, token = open_project(c, "fresh")
    assert "unlabelled 5" in status and "no prediction yet" in text
    with pytest.raises(Exception, match="no predicted mask to accept"):
        decide(c, "accept", token)
    status, _, _, _ = open_project(c, "fresh")
    assert "accepted" not in status and "unlabelled 5" in status


def test_a_decision_for_another_image_than_the_one_shown_is_refused(annot_app):
    client, files, _ = annot_app
    c = Client(client.src, verbose=False)
    set_supports(c, [support_pair(1)])
    open_project(c, "steps")
    propagate(c)
    _, _, _, token = open_project(c, "steps")
    image_id, version = token.split(":")
    with pytest.raises(Exception, match="out of step"):
        decide(c, "accept", f"{int(image_id) + 1}:{version}")   # the page shows another image than the session
    status, _, _, _ = decide(c, "accept", token)
    assert "accepted 1" in status


def test_projects_of_two_users_are_apart_and_a_user_key_brings_them_back(annot_app):
    """Finding 3 and 4: a project belongs to its user; the same user (same key) after a reload finds it."""
    from webapp.context import AppContext

    _, _, ctx = annot_app

    class Req:
        def __init__(self, session_hash, key=None):
            self.session_hash, self.username = session_hash, None
            self.cookies = {"panet_user": key} if key else {}

    key = "0123456789abcdef" * 2                  # the browser's key, sent with every request (a cookie)
    a, b = ctx.owner(Req("tab-1", key)), ctx.owner(Req("tab-2", key))   # a reload: a new session, the same key
    assert a == b and ctx.project_namespace(a) == ctx.project_namespace(b)
    stranger = ctx.owner(Req("tab-3"))
    assert stranger != a and ctx.project_namespace(stranger) != ctx.project_namespace(a)
    assert ctx.owner(Req("tab-4", "../../etc")) == "tab-4", "a malformed key is not trusted"
    assert isinstance(ctx, AppContext)


def test_propagation_with_the_no_lesion_decision_shows_the_score(annot_app):
    client, files, _ = annot_app
    c = Client(client.src, verbose=False)
    set_supports(c, [support_pair(1)])
    open_project(c, "ward 8")
    assert "Done: 5 of 5" in propagate(c, True)[0]
    _, _, text, _ = open_project(c, "ward_8")
    assert "lesion-presence score" in text


def test_a_cine_loop_project_has_a_scrubber(tmp_path):
    """Issue 21 in the app: a folder with a multi-frame DICOM is a project of frames in loop order, and the
    scrubber shows frame k for review (temporal propagation itself: tests/test_annotate_cine.py)."""
    pytest.importorskip("pydicom")
    from tests.dicom_factory import disc_frames, make_dicom
    from webapp import annotate
    from webapp.context import AppConfig, AppContext
    from webapp.session import Session
    from webapp.tabs import review

    frames, masks = disc_frames(5)
    data = tmp_path / "loops"
    data.mkdir()
    make_dicom(data / "loop.dcm", frames, frames=True)
    ctx = AppContext(AppConfig(data_dir=data, checkpoints_dir=tmp_path / "ckpt", output_dir=tmp_path / "out",
                               single_user=True))
    sess = Session()
    sess, status = review.open_project(ctx, sess, "cine", None)
    assert annotate.loop_frames(annotate.open_project(ctx, "cine", ctx.owner(None))) == [f"loop.dcm#{k}" for k in range(5)]
    sess = review.go_to_frame(ctx, sess, 3, None)
    shown = __import__("json").loads(review.canvas_view(ctx, sess, None))
    assert "loop.dcm#3" in shown["status"] and sess.review_path == "loop.dcm#3"


def test_one_odd_dicom_in_the_data_folder_never_blocks_open(tmp_path):
    """Issue 27: NumberOfFrames="abc" in one file made Open fail for every project on the folder. Now the
    project opens, the odd file is one image that is marked unreadable, with its reason, when reached."""
    pydicom = pytest.importorskip("pydicom")
    from tests.dicom_factory import make_dicom
    from webapp import annotate
    from webapp.context import AppConfig, AppContext

    data = tmp_path / "scans"
    data.mkdir()
    for i in range(2):
        Image.fromarray(make_phantom(40 + i, size=(90, 120)).image).save(data / f"scan{i}.png")
    odd = make_dicom(data / "odd.dcm", make_phantom(42, size=(90, 120)).image[..., 0])
    ds = pydicom.dcmread(odd)
    ds.add(pydicom.DataElement(0x00280008, "LO", "abc"))
    ds.save_as(odd)
    ctx = AppContext(AppConfig(data_dir=data, checkpoints_dir=tmp_path / "ckpt", output_dir=tmp_path / "out",
                               single_user=True, promptable=False))
    for name in ("first", "second"):
        store = annotate.open_project(ctx, name, "local")
        assert len(store.rows()) == 3
    v = annotate.view(store, "odd.dcm")
    assert v.rel_path != "odd.dcm"
    assert "odd DICOM header" in store.unreadable()["odd.dcm"]


def test_the_reviewers_pass_approves_or_sends_back_the_decision_shown(annot_app):
    from gradio_client.exceptions import AppError

    client, files, ctx = annot_app
    set_supports(client, [support_pair(1)])
    open_project(client, "review pass")
    _, _, shown, token = propagate(client)
    decide(client, "accept", token)
    which, img, text, _ = client.predict(api_name="/review_next")
    name = shown.split("**")[1]
    assert which == f"{name} @ 2" and img is not None and "accepted" in text
    with pytest.raises(AppError, match="say why"):
        client.predict(which, "", api_name="/review_send_back")
    which2, _, text2, _ = client.predict(which, "the margin is cut", api_name="/review_send_back")
    assert which2 == "" and "Nothing waits for review" in text2
    with pytest.raises(AppError, match="not in project"):
        client.predict("other.png @ 9", "", api_name="/review_approve")
