"""Digest passes in several threads: the same digests, in order, with a bounded read-ahead."""

from __future__ import annotations

import threading
import time

import pytest

from replengine.storage.hashpool import hash_workers, map_ordered


def test_threads_by_core_count_keep_half_the_cores_for_the_application() -> None:
    assert [hash_workers(n) for n in (1, 2, 3, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4, 4]


def test_results_come_in_order_whatever_order_the_calls_end_in() -> None:
    def slow_first(i: int) -> int:
        time.sleep(0.002 * ((7 - i) % 4))
        return i * i

    assert list(map_ordered(slow_first, range(40), 4)) == [i * i for i in range(40)]
    assert list(map_ordered(slow_first, range(5), 1)) == [i * i for i in range(5)]


def test_at_most_two_calls_per_worker_run_ahead_of_the_consumer() -> None:
    """Each call holds a chunk's bytes: the read-ahead bounds the memory of a pass. With
    the first call held, the other five taken ahead end and nothing else is started."""
    started: list[int] = []
    ended = threading.Semaphore(0)
    gate = threading.Event()

    def call(i: int) -> int:
        started.append(i)
        if i == 0:
            gate.wait(5)
        else:
            ended.release()
        return i

    it = map_ordered(call, range(100), 3)
    first = threading.Thread(target=lambda: next(it))
    first.start()
    for _ in range(5):
        assert ended.acquire(timeout=5)
    # every call taken ahead has ended but the held one: none other can be queued
    assert sorted(started) == [0, 1, 2, 3, 4, 5]
    gate.set()
    first.join(5)
    assert list(it) == list(range(1, 100))


def test_closing_early_stops_taking_items_and_an_error_reaches_the_consumer() -> None:
    taken: list[int] = []

    def items():
        for i in range(1000):
            taken.append(i)
            yield i

    it = map_ordered(lambda i: i, items(), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert len(taken) <= 3 + 4

    def fail_at_5(i: int) -> int:
        if i == 5:
            raise OSError("read failed")
        return i

    got = []
    with pytest.raises(OSError, match="read failed"):
        for x in map_ordered(fail_at_5, range(20), 3):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
