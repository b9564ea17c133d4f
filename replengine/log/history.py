"""Epoch histories, PostgreSQL-timeline style: ((epoch, first_lsn), ...), oldest first.

Epoch E wrote LSNs [first_lsn_E, first_lsn of the next entry); the last entry is open-ended.
Several entries may share a first LSN (a promotion lost before its first write): the later
one wins. LSNs below a history's first entry are *unknown* to it (its volume was last fully
synchronised there, or the node is fresh) and agree with anything: nothing in that node's log
can contradict another node there.

This is the one definition of "which epoch wrote LSN n" and of "where two lines part": the
node's follow/rewind decisions and the failover planner both use it, so a node can never be
judged divergent by one and compatible by the other.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from replengine.errors import ReplError

History = Sequence[tuple[int, int]]


class HistoryError(ReplError, ValueError):
    """Two histories cannot be joined: they name different epochs for the same records."""


def normalise(history: History) -> tuple[tuple[int, int], ...]:
    """A tuple of (epoch, first_lsn) int pairs (HELLO carries lists)."""
    return tuple((int(e), int(f)) for e, f in history)


def epoch_at(history: History, lsn: int) -> int | None:
    """The epoch that wrote ``lsn`` according to ``history``; None before its first entry."""
    idx = bisect_right([f for _, f in history], lsn) - 1
    return history[idx][0] if idx >= 0 else None


def divergence_point(mine: History, theirs: History, end: int) -> int:
    """First LSN below ``end`` where both histories know the epoch and name different ones;
    ``end`` when they agree on everything below it.

    Epochs are constant between history boundaries, so comparing at every boundary of either
    history (and at LSN 1) is enough: O(len(histories)), independent of the LSN range.
    """
    points = sorted({1} | {f for _, f in mine} | {f for _, f in theirs})
    for lsn in points:
        if lsn >= end:
            break
        a, b = epoch_at(mine, lsn), epoch_at(theirs, lsn)
        if a is not None and b is not None and a != b:
            return lsn
    return end


def join(mine: History, theirs: History, lsn: int) -> tuple[tuple[int, int], ...]:
    """Our history for the records below ``lsn`` (which we hold), ``theirs`` from ``lsn`` on.

    What a follower adopts when the next record it receives (at ``lsn``) is of an epoch its own
    history does not name there: epochs it knew that wrote nothing it kept (a promotion lost
    before its first write) are dropped, the sender's newer ones taken. Raises HistoryError
    when the two disagree below ``lsn`` (that is a divergent tail, rewound elsewhere) or the
    result would not be increasing.
    """
    mine, theirs = normalise(mine), normalise(theirs)
    if divergence_point(mine, theirs, lsn) < lsn:
        raise HistoryError(
            f"histories {list(mine)} and {list(theirs)} disagree below LSN {lsn}: a divergent "
            "tail must be rewound first"
        )
    out = [e for e in mine if e[1] < lsn]
    tail = [e for e in theirs if e[1] >= lsn]
    at = epoch_at(theirs, lsn)
    if at is not None and epoch_at(out + tail, lsn) != at:
        tail.insert(0, (at, lsn))
    joined = tuple(out + tail)
    check(joined)
    return joined


def records_after(history: History, end: int, epoch: int) -> tuple[int, int, int] | None:
    """The records below ``end`` that epochs newer than ``epoch`` wrote, as (first LSN, end,
    newest epoch among them); None when there are none.

    What a promotion asks of a log it cannot reach: does it hold writes of a primary newer
    than anything the reachable logs hold? Epochs strictly increase along a history, so those
    records are one range at its end.
    """
    newer = [f for e, f in history if e > epoch]
    if not newer or newer[0] >= end:
        return None
    top = epoch_at(history, end - 1)
    assert top is not None
    return newer[0], end, top


def check(history: History) -> None:
    """Raise HistoryError unless epochs strictly increase and first LSNs never decrease."""
    prev: tuple[int, int] | None = None
    for epoch, first in history:
        if epoch < 1 or first < 1:
            raise HistoryError(f"history entry (epoch={epoch}, first_lsn={first}) must be >= 1")
        if prev is not None and (epoch <= prev[0] or first < prev[1]):
            raise HistoryError(
                f"history is not increasing: (epoch={epoch}, first_lsn={first}) follows "
                f"(epoch={prev[0]}, first_lsn={prev[1]})"
            )
        prev = (epoch, first)


__all__ = [
    "History",
    "HistoryError",
    "check",
    "divergence_point",
    "epoch_at",
    "join",
    "normalise",
    "records_after",
]
