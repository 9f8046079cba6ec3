"""Fine-tuning and adaptation from the page: one job at a time, live progress, Cancel, atomic result.

Each run is a `core.training.engine.Job` owned by the browser session that started it: only that
session can cancel it (a module-level registry maps owners to their jobs; nothing else is shared).

The run writes into a private work folder under outputs/; only a finished run that beats the
checkpoint it started from (validation Dice) is published into outputs/checkpoints/ under a name
claimed atomically (`core.checkpoint.publish`: never over another checkpoint). A cancelled, failed,
diverged or useless run deletes its folder, so nothing half-written is ever listed; the folder of a
run whose process crashed is removed by the next start (`AppContext.sweep`). A saved checkpoint
records the (hashed) session that made it, and no server path.

Jobs are registered, queued and streamed by `webapp.jobs` (one training job at a time, first come
first served: a waiting caller sees its position and can cancel the job before it starts).
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np

from core.data.dataset import ImageSet, resize_image, resize_mask
from core.data.discover import Sample

from . import jobs
from .context import AppContext, owner_tag
from .session import UserError

cancel = jobs.cancel     # the page's Cancel buttons

MAX_LR = 1e-2
MAX_EPOCHS = 50       # the page's sliders stop at 20 and 500; an API call may ask for more, within these
MAX_EPISODES = 1000


def check_lr(lr) -> float:
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise UserError("the learning rate must be a number") from None
    if not (0 < lr <= MAX_LR):  # also refuses NaN and infinity
        raise UserError(f"the learning rate must be above 0 and at most {MAX_LR:g} (got {lr:g})")
    return lr


def _publish(ctx: AppContext, src: Path, name: str, owner: str) -> str:
    """Stamp the finished checkpoint at `src` with its owner (no server paths), then publish it under
    `name` or the first free `name_N`; returns the final name."""
    from core import checkpoint

    json_path = checkpoint.paths(src)[1]
    meta = json.loads(json_path.read_text())
    meta["owner"] = owner_tag(owner)
    if isinstance(meta.get("train"), dict):
        meta["train"].pop("save_path", None)
    meta.pop("save_path", None)
    json_path.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return checkpoint.publish(src, ctx.saved_dir, name).name


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
        cut = lambda a, b: whole.subset(slice(a, b))
        return cut(0, len(whole) - n_val), cut(len(whole) - n_val, len(whole)), \
            f"{len(whole) - n_val} training and {n_val} validation images of the data folder"


def run(ctx: AppContext, checkpoint_name, source: str, pairs, epochs: int, episodes: int, lr: float, name: str,
        owner: str = ""):
    """Generator of (status markdown, curve figure or None, finished checkpoint name or None)."""
    from .inputs import bounded

    lr = check_lr(lr)
    epochs = bounded(epochs, 1, MAX_EPOCHS, "epochs", integer=True)
    episodes = bounded(episodes, 1, MAX_EPISODES, "episodes per epoch", integer=True)
    workdir = None
    with jobs.REGISTRY.job(owner, "fine-tuning", training=True) as job:
        try:
            started = yield from jobs.wait_turn(job, lambda msg: (msg, None, None))
            if not started:
                yield "Cancelled while waiting in the queue: nothing ran and nothing was saved.", None, None
                return
            workdir = ctx.new_work_dir()
            yield from _train(ctx, job, workdir, checkpoint_name, source, pairs, int(epochs), int(episodes), lr,
                              name, owner)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)


def _train(ctx, job, workdir, checkpoint_name, source, pairs, epochs, episodes, lr, name, owner):
    from core.training.fewshot import FewShotTrainConfig, train_fewshot

    base = ctx.fewshot(checkpoint_name, owner)
    size = base.model.config.image_size
    train, val, desc = folder_sets(ctx, size) if source == "data folder" else session_sets(pairs, size)
    device = ctx.device()
    cfg = FewShotTrainConfig(backbone=base.model.config.backbone, image_size=size, epochs=epochs,
                             episodes_per_epoch=episodes, lr=float(lr), patience=max(2, epochs),
                             val_episodes=20, device=device, save_path=str(workdir / "model"))
    header = f"Fine-tuning on {desc}, on the {device.upper()}: {epochs} epoch(s) x {episodes} episodes."
    curves = {"losses": [], "dices": [], "vals": []}

    def work(emit):
        return train_fewshot(cfg, train, val, {"source": source, "description": desc, "base": str(checkpoint_name)},
                             resume=False, job=job, on_progress=emit, progress=False, validate_start=True,
                             init_weights={k: v.clone() for k, v in base.model.state_dict().items()})

    def render(events):
        losses = [e["loss"] for e in events if e["type"] == "step"]
        dices = [e["dice"] for e in events if e["type"] == "step"]
        vals = [(sum(1 for x in events[:i] if x["type"] == "step"), e["val_dice"])
                for i, e in enumerate(events) if e["type"] != "step"]
        curves.update(losses=losses, dices=dices, vals=vals)
        status = (f"{header}\n\nEpoch {events[-1]['epoch']}, episode {len(losses)}/{epochs * episodes}: "
                  f"loss {np.mean(losses[-20:]) if losses else float('nan'):.3f}, training Dice "
                  f"{np.nanmean(dices[-20:]) if dices else float('nan'):.3f}"
                  + (f", validation Dice {vals[-1][1]:.3f}" if vals else ""))
        return status, curve_figure(losses, dices, vals), None

    try:
        summary = yield from jobs.stream(work, render)
    except Exception as exc:
        raise UserError(f"fine-tuning failed: {exc}; nothing was saved") from exc
    fig = curve_figure(curves["losses"], curves["dices"], curves["vals"])
    status, new_name = _finish(ctx, workdir, summary, header, name, owner)
    yield status, fig, new_name


def _finish(ctx, workdir, summary, header, name, owner) -> tuple:
    """(status, new checkpoint name or None): what the run left, published only when it beat its start."""
    if summary["diverged"]:
        return (f"{header}\n\nThe run diverged ({summary['message']}): nothing was saved. Try a smaller "
                "learning rate."), None
    if summary["cancelled"]:
        return f"{header}\n\nCancelled after {summary['episodes']} episodes: nothing was saved.", None
    src = workdir / "model"
    if not src.with_suffix(".json").exists():
        raise UserError("fine-tuning produced no checkpoint; nothing was saved")
    start = summary.get("start_val_dice")
    if start is not None and not summary["best_val_dice"] > start:
        return (f"{header}\n\nNo improvement: best validation Dice {summary['best_val_dice']:.3f}, the starting "
                f"checkpoint scores {start:.3f} on the same episodes. Nothing was saved; try more images, more "
                "epochs or another learning rate."), None
    final_name = _publish(ctx, src, safe_name(name), owner)
    return (f"{header}\n\nDone in {summary['seconds']:.0f} s: best validation Dice {summary['best_val_dice']:.3f} "
            f"(epoch {summary['best_epoch']}; the starting checkpoint: {start:.3f}). Saved as **{final_name} "
            "(yours)**; select it in the checkpoint list."), f"{final_name} (yours)"


def adapt(ctx: AppContext, checkpoint_name, supports, seconds: float, owner: str):
    """Generator of status markdown while the few-shot model adapts to `supports` (this owner only)."""
    seconds = float(seconds)
    if not (1 <= seconds <= 600):
        raise UserError("adaptation time must be between 1 and 600 seconds")
    if not supports:
        raise UserError("no supports: add at least one support image with its mask first")
    with jobs.REGISTRY.job(owner, "adaptation", training=True) as job:
        started = yield from jobs.wait_turn(job, lambda msg: msg)
        if not started:
            yield "Adaptation cancelled while waiting in the queue: the model is unchanged."
            return
        seg = ctx.fewshot(checkpoint_name, owner)
        t0 = time.time()

        def render(events):
            losses = [e.get("loss", float("nan")) for e in events]
            done = min(1.0, (time.time() - t0) / seconds)
            return (f"Adapting to {len(supports)} support(s) on the {str(seg.device).upper()}: "
                    f"{'#' * int(20 * done)}{'.' * (20 - int(20 * done))} {done:.0%}, {len(losses)} steps, "
                    f"loss {np.mean(losses[-20:]) if losses else float('nan'):.3f}")

        try:
            summary = yield from jobs.stream(
                lambda emit: seg.adapt(supports, seconds=seconds, owner=owner, job=job, on_progress=emit), render)
        except Exception as exc:
            raise UserError(f"adaptation failed: {exc}") from exc
        yield adapt_report(summary)


def adapt_report(summary: dict) -> str:
    if summary["status"] == "cancelled":
        return "Adaptation cancelled: the model is unchanged."
    if summary["status"] == "diverged":
        return f"Adaptation diverged ({summary['message']}): the model is unchanged."
    before, after = summary.get("loo_dice_before") or [], summary.get("loo_dice_after") or []
    lines = [f"**Adapted** to these supports: {summary['steps']} steps in {summary['seconds']:.0f} s. "
             "Segment now uses the adapted model for exactly these supports (this session only); "
             "changing a support goes back to the checkpoint."]
    if summary.get("average"):
        lines.append(f"The weights used are a running average of the adapted ones, started at the model's own "
                     f"(decay {summary['average']['decay']:g}): one noisy step moves the model a little only.")
    if before:
        lines.append(f"Each support segmented from the others (leave-one-out Dice): before {np.mean(before):.2f}, "
                     f"after {np.mean(after):.2f} (after is optimistic: it trained on them).")
        g = summary.get("guard")
        if g:
            lines.append(f"The last support was held out of training as a check: segmented from the others, Dice "
                         f"{g['held_out_dice_before']:.2f} before; " + (
                             f"the adapted weights that scored best on it ({g['held_out_dice_kept']:.2f}, step "
                             f"{g['kept_step']}) are kept." if g["kept"] == "adapted" else
                             "no adapted step beat the model as it was, so its weights are kept (adapting did not "
                             "help here)."))
        if np.mean(before) < 0.5:
            lines.append("The supports agree poorly before adaptation: the target may look unlike anything the "
                         "model was trained on, or the supports mark different structures.")
    return "\n\n".join(lines)


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


def save_adapted(ctx: AppContext, checkpoint_name, supports, name: str, owner: str) -> tuple[str, str]:
    """Save this session's adapted copy (for exactly these supports) as a new checkpoint of its own."""
    from core.data.io import DataError

    seg = ctx.fewshot(checkpoint_name, owner)
    if not supports or not seg.is_adapted(supports, owner):
        raise UserError("nothing to save: press Adapt to these supports first (with the same supports)")
    workdir = ctx.new_work_dir()
    try:
        seg.save_adapted(supports, workdir / "model", owner,
                         note=f"adapted from {checkpoint_name} to {len(supports)} supports")
        final = _publish(ctx, workdir / "model", safe_name(name or time.strftime("adapted_%Y%m%d_%H%M%S")), owner)
    except DataError as exc:
        raise UserError(str(exc)) from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return f"Saved the adapted model as **{final} (yours)**.", f"{final} (yours)"
