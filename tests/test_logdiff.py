"""Tests for replengine.failover.planner: the patent's worked examples, edge cases, and a property test
that simulates carrying out random plans."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replengine.errors import ReplError
from replengine.failover.planner import (
    LogDiffError,
    NodeLog,
    SyncPlan,
    Transfer,
    clear_point,
    divergence_point,
    plan_summary,
    plan_sync,
)
from replengine.log.history import epoch_at

H1 = ((1, 1),)


# --- Fig. 4A/4B: clearing -------------------------------------------------------------------


def test_fig4_all_acked_location_3_moves_start_from_3_to_4() -> None:
    # Log holds locations 3..5 (S=3, E=6); the "all secondaries acknowledged 3" notice arrives
    # and location 3 is (made) applied: S moves to 4, locations 4-5 stay.
    assert clear_point({"SN1": 3, "SN2": 3, "SN3": 3}, applied=3, start=3) == 4
    # Having applied further does not let it clear what others have not acknowledged.
    assert clear_point({"SN1": 5, "SN2": 3, "SN3": 4}, applied=5, start=3) == 4


def test_fig4_not_cleared_before_applied_locally() -> None:
    # The notice came but location 3 is not on this node's volume yet: S stays at 3.
    assert clear_point({"SN1": 3, "SN2": 3}, applied=2, start=3) == 3


def test_clear_point_never_moves_backwards_and_rejects_bad_input() -> None:
    assert clear_point({"SN1": 1}, applied=1, start=5) == 5
    assert clear_point({"SN1": 0, "SN2": 9}, applied=9) == 1
    with pytest.raises(LogDiffError, match="no secondaries"):
        clear_point({}, applied=3)
    with pytest.raises(LogDiffError, match=">= 0"):
        clear_point({"SN1": -1}, applied=3)


# --- Fig. 5A / 5B ---------------------------------------------------------------------------

SN1 = NodeLog("SN1", H1, start=3, end=6)
SN2 = NodeLog("SN2", H1, start=1, end=7)
SN3 = NodeLog("SN3", H1, start=5, end=8)


def test_fig5a_promote_sn1_pulls_exactly_location_6_from_sn2() -> None:
    plan = plan_sync([SN1, SN2], promote="SN1")
    assert (plan.best, plan.best_end) == ("SN2", 7)
    assert plan.pull == Transfer("SN2", "SN1", 6, 7)
    assert plan.transfers == []
    assert plan.divergent == {} and plan.needs_full == []
    assert plan_summary(plan) == {"SN1": 1}


def test_fig5a_promote_sn2_ships_exactly_location_6_to_sn1() -> None:
    plan = plan_sync([SN1, SN2], promote="SN2")
    assert (plan.best, plan.best_end) == ("SN2", 7)
    assert plan.pull is None
    assert plan.transfers == [Transfer("SN2", "SN1", 6, 7)]
    assert plan_summary(plan) == {"SN1": 1}


def test_fig5b_promote_sn3() -> None:
    plan = plan_sync([SN1, SN2, SN3], promote="SN3")
    assert (plan.best, plan.best_end, plan.pull) == ("SN3", 8, None)
    assert plan.transfers == [Transfer("SN3", "SN1", 6, 8), Transfer("SN3", "SN2", 7, 8)]
    assert plan_summary(plan) == {"SN1": 2, "SN2": 1}
    assert plan.divergent == {} and plan.needs_full == []


def test_fig5b_promote_sn1() -> None:
    plan = plan_sync([SN1, SN2, SN3], promote="SN1")
    assert (plan.best, plan.best_end) == ("SN3", 8)
    # SN1 first becomes the most up to date by pulling 6 and 7 from SN3 ...
    assert plan.pull == Transfer("SN3", "SN1", 6, 8)
    # ... then ships SN2 the one record it lacks.
    assert plan.transfers == [Transfer("SN1", "SN2", 7, 8)]
    assert plan_summary(plan) == {"SN1": 2, "SN2": 1}


def test_fig5b_promote_sn2() -> None:
    plan = plan_sync([SN1, SN2, SN3], promote="SN2")
    assert (plan.best, plan.best_end) == ("SN3", 8)
    assert plan.pull == Transfer("SN3", "SN2", 7, 8)
    assert plan.transfers == [Transfer("SN2", "SN1", 6, 8)]
    assert plan_summary(plan) == {"SN1": 2, "SN2": 1}


# --- other cases ----------------------------------------------------------------------------


def test_all_equal_gives_empty_plan() -> None:
    nodes = [NodeLog(n, H1, start=s, end=9) for n, s in (("a", 1), ("b", 4), ("c", 9))]
    plan = plan_sync(nodes, promote="b")
    assert plan.best == "b"  # tie: the node being promoted
    assert plan.is_empty and plan.all_transfers == [] and plan_summary(plan) == {}


def test_tie_without_promote_prefers_smallest_name() -> None:
    nodes = [NodeLog("z", H1, 1, 9), NodeLog("m", H1, 1, 9), NodeLog("a", H1, 1, 5)]
    plan = plan_sync(nodes, promote="a")
    assert plan.best == "m"
    assert plan.pull == Transfer("m", "a", 5, 9)


def test_divergent_tail_of_old_primary() -> None:
    # Old primary P wrote epoch-1 records up to LSN 11; S1 was promoted at LSN 8 (epoch 2)
    # and wrote 8..9; S2 lags at 7. P's LSNs 8..11 are a divergent tail.
    hist2 = ((1, 1), (2, 8))
    p = NodeLog("P", H1, start=5, end=12)
    s1 = NodeLog("S1", hist2, start=3, end=10)
    s2 = NodeLog("S2", H1, start=2, end=7)
    plan = plan_sync([p, s1, s2], promote="S1")
    assert (plan.best, plan.best_end, plan.history) == ("S1", 10, hist2)
    assert plan.divergent == {"P": (8, 12)}
    assert plan.transfers == [Transfer("S1", "P", 8, 10), Transfer("S1", "S2", 7, 10)]
    assert plan.needs_full == []


def test_divergent_old_primary_is_never_best_even_if_longest() -> None:
    hist2 = ((1, 1), (2, 8))
    p = NodeLog("P", H1, start=1, end=20)
    s1 = NodeLog("S1", hist2, start=1, end=8)  # promoted, no epoch-2 write yet
    plan = plan_sync([p, s1], promote="P")
    assert plan.best == "S1" and plan.best_end == 8
    assert plan.divergent == {"P": (8, 20)}
    assert plan.pull is None  # nothing to pull: the tail is only rolled back
    assert plan.history == hist2


def test_compatible_node_of_older_epoch_can_be_best() -> None:
    # Epoch 2's history says it starts at 10, but the node that knows it only has up to 6;
    # a node still on epoch 1 holds 6..9, which are on the same line.
    hist2 = ((1, 1), (2, 10))
    a = NodeLog("a", hist2, start=1, end=6)
    b = NodeLog("b", H1, start=1, end=10)
    plan = plan_sync([a, b], promote="a")
    assert plan.best == "b" and plan.history == hist2
    assert plan.pull == Transfer("b", "a", 6, 10)


def test_needs_full_when_source_cleared() -> None:
    # C lags at 3 but both A (promoted) and B (best) cleared below 6.
    a = NodeLog("A", H1, start=6, end=9)
    b = NodeLog("B", H1, start=6, end=10)
    c = NodeLog("C", H1, start=1, end=3)
    plan = plan_sync([a, b, c], promote="A")
    assert plan.pull == Transfer("B", "A", 9, 10)
    assert plan.transfers == []
    assert plan.needs_full == ["C"]


def test_needs_full_promoted_node_then_best_ships() -> None:
    a = NodeLog("A", H1, start=1, end=2)
    b = NodeLog("B", H1, start=5, end=10)
    c = NodeLog("C", H1, start=1, end=7)
    plan = plan_sync([a, b, c], promote="A")
    assert plan.needs_full == ["A"] and plan.pull is None
    assert plan.transfers == [Transfer("B", "C", 7, 10)]


def test_best_ships_when_promoted_node_cleared_more() -> None:
    a = NodeLog("A", H1, start=9, end=9)  # promoted, empty SRL
    b = NodeLog("B", H1, start=4, end=12)
    c = NodeLog("C", H1, start=1, end=5)
    plan = plan_sync([a, b, c], promote="A")
    assert plan.pull == Transfer("B", "A", 9, 12)
    assert plan.transfers == [Transfer("B", "C", 5, 12)]
    assert plan.needs_full == []


def test_divergent_tail_below_own_start_needs_full() -> None:
    hist2 = ((1, 1), (2, 5))
    p = NodeLog("P", H1, start=7, end=9)  # epoch-1 records 5..6 already cleared
    s = NodeLog("S", hist2, start=1, end=9)
    plan = plan_sync([p, s], promote="S")
    assert plan.divergent == {"P": (5, 9)}
    assert plan.needs_full == ["P"] and plan.transfers == []


def test_fresh_node_with_empty_history() -> None:
    fresh = NodeLog("f", (), start=1, end=1)
    a = NodeLog("a", ((1, 1), (2, 4)), start=1, end=6)
    plan = plan_sync([fresh, a], promote="a")
    assert plan.transfers == [Transfer("a", "f", 1, 6)]


def test_epoch_helpers() -> None:
    h = ((1, 1), (2, 8), (3, 8), (5, 12))
    assert [epoch_at(h, n) for n in (1, 7, 8, 11, 12, 99)] == [1, 1, 3, 3, 5, 5]
    assert epoch_at(((2, 5),), 4) is None
    assert divergence_point(NodeLog("x", H1, 1, 20), h) == 8
    assert divergence_point(NodeLog("x", H1, 1, 8), h) == 8
    assert divergence_point(NodeLog("x", ((1, 1), (3, 8)), 1, 20), h) == 12


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"history": H1, "start": 5, "end": 4}, "end LSN 4 < start LSN 5"),
        ({"history": ((2, 1), (1, 5)), "start": 1, "end": 9}, "not increasing"),
        ({"history": ((1, 5), (2, 3)), "start": 5, "end": 9}, "not increasing"),
        ({"history": ((1, 1), (1, 5)), "start": 1, "end": 9}, "not increasing"),
        ({"history": (), "start": 1, "end": 3}, "does not say which epoch"),
        ({"history": ((1, 4),), "start": 2, "end": 5}, "does not say which epoch"),
        ({"history": H1, "start": 0, "end": 3}, "start LSN 0"),
        ({"history": ((1,),), "start": 1, "end": 3}, "pairs"),
    ],
)
def test_nodelog_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(LogDiffError, match=match):
        NodeLog("n1", **kwargs)


def test_plan_validation() -> None:
    assert issubclass(LogDiffError, ReplError) and issubclass(LogDiffError, ValueError)
    with pytest.raises(ValueError, match="'nope' is not among"):
        plan_sync([SN1, SN2], promote="nope")
    with pytest.raises(ValueError, match="reported twice"):
        plan_sync([SN1, SN1], promote="SN1")
    with pytest.raises(ValueError, match="no nodes"):
        plan_sync([], promote="SN1")


def test_history_lists_are_normalised() -> None:
    n = NodeLog("a", [[1, 1], [2, 5]], 1, 7)  # type: ignore[arg-type]
    assert n.history == ((1, 1), (2, 5)) and n.epoch == 2


# --- property test: carry the plan out and check the result ---------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[NodeLog], str, dict[str, dict[int, int]], int]:
    """A linear main line of history, nodes truncated at random points of it (and with random
    starts), and sometimes an old primary that kept writing after a newer epoch began."""
    n_epochs = draw(st.integers(1, 4))
    firsts = sorted(
        draw(st.lists(st.integers(1, 30), min_size=n_epochs - 1, max_size=n_epochs - 1))
    )
    line: tuple[tuple[int, int], ...] = ((1, 1),) + tuple((i + 2, f) for i, f in enumerate(firsts))
    line_end = draw(st.integers(max(f for _, f in line), 35))

    def epoch_on_line(n: int) -> int:
        e = epoch_at(line, n)
        assert e is not None
        return e

    nodes: list[NodeLog] = []
    content: dict[str, dict[int, int]] = {}
    n_main = draw(st.integers(2, 5))
    for i in range(n_main):
        end = draw(st.integers(1, line_end))
        # A node knows the epochs that began before its end, and maybe one beginning there.
        known = tuple((e, f) for e, f in line if f < end or (f == end and draw(st.booleans())))
        if end == 1 and not known:
            start = 1
        else:
            start = draw(st.one_of(st.just(1), st.integers(1, end)))
        name = f"n{i}"
        nodes.append(NodeLog(name, known, start, end))
        content[name] = {n: epoch_on_line(n) for n in range(1, end)}
    # The epoch that superseded the old primary must be known by someone, or its tail is
    # not divergent at all (it is simply the furthest record of the only line anyone knows).
    bumps = [
        (j, f)
        for j, (_, f) in enumerate(line)
        if j > 0 and any(line[j] in nd.history for nd in nodes)
    ]
    if bumps and draw(st.booleans()):
        j, f = draw(st.sampled_from(bumps))
        end = draw(st.integers(f + 1, f + 6))
        start = draw(st.integers(1, end))
        old_epoch = line[j - 1][0]
        nodes.append(NodeLog("old", line[:j], start, end))
        content["old"] = {n: (epoch_on_line(n) if n < f else old_epoch) for n in range(1, end)}
    promote = draw(st.sampled_from([nd.name for nd in nodes]))
    expected_end = max(nd.end for nd in nodes if nd.name != "old")
    return nodes, promote, content, expected_end


def _apply(
    plan: SyncPlan, nodes: list[NodeLog], content: dict[str, dict[int, int]]
) -> tuple[dict[str, dict[int, int]], dict[str, int]]:
    """Carry a plan out on dicts LSN -> epoch, enforcing what the real SRLs enforce: a source
    ships only records still in its SRL, a target appends only at its end."""
    state = {k: dict(v) for k, v in content.items()}
    srl = {nd.name: (nd.start, nd.end) for nd in nodes}
    shipped: dict[str, int] = {}
    best_state = dict(content[plan.best])

    for name, (first, _end) in plan.divergent.items():
        if name in plan.needs_full:
            continue
        assert srl[name][0] <= first, "rolling back below start"
        state[name] = {n: e for n, e in state[name].items() if n < first}
        srl[name] = (srl[name][0], first)
    for name in plan.needs_full:
        state[name] = dict(best_state)
        srl[name] = (plan.best_end, plan.best_end)

    def run(t: Transfer) -> None:
        s_start, s_end = srl[t.source]
        assert s_start <= t.first_lsn and t.end_lsn <= s_end, f"{t} outside source SRL"
        t_start, t_end = srl[t.target]
        assert t_end == t.first_lsn, f"{t} does not append at target end {t_end}"
        for n in range(t.first_lsn, t.end_lsn):
            state[t.target][n] = state[t.source][n]
        srl[t.target] = (t_start, t.end_lsn)
        shipped[t.target] = shipped.get(t.target, 0) + t.count

    if plan.pull is not None:
        assert plan.pull.target == plan.promote and plan.pull.source == plan.best
        run(plan.pull)
    for t in plan.transfers:
        assert t.source in (plan.promote, plan.best) and t.target != plan.promote
        run(t)
    return state, shipped


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_property_plan_converges_and_ships_only_the_difference(scenario) -> None:
    nodes, promote, content, expected_end = scenario
    plan = plan_sync(nodes, promote)
    assert plan.best_end == expected_end
    assert plan.best != "old" or "old" not in plan.divergent
    best_state = content[plan.best]
    assert sorted(best_state) == list(range(1, plan.best_end))

    state, shipped = _apply(plan, nodes, content)
    for nd in nodes:
        assert state[nd.name] == best_state, nd.name
        if nd.name in plan.needs_full:
            continue
        lacked = sum(1 for n, e in best_state.items() if content[nd.name].get(n) != e)
        assert shipped.get(nd.name, 0) == lacked, nd.name
    assert plan_summary(plan) == shipped

    # needs_full only when no SRL can supply the records, or the divergent tail's blocks are
    # unknown because it reaches below the node's own start.
    by_name = {nd.name: nd for nd in nodes}
    best_start = by_name[plan.best].start
    prom = by_name[promote]
    prom_holds = plan.best_end if promote in plan.needs_full else prom.start
    for nd in nodes:
        first = plan.divergent.get(nd.name, (nd.end, nd.end))[0]
        lost_tail = nd.name in plan.divergent and first < nd.start
        if nd.name == plan.best:
            unreachable = False
        elif nd.name == promote:
            unreachable = first < best_start
        else:
            unreachable = first < plan.best_end and first < best_start and first < prom_holds
        assert (nd.name in plan.needs_full) == (lost_tail or unreachable), nd.name
