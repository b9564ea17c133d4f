"""Rule 4 of the README, no two histories: what a primary acknowledged after another node
was promoted in its place -- frozen and continued, cut off from its sync secondaries, or
starved of CPU. Pure functions over the schedule's records (tests/faults/checks.py has the
rest of the README's rules and the records themselves), unit-tested in test_schedule.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .checks import Freeze, Isolation, Promotion, Violation, in_history
from .ledger import Ledger, Write


def cut_since(isolations: Iterable[Isolation], f: Freeze, t: float) -> float | None:
    """When f's node (primary in f's epoch) was cut off from its sync secondaries, if such
    a cut was in force at ``t``: the writes submitted to it after that are
    check_isolated_acks' to judge."""
    cuts = [
        i.t_cut
        for i in isolations
        if i.node == f.node
        and i.epoch == f.epoch
        and i.t_cut <= t
        and (i.t_heal is None or i.t_heal >= t)
    ]
    return min(cuts) if cuts else None


def listed(writes: Sequence[Write], limit: int) -> str:
    """The first ``limit`` writes of a violation's message, with when each completed."""
    return "; ".join(f"{w.describe()} at {w.t_done:.2f}s" for w in writes[:limit])


def check_zombie_acks(
    ledger: Ledger,
    history: Sequence[Sequence[int]],
    end: int,
    freezes: Iterable[Freeze],
    promotions: Sequence[Promotion],
    limit: int = 4,
    isolations: Iterable[Isolation] = (),
) -> list[Violation]:
    """README: a primary that was frozen re-checks its peers before judging them, so it
    learns it was replaced and steps down instead of acknowledging alone. A write it
    acknowledged after SIGCONT, when another node had been promoted meanwhile, that is not
    in the winning history, contradicts that.

    Except a write submitted while the primary was already cut off from its sync
    secondaries when it was frozen (an `Isolation` in force): it had judged them before the
    freeze, so the README's other sentence applies ("a primary cut off from all its sync
    secondaries goes on completing writes alone"), and check_isolated_acks judges such
    writes (a violation under block, allowed under degrade)."""
    out = []
    isolations = list(isolations)
    for f in freezes:
        if not f.was_primary or f.t_cont is None or f.slow:
            continue
        t_stop, t_cont = f.t_stop, f.t_cont
        cut_at = cut_since(isolations, f, t_stop)
        newer = [p for p in promotions if p.epoch > f.epoch and t_stop <= p.t <= t_cont]
        if not newer:
            continue
        bad = [
            w
            for w in ledger.completed()
            if w.conn.node == f.node
            and w.epoch == f.epoch
            and w.t_done is not None
            and w.t_done > t_cont
            and not in_history(w, history, end)
            and (cut_at is None or w.t_submit < cut_at)
        ]
        if bad:
            out.append(
                Violation(
                    "zombie-ack",
                    f"{f.node} (primary, epoch {f.epoch}) was frozen at {t_stop:.2f}s, "
                    f"{newer[0].node} promoted to epoch {newer[0].epoch} at "
                    f"{newer[0].t:.2f}s, {f.node} continued at {t_cont:.2f}s and then "
                    f"acknowledged {len(bad)} writes that the history "
                    f"{[list(h) for h in history]} discarded: " + listed(bad, limit),
                    [f.node, newer[0].node],
                )
            )
    return out


def check_isolated_acks(
    ledger: Ledger,
    history: Sequence[Sequence[int]],
    end: int,
    isolations: Iterable[Isolation],
    promotions: Sequence[Promotion],
    mode: str,
    limit: int = 4,
) -> tuple[list[Violation], int]:
    """Two histories served at once: a primary cut off from its sync secondaries while the
    other side promoted. README, "When things go wrong": with on_sync_loss = "block" its
    writes wait for the sync secondaries and fail after sync_timeout, so it acknowledges
    nothing the new side will not have — a write submitted to it after the cut, completed,
    and missing from the history that won is a violation. With "degrade" it "goes on
    completing writes alone, and if another node is promoted meanwhile those writes become
    the old primary's divergent tail and are discarded": allowed, and counted (second
    value), never required to survive (their absence from every volume is checked by
    check_volume_content like any discarded write's).

    Under "block" too when one of its sync secondaries was not on the other side at the
    promotion (cut off, frozen or down as well: seed 5002 round 1, alpha muted): after the
    heal that node may hear the old primary before the new one, follow it and acknowledge
    its records. The promotion went on without it, which `promote_min_peers` allows; the
    writes it then acknowledged are lost with it, as check_acknowledged_survive allows for a
    secondary unreachable at a promotion."""
    out: list[Violation] = []
    allowed = 0
    for iso in isolations:
        newer = [
            p
            for p in promotions
            if p.epoch > iso.epoch
            and p.t >= iso.t_cut
            and (iso.t_heal is None or p.t <= iso.t_heal)
        ]
        if not newer:
            continue
        astray = [s for s in iso.sync_peers if s not in newer[0].reachable]
        bad = [
            w
            for w in ledger.completed()
            if w.conn.node == iso.node
            and w.epoch == iso.epoch
            and w.t_submit >= iso.t_cut
            and not in_history(w, history, end)
        ]
        if not bad:
            continue
        if mode != "block" or astray:
            allowed += len(bad)
            continue
        out.append(
            Violation(
                "isolated-ack",
                f"{iso.node} (primary, epoch {iso.epoch}) was cut off from its sync "
                f"secondaries ({iso.how}) at {iso.t_cut:.2f}s, {newer[0].node} promoted to "
                f"epoch {newer[0].epoch} at {newer[0].t:.2f}s, and {iso.node} acknowledged "
                f"{len(bad)} writes submitted after the cut that the history "
                f"{[list(h) for h in history]} does not have (on_sync_loss=block): "
                + listed(bad, limit),
                [iso.node, newer[0].node],
            )
        )
    return out, allowed


def check_slow_acks(
    ledger: Ledger,
    history: Sequence[Sequence[int]],
    end: int,
    freezes: Iterable[Freeze],
    promotions: Sequence[Promotion],
    mode: str,
    limit: int = 4,
    isolations: Iterable[Isolation] = (),
) -> tuple[list[Violation], int, int]:
    """A primary starved of CPU (never stopped: no stall for it to notice) while another
    node is promoted. Under on_sync_loss = "block" every write it completes needs a sync
    secondary's acknowledgement, and a secondary that knows the newer epoch refuses its
    records, so a write it completed after the promotion began and the winning history
    lacks contradicts README rule 6 -- unless one of its sync secondaries was away from the
    promotion (cut off, frozen or down), which `promote_min_peers` allows, as
    check_isolated_acks does. Under "degrade" it may have judged its peers gone while it
    was too slow to read them and completed writes alone: those are the old primary's
    divergent tail, allowed and counted (second value), and checked absent from every
    volume like any discarded write. The third value: how many of its writes completed
    after the promotion began were judged (kept or not). Writes submitted after it was
    also cut off (an `Isolation` of it in force at the promotion: `slow_primary_failover`'s
    mute links) are check_isolated_acks' to judge."""
    out: list[Violation] = []
    allowed = judged = 0
    isolations = list(isolations)
    for f in freezes:
        if not f.was_primary or not f.slow:
            continue
        newer = [
            p
            for p in promotions
            if p.epoch > f.epoch and p.t >= f.t_stop and (f.t_cont is None or p.t <= f.t_cont)
        ]
        if not newer:
            continue
        first = newer[0]
        cut_at = cut_since(isolations, f, first.t)
        late = [
            w
            for w in ledger.completed()
            if w.conn.node == f.node
            and w.epoch == f.epoch
            and w.t_done is not None
            and w.t_done > first.t
            and (cut_at is None or w.t_submit < cut_at)
        ]
        judged += len(late)
        bad = [w for w in late if not in_history(w, history, end)]
        if not bad:
            continue
        astray = [s for s in f.sync_peers if s not in first.reachable]
        if mode != "block" or astray:
            allowed += len(bad)
            continue
        out.append(
            Violation(
                "slow-zombie-ack",
                f"{f.node} (primary, epoch {f.epoch}) was slowed to {f.slow:g} % of a CPU at "
                f"{f.t_stop:.2f}s, {first.node} promoted to epoch {first.epoch} at "
                f"{first.t:.2f}s with every sync secondary of {f.node} ({list(f.sync_peers)}) "
                f"reachable, and {f.node} then acknowledged {len(bad)} writes that the history "
                f"{[list(h) for h in history]} does not have (on_sync_loss=block): "
                + listed(bad, limit),
                [f.node, first.node],
            )
        )
    return out, allowed, judged
