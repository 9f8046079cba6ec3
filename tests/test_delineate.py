"""core/delineate.py without the model: the automatic redraw rule, boxes, prompts from a probability map."""
import numpy as np

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
