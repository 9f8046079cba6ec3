"""Bounded background work (issue 26, part 2): one fixed pool of worker threads and a bounded queue in
which the newest job of a page wins.

A page that sends a new query while its previous query's LiteMedSAM embedding still waits replaces that
waiting job (stale work is dropped, never run); when the queue is full, the oldest waiting job of any page
is dropped. So however fast a client sends queries, at most `workers` embeddings run and `max_pending`
wait, each holding one image: memory is bounded by (workers + max_pending) images and their embeddings
(a 640 x 480 query and its 256 x 64 x 64 float embedding: about 5 MB; at the 4096 px upload limit, about
55 MB), plus the embedding cache's own LRU bound."""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable

log = logging.getLogger(__name__)


class LatestWins:
    def __init__(self, workers: int = 1, max_pending: int = 4, name: str = "background"):
        self.max_pending = max_pending
        self._pending: OrderedDict[str, Callable[[], object]] = OrderedDict()
        self._cond = threading.Condition()
        self.dropped = 0
        self.ran = 0
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, key: str, job: Callable[[], object]) -> None:
        """Queue `job` for `key` (a page): it replaces `key`'s job that has not started yet."""
        with self._cond:
            if key in self._pending:
                self.dropped += 1
                del self._pending[key]
            elif len(self._pending) >= self.max_pending:
                self._pending.popitem(last=False)
                self.dropped += 1
            self._pending[key] = job
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                _, job = self._pending.popitem(last=False)
            try:
                job()
            except Exception as exc:     # background work failing only costs time later
                log.warning("background job failed: %s", exc)
            finally:
                with self._cond:
                    self.ran += 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until nothing is pending (the running job may still finish); for tests and benchmarks."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)


class Foreground:
    """Counts foreground work (a Segment the user waits for); background steps wait until there is none
    (`wait_idle`, bounded so that a stream of Segments never starves the background for good)."""

    def __init__(self):
        self._n = 0
        self._cond = threading.Condition()

    def __enter__(self):
        with self._cond:
            self._n += 1
        return self

    def __exit__(self, *exc):
        with self._cond:
            self._n -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._n == 0, timeout)


def prefetch_supports(ctx, supports, images, checkpoint: str | None, owner: str, page: str = "") -> None:
    """When the supports change, what the next Segment would otherwise wait for, in the background (one job
    per page: a newer change replaces a waiting one): PANet++'s prototypes, the supports' leave-one-out
    agreement, LiteMedSAM's embedding of `images` (a new support image), then the supports' choice of the
    redraw (issue 29). Each step waits while a Segment runs in the foreground (2 cores: no contention)."""
    def work():
        from core.delineate import support_choice

        seg = ctx.fewshot(checkpoint, owner)
        steps = [lambda: seg.set_supports(supports, owner)]
        if len(supports) >= 2:
            steps.append(lambda: seg.support_agreement(supports, owner))
        sam = ctx.promptable_model() if ctx.config.promptable else None
        if sam is not None:
            steps += [lambda im=im: sam.embed(im) for im in images]
            if len(supports) >= 2:
                steps.append(lambda: support_choice(seg, sam, supports))
        for step in steps:
            ctx.foreground.wait_idle()
            step()

    ctx.embedding_pool.submit(f"{page}:supports", work)
