"""One small thread-safe LRU: the few-shot model's prototypes, adapted copies, support agreement and query
features, and LiteMedSAM's image embeddings all keep their recent items this way."""
from __future__ import annotations

import threading
from collections import OrderedDict


class LRU:
    """At most `capacity` items; reading or writing one makes it the newest; the oldest goes first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict = {}
        self.hits = self.misses = 0

    def get_or_compute(self, key, compute):
        """The item for `key`, computed by `compute()` at most once at a time: a caller that finds another
        thread computing the same key (a background prefetch, say) waits for its result instead of running
        a second, concurrent pass (on 2 cores, two passes at once take longer than one after the other).
        If that computation fails, the waiting caller computes it itself."""
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return self._items[key]
                event = self._inflight.get(key)
                mine = event is None
                if mine:
                    self.misses += 1
                    event = self._inflight[key] = threading.Event()
            if not mine:
                event.wait()
                continue
            try:
                value = compute()
                self.put(key, value)
                return value
            finally:
                with self._lock:
                    self._inflight.pop(key, None)
                event.set()

    def get(self, key, default=None):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return default

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def pop(self, key, default=None):
        with self._lock:
            return self._items.pop(key, default)

    def discard_where(self, predicate) -> int:
        """Remove every item whose key satisfies `predicate`; how many went."""
        with self._lock:
            gone = [k for k in self._items if predicate(k)]
            for k in gone:
                del self._items[k]
            return len(gone)

    def keys(self) -> list:
        """A snapshot of the keys, oldest first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
