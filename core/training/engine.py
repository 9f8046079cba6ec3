"""One training engine for every loop of the project: meta-training, supervised training, the web
app's fine-tuning and test-time adaptation.

The loop owns only what every run shares: steps and epochs, a `Job` (its own cancel token, owner and
status), divergence checks (a non-finite loss or weight stops the run and nothing more is saved),
resumption (model + optimiser + loop state, written atomically at each epoch end), and PyTorch's
distributed engine (DDP: gloo on CPUs, NCCL on GPUs) when the process was started by `torchrun`.
Everything else is a callback: CSV logs, progress, the best checkpoint, early stopping, a time budget.

Why not Lightning Fabric or Accelerate: both would bring device placement, precision and DDP, which
this module covers in a few lines with torch alone; neither removes the episode logic that is ours,
and neither installs offline here without pulling in a further dozen packages. torch.distributed is
the well-kept library we use for the part that is hard (gradient all-reduce across processes).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..io import atomic_write

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """The loss or a weight became NaN or infinite."""


class NotOwner(PermissionError):
    """Someone other than a job's owner tried to cancel it."""


@dataclass
class Job:
    """A training run's identity: who started it, whether it was asked to stop, how it ended."""

    owner: str = ""
    name: str = ""
    status: str = "pending"   # pending, running, finished, cancelled, failed, diverged
    message: str = ""
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self, by: str | None = None) -> None:
        """Ask the job to stop after its current step. `by` must be the owner when given."""
        if by is not None and by != self.owner:
            raise NotOwner("this job belongs to another session: only its owner can cancel it")
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def active(self) -> bool:
        return self.status in ("pending", "running")


@dataclass
class LoopState:
    epoch: int = 0            # finished epochs
    step: int = 0             # finished steps, over all epochs
    seconds: float = 0.0      # training time so far, over resumptions
    best: float = -math.inf   # best monitored value
    best_epoch: int = -1
    bad_epochs: int = 0
    stop_reason: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Callback:
    """Hooks called by the engine; any of them may set `engine.stop_reason` to end the run."""

    def on_start(self, engine: "Engine") -> None: ...
    def on_step(self, engine: "Engine", metrics: dict) -> None: ...
    def on_epoch_end(self, engine: "Engine", metrics: dict) -> None: ...
    def on_end(self, engine: "Engine") -> None: ...


def atomic_torch_save(obj, target: Path) -> None:
    atomic_write(target, lambda tmp: torch.save(obj, tmp))


def weights_finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


# --- distributed ---------------------------------------------------------------------------------

def distributed_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU). Idempotent."""
    import torch.distributed as dist

    rank, world = distributed_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world


def _any_rank(flags: tuple[bool, ...], world: int) -> tuple[bool, ...]:
    """Each flag True on every rank when any rank says True (keeps stop decisions in step); one
    all-reduce for all the flags."""
    if world == 1:
        return flags
    import torch.distributed as dist

    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t.tolist())


# --- the engine ----------------------------------------------------------------------------------

class Engine:
    """Run `step_fn` for `steps_per_epoch` steps per epoch, `validate_fn` after each epoch.

    step_fn(engine) -> dict with at least 'loss' (a tensor with grad); the engine does zero_grad,
    backward and the optimiser step, so that divergence checks, DDP and precision live in one place.
    validate_fn(engine) -> dict of epoch metrics (may be empty); `monitor` names the one to maximise.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 step_fn: Callable[["Engine"], dict], *, epochs: int, steps_per_epoch: int,
                 validate_fn: Callable[["Engine"], dict] | None = None, callbacks: list[Callback] = (),
                 job: Job | None = None, resume_path: str | Path | None = None, monitor: str = "val",
                 scheduler=None, device: torch.device | str = "cpu", grad_clip: float = 0.0):
        self.model = model
        self.optimizer = optimizer
        self.step_fn = step_fn
        self.validate_fn = validate_fn
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.callbacks = list(callbacks)
        self.job = job or Job()
        self.resume_path = Path(resume_path) if resume_path else None
        self.monitor = monitor
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.grad_clip = grad_clip
        self.state = LoopState()
        self.stop_reason = ""
        self.rank, self.world = distributed_env()
        self.ddp_model: torch.nn.Module = model
        self.resumed = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def net(self) -> torch.nn.Module:
        """The module to call in step_fn: the DDP wrapper when distributed, else the model."""
        return self.ddp_model

    def restore(self) -> bool:
        """Load the resume file if there is one; returns whether it did."""
        if self.resume_path is None or not self.resume_path.exists():
            return False
        saved = torch.load(self.resume_path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None and "scheduler" in saved:
            self.scheduler.load_state_dict(saved["scheduler"])
        st = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in saved["state"].items()}
        # older resume files call the step counter 'episode' and the best value 'best_dice'
        st.setdefault("step", st.get("episode", 0))
        st.setdefault("best", st.get("best_dice", -math.inf))
        for k in LoopState.__dataclass_fields__:
            if k in st:
                setattr(self.state, k, st[k])
        self.resumed = True
        log.info("resumed from %s at epoch %d, step %d", self.resume_path, self.state.epoch, self.state.step)
        return True

    def _save_resume(self) -> None:
        if self.resume_path is None or not self.is_main:
            return
        obj = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
               "state": self.state.as_dict()}
        if self.scheduler is not None:
            obj["scheduler"] = self.scheduler.state_dict()
        atomic_torch_save(obj, self.resume_path)

    def _wrap_distributed(self) -> None:
        if self.world > 1:
            init_distributed(self.device)
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # parts of the encoder (its last stage) give no prototype and no skip: unused parameters
            self.ddp_model = DDP(self.model, device_ids=ids, find_unused_parameters=True)

    def _call(self, name: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(self, *args)

    def run(self) -> dict:
        self._wrap_distributed()
        self.job.status = "running"
        t_start = time.time() - self.state.seconds
        self._call("on_start")
        try:
            while self.state.epoch < self.epochs and not self.stop_reason:
                self.model.train()
                for _ in range(self.steps_per_epoch):
                    metrics = self.step_fn(self)
                    loss = metrics["loss"]
                    if not torch.isfinite(loss.detach()).all():
                        raise Diverged(f"the loss became {loss.item()} at step {self.state.step + 1}")
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                    self.optimizer.step()
                    self.state.step += 1
                    metrics = {**metrics, "loss": float(loss.detach())}
                    self._call("on_step", metrics)
                    cancel, stop = _any_rank((self.job.cancel_requested, bool(self.stop_reason)), self.world)
                    if cancel:
                        self.stop_reason = "cancelled"
                    elif stop and not self.stop_reason:
                        self.stop_reason = "stopped by another process"
                    if self.stop_reason:
                        break
                if self.stop_reason:
                    break
                if not weights_finite(self.model):
                    raise Diverged(f"weights became non-finite in epoch {self.state.epoch + 1}")
                self.state.epoch += 1
                self.state.seconds = time.time() - t_start
                if self.scheduler is not None:
                    self.scheduler.step()
                epoch_metrics = dict(self.validate_fn(self)) if self.validate_fn else {}
                value = epoch_metrics.get(self.monitor)
                epoch_metrics["improved"] = value is not None and value > self.state.best
                if epoch_metrics["improved"]:
                    self.state.best, self.state.best_epoch, self.state.bad_epochs = value, self.state.epoch, 0
                elif value is not None:
                    self.state.bad_epochs += 1
                self._call("on_epoch_end", epoch_metrics)
                if _any_rank((bool(self.stop_reason),), self.world)[0] and not self.stop_reason:
                    self.stop_reason = "stopped by another process"
                self._save_resume()
            self.state.seconds = time.time() - t_start
            if self.stop_reason == "cancelled":
                self.job.status = "cancelled"
            else:
                self.job.status = "finished"
                if self.resume_path is not None and self.resume_path.exists() and self.is_main \
                        and self.stop_reason in ("", "early stopping", "epochs done"):
                    self.resume_path.unlink()
            self.state.stop_reason = self.stop_reason or "epochs done"
        except Diverged as exc:
            self.job.status, self.job.message = "diverged", str(exc)
            self.state.stop_reason = "diverged"
            log.warning("run diverged: %s; nothing more is saved", exc)
        except BaseException as exc:
            self.job.status, self.job.message = "failed", str(exc)
            raise
        finally:
            self._call("on_end")
        return self.summary()

    def summary(self) -> dict:
        return {"status": self.job.status, "message": self.job.message, "epochs": self.state.epoch,
                "steps": self.state.step, "seconds": self.state.seconds, "best": self.state.best,
                "best_epoch": self.state.best_epoch, "stop_reason": self.state.stop_reason,
                "cancelled": self.job.status == "cancelled", "diverged": self.job.status == "diverged"}


# --- callbacks -----------------------------------------------------------------------------------

class CsvLogger(Callback):
    """Step rows and epoch rows in two CSV files (appended to when the run resumed)."""

    def __init__(self, step_csv, step_fields: list[str], epoch_csv, epoch_fields: list[str], step_key: str = "step"):
        self.args = (step_csv, step_fields, epoch_csv, epoch_fields)
        self.step_key = step_key
        self.steps = self.epochs = None

    def on_start(self, engine):
        from .logs import CsvLog

        if not engine.is_main:
            return
        s, sf, e, ef = self.args
        self.steps = CsvLog(s, sf, resume=engine.resumed)
        self.epochs = CsvLog(e, ef, resume=engine.resumed)

    def on_step(self, engine, metrics):
        if self.steps:
            self.steps.write(**{"epoch": engine.state.epoch + 1, self.step_key: engine.state.step, **_fmt(metrics)})

    def on_epoch_end(self, engine, metrics):
        if self.epochs:
            self.epochs.write(**{"epoch": engine.state.epoch, f"last_{self.step_key}": engine.state.step,
                                 "seconds": f"{engine.state.seconds:.1f}", **_fmt(metrics)})

    def on_end(self, engine):
        for f in (self.steps, self.epochs):
            if f:
                f.close()


def _fmt(metrics: dict) -> dict:
    return {k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in metrics.items()}


class Progress(Callback):
    """A tqdm bar per epoch (terminal) and/or a function called with a dict per step and per epoch."""

    def __init__(self, bar: bool = True, on_progress: Callable[[dict], None] | None = None, desc: str = "epoch",
                 smooth: int = 50):
        self.bar_enabled, self.on_progress, self.desc, self.smooth = bar, on_progress, desc, smooth
        self.bar = None
        self.recent: dict[str, list[float]] = {}

    def _new_bar(self, engine):
        from tqdm import tqdm

        if self.bar is not None:
            self.bar.close()
        self.bar = tqdm(total=engine.steps_per_epoch, leave=False,
                        desc=f"{self.desc} {engine.state.epoch + 1}/{engine.epochs}",
                        disable=not (self.bar_enabled and engine.is_main))

    def on_start(self, engine):
        self._new_bar(engine)

    def on_step(self, engine, metrics):
        for k, v in metrics.items():
            if isinstance(v, float) and math.isfinite(v):
                self.recent.setdefault(k, []).append(v)
                self.recent[k] = self.recent[k][-self.smooth:]
        self.bar.update(1)
        self.bar.set_postfix({k: f"{sum(v) / len(v):.3f}" for k, v in self.recent.items()})
        if self.on_progress:
            self.on_progress({"type": "step", "epoch": engine.state.epoch + 1, "step": engine.state.step, **metrics})

    def on_epoch_end(self, engine, metrics):
        from tqdm import tqdm

        text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        msg = f"epoch {engine.state.epoch}: {text} ({engine.state.seconds:.0f} s)"
        log.info(msg)
        if self.bar_enabled and engine.is_main:
            tqdm.write(msg)
        if self.on_progress:
            self.on_progress({"type": "epoch", "epoch": engine.state.epoch, **metrics})
        if engine.state.epoch < engine.epochs:
            self._new_bar(engine)

    def on_end(self, engine):
        if self.bar is not None:
            self.bar.close()


class BestCheckpoint(Callback):
    """Save through `save(engine, metrics)` when the monitored value improved (main process only).
    Refuses to save non-finite weights."""

    def __init__(self, save: Callable[["Engine", dict], None]):
        self.save = save

    def on_epoch_end(self, engine, metrics):
        if metrics.get("improved") and engine.is_main:
            if not weights_finite(engine.model):
                raise Diverged("non-finite weights at the best epoch")
            self.save(engine, metrics)


class EarlyStopping(Callback):
    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, engine, metrics):
        if self.patience and engine.state.bad_epochs >= self.patience:
            engine.stop_reason = "early stopping"


class TimeBudget(Callback):
    """Stop (resumably) once `seconds` of wall time have passed since this run started."""

    def __init__(self, seconds: float, check: Callable[[], float] = time.time):
        self.seconds, self.clock = seconds, check
        self.t0 = None

    def on_start(self, engine):
        self.t0 = self.clock()

    def on_step(self, engine, metrics):
        if self.seconds and self.clock() - self.t0 > self.seconds:
            engine.stop_reason = "time budget"
