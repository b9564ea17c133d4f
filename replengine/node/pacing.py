"""Pacing block copies (full sync, dcm resync, rewinds served) and log-diff catch-up (records
read back from the log for a peer that is behind) against the application.

A resync that runs at the disk's full speed doubles or triples the latency of the writes the
application makes meanwhile; one that is throttled too hard leaves a node inconsistent for
hours. Two knobs, as DRBD has (c-max-rate, and its c-plan-ahead controller):

* ``resync_rate`` (MiB/s, 0 = none): a hard cap on the bytes a copy reads, always obeyed;
* ``resync_adaptive`` (default on): while the application writes, keep its write latency
  p99 within ``TARGET_RATIO`` of its steady state (measured while no copy runs), by halving
  the copy's rate when a window's p99 is over, and raising it by a step when under (AIMD).
  Chunks the receiver already holds are read under the same budget: reading competes for
  the disk too. With no application writes, the copy runs at the cap (or unpaced).

What the application sees is the p99 over the whole copy, not per window: every probe up
that overshoots costs a window of slow writes, and a controller that probes again as soon as
one window is good spends a third of its windows over the line. So the slow writes (over
``TARGET_RATIO`` x steady) are counted over the copy, and the rate is raised only while they
are within ``SLOW_BUDGET`` of its writes; once over, it holds until good windows pay it back.

A copy never stops: ``MIN_RATE`` is always allowed, so a busy primary still ends its syncs.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

MiB = 1 << 20
#: a window of write latencies: how often the rate is reconsidered
WINDOW_S = 0.25
#: the write p99 the controller keeps, relative to the steady state
TARGET_RATIO = 2.0
MIN_RATE = 2 * MiB
START_RATE = 32 * MiB
STEP = 8 * MiB
#: tokens saved up while idle: one loop turn's worth of chunks at most
BURST = 4 * MiB
#: windows with fewer writes than this say nothing about the application's latency
MIN_SAMPLES = 8
#: the share of the application's writes during a copy that may be slower than TARGET_RATIO
#: x the steady p99 before the rate stops rising: half of what a p99 leaves, as a margin
SLOW_BUDGET = 0.005
#: steady windows kept for the baseline (ten seconds' worth), and at most how many of each
#: window's latencies (an even sample of them past that)
STEADY_WINDOWS = 40
STEADY_PER_WINDOW = 512


def p99(samples: list[float]) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


@dataclass
class Pacer:
    """One per node: every copy it serves shares the budget."""

    cap: float = 0.0  # bytes/s, 0: none
    adaptive: bool = True
    rate: float = START_RATE
    tokens: float = BURST
    #: a copy (or a catch-up read from the log) ran within the last second
    _copying_until: float = 0.0
    _last: float = field(default_factory=time.monotonic)
    _last_write: float = 0.0
    _window: list[float] = field(default_factory=list)
    _window_t0: float = -1.0  # set by the first write
    #: the latencies of the latest windows with no copy running (see baseline)
    _steady: deque = field(default_factory=lambda: deque(maxlen=STEADY_WINDOWS))
    #: the baseline as of the last steady window (None: to be worked out again); no steady
    #: window closes during a copy, so it is the same from the copy's start to its end
    _baseline: float | None = None
    #: the lowest p99 of a window seen during copies: the best guess at the steady state
    #: when the copy started before any was measured
    _floor: float | None = None
    #: the application's writes since the copy started, and how many were slow
    _writes: int = 0
    _slow: int = 0

    @classmethod
    def from_config(cls, rate_mib: float, adaptive: bool) -> Pacer:
        p = cls(cap=rate_mib * MiB, adaptive=adaptive)
        p.rate = p.limit()
        return p

    def limit(self) -> float:
        """The rate allowed now, in bytes/s (inf: unpaced)."""
        if self.adaptive and self.copying and self._busy():
            return min(self.rate, self.cap) if self.cap else self.rate
        return self.cap or float("inf")

    def note_write(self, latency_s: float, now: float | None = None) -> None:
        """A write of the application completed after ``latency_s``."""
        now = time.monotonic() if now is None else now
        self._last_write = now
        if self._window_t0 < 0:
            self._window_t0 = now
        self._window.append(latency_s)
        if now - self._window_t0 >= WINDOW_S:
            self._close_window(now)

    def _busy(self) -> bool:
        """The application wrote lately (else nothing is there to protect)."""
        return time.monotonic() - self._last_write < 2 * WINDOW_S

    def _close_window(self, now: float) -> None:
        samples, self._window, self._window_t0 = self._window, [], now
        if len(samples) < MIN_SAMPLES:
            return
        if not self.copying:
            step = -(-len(samples) // STEADY_PER_WINDOW)
            self._steady.append(samples[::step])
            self._baseline = None
            return
        q = p99(samples)
        self._floor = q if self._floor is None else min(self._floor, q)
        ref = self.baseline if self._steady else self._floor
        line = TARGET_RATIO * ref
        self._writes += len(samples)
        self._slow += sum(1 for s in samples if s > line)
        if q > line:
            self.rate = max(MIN_RATE, self.rate / 2)
        elif self._slow <= SLOW_BUDGET * self._writes:
            self.rate = min(self.rate + STEP, self.cap) if self.cap else self.rate + STEP

    @property
    def baseline(self) -> float | None:
        """The application's write p99 with no copy running (None until measured).

        The lower of two estimates: the median of the windows' p99s, which a burst of slow
        writes in a few windows does not move, and the p99 of all their writes pooled, which
        is what the application measures but which a transient (a writer starting, a
        neighbour's flush) inflates. A baseline too high lets the copy slow every write; one
        too low only slows the copy."""
        if self._baseline is None and self._steady:
            windows = sorted(p99(w) for w in self._steady)
            pooled = p99([x for w in self._steady for x in w])
            self._baseline = min(windows[len(windows) // 2], pooled)
        return self._baseline

    @property
    def copying(self) -> bool:
        return time.monotonic() < self._copying_until

    def start(self) -> None:
        """A copy or a catch-up runs (called each turn it does): windows judge its effect."""
        if not self.copying:
            self._floor = None
            self._writes = self._slow = 0
            self.rate = min(START_RATE, self.cap) if self.cap else START_RATE
        self._copying_until = time.monotonic() + 1.0

    def stop(self) -> None:
        """Nothing to copy any more."""
        self._copying_until = 0.0

    def ready(self, now: float | None = None) -> bool:
        """Whether more may be read now (the budget is not overdrawn)."""
        now = time.monotonic() if now is None else now
        rate = self.limit()
        self._last, last = now, self._last
        if rate == float("inf"):
            self.tokens = BURST  # unpaced: and a full budget when pacing resumes
            return True
        self.tokens = min(BURST, self.tokens + (now - last) * rate)
        return self.tokens > 0

    def spend(self, n: int) -> None:
        """``n`` bytes were read (the budget may go below zero: the next reads wait)."""
        if self.limit() != float("inf"):
            self.tokens -= n

    def take(self, n: int, now: float | None = None) -> bool:
        """Whether ``n`` bytes may be read now (and spend them)."""
        if not self.ready(now):
            return False
        self.spend(n)
        return True

    def summary(self) -> dict:
        lim = self.limit()
        ref = self.baseline
        return {
            "cap_bytes_per_s": int(self.cap) or None,
            "adaptive": self.adaptive,
            "rate_bytes_per_s": None if lim == float("inf") else int(lim),
            "baseline_write_p99_ms": None if ref is None else ref * 1e3,
            "slow_write_share": self._slow / self._writes if self._writes else None,
        }


__all__ = ["Pacer"]
