"""Epoch histories, PostgreSQL-timeline style: [(epoch, first_lsn)], oldest first.

Two nodes agree on LSN n when their histories name the same epoch for n; the first LSN where
they disagree is the divergence point: records at or past it on the older line are a divergent
tail that must be rewound, never replicated onward (invariant 4).
"""

from __future__ import annotations

from collections.abc import Sequence

History = Sequence[tuple[int, int]]


def epoch_of(history: History, lsn: int) -> int:
    """Epoch that wrote `lsn` according to `history` (0 before the first entry)."""
    epoch = 0
    for e, first in history:
        if first <= lsn:
            epoch = e
        else:
            break
    return epoch


def divergence_point(mine: History, theirs: History, end: int) -> int:
    """First LSN below `end` whose epoch differs between the histories, else `end`."""
    points = sorted({first for _, first in mine} | {first for _, first in theirs})
    for lsn in points:
        if lsn >= end:
            break
        if epoch_of(mine, lsn) != epoch_of(theirs, lsn):
            return lsn
    return end


def newer(a: History, b: History) -> bool:
    """True when history a is on a later line than b (its last epoch is higher)."""
    return (a[-1][0] if a else 0) > (b[-1][0] if b else 0)
