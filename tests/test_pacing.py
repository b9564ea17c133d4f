"""node.pacing: the cap is a hard limit on a copy's bytes; the adaptive controller halves the
copy's rate when the application's write p99 goes over twice its steady state, and raises it
again when under; with no application writes the copy is not held back."""

from __future__ import annotations

import pytest

from replengine.node.pacing import MIN_RATE, START_RATE, STEP, WINDOW_S, Pacer

MiB = 1 << 20


def feed(p: Pacer, t: float, latency: float, n: int = 20) -> float:
    """One window of n writes of the given latency, ending after WINDOW_S."""
    for i in range(n):
        p.note_write(latency, t + i * WINDOW_S / n)
    t += WINDOW_S
    p.note_write(latency, t)  # closes the window
    return t


def test_the_cap_bounds_bytes_per_second() -> None:
    p = Pacer.from_config(10, adaptive=False)  # 10 MiB/s
    t = 100.0
    p._last = t
    p.tokens = 0
    sent = 0
    for step in range(1, 201):  # 2 s in 10 ms steps, asking for 1 MiB each time
        if p.take(MiB, t + step * 0.01):
            sent += MiB
    assert 18 * MiB <= sent <= 21 * MiB


def test_uncapped_and_idle_application_means_unpaced() -> None:
    p = Pacer.from_config(0, adaptive=True)
    p.start()
    assert all(p.take(MiB, 1.0) for _ in range(1000))  # nobody writes: full speed


def test_adaptive_halves_when_writes_suffer_and_recovers_when_not(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("replengine.node.pacing.time.monotonic", lambda: clock[0])
    p = Pacer.from_config(0, adaptive=True)
    t = 0.0
    for _ in range(4):  # steady state without a copy: p99 1 ms
        t = feed(p, t, 0.001)
    assert p.baseline == pytest.approx(0.001)

    def copying_at(when: float) -> None:  # the copier calls start() every turn it copies
        clock[0] = when
        p.start()

    copying_at(t)
    assert p.limit() == START_RATE
    t = feed(p, t, 0.005)  # 5x the steady p99: halve
    copying_at(t)
    assert p.limit() == START_RATE / 2
    for _ in range(10):
        t = feed(p, t, 0.005)
        copying_at(t)
    assert p.limit() == MIN_RATE  # never below: the copy always ends
    t = feed(p, t, 0.0015)  # within 2x: one step up
    copying_at(t)
    assert p.limit() == MIN_RATE + STEP
    copying_at(t + 10)  # the application went quiet: no need to hold back
    assert p.limit() == float("inf")


def test_an_overdrawn_budget_does_not_stall_once_unpaced(monkeypatch) -> None:
    """Paced, the budget goes below zero; when pacing stops (the application went quiet, no
    cap) reads go on at once -- a copy must never wait for tokens that no rate refills."""
    clock = [0.0]
    monkeypatch.setattr("replengine.node.pacing.time.monotonic", lambda: clock[0])
    p = Pacer.from_config(0, adaptive=True)
    p.start()
    for i in range(20):
        p.note_write(0.001, i * 0.01)  # the application writes: the copy is paced
    assert p.limit() != float("inf")
    while p.take(MiB, clock[0]):
        pass
    assert p.tokens <= 0
    clock[0] += 10
    p.start()  # still copying, but nobody writes any more
    assert p.limit() == float("inf") and p.take(MiB, clock[0]) and p.take(MiB, clock[0])
