"""Delineation: PANet++ finds the target from the supports; LiteMedSAM draws its boundary where the user
points (a box, clicks), following SAM's iterative protocol.

- A box: LiteMedSAM's mask for that box, informed by the supports as `DelineateConfig.box_mode` says:
  `"box"` (the box alone), `"box+mask"` (the PANet++ probability inside the box as the mask prompt),
  `"box+point"` (a positive point at PANet++'s most confident pixel inside the box). Chosen on BUSI's
  validation split (docs/selection_delineate_val.json).
- Clicks: every click re-decodes with all clicks so far (positive/negative points), the box if any, and
  the previous low-resolution logits (SAM's refinement). With supports and no box, the first click
  starts from the PANet++ prediction as `DelineateConfig.click_start` says.
- Results of each click prefix are cached, so the n-th click costs one decoder pass (tens of ms on
  the CPU) once the query's embedding is cached.
"""
from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from .cache import LRU
from .models.boxes import mask_box, widen_box  # noqa: F401 (part of this module's interface)
from .models.promptable import SIZE, PromptableSegmenter, PromptResult


@dataclass(frozen=True)
class DelineateConfig:
    """Defaults chosen on BUSI's validation split (docs/selection_delineate_val.json): the box alone beat
    the box informed by PANet++'s map (mask prompt or a confident point), and local corrections (bumps)
    beat SAM's point protocol at every number of clicks (LiteMedSAM was trained on boxes). Clicks alone:
    LiteMedSAM throughout; the hybrid (PANet++'s click refinement from the second click) needed fewer clicks on
    BUSI val but fell apart on an unseen target's val part (PSFHS pubic symphysis: Dice 0.66 vs 0.84 after 3)."""
    box_mode: str = "box"            # "box" | "box+mask" | "box+point"
    click_start: str = "mask"        # supports, no box: "mask" (PANet++ logits as the first mask prompt),
    #                                  "box" (the box of the PANet++ mask), "none" (clicks alone)
    logit_clip: float = 6.0          # PANet++ probability -> mask-prompt logits, clipped to +-this
    alone: str = "litemedsam"        # clicks without supports or box: "litemedsam" (a click implies a box, then
    #                                  local corrections), "panet" (PANet++'s click prototypes and bumps), "hybrid"
    #                                  (LiteMedSAM for the first click, PANet++'s from the second on)
    click_mode: str = "bumps"        # "points": SAM's protocol (points + box + previous logits);
    #                                  "points-nomask": points + box, no mask prompt;
    #                                  "bumps": the start's logits + adaptive Gaussian bumps at the clicks, and a
    #                                  positive click outside the box widens the box (LiteMedSAM was trained on boxes)


@dataclass
class Delineation:
    mask: np.ndarray                 # (H, W) bool at the query's size
    iou: float | None                # LiteMedSAM's predicted IoU (None: PANet++ alone)
    logits: np.ndarray | None        # low-resolution logits (the next mask prompt)
    source: str                      # what drew it: "panet", "litemedsam"
    seconds: float


def prob_to_prompt(prob: np.ndarray, sam_scale: float, resized: tuple[int, int], clip: float) -> np.ndarray:
    """A probability map at the image's size as LiteMedSAM's (1, 256, 256) mask-prompt logits."""
    nh, nw = resized
    p = cv2.resize(prob.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
    p = np.clip(p, 1e-4, 1 - 1e-4)
    logit = np.clip(np.log(p / (1 - p)), -clip, clip)
    out = np.full((SIZE, SIZE), -clip, np.float32)
    out[:nh, :nw] = logit
    # SAM's mask prompt is at 256 x 256 for a 1024 input, i.e. the same frame as its low-res output
    return out[None]


def box_region(box, hw: tuple[int, int]) -> np.ndarray:
    """The pixels inside a box (x0, y0, x1, y1), edges included."""
    h, w = hw
    x0, y0, x1, y1 = box
    m = np.zeros((h, w), bool)
    m[max(0, int(np.floor(y0))):min(h, int(np.ceil(y1)) + 1), max(0, int(np.floor(x0))):min(w, int(np.ceil(x1)) + 1)] = True
    return m


def mask_extent(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The box of every foreground pixel (x0, y0, x1, y1), None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def confident_point(prob: np.ndarray, box) -> tuple[float, float, bool] | None:
    """The pixel inside `box` where PANet++ is most sure of the target (a positive point), if it is > 0.5."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    sub = prob[max(0, y0):y1 + 1, max(0, x0):x1 + 1]
    if sub.size == 0 or sub.max() <= 0.5:
        return None
    yy, xx = np.unravel_index(int(np.argmax(sub)), sub.shape)
    return float(xx + max(0, x0)), float(yy + max(0, y0)), True


class Delineator:
    """PANet++ (`fewshot`, a FewShotSegmenter) + LiteMedSAM (`sam`)."""

    def __init__(self, fewshot, sam: PromptableSegmenter, config: DelineateConfig = DelineateConfig(),
                 cache_size: int = 32):
        self.fewshot, self.sam, self.config = fewshot, sam, config
        self.cache_size = cache_size
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def _cached(self, key, compute):
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = compute()
        if isinstance(value, PromptResult):   # kept compact: the chosen mask and half-precision logits only
            value = PromptResult(value.mask.copy(), value.logits, value.iou, value.mask[None].copy(),
                                 value.full_logits.astype(np.float16), value.ious, value.seconds)
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return value

    def start(self, query: np.ndarray, prob: np.ndarray | None, box) -> PromptResult | None:
        """The state before any click: LiteMedSAM's answer to the box (informed by the supports' map)."""
        if box is None:
            return None
        cfg = self.config
        emb = self.sam.embed(query)
        if cfg.box_mode == "box+mask" and prob is not None:
            return self.sam.predict(query, box=box, mask_logits=prob_to_prompt(prob, emb.scale, emb.resized,
                                                                              cfg.logit_clip))
        if cfg.box_mode == "box+point" and prob is not None:
            pt = confident_point(prob, box)
            return self.sam.predict(query, box=box, points=[pt] if pt else None)
        return self.sam.predict(query, box=box)

    def delineate(self, query: np.ndarray, prob: np.ndarray | None, box=None, clicks=(),
                  threshold: float = 0.5, key: str = "") -> Delineation:
        """The mask for this query given the supports' probability map `prob` (None: no supports), a
        box and clicks [(x, y, positive)]. `key` names the query+supports (prefix cache)."""
        t0 = time.perf_counter()
        clicks = [tuple(c) for c in clicks]
        img_key = self.sam.cache.key(query, self.sam.encoder) + key
        box_t = tuple(float(v) for v in box) if box is not None else None
        if box_t is None and not clicks:
            if prob is None:
                raise ValueError("nothing to delineate: give supports, a box or clicks")
            return Delineation(prob > threshold, None, None, "panet", time.perf_counter() - t0)
        if not clicks:        # a box alone: LiteMedSAM's mask for it, inside it
            state = self._cached((img_key, box_t, self.config, ()), lambda: self.start(query, prob, box_t))
            return Delineation(state.mask & box_region(box_t, state.mask.shape), state.iou, state.logits,
                               "litemedsam", time.perf_counter() - t0)
        alone = prob is None and box_t is None
        if alone and clicks and (self.config.alone == "panet" or (self.config.alone == "hybrid" and len(clicks) > 1)):
            res = self.fewshot.predict(query, [], threshold=threshold, heatmaps=False, clicks=clicks)
            return Delineation(res.mask, None, None, "panet", time.perf_counter() - t0)
        if clicks and self.config.click_mode == "bumps":
            return self._bumped(query, prob, box_t, clicks, threshold, img_key, t0)
        state = self._cached((img_key, box_t, self.config, ()), lambda: self.start(query, prob, box_t))
        click_box = box_t
        if click_box is None and prob is not None and self.config.click_start == "box":
            click_box = mask_box(prob > threshold)     # the supports' target, as a box for the clicks
        for i in range(1, len(clicks) + 1):
            prev = state
            state = self._cached((img_key, box_t, self.config, threshold, tuple(clicks[:i])),
                                 lambda prev=prev, i=i: self._click(query, prob, click_box, clicks[:i], prev))
        return Delineation(state.mask, state.iou, state.logits, "litemedsam", time.perf_counter() - t0)

    def click_box(self, query, click) -> tuple[float, float, float, float]:
        """A box for a target known only by one positive click: boxes of several sizes centred on it, the
        one whose mask LiteMedSAM rates best (predicted IoU) among those that contain the click."""
        h, w = query.shape[:2]
        x, y = float(click[0]), float(click[1])
        best = None
        for frac in (0.1, 0.2, 0.3, 0.45):
            r = frac * max(h, w) / 2
            b = (max(0.0, x - r), max(0.0, y - r), min(w - 1.0, x + r), min(h - 1.0, y + r))
            res = self.sam.predict(query, box=b)
            inside = bool(res.mask[min(h - 1, int(round(y))), min(w - 1, int(round(x)))])
            score = (inside, res.iou)
            if best is None or score > best[0]:
                best = (score, b)
        return best[1]

    def _bumped(self, query, prob, box, clicks, threshold, img_key, t0) -> Delineation:
        """Clicks as local corrections of the start's logits (the PANet++ refinement, on LiteMedSAM's mask):
        each click a Gaussian bump whose radius is its distance to the start mask's edge. LiteMedSAM was
        trained on boxes (a point alone outlines nothing), so clicks alone start from the box that the
        first positive click implies (`click_box`)."""
        from .models.clicks import ClickConfig, click_bias, edge_distances

        h, w = query.shape[:2]
        if box is None and prob is not None and self.config.click_start == "box":
            box = mask_box(prob > threshold)    # the supports' target (largest part): LiteMedSAM redraws it
        if box is None and prob is None:
            first = next((c for c in clicks if c[2]), None)
            if first is None:
                return Delineation(np.zeros((h, w), bool), None, None, "litemedsam", time.perf_counter() - t0)
            box = self._cached((img_key, "click_box", tuple(first)), lambda: self.click_box(query, first))
        if box is not None:
            x0, y0, x1, y1 = box
            for x, y, pos in clicks:            # a missed part outside the box: the box grows to take it in
                if pos and not (x0 <= x <= x1 and y0 <= y <= y1):
                    m = 0.05 * max(x1 - x0, y1 - y0)
                    x0, y0 = max(0.0, min(x0, x - m)), max(0.0, min(y0, y - m))
                    x1, y1 = min(w - 1.0, max(x1, x + m)), min(h - 1.0, max(y1, y + m))
            box = (x0, y0, x1, y1)
            start = self._cached((img_key, box, self.config, ()), lambda: self.start(query, prob, box))
            logits, iou = start.full_logits.astype(np.float32), start.iou
        else:
            p = np.clip(prob.astype(np.float32), 1e-4, 1 - 1e-4)
            logits, iou = np.log(p / (1 - p)) - np.log(threshold / (1 - threshold)), None
        base = logits > 0
        bias = click_bias(clicks, (h, w), ClickConfig(), radii=edge_distances(clicks, base)).numpy()
        fused = (logits + bias) > 0
        if box is not None:      # the target lies inside the (possibly widened) box
            fused &= box_region(box, (h, w))
        return Delineation(fused, iou, None, "litemedsam" if box is not None else "panet",
                           time.perf_counter() - t0)

    def _click(self, query, prob, box, clicks, prev: PromptResult | None) -> PromptResult:
        if self.config.click_mode == "points-nomask":
            return self.sam.predict(query, box=box, points=clicks,
                                    multimask=(len(clicks) == 1 and box is None))
        logits = prev.logits if prev is not None else None
        if prev is None and prob is not None and box is None and self.config.click_start == "mask":
            emb = self.sam.embed(query)
            logits = prob_to_prompt(prob, emb.scale, emb.resized, self.config.logit_clip)
        return self.sam.predict(query, box=box, points=clicks, mask_logits=logits,
                                multimask=(len(clicks) == 1 and box is None and logits is None))


_NOTED: set = set()


def promptable_or_none(device: str = "cpu", log=None, onnx_dir=None):
    """The shared LiteMedSAM, or None when it cannot be loaded (said once per process, plainly)."""
    from .models import promptable

    ok, why = promptable.available()
    if ok:
        try:
            return promptable.shared(device, onnx_dir=onnx_dir)
        except Exception as exc:   # a damaged install: the old refinement keeps working
            ok, why = False, str(exc)
    if why not in _NOTED:
        _NOTED.add(why)
        (log or print)(f"LiteMedSAM is not available ({why}): boxes and clicks use PANet++'s own refinement")
    return None


def refine_prediction(fewshot, query: np.ndarray, supports, box=None, clicks=(), threshold: float = 0.5,
                      owner: str = "", delineator: Delineator | None = None):
    """The mask for a query from its supports, a box and clicks: through LiteMedSAM when `delineator` is
    given, else PANet++'s own refinement (a box crops, a click adds a bump). Returns (mask, Delineation or
    None, the PANet++ result)."""
    if delineator is not None and not supports and (box is not None or clicks):
        d = delineator.delineate(query, None, box=box, clicks=clicks, threshold=threshold, key="none")
        return d.mask, d, None
    res = fewshot.predict(query, supports, threshold=threshold, heatmaps=False, owner=owner,
                          clicks=None if delineator else clicks, box=None if delineator else box)
    if delineator is None or (box is None and not clicks):
        return res.mask, None, res
    key = fewshot.support_key(supports) if supports else "none"
    d = delineator.delineate(query, res.probability if supports else None, box=box, clicks=clicks,
                             threshold=threshold, key=key)
    return d.mask, d, res


@dataclass(frozen=True)
class AutoRule:
    """When LiteMedSAM redraws PANet++'s automatic mask (no prompt): the box of PANet++'s largest component
    (widened by `margin`) goes to LiteMedSAM, whose mask replaces PANet++'s only if its predicted IoU is at
    least `min_iou`, it agrees with PANet++'s mask (Dice >= `min_agreement`) and the image's longer side is
    at least `min_side` px. Chosen on the validation parts of BUSI and five multidomain sets
    (`python -m core evaluate-auto`, docs/results_auto.json); it ships because no test part lost Dice."""
    min_iou: float = 0.8
    min_agreement: float = 0.6
    min_side: int = 0
    margin: float = 0.05

    def trusts(self, iou: float, agreement: float, side: int) -> bool:
        return iou >= self.min_iou and agreement >= self.min_agreement and side >= self.min_side


def auto_candidate(sam: PromptableSegmenter, query: np.ndarray, panet_mask: np.ndarray, margin: float = 0.05):
    """LiteMedSAM's redraw of PANet++'s largest component: (mask, predicted IoU, agreement Dice) or None."""
    return auto_candidate_components(sam, query, panet_mask, margin, most=1)


def auto_candidate_components(sam: PromptableSegmenter, query: np.ndarray, panet_mask: np.ndarray,
                              margin: float = 0.05, min_share: float = 0.3, most: int = 3):
    """Several components (issue 29): LiteMedSAM redraws each component of PANet++'s mask that is at least
    `min_share` of the largest (one box each, at most `most`), and the union is the candidate: (mask,
    area-weighted predicted IoU, agreement Dice with PANet++'s mask) or None. One component: `auto_candidate`."""
    from .metrics import dice
    from .models.boxes import component_boxes

    boxes = component_boxes(panet_mask, min_share, most)
    if not boxes:
        return None
    parts = [sam.predict(query, box=widen_box(b, margin, panet_mask.shape)) for b in boxes]
    union = np.logical_or.reduce([p.mask for p in parts])
    areas = np.array([max(1, int(p.mask.sum())) for p in parts], float)
    iou = float(np.dot(areas, [p.iou for p in parts]) / areas.sum())
    return union, iou, float(dice(union, panet_mask))


def auto_mask(sam: PromptableSegmenter, query: np.ndarray, panet_mask: np.ndarray, side: int | None = None,
              rule: AutoRule = AutoRule()) -> tuple[np.ndarray, bool, float | None]:
    """The automatic mask (no prompt): PANet++'s, or LiteMedSAM's redraw of it where `rule` trusts it; every
    sizable component of PANet++'s mask is redrawn from a box of its own (issue 29: it gained on the val parts
    and then on the test parts against the largest component alone, docs/results.md "Several components").
    Returns (mask, redrawn, LiteMedSAM's predicted IoU)."""
    cand = auto_candidate_components(sam, query, panet_mask, rule.margin)
    mask, used = apply_rule(rule, panet_mask, cand, side if side is not None else max(query.shape[:2]))
    return mask, used, cand[1] if cand else None


def apply_rule(rule: AutoRule, panet_mask: np.ndarray, candidate, side: int) -> tuple[np.ndarray, bool]:
    """(the mask to show, whether LiteMedSAM's was used)."""
    if candidate is None:
        return panet_mask, False
    mask, iou, agree = candidate
    return (mask, True) if rule.trusts(iou, agree, side) else (panet_mask, False)


@dataclass
class SupportsMask:
    """`segment_from_supports`'s answer: the mask to show, PANet++'s own result, whether LiteMedSAM redrew it."""
    mask: np.ndarray
    result: object                 # the FewShotSegmenter result (probability, heatmaps, lesion score...)
    redrawn: bool = False
    iou: float | None = None       # LiteMedSAM's predicted IoU of its redraw (None: not tried)
    choice: str = "shipped"        # 'matched': the supports chose the LiteMedSAM-space match (issue 29)


MATCH_WEIGHT = 0.5     # the LiteMedSAM-space map's share in the fused map (chosen on val: docs/results.md)


def trusted_match(sam: PromptableSegmenter, query: np.ndarray, supports, probability, side: int, rule: AutoRule,
                  weight: float = MATCH_WEIGHT):
    """LiteMedSAM's mask from the box of the fused map (LiteMedSAM-space match + PANet++'s map), with its
    predicted IoU, where `rule` trusts it; None where it does not (or the map finds nothing)."""
    from .models.sam_match import match_and_prompt

    m = match_and_prompt(sam, query, supports, probability, weight=weight, points=False)
    return (m.mask, m.iou) if m.iou is not None and rule.trusts(m.iou, m.agreement, side) else None


def automatic_variants(seg, sam, query: np.ndarray, supports, rule,
                       weight: float = MATCH_WEIGHT) -> dict[str, np.ndarray]:
    """The two automatic masks to choose between: the shipped one (LiteMedSAM redraws PANet++'s largest
    component where `rule` trusts it) and the LiteMedSAM-space match (the box of the fused map, kept where
    `rule` trusts it, else the shipped mask)."""
    res = seg.predict(query, supports, heatmaps=False)
    side = max(query.shape[:2])
    shipped = auto_mask(sam, query, res.mask, side=side, rule=rule)[0]
    match = trusted_match(sam, query, supports, res.probability, side, rule, weight)
    return {"shipped": shipped, "matched": match[0] if match else shipped}


def choose_by_supports(seg, sam, supports, rule, weight: float = MATCH_WEIGHT) -> tuple[str, dict[str, float]]:
    """Which automatic mask to use for these supports, decided by the supports alone: each support in turn is
    the query of the others (leave-one-out), and the variant with the higher mean Dice wins (ties: shipped).
    Needs 2+ supports; with one, the shipped mask."""
    from .metrics import dice

    if len(supports) < 2:
        return "shipped", {}
    scores: dict[str, list[float]] = {"shipped": [], "matched": []}
    for i, (img, mask) in enumerate(supports):
        rest = supports[:i] + supports[i + 1:]
        for name, m in automatic_variants(seg, sam, img, rest, rule, weight).items():
            scores[name].append(float(dice(m, mask)))
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    return ("matched" if means["matched"] > means["shipped"] else "shipped"), means


_CHOICES = LRU(64)     # (model, support set) -> 'matched' or 'shipped'


def support_arrays(supports) -> list:
    """Supports as (image, mask) arrays: pairs of file paths (the CLI's) are read once and remembered."""
    if all(not isinstance(i, (str, bytes)) and not hasattr(i, "__fspath__") for i, _ in supports):
        return list(supports)
    return list(_read_pairs(tuple((str(i), str(m)) for i, m in supports)))


@functools.lru_cache(maxsize=8)
def _read_pairs(pairs: tuple) -> tuple:
    from .data.io import read_image, read_mask

    return tuple((read_image(i), read_mask(m)) for i, m in pairs)


def _choice_key(fewshot, supports) -> tuple:
    return id(fewshot), fewshot.support_key(supports)


def choice_ready(fewshot, supports) -> bool:
    """Whether these supports' choice is known (the redraw then costs no leave-one-out pass)."""
    return len(supports) < 2 or _choice_key(fewshot, supports) in _CHOICES


def support_choice(fewshot, sam: PromptableSegmenter, supports, rule: AutoRule = AutoRule()) -> str:
    """'matched' or 'shipped' for these supports, by leave-one-out among them (issue 29; computed once per
    support set and model: each support's embedding and a few decoder calls)."""
    if len(supports) < 2:
        return "shipped"
    return _CHOICES.get_or_compute(_choice_key(fewshot, supports),
                                   lambda: choose_by_supports(fewshot, sam, supports, rule)[0])


def redraw(sam: PromptableSegmenter, query: np.ndarray, panet_mask: np.ndarray, probability, supports,
           choice: str, side: int | None = None, rule: AutoRule = AutoRule()) -> tuple[np.ndarray, bool, float | None]:
    """LiteMedSAM's automatic redraw: with choice 'matched', from the box of the fused map (LiteMedSAM-space
    match + PANet++'s map) where `rule` trusts it; otherwise (or where not trusted) from PANet++'s largest
    component where `rule` trusts it. Returns (mask, redrawn, predicted IoU)."""
    side = side if side is not None else max(query.shape[:2])
    match = trusted_match(sam, query, supports, probability, side, rule) if choice == "matched" else None
    return (match[0], True, match[1]) if match else auto_mask(sam, query, panet_mask, side=side, rule=rule)


def segment_from_supports(fewshot, query: np.ndarray, supports, *, sam: PromptableSegmenter | None = None,
                          presence=None, threshold: float = 0.5, side: int | None = None, rule: AutoRule = AutoRule(),
                          choose_from=None, **predict_kwargs) -> SupportsMask:
    """The one rule for an automatic mask from supports (issues 26, 29), used by the page, `segment`,
    propagation and cine loops: PANet++ finds the target; where `presence` says "no lesion", the mask is
    empty; else LiteMedSAM (when given) redraws it where `rule` trusts it, from PANet++'s largest component or,
    where the supports chose it by leave-one-out, from the map fused with the match in LiteMedSAM's space.
    choose_from: the supports' pairs when `supports` is None (the model's supports were set beforehand)."""
    res = fewshot.predict(query, supports, threshold=threshold, presence=presence, **predict_kwargs)
    if sam is None or not res.mask.any() or not getattr(res, "lesion_present", True):
        return SupportsMask(res.mask, res)
    pairs = choose_from if supports is None else supports
    arrays = support_arrays(pairs) if pairs is not None else []
    choice = support_choice(fewshot, sam, arrays, rule)
    mask, used, iou = redraw(sam, query, res.mask, res.probability, arrays, choice, side, rule)
    return SupportsMask(mask, res, used, iou, choice)
