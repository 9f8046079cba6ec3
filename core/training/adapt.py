"""Test-time adaptation: fine-tune a copy of PANet++ on the current supports only, time-boxed.

Episodes come from the supports themselves: with k >= 2, leave-one-out (one support is the query,
the others are the supports); with k = 1 (and for a share of the steps otherwise), augmented
self-episodes (two differently augmented views of one support: one is the support, the other the
query). With k >= 2 and `guard=True` the last support is held out of training (`HeldOutGuard`): the
weights that segment it best from the others are kept, the unadapted model's included, so adapting never
ends worse than not adapting on that support. It is off by default: on the val parts of four unseen sets it
scored lower after 30 s than adapting on every support (docs/results.md). With `average` < 1 the weights used
are a running average (`WeightAverage`) that starts at the base model's and moves towards the trained copy by
`1 - average` per step, so one noisy step cannot swing the result. The copy is trained on the
shared engine, so a cancel, a time budget and a divergence behave as everywhere else; the base model is
never modified and nothing is written to disk.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.dataset import AugmentConfig, augment, mask_tensor, to_tensor
from ..losses import bce_dice_loss
from ..metrics import dice
from ..models.panet import PANetPlusPlus
from .engine import Callback, Engine, Job, Progress, TimeBudget

log = logging.getLogger(__name__)

ADAPT_AUGMENT = AugmentConfig(hflip=0.5, rotate_deg=15.0, scale=(0.85, 1.15), translate=0.08,
                              brightness=0.15, contrast=0.2, gamma=(0.8, 1.25), speckle=0.1)


@dataclass
class AdaptConfig:
    seconds: float = 30.0        # wall-time budget (0: no budget, then `steps` must be set)
    steps: int = 0               # step budget (0: until the time runs out)
    lr_encoder: float = 5e-5
    lr_decoder: float = 5e-4
    self_episode_share: float = 0.3
    seed: int = 0
    guard: bool = False          # k >= 2: hold one support out, keep the weights that segment it best (or none);
                                 # off: on the val parts it scored lower than adapting on every support
    check_every: int = 5         # steps between two looks at the held-out support
    average: float = 0.95        # < 1: use a running average of the weights from the base model's (its decay);
                                 # 1: the trained copy's weights as they are. 0.95: chosen on the val parts
                                 # (the only setting tried that lost on no val set after 30 s, docs/results.md)


class WeightAverage(Callback):
    """The weights used are a running (exponential) average of the trained copy's, started at the base model's:
    after n steps the base keeps a share `decay ** n`. It smooths the step-to-step swings of training on 4-5
    images and shrinks early steps towards the model that was already good (issue 29)."""

    def __init__(self, base: PANetPlusPlus, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the average's decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in base.state_dict().items()}

    @torch.no_grad()
    def on_step(self, engine, metrics) -> None:
        for k, v in engine.model.state_dict().items():
            if v.is_floating_point():
                self.state[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                self.state[k].copy_(v)

    def chosen_state(self, base: PANetPlusPlus) -> dict:
        return self.state


class HeldOutGuard(Callback):
    """Adaptation that never does worse than not adapting on what it can check (issue 29): the last support is
    held out of training; every `every` steps the copy segments it from the other supports, and the weights
    with the best Dice are kept. The unadapted model's Dice is the bar, so if no step beats it the base weights
    come back. The looks run inside the time budget (the user waits for them)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, base_dice: float, every: int = 5):
        self.images, self.masks, self.every = images, masks, max(1, every)
        self.best_dice, self.best_state, self.best_step, self.looks = base_dice, None, 0, 0

    def score(self, net) -> float:
        was_training = net.training
        d = support_dice(net, self.images, self.masks, len(self.images) - 1)
        net.train(was_training)
        return d

    def on_step(self, engine, metrics) -> None:
        if engine.state.step % self.every:
            return
        self.looks += 1
        d = self.score(engine.model)
        if d > self.best_dice:
            self.best_dice, self.best_step = d, engine.state.step
            self.best_state = {k: v.detach().clone() for k, v in engine.model.state_dict().items()}

    def chosen_state(self, base: PANetPlusPlus) -> dict:
        """The weights to use now: the best look's, or the base model's when no look beat it."""
        return self.best_state if self.best_state is not None else base.state_dict()


def leave_one_out_dice(model: PANetPlusPlus, images: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """Dice of each support segmented from the others: how well the supports agree (k >= 2)."""
    k = images.shape[0]
    if k < 2:
        return []
    return [support_dice(model, images, masks, q) for q in range(k)]


def support_dice(model: PANetPlusPlus, images: torch.Tensor, masks: torch.Tensor, q: int) -> float:
    """Dice of support `q` segmented from the other supports (eval mode, no gradients)."""
    model.eval()
    rest = [i for i in range(images.shape[0]) if i != q]
    with torch.no_grad():
        logits, _, _, _ = model(images[rest], masks[rest], images[q:q + 1])
    return float(dice(logits[0, 0] > 0, masks[q] > 0.5))


def adapt_model(model: PANetPlusPlus, images: torch.Tensor, masks: torch.Tensor, cfg: AdaptConfig,
                job: Job | None = None, on_progress: Callable[[dict], None] | None = None,
                callbacks: list[Callback] = (),
                clock: Callable[[], float] | None = None) -> tuple[PANetPlusPlus | None, dict]:
    """A fine-tuned copy of `model` (None if the run diverged or was cancelled) and a summary.

    callbacks: extra engine callbacks (engine.model is the copy being trained); clock: the time
    source of the budget (an evaluation may pause it while it scores the copy).

    images (K, 3, S, S) in [0, 1] and masks (K, S, S) at the model's working size, on its device.
    """
    if not cfg.seconds and not cfg.steps:
        raise ValueError("adaptation needs a time budget (seconds) or a number of steps")
    if cfg.guard and images.shape[0] >= 2 and cfg.average < 1:       # before any model pass
        raise ValueError("the held-out guard and the weight average are alternatives: choose one")
    device = images.device
    k = images.shape[0]
    before = leave_one_out_dice(model, images, masks)
    guard = HeldOutGuard(images, masks, before[-1], cfg.check_every) if cfg.guard and k >= 2 else None
    k_train = k - 1 if guard else k          # the held-out support is the last one: never trained on
    net = copy.deepcopy(model).to(device)
    average = WeightAverage(net, cfg.average) if cfg.average < 1 else None
    in_use = guard or average                # what the weights used come from (None: the copy as trained)
    enc = [p for p in net.encoder.parameters() if p.requires_grad]
    rest = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    opt = torch.optim.Adam([{"params": enc, "lr": cfg.lr_encoder}, {"params": rest, "lr": cfg.lr_decoder}])
    rng = np.random.default_rng(cfg.seed)
    imgs_np = [(images[i].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8) for i in range(k)]
    msks_np = [masks[i].cpu().numpy() > 0.5 for i in range(k)]

    def view(i):
        img, m = augment(imgs_np[i], msks_np[i], rng, ADAPT_AUGMENT)
        if not m.any():
            img, m = imgs_np[i], msks_np[i]
        return to_tensor(img).to(device), mask_tensor(m).to(device)

    def step(engine: Engine) -> dict:
        q = int(rng.integers(k_train))
        if k_train == 1 or rng.random() < cfg.self_episode_share:
            sup_idx = [q]
        else:
            sup_idx = [i for i in range(k_train) if i != q]
        sup = [view(i) for i in sup_idx]
        q_img, q_msk = view(q)
        logits, _, _, _ = engine.net(torch.stack([s[0] for s in sup]), torch.stack([s[1] for s in sup]), q_img[None])
        loss = bce_dice_loss(logits[:, 0], q_msk[None])
        return {"loss": loss, "dice": float(dice(logits.detach()[0, 0] > 0, q_msk > 0.5))}

    callbacks = [Progress(bar=False, on_progress=on_progress), *([in_use] if in_use else []), *callbacks]
    if cfg.seconds:
        callbacks.append(TimeBudget(cfg.seconds, clock) if clock else TimeBudget(cfg.seconds))
    engine = Engine(net, opt, step, epochs=1, steps_per_epoch=cfg.steps or 10 ** 9, callbacks=callbacks,
                    job=job, device=device, grad_clip=5.0)
    engine.weights_in_use = in_use           # an evaluation scores what a user would get mid-run
    summary = engine.run()
    net.eval()
    summary.update(shots=k, loo_dice_before=before)
    if summary["status"] in ("diverged", "cancelled", "failed"):
        return None, summary
    if in_use:
        net.load_state_dict(in_use.chosen_state(model))
    if average:
        summary["average"] = {"decay": cfg.average}
    if guard:
        summary["guard"] = {"held_out_dice_before": before[-1], "held_out_dice_kept": guard.best_dice,
                            "kept_step": guard.best_step, "looks": guard.looks,
                            "kept": "adapted" if guard.best_state is not None else "base"}
    summary["loo_dice_after"] = leave_one_out_dice(net, images, masks)  # optimistic: trained on these
    return net, summary
