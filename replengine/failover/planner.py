"""Failover planning: who sends which LSNs to whom (the seed's Figs. 4A-5B: docs/architecture.md).

Everything here is a pure function of what the reachable nodes report -- (epoch history,
start, end) of their SRLs -- so the failover logic can be tested exhaustively without disks
or sockets, and the failover module only has to carry out the plan.

Terms (see docs/architecture.md and the README's concepts):

* A node's *history* is ``((epoch, first_lsn), ...)`` oldest first, PostgreSQL-timeline style:
  epoch E wrote LSNs ``[first_lsn_E, first_lsn_of_next_entry)``; the last entry is open-ended.
  Several entries may share a first LSN (a promotion with no writes before the next one); the
  later entry wins.
* LSNs below a node's first history entry are *unknown* to it (its volume was last fully
  synchronised there, or it is fresh) and are treated as agreeing with anything: nothing in
  its SRL can contradict another node there.
* Two nodes *agree* on LSN n iff their histories say the same epoch wrote n. The *divergence
  point* of node X against a reference history H is the first LSN < X.end where they disagree,
  or X.end if there is none. X is *compatible* with H when its divergence point is X.end.
* A node's volume reflects every record below its ``end`` (applied or still in the SRL); its
  SRL still holds ``[start, end)`` and can ship only those.

The plan has two phases, kept apart because they run at different times in the promotion
(design, "Failover" steps 2 and 4):

1. ``pull``: the node being promoted fetches what it lacks from the most up-to-date node, so
   whichever node Pacemaker chose becomes the most up-to-date one in O(lag).
2. ``transfers`` (the ship phase, after the promoted node raised its epoch): every other
   lagging node receives what it lacks. The source is the *promoted node* -- after the pull it
   holds everything up to ``best_end`` and it is the one that will stream new writes next,
   so shipping from it keeps one sender and one ordering. When the promoted node's own SRL
   does not reach back far enough (it had cleared more than the best node), the best node is
   named as the source instead, because shipping records still beats a full resync
   (invariant 5). Only when neither holds the records is the node put in ``needs_full``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from replengine.errors import ReplError
from replengine.log.history import divergence_point as history_divergence

History = tuple[tuple[int, int], ...]


class LogDiffError(ReplError, ValueError):
    """The node reports given to the planner are inconsistent (also a ValueError, since it is
    bad input to a pure function)."""


@dataclass(frozen=True)
class NodeLog:
    """What one reachable node reports about its SRL.

    ``history`` is normalised to a tuple of ``(epoch, first_lsn)`` tuples, so lists are
    accepted too. Validated on construction so a bad report is refused before any planning.
    """

    name: str
    history: History
    start: int
    end: int

    def __post_init__(self) -> None:
        try:
            hist = tuple((int(e), int(f)) for e, f in self.history)
        except (TypeError, ValueError) as exc:
            raise LogDiffError(
                f"node {self.name!r}: history must be a sequence of (epoch, first_lsn) "
                f"pairs, got {self.history!r}"
            ) from exc
        object.__setattr__(self, "history", hist)
        if not isinstance(self.name, str) or not self.name:
            raise LogDiffError(f"node name must be a non-empty string, got {self.name!r}")
        if self.start < 1:
            raise LogDiffError(f"node {self.name!r}: start LSN {self.start} < 1 (LSNs start at 1)")
        if self.end < self.start:
            raise LogDiffError(f"node {self.name!r}: end LSN {self.end} < start LSN {self.start}")
        prev: tuple[int, int] | None = None
        for epoch, first in hist:
            if epoch < 1 or first < 1:
                raise LogDiffError(
                    f"node {self.name!r}: history entry (epoch={epoch}, first_lsn={first}) "
                    "must have epoch >= 1 and first_lsn >= 1"
                )
            if prev is not None and (epoch <= prev[0] or first < prev[1]):
                raise LogDiffError(
                    f"node {self.name!r}: history is not increasing: (epoch={epoch}, "
                    f"first_lsn={first}) follows (epoch={prev[0]}, first_lsn={prev[1]}); "
                    "epochs must strictly increase and first LSNs must not decrease"
                )
            prev = (epoch, first)
        if self.end > self.start and (not hist or hist[0][1] > self.start):
            raise LogDiffError(
                f"node {self.name!r}: SRL holds LSNs [{self.start}, {self.end}) but its "
                f"history {hist!r} does not say which epoch wrote LSN {self.start}"
            )

    @property
    def epoch(self) -> int:
        """The latest epoch this node knows (0 when its history is empty)."""
        return self.history[-1][0] if self.history else 0


@dataclass(frozen=True)
class Transfer:
    """Ship records ``[first_lsn, end_lsn)`` from ``source``'s SRL to ``target``."""

    source: str
    target: str
    first_lsn: int
    end_lsn: int

    @property
    def count(self) -> int:
        """Number of records (LSNs) this transfer carries."""
        return self.end_lsn - self.first_lsn


@dataclass(frozen=True)
class SyncPlan:
    """The result of :func:`plan_sync`.

    The first five fields are the contract in docs/architecture.md. ``transfers`` is the ship
    phase only; the promoted node's own catch-up is ``pull``. ``history`` is the line of
    history everybody ends on (the promoted node adopts it, then appends its new epoch).
    Nodes in ``needs_full`` get no transfer: they must be resynchronised from blocks.
    A node can appear in both ``divergent`` and ``needs_full``.
    """

    best: str
    best_end: int
    transfers: list[Transfer]
    divergent: dict[str, tuple[int, int]]
    needs_full: list[str]
    pull: Transfer | None = None
    promote: str = ""
    history: History = field(default=())

    @property
    def all_transfers(self) -> list[Transfer]:
        """Pull (if any) followed by the ship phase, in execution order."""
        return ([self.pull] if self.pull is not None else []) + list(self.transfers)

    @property
    def is_empty(self) -> bool:
        """True when every node already holds the same records (nothing to do)."""
        return not self.all_transfers and not self.divergent and not self.needs_full


def divergence_point(node: NodeLog, reference: History) -> int:
    """First LSN below ``node.end`` whose epoch differs between ``node.history`` and
    ``reference``; ``node.end`` if they agree on all of the node's records (the one
    definition lives in replengine.log.history)."""
    return history_divergence(node.history, reference, node.end)


def _pick(candidates: Iterable[NodeLog], promote: str) -> NodeLog:
    """Furthest end wins; ties prefer the node being promoted, then the smallest name."""
    return min(candidates, key=lambda n: (-n.end, n.name != promote, n.name))


def plan_sync(nodes: list[NodeLog], promote: str) -> SyncPlan:
    """Plan the log-diff sync that makes every reachable node hold the latest history.

    Choosing the best node: the latest history is that of the highest epoch any node knows
    (a node that knows epoch E refuses older data, invariant 4). Among nodes knowing that
    epoch the one reaching furthest is the *reference*; ``best`` is then the node compatible
    with the reference's history holding the most records (ties: ``promote``, then name).
    Records of other nodes that the reference history says were written in a different epoch
    are a divergent tail and are rolled back, never shipped.

    For every node X other than ``best``: X needs ``[d, best_end)`` where d is its divergence
    point against the latest history; if d < X.end, ``divergent[X] = (d, X.end)``. X lands in
    ``needs_full`` if the records it needs are no longer in any source's SRL, or if its
    divergent tail starts below its own start (the blocks that cleared records touched are
    unknown, so they cannot be rewritten selectively).

    Raises :class:`LogDiffError` (a ValueError) for an unknown ``promote``, duplicate names or
    an inconsistent report (the latter from :class:`NodeLog`).
    """
    if not nodes:
        raise LogDiffError("plan_sync: no nodes given")
    by_name: dict[str, NodeLog] = {}
    for node in nodes:
        if not isinstance(node, NodeLog):
            raise LogDiffError(f"plan_sync: expected NodeLog, got {node!r}")
        if node.name in by_name:
            raise LogDiffError(f"plan_sync: node {node.name!r} reported twice")
        by_name[node.name] = node
    if promote not in by_name:
        raise LogDiffError(
            f"plan_sync: node to promote {promote!r} is not among the reachable nodes "
            f"{sorted(by_name)}"
        )

    top_epoch = max(n.epoch for n in nodes)
    reference = _pick((n for n in nodes if n.epoch == top_epoch), promote)
    history = reference.history
    diverge = {n.name: divergence_point(n, history) for n in nodes}
    best = _pick((n for n in nodes if diverge[n.name] == n.end), promote)
    best_end = best.end

    divergent: dict[str, tuple[int, int]] = {
        name: (d, by_name[name].end) for name, d in diverge.items() if d < by_name[name].end
    }
    needs_full: set[str] = set()

    def unrecoverable_tail(name: str) -> bool:
        return name in divergent and divergent[name][0] < by_name[name].start

    # Phase 1: the promoted node catches up from best. Afterwards its SRL holds
    # [holds_from, best_end): its own records up to d, then the pulled ones.
    prom = by_name[promote]
    pull: Transfer | None = None
    holds_from = prom.start
    if best.name != promote:
        need = diverge[promote]
        if unrecoverable_tail(promote) or need < best.start:
            needs_full.add(promote)
            holds_from = best_end  # a full resync leaves its SRL empty at best_end
        elif need < best_end:
            pull = Transfer(best.name, promote, need, best_end)

    # Phase 2: ship to everyone else from the promoted node, or from best if only it still
    # holds the records.
    transfers: list[Transfer] = []
    for name in sorted(by_name):
        if name in (promote, best.name):
            continue
        need = diverge[name]
        if unrecoverable_tail(name):
            needs_full.add(name)
        elif need >= best_end:
            continue
        elif need >= holds_from:
            transfers.append(Transfer(promote, name, need, best_end))
        elif need >= best.start:
            transfers.append(Transfer(best.name, name, need, best_end))
        else:
            needs_full.add(name)

    return SyncPlan(
        best=best.name,
        best_end=best_end,
        transfers=transfers,
        divergent=divergent,
        needs_full=sorted(needs_full),
        pull=pull,
        promote=promote,
        history=history,
    )


def plan_summary(plan: SyncPlan) -> dict[str, int]:
    """Records each target receives (pull and ship phase together), by target name.

    Handy for logs, ``replctl status`` and checking invariant 5 (records sent == records
    lacked). Targets receiving nothing are left out.
    """
    out: dict[str, int] = {}
    for t in plan.all_transfers:
        out[t.target] = out.get(t.target, 0) + t.count
    return out


def clear_point(acked: Mapping[str, int], applied: int, *, start: int = 1) -> int:
    """The SRL start a node may advance to (README rule 3; the seed's Figs. 4A/4B).

    ``acked`` maps every secondary of the resource to the highest LSN it has acknowledged
    (cumulative, inclusive; 0 = nothing), ``applied`` is the highest LSN this node has applied
    to its volume, ``start`` its current start. A record may be cleared only when every
    secondary acknowledged it *and* it is on this node's volume, so the new start is one past
    the smaller of the two -- never moving backwards.

    Raises :class:`LogDiffError` when ``acked`` is empty (a resource always has secondaries;
    an empty map would be a bug that clears records someone still needs) or holds negatives.
    """
    if not acked:
        raise LogDiffError("clear_point: no secondaries' acknowledgements given")
    bad = {k: v for k, v in acked.items() if v < 0}
    if bad or applied < 0:
        raise LogDiffError(
            f"clear_point: LSNs must be >= 0, got acked={dict(acked)!r} applied={applied}"
        )
    return max(start, min(min(acked.values()), applied) + 1)
