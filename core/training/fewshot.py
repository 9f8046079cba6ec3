"""Episodic (meta-)training of PANet++ on one set or many, on the shared engine (core.training.engine).

With many sets (BUSI's training split plus the multidomain sets), an episode first draws a set, then
k supports and a query from different groups of that set; self-supervised region episodes (SSL-ALPNet
style) are drawn from the images of every set, so the model must segment what the supports mark.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import checkpoint
from ..data.dataset import STRONG_AUGMENT, AugmentConfig, ImageSet, augment, mask_tensor, to_tensor
from ..data.episodes import Episode, EpisodeSampler
from ..losses import bce_dice_loss
from ..metrics import dice
from ..models.panet import PANetConfig, PANetPlusPlus
from .engine import BestCheckpoint, CsvLogger, EarlyStopping, Engine, Job, Progress
from .logs import plot_curves

log = logging.getLogger(__name__)


@dataclass
class FewShotTrainConfig:
    backbone: str = "tf_efficientnet_lite0"
    image_size: int = 256
    shots: int = 0                  # 0: each episode draws k from {1, 5}
    episodes_per_epoch: int = 500
    epochs: int = 20
    lr: float = 1e-4
    patience: int = 4
    seed: int = 0
    val_episodes: int = 100         # half 1-shot, half 5-shot, fixed by the seed
    par: bool = False               # prototype alignment regularisation
    par_weight: float = 1.0
    pseudo_prob: float = 0.0        # share of self-supervised "match this region" episodes (see pseudo_episode)
    augment: bool = True
    device: str = "auto"
    save_path: str = "checkpoints/panet_lite0"
    weights: str = "imagenet"
    busi_share: float = 0.3         # with many sets: share of episodes drawn from BUSI (the rest: uniform over the others)
    strong_augment: bool = False    # wider geometry/intensity changes (meta-training on many devices)
    grad_clip: float = 5.0


def episode_tensors(data: ImageSet, support_data: ImageSet, ep: Episode, rng: np.random.Generator | None,
                    device, aug: AugmentConfig = AugmentConfig()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support images/masks and query image/mask tensors of an episode (augmented if rng is given)."""
    def get(ds, i):
        img, msk = ds.images[i], ds.masks[i]
        if rng is not None:
            img, msk = augment(img, msk, rng, aug)
            if not msk.any():  # the affine moved the whole lesion out: keep the original
                img, msk = ds.images[i], ds.masks[i]
        return to_tensor(img), mask_tensor(msk)

    sup = [get(support_data, i) for i in ep.support]
    q_img, q_msk = get(data, ep.query)
    return (torch.stack([s[0] for s in sup]).to(device), torch.stack([s[1] for s in sup]).to(device),
            q_img[None].to(device), q_msk[None].to(device))


@torch.no_grad()
def validate(model: PANetPlusPlus, data: ImageSet, support_data: ImageSet, episodes: list[Episode], device) -> float:
    """Mean per-query Dice over fixed episodes."""
    model.eval()
    scores = []
    for ep in episodes:
        s_img, s_msk, q_img, q_msk = episode_tensors(data, support_data, ep, None, device)
        logits, _, _, _ = model(s_img, s_msk, q_img)
        scores.append(dice(logits[0, 0] > 0, q_msk[0] > 0.5))
    model.train()
    return float(np.nanmean(scores))


def random_region(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random lobulated ellipse covering about 2-15% of an h x w image."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(0.08, 0.2) * h, rng.uniform(0.08, 0.2) * w
    theta = np.arctan2(yy - cy, xx - cx)
    lobes = 1 + sum(rng.uniform(0, 0.12) * np.sin(k * theta + rng.uniform(0, 6)) for k in (2, 3, 5))
    return np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < lobes


def pseudo_episode(data: ImageSet, rng: np.random.Generator, k: int, device, aug: AugmentConfig = AugmentConfig()):
    """Self-supervised episode (as in SSL-ALPNet): a random region of one training image is the
    'class'; supports and query are differently augmented views of that image with the region moved
    along. The target depends only on what the supports mark, so a model cannot solve these
    episodes while ignoring its supports."""
    i = int(rng.integers(len(data)))
    img = data.images[i]
    region = random_region(*img.shape[:2], rng)
    views = []
    for _ in range(k + 1):
        a_img, a_msk = augment(img, region, rng, aug)
        if not a_msk.any():
            a_img, a_msk = img, region
        views.append((to_tensor(a_img), mask_tensor(a_msk)))
    sup, (q_img, q_msk) = views[:k], views[k]
    return (torch.stack([v[0] for v in sup]).to(device), torch.stack([v[1] for v in sup]).to(device),
            q_img[None].to(device), q_msk[None].to(device))



Sets = "ImageSet | dict[str, ImageSet]"


def _as_dict(sets, name: str = "train") -> dict[str, ImageSet]:
    return dict(sets) if isinstance(sets, dict) else {name: sets}


class SetMixture:
    """Which set an episode comes from: BUSI (when present among several) with `busi_share`, the
    others uniformly (so a small set teaches as much as a big one)."""

    def __init__(self, names: list[str], busi_share: float, busi_name: str = "busi"):
        self.names = list(names)
        others = [n for n in self.names if n != busi_name]
        if busi_name in self.names and others:
            p = {busi_name: busi_share, **{n: (1 - busi_share) / len(others) for n in others}}
        else:
            p = {n: 1 / len(self.names) for n in self.names}
        self.p = np.array([p[n] for n in self.names])

    def pick(self, rng: np.random.Generator) -> str:
        return self.names[int(rng.choice(len(self.names), p=self.p))]


def _val_plan(val_sets: dict[str, ImageSet], train_sets: dict[str, ImageSet], n_per_set: int, seed: int):
    """Fixed validation episodes per set: half 1-shot, half with up to 5 shots."""
    plan = {}
    for j, (name, vs) in enumerate(sorted(val_sets.items())):
        n_lesion = sum(vs.has_lesion(i) for i in range(len(vs)))
        # supports from the validation pool itself (the user's situation) when it has enough lesion
        # images; a tiny validation set (web-app fine-tuning) borrows training supports
        fallback = train_sets.get(name) or next(iter(train_sets.values()))
        sup = vs if n_lesion >= 6 else fallback
        sampler = EpisodeSampler(vs, None if sup is vs else sup)
        max_k = min(5, len(sampler.support_candidates) - (1 if sup is vs else 0))
        half = max(1, n_per_set // 2)
        eps = (sampler.fixed_episodes(half, 1, seed + 1000 + 7 * j)
               + sampler.fixed_episodes(half, max(1, max_k), seed + 2000 + 7 * j))
        plan[name] = (vs, sup, eps)
    return plan


def train_fewshot(cfg: FewShotTrainConfig, train_set, val_set, data_info: dict,
                  resume: bool = True,
                  on_progress: Callable[[dict], None] | None = None, progress: bool = True,
                  init_weights: dict | None = None, job: Job | None = None,
                  time_budget_s: float = 0.0, validate_start: bool = False) -> dict:
    """Train; returns a summary dict. The best checkpoint is written atomically to cfg.save_path.

    train_set / val_set: one ImageSet, or {set name: ImageSet} for meta-training on many sets
    (validation Dice is then the mean over the sets). job.cancel(): stop after the
    current episode (resumable; the last best checkpoint stays intact, never a partial file).
    A diverged run (non-finite loss or weights) stops and saves nothing more. Under torchrun the run
    is data-parallel (DDP); only rank 0 writes files. validate_start: also score the starting
    weights on the validation episodes first (summary "start_val_dice"), so that a caller can keep a
    fine-tuned model only if it beats the model it started from.
    """
    from .engine import distributed_env

    rank, world = distributed_env()
    device = _device(cfg, world)
    torch.manual_seed(cfg.seed)
    rng = {"rng": np.random.default_rng([cfg.seed, rank])}   # replaced when a run resumes
    train_sets, val_sets = _as_dict(train_set), _as_dict(val_set)
    save_path = Path(cfg.save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    model = _model(cfg, init_weights, data_info, device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    n_val = cfg.val_episodes if len(val_sets) == 1 else max(2, cfg.val_episodes)
    plan = _val_plan(val_sets, train_sets, n_val, cfg.seed)

    def validate_all(engine: Engine) -> dict:
        per_set = {n: validate(model, vs, sup, eps, device) for n, (vs, sup, eps) in plan.items()}
        out = {"val_dice": float(np.mean(list(per_set.values())))}
        if len(per_set) > 1:
            out["val_per_set"] = " ".join(f"{n}={v:.3f}" for n, v in per_set.items())
        return out

    def save_best(engine: Engine, metrics: dict) -> None:
        meta = {"kind": "panet", "model": model.config_dict(), "train": asdict(cfg), "data": data_info,
                "val_dice": metrics["val_dice"], "epoch": engine.state.epoch, "episodes": engine.state.step,
                "train_seconds": engine.state.seconds, "tau": model.tau.item(), "world_size": engine.world}
        if "val_per_set" in metrics:
            meta["val_per_set"] = metrics["val_per_set"]
        checkpoint.save(save_path, model.state_dict(), meta, half=False)

    engine = Engine(model, opt, _episode_step(cfg, model, train_sets, rng, device), epochs=cfg.epochs,
                    steps_per_epoch=cfg.episodes_per_epoch, validate_fn=validate_all,
                    callbacks=_callbacks(save_path, progress, on_progress, save_best, cfg.patience, time_budget_s),
                    job=job, device=device, resume_path=_resume_path(save_path) if resume else None,
                    monitor="val_dice", grad_clip=cfg.grad_clip)
    if resume and engine.restore():
        # a resumed run continues with fresh random episodes, reproducibly
        rng["rng"] = np.random.default_rng([cfg.seed, rank, int(engine.state.step)])
    if not resume and _resume_path(save_path).exists() and rank == 0:
        _resume_path(save_path).unlink()
    start_val = validate_all(engine)["val_dice"] if validate_start else None
    summary = engine.run()
    summary["start_val_dice"] = start_val
    if world > 1:
        summary["ranks_in_sync"] = _ranks_in_sync(model)
    if rank == 0:
        _plot(save_path, cfg.backbone)
    best = engine.state.best
    return {**summary, "best_val_dice": best if best > -1 else -1.0, "best_epoch": engine.state.best_epoch,
            "episodes": engine.state.step, "checkpoint": str(save_path) if engine.state.best_epoch > 0 else None,
            "stopped_early": engine.state.stop_reason == "early stopping"}


def _device(cfg: FewShotTrainConfig, world: int) -> torch.device:
    from ..device import pick_device

    device = pick_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(__import__("os").environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def _model(cfg: FewShotTrainConfig, init_weights, data_info: dict, device) -> PANetPlusPlus:
    model = PANetPlusPlus(PANetConfig(backbone=cfg.backbone, image_size=cfg.image_size, weights=cfg.weights)).to(device)
    if init_weights is not None:
        model.load_state_dict(init_weights)
        model.config.weights_loaded = (f"{model.config.weights_loaded}, then fine-tuned from "
                                       f"{data_info.get('base', 'a given checkpoint')}")
    return model


def _episode_step(cfg: FewShotTrainConfig, model: PANetPlusPlus, train_sets: dict, rng: dict, device):
    """One training episode: a set (mixture), k shots, real or self-supervised pseudo episodes."""
    aug = STRONG_AUGMENT if cfg.strong_augment else AugmentConfig()
    samplers = {n: EpisodeSampler(s) for n, s in train_sets.items()}
    mixture = SetMixture(list(train_sets), cfg.busi_share)

    def step(engine: Engine) -> dict:
        r = rng["rng"]
        k = cfg.shots if cfg.shots else int(r.choice([1, 5]))
        name = mixture.pick(r)
        ds = train_sets[name]
        pseudo = bool(cfg.pseudo_prob and r.random() < cfg.pseudo_prob)
        if pseudo:
            s_img, s_msk, q_img, q_msk = pseudo_episode(ds, r, k, device, aug)
        else:
            ep = samplers[name].episode(r, k, allow_fewer=True)
            k = len(ep.support)
            s_img, s_msk, q_img, q_msk = episode_tensors(ds, ds, ep, r if cfg.augment else None, device, aug)
        logits, _, _, q_feats = engine.net(s_img, s_msk, q_img)
        loss = bce_dice_loss(logits[:, 0], q_msk)
        if cfg.par and model.decoder is not None:
            loss = loss + cfg.par_weight * model.alignment_loss(
                q_feats, logits, s_img, s_msk, lambda lg, m: bce_dice_loss(lg, m))
        d = dice(logits.detach()[0, 0] > 0, q_msk[0] > 0.5)
        return {"loss": loss, "dice": float(d), "shots": k, "set": name + (" (ssl)" if pseudo else ""),
                "tau": f"{model.tau.item():.3f}"}

    return step


def _callbacks(save_path: Path, progress: bool, on_progress, save_best, patience: int, time_budget_s: float) -> list:
    from .engine import TimeBudget

    callbacks = [
        CsvLogger(str(save_path) + ".episodes.csv", ["epoch", "episode", "shots", "loss", "dice", "tau", "set"],
                  str(save_path) + ".epochs.csv",
                  ["epoch", "last_episode", "val_dice", "val_per_set", "seconds"], step_key="episode"),
        Progress(bar=progress, on_progress=on_progress, desc="epoch"),
        BestCheckpoint(save_best), EarlyStopping(patience),
    ]
    if time_budget_s:
        callbacks.append(TimeBudget(time_budget_s))
    return callbacks


def _plot(save_path: Path, backbone: str) -> None:
    if not (save_path.parent / (save_path.name + ".episodes.csv")).exists():
        return
    try:
        plot_curves(str(save_path) + ".episodes.csv", str(save_path) + ".epochs.csv",
                    str(save_path) + ".curves.png", f"PANet++ {backbone} training")
    except Exception as exc:  # a plot must never fail a training run
        log.warning("could not plot curves: %s", exc)


def _ranks_in_sync(model: torch.nn.Module) -> bool:
    """Whether every DDP process ended with the same weights (they must: gradients are all-reduced)."""
    import torch.distributed as dist

    total = torch.stack([p.detach().double().sum().cpu() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, total)
    return bool(all(torch.allclose(g, gathered[0], rtol=1e-9, atol=1e-9) for g in gathered))


def _resume_path(save_path: str | Path) -> Path:
    return Path(str(save_path) + ".resume.pt")
