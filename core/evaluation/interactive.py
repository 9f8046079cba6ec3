"""The standard interactive-segmentation protocol on few-shot predictions.

Each next click goes to the centre (largest distance-transform value) of the largest error region,
positive on a missed region, negative on a false one (`core.models.clicks.next_click`); all clicks so
far refine the supports' prediction. Reported: mean Dice after 0, 1, 3 and 5 clicks and the mean
number of clicks to reach Dice 0.85 (NoC@85, capped at 10), with supports (k-shot episodes whose
supports come from other patients' groups) and with clicks alone (the baseline). Images are scored
at the model's working size (the sets are loaded at it).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from ..data.dataset import ImageSet
from ..metrics import dice
from ..models.clicks import ClickConfig, clicks_to_reach, next_click
from .fewshot import make_episodes


def click_curve(predict, pred: np.ndarray, truth: np.ndarray, max_clicks: int, click_ms: list) -> list[float]:
    """Dice after 0..max_clicks simulated clicks (each at the centre of the largest error region);
    `predict(clicks)` gives the mask for the clicks so far; its time goes into `click_ms`."""
    clicks, dices = [], [dice(pred, truth)]
    for _ in range(max_clicks):
        c = next_click(pred, truth)
        if c is None:          # perfect: later clicks change nothing
            dices.append(dices[-1])
            continue
        clicks.append(c)
        t = time.perf_counter()
        pred = predict(clicks)
        click_ms.append(1000 * (time.perf_counter() - t))
        dices.append(dice(pred, truth))
    return dices


def run_protocol(seg, qset: ImageSet, shots: int, n_queries: int, seed: int = 0, max_clicks: int = 10,
                 cfg: ClickConfig = ClickConfig(), target: float = 0.85, progress: bool = False) -> dict:
    """shots=0: clicks only (no supports; Dice 0 before the first click)."""
    from tqdm import tqdm

    jobs = query_jobs(qset, shots, n_queries, seed)
    curves, click_ms = [], []
    for q, supports in tqdm(jobs, desc=f"{shots}-shot clicks", disable=not progress):
        image, truth = qset.images[q], qset.masks[q]
        pred = seg.predict(image, supports, heatmaps=False, click_config=cfg).mask if supports else \
            np.zeros_like(truth)
        curves.append(click_curve(
            lambda clicks, image=image, supports=supports: seg.predict(
                image, supports, heatmaps=False, clicks=clicks, click_config=cfg).mask,
            pred, truth, max_clicks, click_ms))
    arr = np.array(curves)
    return {"shots": shots, "n_queries": len(curves),
            "dice_after_clicks": {str(n): float(arr[:, n].mean()) for n in (0, 1, 3, 5, max_clicks)},
            f"noc{int(target * 100)}": float(np.mean([clicks_to_reach(c, target, max_clicks) for c in curves])),
            "reached_share": float(np.mean([max(c) >= target for c in curves])),
            "click_ms_median": round(statistics.median(click_ms), 1) if click_ms else None,
            "curve": arr.mean(0).round(4).tolist()}


def target_box(truth: np.ndarray, margin: float = 0.05) -> tuple[float, float, float, float]:
    """The simulated user's box: the target's bounding box (all of it) widened by `margin` of its size on
    each side, clipped to the image (a careful user's box; MedSAM's evaluation uses a few pixels)."""
    from ..delineate import mask_extent, widen_box

    return widen_box(mask_extent(truth), margin, truth.shape)


def query_jobs(qset: ImageSet, shots: int, n_queries: int, seed: int) -> list[tuple[int, list]]:
    """(query index, supports) pairs: k-shot episodes (supports from other groups), or lesion images alone."""
    if shots:
        eps = make_episodes(qset, None, shots, n_queries, seed)
        return [(ep.query, [(qset.images[j], qset.masks[j]) for j in ep.support]) for ep in eps]
    lesion = [i for i in range(len(qset)) if qset.has_lesion(i)]
    return [(int(i), []) for i in np.random.default_rng(seed).permutation(lesion)[:n_queries]]


def run_delineation_protocol(delineator, qset: ImageSet, shots: int, n_queries: int, box: bool, seed: int = 0,
                             max_clicks: int = 10, targets=(0.85, 0.90), progress: bool = False) -> dict:
    """The interactive protocol through the promptable model (`core.delineate.Delineator`): the start is
    PANet++'s prediction from `shots` supports (shots > 0), LiteMedSAM's answer to the target's box
    (box=True; informed by the supports when shots > 0), or nothing (clicks alone); then each next click at
    the centre of the largest error region re-decodes with every click and the previous logits."""
    from tqdm import tqdm

    curves, click_ms, start_ms = [], [], []
    jobs = query_jobs(qset, shots, n_queries, seed)
    for q, supports in tqdm(jobs, desc=f"{shots}-shot{' + box' if box else ''}", disable=not progress):
        image, truth = qset.images[q], qset.masks[q]
        prob = delineator.fewshot.predict(image, supports, heatmaps=False).probability if supports else None
        b = target_box(truth) if box else None
        key = f"{q}:{shots}:{seed}"
        t = time.perf_counter()
        if b is None and prob is None:
            pred = np.zeros_like(truth)
        else:
            pred = delineator.delineate(image, prob, box=b, key=key).mask
        start_ms.append(1000 * (time.perf_counter() - t))
        curves.append(click_curve(
            lambda clicks, image=image, prob=prob, b=b, key=key: delineator.delineate(
                image, prob, box=b, clicks=clicks, key=key).mask,
            pred, truth, max_clicks, click_ms))
    arr = np.array(curves)
    out = {"shots": shots, "box": box, "n_queries": len(curves), "refine": "litemedsam",
           "dice_after_clicks": {str(n): float(arr[:, n].mean()) for n in (0, 1, 3, 5, max_clicks)},
           "click_ms_median": round(statistics.median(click_ms), 1) if click_ms else None,
           "start_ms_median": round(statistics.median(start_ms), 1),
           "curve": arr.mean(0).round(4).tolist()}
    for t in targets:
        out[f"noc{int(round(t * 100))}"] = float(np.mean([clicks_to_reach(c, t, max_clicks) for c in curves]))
    return out
