"""Episodic training of PANet++ with validation Dice, early stopping, resumption and atomic checkpoints."""
from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .. import checkpoint
from ..data.dataset import AugmentConfig, ImageSet, augment, mask_tensor, to_tensor
from ..data.episodes import Episode, EpisodeSampler
from ..losses import bce_dice_loss
from ..metrics import dice
from ..models.panet import PANetConfig, PANetPlusPlus
from .logs import CsvLog, plot_curves

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


def episode_tensors(data: ImageSet, support_data: ImageSet, ep: Episode, rng: np.random.Generator | None,
                    device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support images/masks and query image/mask tensors of an episode (augmented if rng is given)."""
    def get(ds, i):
        img, msk = ds.images[i], ds.masks[i]
        if rng is not None:
            img, msk = augment(img, msk, rng, AugmentConfig())
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


def pseudo_episode(data: ImageSet, rng: np.random.Generator, k: int, device):
    """Self-supervised episode (as in SSL-ALPNet): a random region of one training image is the
    'class'; supports and query are differently augmented views of that image with the region moved
    along. The target depends only on what the supports mark, so a model cannot solve these
    episodes while ignoring its supports."""
    i = int(rng.integers(len(data)))
    img = data.images[i]
    region = random_region(*img.shape[:2], rng)
    views = []
    for _ in range(k + 1):
        a_img, a_msk = augment(img, region, rng, AugmentConfig())
        if not a_msk.any():
            a_img, a_msk = img, region
        views.append((to_tensor(a_img), mask_tensor(a_msk)))
    sup, (q_img, q_msk) = views[:k], views[k]
    return (torch.stack([v[0] for v in sup]).to(device), torch.stack([v[1] for v in sup]).to(device),
            q_img[None].to(device), q_msk[None].to(device))


def _resume_path(save_path: str | Path) -> Path:
    return Path(str(save_path) + ".resume.pt")


def _atomic_torch_save(obj, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def train_fewshot(cfg: FewShotTrainConfig, train_set: ImageSet, val_set: ImageSet, data_info: dict,
                  resume: bool = True, should_stop: Callable[[], bool] = lambda: False,
                  on_progress: Callable[[dict], None] | None = None, progress: bool = True,
                  init_weights: dict | None = None) -> dict:
    """Train; returns a summary dict. The best checkpoint is written atomically to cfg.save_path.

    should_stop: polled after every episode (cancel button); on_progress: called with a dict per
    episode and per epoch (web app live view). A cancelled run leaves the last best checkpoint (if
    any) intact and never a partial file.
    """
    from ..device import pick_device

    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    save_path = Path(cfg.save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    model_cfg = PANetConfig(backbone=cfg.backbone, image_size=cfg.image_size, weights=cfg.weights)
    model = PANetPlusPlus(model_cfg).to(device)
    if init_weights is not None:
        model.load_state_dict(init_weights)
        model.config.weights_loaded = (f"{model.config.weights_loaded}, then fine-tuned from "
                                       f"{data_info.get('base', 'a given checkpoint')}")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)

    train_sampler = EpisodeSampler(train_set)
    # validation supports come from the validation pool itself (the clinician's situation) when it
    # has enough lesion images; a tiny validation set (web-app fine-tuning) borrows training supports
    n_val_lesion = sum(val_set.has_lesion(i) for i in range(len(val_set)))
    val_support_set = val_set if n_val_lesion >= 6 else train_set
    val_sampler = EpisodeSampler(val_set, None if val_support_set is val_set else train_set)
    max_k = min(5, len(val_sampler.support_candidates) - (1 if val_support_set is val_set else 0))
    half = max(1, cfg.val_episodes // 2)
    val_eps = (val_sampler.fixed_episodes(half, 1, cfg.seed + 1000)
               + val_sampler.fixed_episodes(half, max(1, max_k), cfg.seed + 2000))

    state = {"epoch": 0, "episode": 0, "best_dice": -1.0, "best_epoch": -1, "bad_epochs": 0, "seconds": 0.0}
    rp = _resume_path(save_path)
    if resume and rp.exists():
        saved = torch.load(rp, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state.update({k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in saved["state"].items()})
        rng = np.random.default_rng([cfg.seed, int(state["episode"])])
        log.info("resumed from %s at epoch %d, episode %d", rp, state["epoch"], state["episode"])
    step_log = CsvLog(str(save_path) + ".episodes.csv", ["epoch", "episode", "shots", "loss", "dice", "tau"],
                      resume=resume and rp.exists())
    epoch_log = CsvLog(str(save_path) + ".epochs.csv",
                       ["epoch", "last_episode", "train_loss", "train_dice", "val_dice", "seconds"],
                       resume=resume and rp.exists())
    cancelled = False
    model.train()
    t_start = time.time() - state["seconds"]
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        losses, dices = [], []
        bar = tqdm(range(cfg.episodes_per_epoch), desc=f"epoch {state['epoch'] + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        for _ in bar:
            k = cfg.shots if cfg.shots else int(rng.choice([1, 5]))
            if cfg.pseudo_prob and rng.random() < cfg.pseudo_prob:
                s_img, s_msk, q_img, q_msk = pseudo_episode(train_set, rng, k, device)
            else:
                ep = train_sampler.episode(rng, k, allow_fewer=True)
                k = len(ep.support)
                s_img, s_msk, q_img, q_msk = episode_tensors(train_set, train_set, ep, rng if cfg.augment else None, device)
            logits, _, _, q_feats = model(s_img, s_msk, q_img)
            loss = bce_dice_loss(logits[:, 0], q_msk)
            if cfg.par and model.decoder is not None:
                loss = loss + cfg.par_weight * model.alignment_loss(
                    q_feats, logits, s_img, s_msk, lambda lg, m: bce_dice_loss(lg, m))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["episode"] += 1
            d = dice(logits.detach()[0, 0] > 0, q_msk[0] > 0.5)
            losses.append(loss.item())
            dices.append(d)
            step_log.write(epoch=state["epoch"] + 1, episode=state["episode"], shots=k,
                           loss=f"{loss.item():.5f}", dice=f"{d:.4f}", tau=f"{model.tau.item():.3f}")
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", dice=f"{np.nanmean(dices[-50:]):.3f}")
            if on_progress:
                on_progress({"type": "episode", "epoch": state["epoch"] + 1, "episode": state["episode"],
                             "loss": loss.item(), "dice": d})
            if should_stop():
                cancelled = True
                break
        if cancelled:
            break
        state["epoch"] += 1
        val_dice = validate(model, val_set, val_support_set, val_eps, device)
        state["seconds"] = time.time() - t_start
        epoch_log.write(epoch=state["epoch"], last_episode=state["episode"], train_loss=f"{np.mean(losses):.5f}",
                        train_dice=f"{np.nanmean(dices):.4f}", val_dice=f"{val_dice:.4f}",
                        seconds=f"{state['seconds']:.1f}")
        msg = (f"epoch {state['epoch']}: train loss {np.mean(losses):.4f}, train Dice {np.nanmean(dices):.4f}, "
               f"val Dice {val_dice:.4f} ({state['seconds']:.0f} s)")
        log.info(msg)
        if progress:
            tqdm.write(msg)
        if on_progress:
            on_progress({"type": "epoch", "epoch": state["epoch"], "val_dice": val_dice})
        if val_dice > state["best_dice"]:
            state.update(best_dice=val_dice, best_epoch=state["epoch"], bad_epochs=0)
            meta = {"kind": "panet", "model": model.config_dict(), "train": asdict(cfg), "data": data_info,
                    "val_dice": val_dice, "epoch": state["epoch"], "episodes": state["episode"],
                    "train_seconds": state["seconds"], "tau": model.tau.item()}
            checkpoint.save(save_path, model.state_dict(), meta, half=False)
        else:
            state["bad_epochs"] += 1
        _atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state}, rp)
    step_log.close()
    epoch_log.close()
    finished = not cancelled
    if finished and rp.exists():
        rp.unlink()
    try:
        plot_curves(str(save_path) + ".episodes.csv", str(save_path) + ".epochs.csv",
                    str(save_path) + ".curves.png", f"PANet++ {cfg.backbone} training")
    except Exception as exc:  # a plot must never fail a training run
        log.warning("could not plot curves: %s", exc)
    return {"best_val_dice": state["best_dice"], "best_epoch": state["best_epoch"], "epochs": state["epoch"],
            "episodes": state["episode"], "seconds": time.time() - t_start, "cancelled": cancelled,
            "checkpoint": str(save_path) if state["best_dice"] >= 0 else None,
            "stopped_early": state["bad_epochs"] >= cfg.patience}
