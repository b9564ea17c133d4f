"""The one definition of epoch histories: epoch_at, divergence_point, join (property-tested
against a brute-force model), and SRL.set_history refusing to re-label a record."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replengine.errors import SRLError
from replengine.failover.planner import NodeLog
from replengine.failover.planner import divergence_point as planner_divergence
from replengine.log.history import HistoryError, divergence_point, epoch_at, join
from replengine.log.srl import SRL


@st.composite
def histories(draw: st.DrawFn, max_lsn: int = 40) -> tuple[tuple[int, int], ...]:
    n = draw(st.integers(0, 5))
    epochs = sorted(draw(st.sets(st.integers(1, 12), min_size=n, max_size=n)))
    firsts = sorted(draw(st.lists(st.integers(1, max_lsn), min_size=n, max_size=n)))
    return tuple(zip(epochs, firsts, strict=True))


def brute_epoch(history: tuple[tuple[int, int], ...], lsn: int) -> int | None:
    found = None
    for epoch, first in history:
        if first <= lsn:
            found = epoch
    return found


def brute_divergence(a, b, end: int) -> int:
    for lsn in range(1, end):
        x, y = brute_epoch(a, lsn), brute_epoch(b, lsn)
        if x is not None and y is not None and x != y:
            return lsn
    return end


def test_the_issue_example_agrees_in_both_places() -> None:
    """[(2,50)] vs [(1,1),(2,50)] with end 150: LSNs before 50 are unknown to the first
    history, so nothing diverges; node follow/rewind and the planner must say the same."""
    assert divergence_point([(2, 50)], [(1, 1), (2, 50)], 150) == 150
    assert divergence_point([(1, 1), (2, 50)], [(2, 50)], 150) == 150
    assert planner_divergence(NodeLog("x", ((2, 50),), 50, 150), ((1, 1), (2, 50))) == 150


@settings(max_examples=400, deadline=None)
@given(histories(), histories(), st.integers(1, 50))
def test_divergence_point_is_the_brute_force_answer_and_symmetric(a, b, end) -> None:
    d = divergence_point(a, b, end)
    assert d == brute_divergence(a, b, end)
    assert d == divergence_point(b, a, end)
    start = a[0][1] if a else end  # a NodeLog's records must be covered by its history
    assert planner_divergence(NodeLog("x", a, min(start, end), end), b) == d


@settings(max_examples=400, deadline=None)
@given(histories(), st.integers(1, 45))
def test_epoch_at_matches_model(h, lsn) -> None:
    assert epoch_at(h, lsn) == brute_epoch(h, lsn)


@settings(max_examples=400, deadline=None)
@given(histories(), histories(), st.integers(1, 45))
def test_join_keeps_our_records_and_takes_theirs_from_lsn(mine, theirs, lsn) -> None:
    try:
        joined = join(mine, theirs, lsn)
    except HistoryError:
        # only when the two disagree below lsn, or the result could not be increasing
        return
    for n in range(1, lsn):
        if brute_epoch(mine, n) is not None:
            assert brute_epoch(joined, n) == brute_epoch(mine, n)
    for n in range(lsn, 50):
        if brute_epoch(theirs, n) is not None:
            assert brute_epoch(joined, n) == brute_epoch(theirs, n)


def test_join_drops_an_epoch_that_wrote_nothing() -> None:
    """The node promoted (epoch 2) and lost before writing anything rejoins a primary whose
    line went 1 -> 3: its empty epoch 2 must give way, or every record is refused."""
    assert join([(1, 1), (2, 1)], [(1, 1), (3, 5)], 1) == ((1, 1), (3, 5))
    assert join([(1, 1), (2, 5)], [(1, 1), (3, 5)], 5) == ((1, 1), (3, 5))
    with pytest.raises(HistoryError, match="disagree below LSN 9"):
        join([(1, 1), (2, 5)], [(1, 1), (3, 5)], 9)


def test_srl_set_history_is_durable_and_never_relabels(tmp_path) -> None:
    path = tmp_path / "srl"
    srl = SRL.create(
        path,
        resource="r0",
        uuid=uuid.UUID("6f1c2a9e-3d4b-4c5d-8e6f-7a8b9c0d1e2f"),
        node="a",
        size=2 << 20,
    )
    srl.add_epoch(1, 1)
    for i in range(4):
        srl.append(1, i * 4096, b"x" * 4096)
    srl.add_epoch(2, 5)
    with pytest.raises(SRLError, match="names another epoch"):
        srl.set_history([(3, 1)])
    assert srl.history == [(1, 1), (2, 5)]
    srl.set_history([(1, 1), (3, 5)])
    srl.close()
    again = SRL.open(path)
    assert again.history == [(1, 1), (3, 5)] and again.epoch == 3
    again.close()
