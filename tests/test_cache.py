"""core/cache.py: the LRU and its compute-once path (issue 26)."""
from __future__ import annotations

import threading
import time

import pytest

from core.cache import LRU


def test_lru_keeps_the_newest():
    c = LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    c.get("a")
    c.put("c", 3)
    assert c.keys() == ["a", "c"]


def test_get_or_compute_runs_once_while_others_wait():
    c, runs = LRU(4), []

    def slow():
        runs.append(1)
        time.sleep(0.2)
        return "value"

    out = []
    threads = [threading.Thread(target=lambda: out.append(c.get_or_compute("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs == [1] and out == ["value"] * 4
    assert c.get_or_compute("k", slow) == "value" and runs == [1]


def test_a_failed_computation_is_not_cached_and_a_waiter_tries_itself():
    c = LRU(4)
    with pytest.raises(ValueError):
        c.get_or_compute("k", lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert "k" not in c
    assert c.get_or_compute("k", lambda: 3) == 3
