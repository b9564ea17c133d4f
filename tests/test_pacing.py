"""node.pacing: the cap is a hard limit on a copy's bytes; the adaptive controller halves the
copy's rate when the application's write p99 goes over twice its steady state, and raises it
again when under, but only while the copy's slow writes stay within their budget; with no
application writes the copy is not held back."""

from __future__ import annotations

import pytest

from replengine.node.pacing import MIN_RATE, SLOW_BUDGET, START_RATE, STEP, WINDOW_S, Pacer

MiB = 1 << 20


def window(p: Pacer, t: float, latencies: list[float]) -> float:
    """One window holding these latencies, ending after WINDOW_S with a write as fast as
    the last."""
    for i, lat in enumerate(latencies):
        p.note_write(lat, t + i * WINDOW_S / len(latencies))
    t += WINDOW_S
    p.note_write(latencies[-1], t)  # closes the window
    return t


def feed(p: Pacer, t: float, latency: float, n: int = 20, slow: float | None = None) -> float:
    """One window of n writes of the given latency; with ``slow``, its first write takes
    that long instead."""
    return window(p, t, [latency if slow is None else slow] + [latency] * (n - 1))


def copying(p: Pacer, clock: list[float], when: float) -> None:
    """The copier calls start() every turn it copies."""
    clock[0] = when
    p.start()


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

    copying(p, clock, t)
    assert p.limit() == START_RATE
    t = feed(p, t, 0.005)  # 5x the steady p99: halve
    copying(p, clock, t)
    assert p.limit() == START_RATE / 2
    for _ in range(10):
        t = feed(p, t, 0.005)
        copying(p, clock, t)
    assert p.limit() == MIN_RATE  # never below: the copy always ends
    t = feed(p, t, 0.0015)  # within 2x, but 231 of 252 writes were slow: hold
    copying(p, clock, t)
    assert p.limit() == MIN_RATE
    t = feed(p, t, 0.0015, n=50_000)  # enough good writes pay the slow ones back: a step up
    copying(p, clock, t)
    assert p.limit() == MIN_RATE + STEP
    copying(p, clock, t + 10)  # the application went quiet: no need to hold back
    assert p.limit() == float("inf")


def test_a_copy_whose_slow_writes_are_over_budget_stops_rising(monkeypatch) -> None:
    """One slow write in a hundred never moves a window's p99 over the line, but it is a whole
    1 % of the application's writes: the p99 over the copy would be the slow one. The rate
    rises only while the slow writes are within the budget."""
    clock = [0.0]
    monkeypatch.setattr("replengine.node.pacing.time.monotonic", lambda: clock[0])
    t = 0.0
    rates = {}
    for every in (100, 1000):  # one slow write per `every`: 1 %, then 0.1 %
        p = Pacer.from_config(0, adaptive=True)
        for _ in range(4):
            t = feed(p, t, 0.001, n=100)
        copying(p, clock, t)
        for _ in range(10):
            for i in range(every // 100):
                t = feed(p, t, 0.001, n=100, slow=0.01 if i == 0 else None)
                copying(p, clock, t)
        rates[every] = p.limit()
        # (a window holds its n writes and the one that closes it)
        assert p.summary()["slow_write_share"] == pytest.approx(1 / every, rel=0.02)
    assert 1 / 100 > SLOW_BUDGET > 1 / 1000
    assert rates[100] == START_RATE  # never halved (no window was over), never raised
    # every window was good: a step each, but after the first, whose one slow write was then
    # a whole 1 % of the copy's writes
    assert rates[1000] == START_RATE + 99 * STEP


def test_the_baseline_is_the_lower_of_the_windows_median_p99_and_the_pooled_p99() -> None:
    """Two estimates of the application's steady p99, each wrong in its own way: a burst of
    slow writes (a neighbour's flush) in one window out of five inflates the pooled p99 of
    all writes; sparse windows (ten writes: their p99 is their slowest) inflate the median of
    the windows' p99s. A baseline too high would let the copy slow every write, so the
    lower one counts."""
    fast, slow = 0.001, 0.004
    bursty = Pacer.from_config(0, adaptive=True)
    t = 0.0
    for w in range(20):
        t = window(bursty, t, [slow if w % 5 == 0 else fast] * 10 + [fast] * 90)
    assert bursty.baseline == pytest.approx(fast)  # pooled: 2 % slow, so its p99 was slow

    sparse = Pacer.from_config(0, adaptive=True)
    for w in range(20):
        t = window(sparse, t, [slow] + [fast] * 9 if w % 2 == 0 else [fast] * 1000)
    assert sparse.baseline == pytest.approx(fast)  # windows: half slow, so their median was

    both = Pacer.from_config(0, adaptive=True)
    for _ in range(20):
        t = window(both, t, [slow] * 5 + [fast] * 95)
    assert both.baseline == pytest.approx(slow)  # 5 % slow everywhere: no estimate hides it


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
