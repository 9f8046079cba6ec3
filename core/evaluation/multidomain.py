"""Leave-set-out evaluation on the multidomain sets, and Dice against adaptation time.

Every score uses a set's test part only (committed split), with supports and queries from different
groups (patients or near-duplicate groups). A checkpoint's training sets are read from its config,
so each row says whether the set was held out of that checkpoint's training or seen in it.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import ImageSet, mask_tensor, to_tensor
from ..data.episodes import EpisodeSampler
from ..metrics import dice, mean_ci95
from .fewshot import make_episodes, panet_predictor, run_episodes, summarize
from ..io import atomic_write_json


def trained_sets(meta: dict) -> list[str]:
    """Sets a checkpoint's training saw (BUSI only for checkpoints trained before meta-training)."""
    return list(meta.get("data", {}).get("train_sets") or ["busi"])


def score_checkpoint(model, qset: ImageSet, shots: int, episodes: int, seed: int, mismatched: bool = False) -> dict:
    eps = make_episodes(qset, None, shots, episodes, seed)
    res = run_episodes(panet_predictor(model), qset, qset, eps, mismatched=mismatched, seed=seed)
    s = summarize(res)
    return {"dice": s["dice"], "dice_ci95": s["dice_ci95"], "n": s["n_lesion_queries"]}


def leave_set_out_table(checkpoints: dict[str, str], sets: dict[str, ImageSet], shots=(1, 5), episodes: int = 100,
                        seed: int = 1234, mismatched_shots: int = 5, progress: bool = True) -> dict:
    """{set: {checkpoint label: {"seen": bool, "k1": {...}, "k5": {...}, "mismatched_k5": {...}}}}."""
    from ..inference import load_panet

    out: dict = {}
    for label, path in checkpoints.items():
        model, meta = load_panet(path)
        seen = set(trained_sets(meta))
        for name, qset in tqdm(sets.items(), desc=label, disable=not progress):
            row = {"seen_in_training": name in seen, "checkpoint": str(path)}
            for k in shots:
                row[f"k{k}"] = score_checkpoint(model, qset, k, episodes, seed)
            if mismatched_shots:
                row[f"mismatched_k{mismatched_shots}"] = score_checkpoint(model, qset, mismatched_shots, episodes,
                                                                          seed, mismatched=True)
            out.setdefault(name, {})[label] = row
    return out


# --- Dice against adaptation time ----------------------------------------------------------------

class _PausableClock:
    """Wall time that stops while the evaluation scores the model (so a budget counts training only)."""

    def __init__(self):
        self.paused = 0.0

    def __call__(self) -> float:
        return time.time() - self.paused

    def pause(self, fn):
        t = time.time()
        try:
            return fn()
        finally:
            self.paused += time.time() - t


def _query_dice(predict, s_img, s_msk, qset: ImageSet, queries: list[int]) -> float:
    scores = [dice(predict(s_img, s_msk, to_tensor(qset.images[q])[None]), qset.masks[q]) for q in queries]
    return float(np.mean(scores))


def adaptation_curve_episode(model, unet_factory, qset: ImageSet, support: tuple[int, ...], queries: list[int],
                             marks=(0, 10, 30, 60, 150), adapt_cfg=None) -> dict:
    """PANet++ adapted for each time mark, and a U-Net fine-tuned for the same time, on one support set."""
    import copy

    from ..training.adapt import AdaptConfig, adapt_model
    from ..training.engine import Callback

    s_img = torch.stack([to_tensor(qset.images[i]) for i in support])
    s_msk = torch.stack([mask_tensor(qset.masks[i]) for i in support])
    result = {"support": [qset.samples[i].rel_path for i in support], "panet": {}, "unet": {}}
    clock = _PausableClock()
    todo = [m for m in marks if m > 0]
    result["panet"][0] = _query_dice(panet_predictor(model), s_img, s_msk, qset, queries)

    scratch = []

    def in_use(engine):
        """What the user would get at this moment: with the held-out guard, the weights it keeps (the best look so
        far, or the base model's); with the weight average, the average; otherwise the copy as it is."""
        source = getattr(engine, "weights_in_use", None)
        if source is None:
            return engine.model
        if not scratch:
            scratch.append(copy.deepcopy(model))
        scratch[0].load_state_dict(source.chosen_state(model))
        return scratch[0]

    class ScoreAtMarks(Callback):
        def on_start(self, engine):
            self.t0 = clock()

        def on_step(self, engine, metrics):
            t = clock() - self.t0
            while todo and t >= todo[0]:
                m = todo.pop(0)
                result["panet"][m] = clock.pause(lambda: _query_dice(panet_predictor(in_use(engine)), s_img, s_msk,
                                                                     qset, queries))
                engine.model.train()
            if not todo:
                engine.stop_reason = "all marks scored"

    cfg = AdaptConfig(**{**(adapt_cfg or {}), "seconds": max(marks) + 5})
    adapt_model(model, s_img, s_msk, cfg, callbacks=[ScoreAtMarks()], clock=clock)
    result["unet"] = unet_factory(s_img, s_msk, qset, queries, marks) if unet_factory else {}
    return result


def unet_time_curve(backbone: str = "tf_efficientnet_lite0", size: int = 128, lr: float = 1e-3, seed: int = 0):
    """U-Net (ImageNet encoder) fine-tuned on the supports, scored at wall-time marks (clock paused
    while scoring): what a user would otherwise do with k annotated images."""
    import copy

    import torch.nn.functional as F

    from .baselines import imagenet_unet, unet_support_step

    base, mean, std = imagenet_unet(backbone)
    init = copy.deepcopy(base.state_dict())

    def run(s_img, s_msk, qset, queries, marks):
        rng = np.random.default_rng(seed)
        base.load_state_dict(init)
        opt = torch.optim.Adam(base.parameters(), lr=lr)
        small = lambda x: F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        imgs = (small(s_img).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        msks = F.interpolate(s_msk[:, None], size=(size, size), mode="nearest")[:, 0].numpy() > 0.5
        clock = _PausableClock()

        @torch.no_grad()
        def score():
            base.eval()
            out = []
            for q in queries:
                x = to_tensor(qset.images[q])[None]
                logits = F.interpolate(base((small(x) - mean) / std), size=x.shape[-2:], mode="bilinear",
                                       align_corners=False)
                out.append(dice((logits[0, 0] > 0).numpy(), qset.masks[q]))
            base.train()
            return float(np.mean(out))

        curve = {0: clock.pause(score)}
        todo = [m for m in marks if m > 0]
        t0 = clock()
        base.train()
        while todo:
            unet_support_step(base, opt, imgs, msks, rng, mean, std)
            t = clock() - t0
            while todo and t >= todo[0]:
                curve[todo.pop(0)] = clock.pause(score)
        return curve

    return run


def adaptation_curve(checkpoint: str, sets: dict[str, ImageSet], shots: int = 5, episodes: int = 2,
                     queries: int = 20, marks=(0, 10, 30, 60, 150), seed: int = 1234, adapt_cfg: dict | None = None,
                     with_unet: bool = True) -> dict:
    from ..inference import load_panet

    model, _ = load_panet(checkpoint)
    unet = unet_time_curve() if with_unet else None
    out = {"shots": shots, "marks": list(marks), "queries_per_episode": queries, "sets": {}}
    for name, qset in sets.items():
        rng = np.random.default_rng(seed)
        sampler = EpisodeSampler(qset)
        eps = []
        for _ in range(episodes):
            ep = sampler.episode(rng, shots)
            groups = {qset.groups[i] for i in ep.support}
            pool = [i for i in sampler.query_candidates if qset.groups[i] not in groups]
            qs = [int(q) for q in rng.choice(pool, size=min(queries, len(pool)), replace=False)]
            eps.append(adaptation_curve_episode(model, unet, qset, ep.support, qs, marks, adapt_cfg))
        out["sets"][name] = {
            "episodes": eps,
            "panet": {m: float(np.mean([e["panet"][m] for e in eps])) for m in marks},
            "unet": {m: float(np.mean([e["unet"][m] for e in eps])) for m in marks} if with_unet else {}}
    return out


def save_json(obj, path) -> Path:
    return atomic_write_json(path, obj)


__all__ = ["leave_set_out_table", "adaptation_curve", "trained_sets", "mean_ci95"]
