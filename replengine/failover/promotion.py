"""The promotion state machine: probe the peers, plan, pull what this node lacks, raise the
epoch (docs/architecture.md, "One promotion").

It decides; the node carries out. Everything it needs from the node is the narrow
PromotionContext below, so it is unit-tested against a fake (tests/test_promotion.py) and the
daemon keeps replicating while a promotion runs: the loop calls ``step()`` on every turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from replengine.failover.planner import NodeLog, SyncPlan, plan_sync
from replengine.log.history import epoch_at, records_after

log = logging.getLogger(__name__)

PULL_GRACE_S = 30.0
PULL_RECORDS_PER_S = 2000.0
#: a pull that brought nothing for this many heartbeats is asked for again from where this
#: node's log ends: the request, or the records on their way, went with a connection the
#: transport gave up on (a lossy link; the fault campaign, seed 13501 round 7: 3 records
#: over a link losing 30 % of its packets waited out the pull's deadline, and the
#: promotion was refused). The source restarts the pull from there; a record that arrives
#: twice is passed over
PULL_RETRY_HEARTBEATS = 3
#: how long a peer heard since the probe began, whose answer has not come, is waited for.
#: Its answer queues behind whatever its link still carries: a congested link holds seconds
#: of records and of HELLOs from before a demote, and deciding on those refuses for a reason
#: no longer true ("alpha is primary and reachable" just after alpha's demote answered) or
#: misses records it logged since. The probe is sent again every 3 heartbeats meanwhile,
#: in case it went with a connection given up on. A peer of a release that does not flag
#: its answers (before 3d5f0db) is taken as heard when this ends
ANSWER_WAIT_S = 20.0
#: how long a promotion short of the peers it needs waits for more to be heard before it
#: refuses (and one that knows of an epoch no reachable log follows, before it goes on
#: without them: Promotion._awaiting_peers): a link just healed is reached again at the
#: transport's next connection attempt
#: (every 2 s for a peer whose attempt is stuck, replengine.wire.transport.RETRY_CONNECT_S),
#: plus a handshake, so a promotion started at the heal (Pacemaker's, an operator's right
#: after the network is back) found "only 0 of 2 peers reachable" within its 3-heartbeat
#: window and was refused while the peers were a second away. A peer whose connection was
#: refused (nothing listens there) is not waited for
QUORUM_WAIT_S = 6.0


@dataclass(frozen=True)
class PeerView:
    """What the promotion needs to know of one peer, from its latest HELLO."""

    name: str
    seen_at: float  # monotonic time of its latest message (0: never)
    rejected: bool
    role: str
    history: tuple[tuple[int, int], ...]
    start_lsn: int
    end_lsn: int
    consistent: bool
    epoch: int
    alive: bool = False  # heard from within the liveness window (3 heartbeats)
    answered_at: float = 0.0  # monotonic time of its latest answer to a probe (0: none)


def next_epoch(highest: int, index: int, count: int) -> int:
    """The epoch a promotion raises: the smallest one above every epoch known that belongs
    to this node -- node ``index`` of ``count`` (its place in the config's node list, the
    same on every node) owns the epochs e with (e - 1) % count == index.

    Two promotions that run at once (two operators, a partition with --force) therefore never
    raise the same epoch, so their histories can always be told apart (invariant 4); with one
    promotion at a time the numbers stay small: alpha raises 1, then beta 2, gamma 3.
    """
    if not 0 <= index < count:
        raise ValueError(f"node index {index} is not in [0, {count})")
    e = highest + 1
    return e + (index - (e - 1)) % count


class PromotionContext(Protocol):
    """What a promotion may ask of and do to its node."""

    me: str
    heartbeat_s: float

    def peer_views(self) -> Sequence[PeerView]: ...
    def peer_count(self) -> int: ...
    def refused_since(self) -> dict[str, float]:
        """Peer -> a time before which its latest refused connection attempt did not
        happen (none since it last connected: absent)."""
        ...

    def local_log(self) -> NodeLog: ...
    def local_consistent(self) -> bool: ...
    def highest_epoch(self) -> int: ...
    def node_slot(self) -> tuple[int, int]: ...
    def srl_full(self) -> str | None: ...
    def make_room(self) -> tuple[int, int] | None:
        """Clear this node's log of the records it has applied, which the primary that
        died never let it clear: the LSNs [first, end) newly given up, or None when there
        are none beyond what was cleared already (its volume has yet to take the rest)."""
        ...

    def start_pull(self, source: str, first: int, end: int) -> None: ...
    def stop_pull(self) -> None: ...
    def pulled_bytes(self) -> int: ...
    def become_primary(self, epoch: int) -> int: ...
    def announce(self) -> None: ...


class Phase(Enum):
    PROBE = "probe"
    PULL = "pull"


class PromotionRefused(Exception):
    """The promotion ended without promoting; the message says why and what to do."""


@dataclass
class Promotion:
    """One `replctl promote`; ``step()`` returns the result document once done, raises
    PromotionRefused when it must not go ahead, and returns None while it is still running."""

    ctx: PromotionContext
    force: bool
    min_peers: int
    t0: float = field(default_factory=time.monotonic)
    phase: Phase = Phase.PROBE
    source: str = ""
    target_end: int = 0
    pulled: int = 0
    #: peers whose connection was refused since the probe began (not waited for)
    refused: list[str] = field(default_factory=list)
    deadline: float = 0.0
    #: what decided it, for the event that reports it (node.events): each consistent
    #: reachable node's end LSN, the most up-to-date one, the peers not heard from
    decision: dict = field(default_factory=dict)
    #: records only an inconsistent peer holds that this promotion could not take
    left_behind: dict | None = None
    #: whether the node pulled from can be promoted in this one's place
    source_consistent: bool = True
    #: the applied records this node cleared from its full log to take the pull
    made_room: dict | None = None
    #: this node's log end when the pull last brought a record, and when (monotonic)
    progress: tuple[int, float] = (0, 0.0)
    #: how often the pull was asked for again (PULL_RETRY_HEARTBEATS)
    pull_retries: int = 0
    #: every other member's end LSN when each was reachable, consistent and on this history
    #: at the plan (else empty): what tells that no laggard needs this node's log
    member_ends: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ctx.local_consistent() and not self.force:
            raise PromotionRefused(
                f"{self.ctx.me} is inconsistent (its volume is being rewritten from blocks): "
                "promote a consistent node, or use --force to promote this one anyway"
            )
        self.probe_until = self.t0 + self.ctx.heartbeat_s * 1.5
        self.asked_at = self.t0
        self.ctx.announce()

    def step(self, now: float | None = None) -> dict | None:
        now = time.monotonic() if now is None else now
        try:
            if self.phase is Phase.PROBE:
                views = self.ctx.peer_views()
                fresh = [p for p in views if p.seen_at > self.t0 and not p.rejected]
                heard = {p.name for p in fresh}
                answered = {p.name for p in fresh if p.answered_at > self.t0}
                # a connection to it refused since the probe began: nothing listens there (a
                # killed daemon, a stopped node), so no answer can come within the window,
                # and waiting it out only delays the failover. A busy peer's kernel still
                # accepts the connection; a cut link drops packets and refuses nothing
                self.refused = sorted(
                    {n for n, t in self.ctx.refused_since().items() if t > self.t0} - heard
                )
                if (
                    len(answered) + len(self.refused) < self.ctx.peer_count()
                    and now < self.probe_until
                ):
                    return None
                # a peer that was alive when the probe began but has not answered yet (a busy
                # machine) gets up to the liveness window before it is counted as unreachable
                late = [
                    p
                    for p in views
                    if p.alive
                    and p.seen_at <= self.t0
                    and not p.rejected
                    and p.name not in self.refused
                ]
                # a peer heard since the probe began whose answer has not come: what it said
                # may have left it before (a congested link's queue holds seconds), such as
                # the role of a primary demoted since (seed 12602: "gamma is primary and
                # reachable" just after `demote` of gamma answered). Its answer, sent once
                # it had the probe, is waited for as long. A peer of a release that does
                # not flag its answers is taken as heard when the window ends
                unanswered = [p for p in fresh if p.name not in answered]
                window = 3 * self.ctx.heartbeat_s
                if (late or unanswered) and now < self.t0 + window:
                    return None
                if unanswered and now < self.t0 + ANSWER_WAIT_S:
                    if now >= self.asked_at + window:
                        log.warning(
                            "promotion: %s heard but not answering the probe after %.1f s: "
                            "asking again (a congested link delays the answer)",
                            ", ".join(p.name for p in unanswered),
                            now - self.t0,
                        )
                        self._ask_again(now)
                    return None
                if self._awaiting_peers(views, fresh, heard, now):
                    return None
                return self._plan(fresh)
            return self._pulling(now)
        except PromotionRefused:
            self.ctx.stop_pull()
            raise

    def _ask_again(self, now: float) -> None:
        self.ctx.announce()
        self.asked_at = now

    def _quorum(self, fresh: list[PeerView]) -> tuple[int, int, list[str]]:
        """The peers heard that count, the number needed, and the blank ones heard."""
        blank = self._uninformed(fresh)
        need = min(self.min_peers, self.ctx.peer_count() - len(blank))
        return len(fresh) - len(blank), need, blank

    def _awaiting_peers(
        self, views: Sequence[PeerView], fresh: list[PeerView], heard: set[str], now: float
    ) -> bool:
        """The promotion keeps listening up to QUORUM_WAIT_S, asking again every 3
        heartbeats, while some peer is neither heard nor refused and either

        - fewer peers are heard than it needs (a link just back is reached at the next
          connection attempt), or
        - it knows of an epoch that no reachable log follows: that epoch's primary may have
          acknowledged writes only peers not heard yet hold. A node cut off while another
          was promoted and demoted, promoted itself 0.4 s after its link came back, heard
          only a node that had missed that epoch too and discarded 3 acknowledged records
          that the two others, connected 0.13 s later, held (the fault campaign, seed 14101
          round 7, with promote_min_peers = 1). In a failover the survivors follow the lost
          primary's epoch, so this costs it nothing.

        Not when forced: the operator asked not to wait for anyone."""
        if self.force or now >= self.t0 + QUORUM_WAIT_S:
            return False
        rejected = {p.name for p in views if p.rejected}
        silent = self.ctx.peer_count() - len(heard | rejected | set(self.refused))
        if silent <= 0:
            return False
        have, need, _ = self._quorum(fresh)
        newer = self.ctx.highest_epoch()
        if have >= need and newer <= self._followed(fresh):
            return False
        if now >= self.asked_at + 3 * self.ctx.heartbeat_s:
            why = (
                f"{have} of the {need} peers it needs heard"
                if have < need
                else f"no reachable log follows epoch {newer}"
            )
            log.warning(
                "promotion: %s after %.1f s: waiting for the %d not heard (a link just back "
                "is reached at the next connection attempt)",
                why,
                now - self.t0,
                silent,
            )
            self._ask_again(now)
        return True

    def _followed(self, fresh: list[PeerView]) -> int:
        """The newest epoch this node's log or a reachable peer's log follows."""
        logs = [self.ctx.local_log().history] + [p.history for p in fresh if p.history]
        return max((h[-1][0] for h in logs if h), default=0)

    def _pulling(self, now: float) -> dict | None:
        end = self.ctx.local_log().end
        if end >= self.target_end:
            return self._finish()
        full = self.ctx.srl_full()
        if full:
            held = self._held_everywhere(end)
            if self.source_consistent and not held:
                # the better outcome: that node takes over with every record, and this
                # one keeps the records a laggard's log-diff catch-up needs
                raise PromotionRefused(
                    f"cannot pull LSNs [{end}, {self.target_end}) from {self.source}: "
                    f"{full}; promote {self.source} instead (it holds every record)"
                )
            self._make_room(
                full,
                held
                or f"{self.source} cannot be promoted instead (it is inconsistent), so a "
                "peer that lacks them is resynced from blocks, not from the log",
            )
            self.progress = (end, now)  # waiting for room is not a stalled pull
        elif end != self.progress[0]:
            self.progress = (end, now)
        elif now - self.progress[1] > PULL_RETRY_HEARTBEATS * self.ctx.heartbeat_s:
            log.warning(
                "promotion: nothing from %s for %.1f s: asking again for LSNs [%d, %d)",
                self.source,
                now - self.progress[1],
                end,
                self.target_end,
            )
            self.ctx.start_pull(self.source, end, self.target_end)
            self.progress = (end, now)
            self.pull_retries += 1
        if now > self.deadline:
            raise PromotionRefused(
                f"could not pull LSNs [{end}, {self.target_end}) from {self.source} in time; "
                "refusing so another node can be promoted"
            )
        return None

    def _held_everywhere(self, end: int) -> str:
        """Why no other node can need this node's log below ``end`` (else ""): every
        member answered the probe, consistent and on this history, holding at least up to
        it. So clearing the records this node has applied costs nobody a log-diff
        catch-up, and the promotion the operator asked for goes ahead: a planned
        switchover to an async node that was behind, whose log was still full of records
        the demoted primary would have had it clear (the fault campaign's `switchover`:
        "promote alpha instead" 5 to 10 times in 100 schedules)."""
        ends = self.member_ends
        if not ends or min(ends.values()) < end:
            return ""
        return (
            f"every other node ({', '.join(sorted(ends))}) holds them (reachable, "
            f"consistent, each at or past LSN {end}), so no log-diff catch-up needs them"
        )

    def _make_room(self, full: str, why: str) -> None:
        """This node's log gives up the records it has applied, which only a laggard's
        log-diff catch-up could need: when no other node lacks them (_held_everywhere), or
        when the node pulled from is being rebuilt from blocks and cannot be promoted
        instead, refusing would leave no node promotable (the primary is gone); such a
        laggard is then resynced from blocks (the chunks that differ) instead."""
        cleared = self.ctx.make_room()
        if cleared is None:
            # cleared already, or its volume has yet to take what the log holds: room comes
            # as it does (a hung volume never does: the pull's deadline refuses then)
            return
        first, upto = cleared
        if self.made_room is None:
            self.made_room = {"first_lsn": first, "end_lsn": upto}
        else:
            self.made_room["end_lsn"] = upto
        self.decision["made_room"] = self.made_room
        log.warning(
            "promotion: %s; records [%d, %d), applied here, are cleared from this log to "
            "make room: %s",
            full,
            first,
            upto,
            why,
        )

    def _uninformed(self, fresh: list[PeerView]) -> list[str]:
        """The reachable peers that do not count towards min_peers: those with an empty log
        (a node added, or back on new disks, before its full sync has given it one), once
        this node knows of an epoch that neither its log nor any other reachable log has
        followed. A primary of that epoch may have acknowledged writes, and an empty log
        cannot say where they are (fault campaign, seed 11704: beta, cut off since epoch 7,
        heard of epoch 8 and was promoted with only gamma, just back on new disks,
        reachable; it discarded 132 records of epoch 8 that alpha and delta held). Without
        such an epoch they count as before: a new node being synced when its primary dies
        does not keep an up-to-date secondary from taking over. The requirement is then
        capped at the peers that may hold data: a new node cannot be ahead of anyone."""
        blank = [p.name for p in fresh if not p.history]
        followed = self._followed(fresh)
        if not blank or not followed or self.ctx.highest_epoch() <= followed:
            return []
        return blank

    def _plan(self, fresh: list[PeerView]) -> dict | None:
        ctx = self.ctx
        primaries = [p.name for p in fresh if p.role == "primary"]
        if primaries:
            raise PromotionRefused(
                f"{', '.join(primaries)} is primary and reachable: demote it first"
            )
        have, need, blank = self._quorum(fresh)
        if have < need:
            empty = (
                f"; {', '.join(blank)} reachable but with an empty log (new), which holds no "
                "write and does not count"
                if blank
                else ""
            )
            if not self.force:
                raise PromotionRefused(
                    f"only {have} of {ctx.peer_count()} peers reachable "
                    f"({', '.join(p.name for p in fresh if p.name not in blank) or 'none'}"
                    f"{empty}); promotion needs {need} so that no acknowledged write is left "
                    "behind on an unreachable node; use --force to promote anyway"
                )
            log.error(
                "FORCED PROMOTION with %d of %d peers reachable (need %d): writes only "
                "unreachable nodes hold may be lost",
                have,
                ctx.peer_count(),
                need,
            )
        logs = [ctx.local_log()]
        logs += [NodeLog(p.name, p.history, p.start_lsn, p.end_lsn) for p in fresh if p.consistent]
        plan = plan_sync(logs, ctx.me)
        logs, plan = self._with_inconsistent_logs(logs, plan, fresh)
        heard = {p.name for p in fresh}
        self.decision = {
            "ends": {lg.name: lg.end for lg in logs},
            "best": plan.best,
            "best_end": plan.best_end,
            "unreachable": sorted(p.name for p in ctx.peer_views() if p.name not in heard),
            "refused": self.refused,
            "left_behind": self.left_behind,
            "made_room": None,
        }
        self._check_plan(plan)
        self._check_newer_elsewhere(logs)
        if plan.pull is None or ctx.me in plan.needs_full:
            return self._finish()
        self.phase, self.source, self.target_end = Phase.PULL, plan.pull.source, plan.pull.end_lsn
        self.source_consistent = any(p.consistent for p in fresh if p.name == self.source)
        odd = set(plan.divergent) | set(plan.needs_full)
        if len(fresh) == ctx.peer_count() and all(
            p.consistent and p.name not in odd for p in fresh
        ):
            self.member_ends = {p.name: p.end_lsn for p in fresh}
        self.pulled = plan.pull.count
        self.deadline = time.monotonic() + PULL_GRACE_S + self.pulled / PULL_RECORDS_PER_S
        log.warning(
            "promotion: %s is ahead; pulling LSNs [%d, %d) from it first",
            self.source,
            plan.pull.first_lsn,
            plan.pull.end_lsn,
        )
        ctx.start_pull(self.source, plan.pull.first_lsn, plan.pull.end_lsn)
        now = time.monotonic()
        self.progress = (ctx.local_log().end, now)
        return self._pulling(now)

    def _with_inconsistent_logs(
        self, logs: list[NodeLog], plan: SyncPlan, fresh: list[PeerView]
    ) -> tuple[list[NodeLog], SyncPlan]:
        """A peer being rebuilt from blocks (`invalidate`, `sync --full`, a rewind) cannot be
        promoted, but its log is as sound as any: records it logged and acknowledged before
        it turned inconsistent may be held nowhere else (the primary died meanwhile, the
        other sync secondaries were behind). Pull them from it when its log reaches further
        and the plan that uses it still lets this node be promoted; else the plan without it
        stands, as before (tests/test_invalidate.py)."""
        extra = [
            NodeLog(p.name, p.history, p.start_lsn, p.end_lsn) for p in fresh if not p.consistent
        ]
        if not extra:
            return logs, plan
        wider = plan_sync(logs + extra, self.ctx.me)
        me = self.ctx.me
        if wider.best_end <= plan.best_end:
            return logs, plan
        if me in wider.divergent or me in wider.needs_full:
            # not silently: these records may have been acknowledged to the application
            why = (
                "this node's log diverges from its history"
                if me in wider.divergent
                else "its log no longer holds every record this node lacks"
            )
            self.left_behind = {
                "node": wider.best,
                "first_lsn": plan.best_end,
                "end_lsn": wider.best_end,
                "why": why,
            }
            log.error(
                "promotion: %s, inconsistent, holds LSNs [%d, %d) that no consistent node "
                "has, but they cannot be taken (%s): promoted without them, so writes "
                "acknowledged there, if any, are lost; they are %s's divergent tail from now",
                wider.best,
                plan.best_end,
                wider.best_end,
                why,
                wider.best,
            )
            return logs, plan
        log.warning(
            "promotion: %s, inconsistent, holds LSNs up to %d that no consistent node has: "
            "its log is used",
            wider.best,
            wider.best_end,
        )
        return logs + extra, wider

    def _check_plan(self, plan: SyncPlan) -> None:
        """Invariant 8: never promote a node whose volume is not the newest history's prefix
        -- it would make the others rewind records they acknowledged."""
        me = self.ctx.me
        if me in plan.divergent:
            first, end = plan.divergent[me]
            self._refuse_or_force(
                f"this node holds a divergent tail (LSNs [{first}, {end}) of an older "
                f"epoch); promote {plan.best} instead"
            )
        if me in plan.needs_full:
            mine = self.ctx.local_log().end
            self._refuse_or_force(
                f"this node lacks LSNs [{mine}, {plan.best_end}) and no reachable log still "
                f"holds all of them (cleared, e.g. under srl_full=dcm): promoting it would "
                f"discard acknowledged writes; promote {plan.best} instead, or give this node "
                "a full resync first"
            )

    def _check_newer_elsewhere(self, logs: list[NodeLog]) -> None:
        """Invariant 6 across epochs: a consistent peer that did not answer the probe but was
        last heard holding records of a newer epoch than every reachable log holds -- a
        primary promoted on the other side of a partition, or its secondary -- may hold
        acknowledged writes. Promoting here would start a history that discards them.

        A primary promoted and lost before its first write held no record of its epoch, so
        it does not block the cluster. An inconsistent node (being resynced) acknowledges
        nothing for its primary, so its records do not either."""
        usable = {lg.name for lg in logs}
        newest = max((epoch_at(lg.history, lg.end - 1) or 0 for lg in logs), default=0)
        now = time.monotonic()
        holders = []
        for p in self.ctx.peer_views():
            if p.rejected or p.name in usable or not p.consistent:
                continue
            held = records_after(p.history, p.end_lsn, newest)
            if held is not None:
                first, end, epoch = held
                # a lost connection zeroes seen_at: it was heard, but when is forgotten
                heard = (
                    f"last heard {now - p.seen_at:.1f} s ago" if p.seen_at else "connection lost"
                )
                holders.append(
                    (
                        p.name,
                        f"{p.name} ({p.role}, {heard}) held LSNs [{first}, {end}) "
                        f"up to epoch {epoch}",
                    )
                )
        if not holders:
            return
        names = ", ".join(n for n, _ in holders)
        self.decision["newer_elsewhere"] = [d for _, d in holders]
        self._refuse_or_force(
            "; ".join(d for _, d in holders)
            + f": records of a newer epoch than any reachable consistent log holds (its "
            f"newest is epoch {newest}); promoting {self.ctx.me} would discard them, and they "
            f"may be acknowledged writes. Bring {names} back and promote again (the promotion "
            "then pulls them), or use --force to discard them"
        )

    def _refuse_or_force(self, why: str) -> None:
        if not self.force:
            raise PromotionRefused(why)
        log.error("FORCED PROMOTION despite: %s; acknowledged writes may be lost", why)

    def _finish(self) -> dict:
        ctx = self.ctx
        new_epoch = next_epoch(ctx.highest_epoch(), *ctx.node_slot())
        first = ctx.become_primary(new_epoch)
        return {
            "role": "primary",
            "epoch": new_epoch,
            "first_lsn": first,
            "pulled_records": self.pulled,
            "pulled_bytes": ctx.pulled_bytes(),
            "pulled_from": self.source,
            "made_room": self.made_room,
            "seconds": round(time.monotonic() - self.t0, 3),
        }


__all__ = [
    "Phase",
    "PeerView",
    "Promotion",
    "PromotionContext",
    "PromotionRefused",
    "next_epoch",
]
