"""Promotion scores: how much Pacemaker should prefer promoting a node (a pure function).

The agent publishes the result with ``crm_attribute --promotion``; ``None`` means "publish no
score" (the attribute is deleted), which Pacemaker reads as "never promote this node".

The scale, modelled on LINBIT's drbd.ocf (primary / up to date and peers known / only locally
good / do not promote):

* ``SCORE_BEST`` (1000): the primary, and a secondary that has every record the connected
  peers that told it their end LSN have.
* ``SCORE_BEST - 10 - lag``, never below ``SCORE_FLOOR`` (5): a secondary lacking ``lag``
  records that some connected peer has. ``promote`` pulls them first, so a lagging node can
  still be promoted safely; it just costs a transfer.
* ``SCORE_ALONE`` (1): a consistent secondary that sees no peer at all (or none that told it
  its end LSN), so it cannot tell whether it is up to date. Like drbd.ocf's score for a node
  whose peers' disk states are unknown, it is kept low rather than withheld: it ranks below
  every node that could compare itself with someone, yet leaves a lone survivor promotable
  when the operator allows it (``min_peers=0``); ``promote`` itself still refuses when it
  cannot see ``min_peers`` peers, so the score never overrides that check.
* ``None``: the node's data must not be promoted (invariant 8): inconsistent during a
  divergent-tail rewind, a dcm resync or a full sync.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCORE_BEST = 1000
SCORE_FLOOR = 5
SCORE_ALONE = 1
#: a secondary lacking even one record ranks clearly below an up-to-date one
LAG_PENALTY = 10

#: local sync states in which the volume is not a prefix state of the history
INCONSISTENT_STATES = frozenset({"rewinding", "dcm-resync", "full-sync", "inconsistent"})


@dataclass(frozen=True)
class NodeView:
    """What the score depends on: this node's role, end LSN and consistency, and the end
    LSNs of the connected peers that reported one."""

    role: str  # "primary" | "secondary"
    end_lsn: int
    consistent: bool = True
    state: str = "up-to-date"  # or one of INCONSISTENT_STATES
    peer_ends: tuple[int, ...] = ()

    @classmethod
    def from_status(cls, st: Mapping[str, Any]) -> NodeView:
        """From the daemon's status document (``replctl status --json``)."""
        # the document has no local sync state of its own: a dcm resync or full sync shows
        # as consistent=False, a divergent-tail rewind as rewinding=True (and consistent=False)
        state = "rewinding" if st.get("rewinding") else "up-to-date"
        ends = tuple(
            int(p["end_lsn"])
            for p in (st.get("peers") or {}).values()
            if p.get("connected") and p.get("end_lsn") is not None
        )
        return cls(
            role=st["role"],
            end_lsn=int(st["end_lsn"]),
            consistent=bool(st.get("consistent", True)),
            state=state,
            peer_ends=ends,
        )


def promotion_score(view: NodeView | Mapping[str, Any]) -> int | None:
    """The promotion score for ``view`` (a NodeView or a daemon status document); None:
    publish no score, this node must not be promoted."""
    if not isinstance(view, NodeView):
        view = NodeView.from_status(view)
    if view.role == "primary":
        return SCORE_BEST
    if not view.consistent or view.state in INCONSISTENT_STATES:
        return None
    if not view.peer_ends:
        return SCORE_ALONE
    lag = max(end - view.end_lsn for end in view.peer_ends)
    if lag <= 0:
        return SCORE_BEST
    return max(SCORE_FLOOR, SCORE_BEST - LAG_PENALTY - lag)
