"""Background work from the page: one registry of jobs, one training queue, one way to stream progress.

- `REGISTRY`: owner (a user) -> their running or waiting `core.training.engine.Job`; only the owner can
  cancel it (`cancel`). Cancelling is `Job.cancel`; the work polls `job.cancel_requested`.
- `TRAINING_QUEUE`: one training job (fine-tune, adaptation) runs at a time, first come first served; a
  waiting caller sees its position and can cancel before it starts (`wait_turn`).
- `stream(work, render)`: runs `work(emit)` in a thread and yields `render(events)` about once a second
  while it runs (events are what `work` emitted so far); returns work's result, or raises its error.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any

from core.training.engine import Job


class JobQueue:
    """One job runs at a time; the others wait in order of arrival, each seeing its position, and a
    waiting job that its owner cancels leaves the line without ever starting."""

    def __init__(self):
        self._cond = threading.Condition()
        self._waiting: list[Job] = []
        self._running: Job | None = None

    def wait_turn(self, job: Job, poll: float = 0.5):
        """Generator: yields the number of jobs ahead while `job` waits; returns once it runs (True) or
        was cancelled while waiting (False)."""
        with self._cond:
            self._waiting.append(job)
        try:
            while True:
                with self._cond:
                    if job.cancel_requested:
                        return False
                    if self._running is None and self._waiting[0] is job:
                        self._running = job
                        return True
                    ahead = self._waiting.index(job) + (self._running is not None)
                yield ahead
                with self._cond:
                    self._cond.wait(poll)
        finally:
            with self._cond:
                if job in self._waiting:
                    self._waiting.remove(job)
                self._cond.notify_all()

    def is_waiting(self, job: Job) -> bool:
        with self._cond:
            return job in self._waiting

    def release(self, job: Job) -> None:
        with self._cond:
            if self._running is job:
                self._running = None
            self._cond.notify_all()


class JobRegistry:
    """owner -> the job they started (one each); nothing else about a job is shared between users."""

    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    @contextmanager
    def job(self, owner: str, name: str, training: bool = False):
        """A new job of `owner` for the duration of the block (and its place in the training queue)."""
        job = Job(owner=owner, name=name)
        with self._lock:
            self._jobs[owner] = job
        try:
            yield job
        finally:
            with self._lock:
                if self._jobs.get(owner) is job:
                    del self._jobs[owner]
            if training:
                TRAINING_QUEUE.release(job)

    def get(self, owner: str) -> Job | None:
        with self._lock:
            return self._jobs.get(owner)


REGISTRY = JobRegistry()
TRAINING_QUEUE = JobQueue()


def cancel(owner: str) -> str:
    """Cancel the caller's own job; another user's job is never touched."""
    job = REGISTRY.get(owner)
    if job is None or not job.active:
        return "You have no fine-tuning, adaptation or propagation job running or waiting."
    job.cancel(by=owner)
    if TRAINING_QUEUE.is_waiting(job):
        return f"Your {job.name} is taken out of the queue before it started: nothing ran."
    if job.name == "propagation":
        return "Stopping the propagation after the current image: the predictions made so far are kept."
    return f"Cancelling {job.name}: it stops after the current episode; nothing will be saved."


def wait_turn(job: Job, render: Callable[[str], Any]) -> Generator[Any, None, bool]:
    """Wait for `job`'s turn in the training queue, yielding render(position message); True once it runs."""
    gen = TRAINING_QUEUE.wait_turn(job)
    last = None
    while True:
        try:
            ahead = next(gen)
        except StopIteration as stop:
            return stop.value
        if ahead != last:
            last = ahead
            yield render(f"Waiting for the machine: {ahead} job(s) ahead of your {job.name} (one training job runs "
                         "at a time). Cancel takes it out of the queue.")


def stream(work: Callable[[Callable[[dict], None]], Any], render: Callable[[list[dict]], Any],
           every: float = 1.0, poll: float = 0.5) -> Generator[Any, None, Any]:
    """Run work(emit) in a thread; yield render(all events so far) at most every `every` s (and after
    the last event); return work's result, or raise its exception here."""
    events: queue.Queue = queue.Queue()
    seen: list[dict] = []
    result: dict = {}

    def run():
        try:
            result["value"] = work(events.put)
        except Exception as exc:   # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    last, fresh = 0.0, False
    while thread.is_alive() or not events.empty():
        try:
            seen.append(events.get(timeout=poll))
            fresh = True
        except queue.Empty:
            pass
        if fresh and time.time() - last >= every:
            last, fresh = time.time(), False
            yield render(seen)
    thread.join()
    if fresh:
        yield render(seen)
    if "error" in result:
        raise result["error"]
    return result.get("value")
