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
