"""Fine-tuning from the page: one job at a time, live progress, Cancel, atomic result.

The run writes into a private temporary folder under outputs/; only a finished run is moved into
outputs/checkpoints/ (weights first, JSON last: a checkpoint counts only once its JSON exists).
A cancelled or failed run deletes its folder, so nothing half-written is ever listed.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from core.data.dataset import ImageSet, resize_image, resize_mask
from core.data.discover import Sample

from .context import AppContext
from .handlers import UserError

_JOB_LOCK = threading.Lock()
_CANCEL = threading.Event()


def cancel() -> str:
    if not _JOB_LOCK.locked():
        return "No fine-tuning job is running."
    _CANCEL.set()
    return "Cancelling: the job stops after the current episode; nothing will be saved."


def safe_name(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", (name or "").strip())[:48].strip("_")
    return slug or time.strftime("finetuned_%Y%m%d_%H%M%S")


def pairs_to_set(pairs: list[tuple[np.ndarray, np.ndarray]], size: int, prefix: str) -> ImageSet:
    samples = [Sample(Path(f"{prefix}{i}.png"), (), f"{prefix}{i}.png", None) for i in range(len(pairs))]
    return ImageSet(samples, np.stack([resize_image(p[0], size) for p in pairs]),
                    np.stack([resize_mask(p[1], size) for p in pairs]), list(range(len(pairs))))


def session_sets(pairs, size: int) -> tuple[ImageSet, ImageSet, str]:
    pairs = [p for p in pairs if p[1].any()]
    if len(pairs) < 3:
        raise UserError(f"fine-tuning needs at least 3 annotated images (supports or corrected queries); "
                        f"this session has {len(pairs)}")
    if len(pairs) >= 4:
        n_val = max(1, len(pairs) // 4)
        return (pairs_to_set(pairs[:-n_val], size, "train_"), pairs_to_set(pairs[-n_val:], size, "val_"),
                f"{len(pairs) - n_val} training and {n_val} held-out validation images")
    s = pairs_to_set(pairs, size, "img_")
    return s, s, f"{len(pairs)} images; too few to hold any out, so validation Dice is measured on them (optimistic)"


def folder_sets(ctx: AppContext, size: int) -> tuple[ImageSet, ImageSet, str]:
    from core.data.sets import folder_set, split_sets
    from core.data.split import DEFAULT_SPLIT_FILE

    if ctx.config.data_dir is None:
        raise UserError("no data folder configured (start the app with --data DIR)")
    try:
        sets = split_sets(ctx.config.data_dir, ("train", "val"), size, DEFAULT_SPLIT_FILE, progress=False)
        return sets["train"], sets["val"], "the data folder's training split (validation: its val split)"
    except Exception:
        whole = folder_set(ctx.config.data_dir, size, progress=False)
        n_val = max(1, len(whole) // 5)
        cut = lambda a, b: ImageSet(whole.samples[a:b], whole.images[a:b], whole.masks[a:b], whole.groups[a:b])
        return cut(0, len(whole) - n_val), cut(len(whole) - n_val, len(whole)), \
            f"{len(whole) - n_val} training and {n_val} validation images of the data folder"


def run(ctx: AppContext, checkpoint_name, source: str, pairs, epochs: int, episodes: int, lr: float, name: str):
    """Generator of (status markdown, curve figure or None, finished checkpoint name or None)."""
    import torch

    from core.training.fewshot import FewShotTrainConfig, train_fewshot

    if not _JOB_LOCK.acquire(blocking=False):
        raise UserError("another fine-tuning job is running: wait for it to finish (one job at a time)")
    workdir = None
    try:
        _CANCEL.clear()
        base = ctx.fewshot(checkpoint_name)
        size = base.model.config.image_size
        if source == "data folder":
            train, val, desc = folder_sets(ctx, size)
        else:
            train, val, desc = session_sets(pairs, size)
        device = ctx.device()
        final_name = safe_name(name)
        target = ctx.config.output_dir / "checkpoints" / final_name
        if target.with_suffix(".json").exists():
            final_name = f"{final_name}_{time.strftime('%H%M%S')}"
            target = ctx.config.output_dir / "checkpoints" / final_name
        workdir = ctx.new_output_dir("finetune_")
        cfg = FewShotTrainConfig(backbone=base.model.config.backbone, image_size=size, epochs=int(epochs),
                                 episodes_per_epoch=int(episodes), lr=float(lr), patience=max(2, int(epochs)),
                                 val_episodes=20, device=device, save_path=str(workdir / "model"))
        events: queue.Queue = queue.Queue()
        result: dict = {}

        def work():
            try:
                result["summary"] = train_fewshot(
                    cfg, train, val, {"source": source, "description": desc, "base": str(checkpoint_name)},
                    resume=False, should_stop=_CANCEL.is_set, on_progress=events.put, progress=False,
                    init_weights={k: v.clone() for k, v in base.model.state_dict().items()})
            except Exception as exc:  # reported in the page
                result["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        losses, dices, vals = [], [], []
        header = f"Fine-tuning on {desc}, on the {device.upper()}: {epochs} epoch(s) x {episodes} episodes."
        last = 0.0
        while thread.is_alive() or not events.empty():
            try:
                ev = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if ev["type"] == "episode":
                losses.append(ev["loss"])
                dices.append(ev["dice"])
            else:
                vals.append((len(losses), ev["val_dice"]))
            if time.time() - last > 1.0 or ev["type"] == "epoch":
                last = time.time()
                status = (f"{header}\n\nEpoch {ev['epoch']}, episode {len(losses)}/{int(epochs) * int(episodes)}: "
                          f"loss {np.mean(losses[-20:]):.3f}, training Dice {np.nanmean(dices[-20:]):.3f}"
                          + (f", validation Dice {vals[-1][1]:.3f}" if vals else ""))
                yield status, curve_figure(losses, dices, vals), None
        thread.join()
        if "error" in result:
            raise UserError(f"fine-tuning failed: {result['error']}; nothing was saved")
        summary = result["summary"]
        if summary["cancelled"]:
            yield f"{header}\n\nCancelled after {summary['episodes']} episodes: nothing was saved.", \
                curve_figure(losses, dices, vals), None
            return
        src = workdir / "model"
        if not src.with_suffix(".json").exists():
            raise UserError("fine-tuning produced no checkpoint; nothing was saved")
        os.replace(src.with_suffix(".safetensors"), target.with_suffix(".safetensors"))
        os.replace(src.with_suffix(".json"), target.with_suffix(".json"))
        yield (f"{header}\n\nDone in {summary['seconds']:.0f} s: best validation Dice "
               f"{summary['best_val_dice']:.3f} (epoch {summary['best_epoch']}). Saved as **{final_name} (yours)**; "
               "select it in the checkpoint list.", curve_figure(losses, dices, vals), f"{final_name} (yours)")
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        _CANCEL.clear()
        _JOB_LOCK.release()


def curve_figure(losses, dices, vals):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(1, len(losses) + 1)
    if len(losses):
        ax.plot(x, losses, color="0.6", lw=0.8, label="loss per episode")
        ax.plot(x, dices, color="C0", lw=0.8, alpha=0.6, label="training Dice per episode")
    if vals:
        ax.plot([v[0] for v in vals], [v[1] for v in vals], "o-", color="C3", label="validation Dice")
    ax.set(xlabel="episode", ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    plt.close(fig)
    return fig
