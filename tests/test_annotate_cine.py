"""Propagation through a cine loop (issue 21): the previous frame's mask keeps the answer on the moving
target; abrupt changes are flagged; a loop in a DICOM file is a project of frames."""
from __future__ import annotations

import numpy as np
import pytest

from core.annotate.cine import near_previous, propagate_loop
from core.metrics import dice
from tests.dicom_factory import disc_frames


class Distracted:
    """A stand-in PANet++: finds the moving disc, and also a false blob that jumps around (as a few-shot
    model does on speckle that looks like the target)."""

    def __init__(self, frames, masks):
        self.frames, self.masks = frames, masks

    def predict(self, img, supports, **kw):
        t = next(i for i, f in enumerate(self.frames) if f is img)
        m = self.masks[t].copy()
        y = 15 + (t * 37) % 80
        m[y:y + 20, 130:150] = True        # the blob
        return type("R", (), {"mask": m})


def test_the_previous_mask_drops_a_false_blob_that_frame_by_frame_keeps():
    frames, masks = disc_frames(8)
    frames = list(frames)
    plain = propagate_loop(frames, Distracted(frames, masks), [], temporal=False)
    temporal = propagate_loop(frames, Distracted(frames, masks), [], known={0: masks[0]}, temporal=True)
    d_plain = [dice(r.mask, m) for r, m in zip(plain[1:], masks[1:])]
    d_temp = [dice(r.mask, m) for r, m in zip(temporal[1:], masks[1:])]
    assert min(d_temp) > 0.99 > max(d_plain)
    assert (temporal[0].mask == masks[0]).all(), "a person's frame is kept as it is"


def test_an_abrupt_change_is_flagged_for_review():
    frames, masks = disc_frames(4)
    gone = masks.copy()
    gone[2] = False                       # the target vanishes on frame 2

    class Exact:
        t = 0

        def predict(self, img, supports, **kw):
            Exact.t += 1
            return type("R", (), {"mask": gone[Exact.t - 1]})

    res = propagate_loop(frames, Exact(), [], temporal=False)
    assert [r.abrupt for r in res] == [False, False, True, True]
    assert res[1].iou_previous > 0.5


def test_near_previous_keeps_only_touching_components():
    prev = np.zeros((50, 50), bool)
    prev[10:20, 10:20] = True
    cur = np.zeros((50, 50), bool)
    cur[12:22, 12:22] = True
    cur[40:45, 40:45] = True
    kept = near_previous(cur, prev)
    assert kept[15, 15] and not kept[42, 42]


def test_litemedsam_follows_the_disc_through_the_loop():
    promptable = pytest.importorskip("core.models.promptable")
    if not promptable.available()[0]:
        pytest.skip("LiteMedSAM not installed")
    frames, masks = disc_frames(6)
    rgb = [np.repeat(f[..., None], 3, 2) for f in frames]

    class Rough:    # a square around the disc, as a coarse few-shot prediction
        t = 0

        def predict(self, img, supports, **kw):
            m = np.zeros(masks[0].shape, bool)
            ys, xs = np.nonzero(masks[Rough.t])
            m[ys.min() - 4:ys.max() + 5, xs.min() - 4:xs.max() + 5] = True
            Rough.t += 1
            return type("R", (), {"mask": m})

    res = propagate_loop(rgb, Rough(), [], known={0: masks[0]}, sam=promptable.shared("cpu"), temporal=True)
    assert min(dice(r.mask, m) for r, m in zip(res[1:], masks[1:])) > 0.85
    assert res[1].logits is not None, "the next frame gets this frame's logits as its mask prompt"


def test_a_dicom_loop_is_a_project_propagated_in_frame_order(tmp_path):
    pytest.importorskip("pydicom")
    from core.annotate.propagate import propagate
    from core.annotate.store import ProjectStore
    from core.data.io import read_image
    from tests.dicom_factory import make_dicom

    frames, masks = disc_frames(12)
    (tmp_path / "imgs").mkdir()
    make_dicom(tmp_path / "imgs" / "loop.dcm", frames, frames=True)

    class ByFrame(Distracted):     # looks the frame up by its pixels (the project reads it from the file)
        def predict(self, img, supports, **kw):
            t = next(i for i, f in enumerate(self.frames) if (f == img[..., 0]).all())
            m = self.masks[t].copy()
            m[15 + (t * 37) % 80:35 + (t * 37) % 80, 130:150] = True
            return type("R", (), {"mask": m, "probability": m.astype(np.float32), "lesion_score": None})

        def support_key(self, supports):
            return "s"

    store = ProjectStore(tmp_path / "out", "loop")
    assert store.add_folder(tmp_path / "imgs") == 12
    r = store.row("loop.dcm#0")
    store.decide("loop.dcm#0", "correct", r["id"], r["version"], "annotator", masks[0])
    res = propagate(store, ByFrame(list(frames), masks), [], "s", "m", temporal=True)
    assert res["predicted"] == 11 and res["abrupt"] == []
    for k in (1, 2, 9, 10, 11):      # frame 10 follows 9 (not 1): the order is the loop's
        assert dice(store.mask(f"loop.dcm#{k}"), masks[k]) > 0.99, k
    assert (read_image(tmp_path / "imgs" / "loop.dcm#11")[..., 0] == frames[11]).all()
