"""Promotion scores (replengine.pacemaker.scores): a pure function of the node's status."""

from __future__ import annotations

import pytest

from replengine.pacemaker.scores import (
    SCORE_ALONE,
    SCORE_BEST,
    SCORE_FLOOR,
    NodeView,
    promotion_score,
)


def status(
    role: str = "secondary",
    end_lsn: int = 100,
    consistent: bool = True,
    rewinding: bool = False,
    peers: dict | None = None,
) -> dict:
    """The fields of the daemon's status document the score reads."""
    return {
        "role": role,
        "end_lsn": end_lsn,
        "consistent": consistent,
        "rewinding": rewinding,
        "peers": peers or {},
    }


def peer(end_lsn: int | None, connected: bool = True) -> dict:
    return {"connected": connected, "end_lsn": end_lsn}


CASES = [
    # (id, status document, expected score)
    ("primary", status("primary", peers={"b": peer(100)}), SCORE_BEST),
    ("primary sees nobody", status("primary"), SCORE_BEST),
    ("primary behind a peer's report", status("primary", 90, peers={"b": peer(100)}), SCORE_BEST),
    ("up-to-date secondary", status(peers={"a": peer(100), "c": peer(80)}), SCORE_BEST),
    ("secondary ahead of its peers", status(end_lsn=120, peers={"a": peer(100)}), SCORE_BEST),
    ("lagging by 1", status(end_lsn=99, peers={"a": peer(100)}), SCORE_BEST - 10 - 1),
    ("lagging by 50", status(end_lsn=50, peers={"a": peer(100), "c": peer(70)}), SCORE_BEST - 60),
    (
        "lag measured to the best peer",
        status(end_lsn=90, peers={"a": peer(95), "c": peer(100)}),
        980,
    ),
    ("lagging by 10000: floor", status(end_lsn=1, peers={"a": peer(10_001)}), SCORE_FLOOR),
    ("lagging by exactly the range", status(end_lsn=15, peers={"a": peer(1000)}), SCORE_FLOOR),
    ("inconsistent (dcm resync / full sync)", status(consistent=False, peers={"a": peer(1)}), None),
    ("rewinding a divergent tail", status(rewinding=True, peers={"a": peer(100)}), None),
    ("rewinding and inconsistent", status(consistent=False, rewinding=True), None),
    ("no peers seen", status(), SCORE_ALONE),
    ("peers configured but disconnected", status(peers={"a": peer(500, False)}), SCORE_ALONE),
    ("connected peer that has not said its end LSN", status(peers={"a": peer(None)}), SCORE_ALONE),
    (
        "disconnected peer ahead is ignored",
        status(peers={"a": peer(500, False), "c": peer(100)}),
        SCORE_BEST,
    ),
    ("inconsistent and alone", status(consistent=False), None),
]


@pytest.mark.parametrize("doc,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_promotion_score(doc, expected):
    assert promotion_score(doc) == expected
    # the dataclass form gives the same answer as the status document
    assert promotion_score(NodeView.from_status(doc)) == expected


VIEWS = [
    ("dcm-resync state", NodeView("secondary", 100, state="dcm-resync", peer_ends=(100,)), None),
    ("full-sync state", NodeView("secondary", 100, state="full-sync", peer_ends=(100,)), None),
    ("rewinding state", NodeView("secondary", 100, state="rewinding", peer_ends=(100,)), None),
    ("up-to-date state", NodeView("secondary", 100, peer_ends=(100,)), SCORE_BEST),
    ("alone", NodeView("secondary", 100), SCORE_ALONE),
    ("primary", NodeView("primary", 1), SCORE_BEST),
]


@pytest.mark.parametrize("view,expected", [c[1:] for c in VIEWS], ids=[c[0] for c in VIEWS])
def test_promotion_score_views(view, expected):
    assert promotion_score(view) == expected


def test_scores_order_nodes_by_how_up_to_date_they_are():
    """Pacemaker promotes the highest score: the ranking must follow the lag, a node that
    cannot compare itself with anyone ranks below every node that can, and none of them
    outranks an up-to-date secondary."""
    ends = [100, 99, 95, 60, 10]
    scores = [promotion_score(NodeView("secondary", e, peer_ends=(100,))) for e in ends]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)
    assert all(s >= SCORE_FLOOR for s in scores)
    assert SCORE_ALONE < SCORE_FLOOR < SCORE_BEST
    assert promotion_score(NodeView("secondary", 100)) < min(scores)
