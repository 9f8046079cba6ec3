"""The Annotate tab through the app's API: open a project on the data folder, propagate the session's
supports, review (accept, no lesion, promote, undo), two sessions on one project, export."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from core.phantom import make_phantom

from test_webapp import make_checkpoints, set_supports, support_editor

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


def test_propagate_review_and_export(annot_app, tmp_path):
    client, files, ctx = annot_app
    set_supports(client, [support_editor(files, 1), support_editor(files, 2)])
    status, _, text = client.predict("ward 7", api_name="/annotate_open")
    assert "Project ward_7" in status and "unlabelled 5" in status
    line = client.predict("tiny_panet", False, api_name="/annotate_propagate")
    assert "Done: 5 of 5" in line
    status, _, first, _ = client.predict(None, api_name="/annotate_accept")
    assert "accepted 1" in status and "predicted 4" in status
    client.predict(None, api_name="/annotate_promote")            # the image just accepted
    status, _, _, _ = client.predict(None, api_name="/annotate_no_lesion")
    assert "no lesion 1" in status and "supports promoted: 1" in status
    status, _, text, _ = client.predict(None, api_name="/annotate_undo")   # the "no lesion" is taken back
    assert "no lesion" not in status and "predicted" in text
    status, _, _, _ = client.predict(None, api_name="/annotate_no_lesion")
    assert "no lesion 1" in status
    # a second session on the same project sees the first one's decisions and adds its own
    other = Client(client.src, verbose=False)
    status2, _, _ = other.predict("ward_7", api_name="/annotate_open")
    assert "accepted 1" in status2 and "no lesion 1" in status2
    status2, _, _, _ = other.predict(None, api_name="/annotate_accept")
    assert "accepted 2" in status2
    # the promoted image can become a support of this session
    editors_and_more = client.predict(api_name="/annotate_use_promoted")
    assert "1: ready" in editors_and_more[-1]
    zpath = client.predict(api_name="/annotate_export")
    with zipfile.ZipFile(zpath) as z:
        names = z.namelist()
    assert "ward_7/manifest.csv" in names and "ward_7/annotations.json" in names
    assert sum(n.startswith("ward_7/masks/") and n.endswith("_mask.png") for n in names) == 3
    store_masks = list((ctx.config.output_dir / "projects" / "ward_7" / "masks").glob("*.png"))
    assert store_masks and all(np.asarray(Image.open(p)).ndim == 2 for p in store_masks)


def test_propagation_with_the_no_lesion_decision_shows_the_score(annot_app):
    client, files, _ = annot_app
    c = Client(client.src, verbose=False)
    set_supports(c, [support_editor(files, 1)])
    c.predict("ward 8", api_name="/annotate_open")
    assert "Done: 5 of 5" in c.predict("tiny_panet", True, api_name="/annotate_propagate")
    _, _, text = c.predict("ward_8", api_name="/annotate_open")
    assert "lesion-presence score" in text
