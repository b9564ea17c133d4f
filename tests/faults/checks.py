"""The README's rules, checked on what one round observed.

Pure functions over plain data (statuses as `replctl status --json` gives them, the ledger,
the round's promotions and observations), so they are unit-tested without daemons. Each
returns a list of `Violation`; the schedule adds the seed, round, mode, schedule and logs.

What must survive (invariant 6, "nothing acknowledged is lost with at least one sync
secondary surviving") is decided from evidence, never assumed:

- a completed write whose primary is still, at the end of the round, primary in the same
  epoch with no promotion since: nothing may discard it;
- a completed write with LSN L in epoch E for which some observation of E's primary (taken
  while E was the newest epoch) showed a *sync* secondary S with acked_lsn >= L, and S was
  reachable (running, not frozen, on the promoted node's side; consistent or not, since a
  node being rebuilt from blocks keeps its log and a promotion pulls from it, but not one
  whose disks were replaced) at every promotion after that observation: every promotion
  saw a node holding L, so L must be in the history that won;
- the same for E's primary itself once `replctl demote` of it answered (a planned
  switchover, in any mode): its log then holds every write it completed.

A completed write with no such evidence (acknowledged by a primary degraded to alone, or
only by a secondary that was then frozen or killed through a promotion) may legitimately be
a discarded divergent tail; it is then only required to be *absent* from every volume.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from replengine.log.history import divergence_point
from replengine.log.history import epoch_at as epoch_of

from .ledger import SECTOR, Ledger, Write, read_tag


@dataclass
class Violation:
    kind: str
    message: str
    nodes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class Promotion:
    t: float  # seconds since the round began, when `replctl promote` was started
    node: str
    epoch: int
    first_lsn: int
    reachable: set[str]  # nodes running, not frozen, on its side, logs not replaced (incl. node)
    ends: dict[str, str] = field(default_factory=dict)  # end LSN of each node, as a note


@dataclass
class Observation:
    """A status of the primary: which LSNs each sync secondary had acknowledged."""

    t: float
    node: str
    epoch: int
    acked: dict[str, int]  # sync peer -> acked_lsn (every LSN <= it is durable there)
    #: taken once `replctl demote` of that primary answered (a planned switchover): acked
    #: then holds the demoted node itself, its last logged LSN, every write it completed
    demoted: bool = False


@dataclass
class Freeze:
    node: str
    epoch: int  # its epoch when frozen, if it was primary
    was_primary: bool
    t_stop: float
    t_cont: float | None = None  # None: killed while frozen, or still frozen
    #: percent of one CPU it was throttled to (tests/faults/cpuslow.py), 0 for a SIGSTOP:
    #: a slowed node never stops, so it has no stall to notice when it is let go
    slow: float = 0.0
    #: a slowed primary's sync secondaries when it was slowed (check_slow_acks)
    sync_peers: tuple[str, ...] = ()


@dataclass
class Isolation:
    """A primary cut off from every sync secondary (its link down, or the cluster split
    with the sync secondaries on the other side) while the rest of the cluster may promote."""

    node: str
    epoch: int
    t_cut: float
    how: str
    t_heal: float | None = None
    #: its sync secondaries at the cut (an empty tuple: not recorded, every one taken as
    #: being on the other side)
    sync_peers: tuple[str, ...] = ()


# ---- histories ------------------------------------------------------------------------------


def in_history(w: Write, history: Sequence[Sequence[int]], end: int) -> bool:
    """The record at w's LSN in the winning history is w's (same epoch, below the end)."""
    return w.lsn is not None and w.lsn < end and epoch_of(history, w.lsn) == w.epoch


def epoch_range(history: Sequence[Sequence[int]], end: int, epoch: int) -> tuple[int, int]:
    """[first, stop) of the LSNs `epoch` wrote in the history (empty: first == stop)."""
    for i, (e, first) in enumerate(history):
        if e == epoch:
            stop = history[i + 1][1] if i + 1 < len(history) else end
            return first, min(max(stop, first), max(end, first))
    return 0, 0


def same_line(a: dict, b: dict) -> bool:
    """Two nodes' statuses agree on every LSN below their (equal) ends."""
    end = a["end_lsn"]
    return (
        end == b["end_lsn"]
        and divergence_point(
            [tuple(h) for h in a["history"]], [tuple(h) for h in b["history"]], end
        )
        >= end
    )


# ---- convergence (rule: every node converged, one history) ---------------------------------


def convergence_problems(statuses: dict[str, dict | None]) -> list[str]:
    """What keeps these nodes from being converged; [] when they are.

    Converged: every node answers; exactly one primary; every other node follows it, is
    consistent and not rewinding; every node has logged and applied the same end on the same
    line; the primary has no pending or stalled write and sees every peer connected,
    up-to-date, not degraded, not refused, with no lag."""
    out = []
    down = [n for n, s in statuses.items() if s is None]
    if down:
        out.append(f"no status from {', '.join(down)}")
    sts = {n: s for n, s in statuses.items() if s is not None}
    primaries = [n for n, s in sts.items() if s["role"] == "primary"]
    if len(primaries) != 1:
        out.append(f"{len(primaries)} primaries ({', '.join(primaries) or 'none'})")
    p = primaries[0] if len(primaries) == 1 else None
    for n, s in sts.items():
        what = []
        if s["rewinding"]:
            what.append("rewinding")
        if not s["consistent"]:
            what.append("inconsistent")
        if s["end_lsn"] != s["applied_end"]:
            what.append(f"applied {s['applied_end']} of end {s['end_lsn']}")
        if p is not None and n != p and s["following"] != p:
            what.append(f"follows {s['following']} (not {p})")
        if s["role"] == "primary" and (s["writes_pending"] or s["writes_stalled"]):
            what.append(f"{s['writes_pending']} writes pending, {s['writes_stalled']} stalled")
        if what:
            out.append(f"{n}: {', '.join(what)}")
    ends = {n: s["end_lsn"] for n, s in sts.items()}
    if len(set(ends.values())) > 1:
        out.append(f"end LSNs differ: {ends}")
    elif p is not None:
        for n, s in sts.items():
            if n != p and not same_line(sts[p], s):
                out.append(
                    f"{n}'s history {s['history']} differs from {p}'s {sts[p]['history']} "
                    f"below end {s['end_lsn']}"
                )
    if p is not None:
        for peer, ps in sts[p]["peers"].items():
            bad = []
            if not ps["connected"]:
                bad.append("disconnected")
            if ps["state"] != "up-to-date":
                bad.append(f"state {ps['state']}")
            if ps["lag_records"]:
                bad.append(f"lag {ps['lag_records']} records (acked {ps['acked_lsn']})")
            if ps["degraded"]:
                bad.append("degraded")
            if ps["rejected"]:
                bad.append(f"refused: {ps['rejected']}")
            if bad:
                out.append(f"{p} sees {peer}: {', '.join(bad)}")
    return out


def check_volumes_identical(sums: dict[str, str], end: int) -> list[Violation]:
    if len(set(sums.values())) <= 1:
        return []
    groups: dict[str, list[str]] = {}
    for n, d in sums.items():
        groups.setdefault(d, []).append(n)
    return [
        Violation(
            "volumes-differ",
            f"converged at end LSN {end} but the volume checksums differ: "
            + "; ".join(f"{'/'.join(ns)}: {d[:16]}" for d, ns in groups.items()),
            list(sums),
        )
    ]


# ---- the ledger against the history --------------------------------------------------------


def check_lsn_assignment(ledger: Ledger) -> list[Violation]:
    """LSNs on one connection increase in submission order, start at or after the primary's
    end when it began, and no (epoch, LSN) was given to two completed writes."""
    out = []
    seen: dict[tuple[int, int], Write] = {}
    for c in ledger.conns:
        prev: Write | None = None
        for w in c.writes:
            if not w.completed:
                continue
            assert w.lsn is not None
            if w.lsn < c.base_lsn:
                out.append(
                    Violation(
                        "lsn-order",
                        f"{w.describe()} got LSN {w.lsn}, below {c.node}'s end {c.base_lsn} "
                        f"when the connection began",
                        [c.node],
                    )
                )
            if prev is not None and prev.lsn is not None and w.lsn <= prev.lsn:
                out.append(
                    Violation(
                        "lsn-order",
                        f"{w.describe()} was submitted after {prev.describe()} on the same "
                        f"connection but got a lower or equal LSN",
                        [c.node],
                    )
                )
            other = seen.get((w.epoch, w.lsn))
            if other is not None:
                out.append(
                    Violation(
                        "lsn-reused",
                        f"epoch {w.epoch} LSN {w.lsn} acknowledged twice: {other.describe()} "
                        f"and {w.describe()}",
                        [c.node],
                    )
                )
            seen[(w.epoch, w.lsn)] = w
            prev = w
    return out


def expected_image(
    base: bytes, ledger: Ledger, history: Sequence[Sequence[int]], end: int
) -> tuple[bytearray, list[Write | None]]:
    """The base image plus every completed write in the winning history, in LSN order, and
    for each sector the write that must be there (None: the base image's content)."""
    img = bytearray(base)
    owner: list[Write | None] = [None] * (len(base) // SECTOR)
    for w in sorted(
        (w for w in ledger.completed() if in_history(w, history, end)), key=lambda w: w.lsn or 0
    ):
        img[w.offset : w.offset + len(w.data)] = w.data
        s0 = w.offset // SECTOR
        for i in range(len(w.data) // SECTOR):
            owner[s0 + i] = w
    return img, owner


def known_lsn(w: Write) -> int | None:
    """The LSN a write was logged at, when known: completed, or failed naming it (a block
    mode timeout: logged, not acknowledged)."""
    if w.lsn is not None:
        return w.lsn
    m = re.search(r"write LSN (\d+) ", w.error or "")
    return int(m.group(1)) if m else None


def unanswered(w: Write) -> bool:
    """In flight when its primary died or the writer moved on: no answer at all."""
    return w.error is not None and w.error.startswith("abandoned")


def lsn_bounds(w: Write, history: Sequence[Sequence[int]], end: int) -> tuple[int, int]:
    """[lo, hi) of the LSNs an uncertain write can hold in the winning history.

    A connection's writes are taken in submission order, each logged, refused (with an
    answer) or stalled in order; so if w was logged, so was every unanswered write
    submitted before it since the last write of known LSN, and w lies below the next write
    of known LSN by the unanswered ones between them. And w lies in its epoch's range."""
    lo, hi = epoch_range(history, end, w.epoch)
    lo = max(lo, w.conn.base_lsn)
    own = known_lsn(w)
    if own is not None:
        lo, hi = max(lo, own), min(hi, own + 1)
    skipped = 0
    for prev in reversed(w.conn.writes[: w.seq]):
        k = known_lsn(prev)
        if k is not None:
            lo = max(lo, k + 1 + skipped)
            break
        skipped += unanswered(prev)
    skipped = 0
    for nxt in w.conn.writes[w.seq + 1 :]:
        k = known_lsn(nxt)
        if k is not None:
            hi = min(hi, k - skipped)
            break
        skipped += unanswered(nxt)
    return lo, max(lo, hi)


def check_volume_content(
    node: str,
    image: bytes,
    base: bytes,
    ledger: Ledger,
    history: Sequence[Sequence[int]],
    end: int,
    limit: int = 4,
) -> list[Violation]:
    """The volume equals the ledger replayed for the history that won. Where it does not,
    the sector may hold an uncertain write (failed or in flight) that can sit in the winning
    history after the write expected there; anything else is a violation."""
    want, owner = expected_image(base, ledger, history, end)
    if len(image) != len(want):
        return [Violation("volume-size", f"{node}: volume is {len(image)} bytes", [node])]
    if image == want:
        return []
    bad = []
    for s in range(len(owner)):
        a, b = s * SECTOR, (s + 1) * SECTOR
        got = image[a:b]
        if got == want[a:b]:
            continue
        exp = owner[s]
        tag = read_tag(got)
        u = ledger.writes.get(tag[0]) if tag and tag[2] == ledger.round else None
        if u is not None and not u.completed:
            lo, hi = lsn_bounds(u, history, end)
            floor = exp.lsn if exp is not None and exp.lsn is not None else 0
            if (
                hi > lo
                and hi - 1 > floor
                and u.data[tag[1] * SECTOR : (tag[1] + 1) * SECTOR] == got
            ):
                continue  # an uncertain write that may be in the history, later than exp
        bad.append((s, got, exp, u, tag))
    if not bad:
        return []
    lines = []
    for s, got, exp, u, tag in bad[:limit]:
        if u is not None:
            holds = u.describe()
            if u.completed and not in_history(u, history, end):
                holds += f" — NOT in the winning history (epoch of LSN {u.lsn} is " + (
                    f"{epoch_of(history, u.lsn)})"
                    if u.lsn is not None and u.lsn < end
                    else "past the end)"
                )
            elif tag is not None and u.data[tag[1] * SECTOR : (tag[1] + 1) * SECTOR] != got:
                holds += " but with different bytes (torn/mixed sector)"
        elif tag is not None:
            holds = f"write #{tag[0]} of round {tag[2]} (an earlier round)"
        elif not any(got):
            holds = "zeros"
        else:
            holds = "untagged data"
        expd = exp.describe() if exp is not None else "the content from before this round"
        lines.append(f"sector at offset {s * SECTOR}: expected {expd}; holds {holds}")
    return [
        Violation(
            "volume-content",
            f"{node}'s volume at end LSN {end} is not the ledger replayed for history "
            f"{[list(h) for h in history]}: {len(bad)} sectors differ; " + "; ".join(lines),
            [node],
        )
    ]


# ---- invariant 6 ------------------------------------------------------------------------------


def protection(
    w: Write,
    promotions: Sequence[Promotion],
    observations: Sequence[Observation],
    final_primary: tuple[str, int] | None,
) -> str | None:
    """Why w must survive (a sentence), or None when losing it is allowed."""
    if w.lsn is None or w.t_done is None:
        return None
    later = [p for p in promotions if p.epoch > w.epoch]
    if final_primary == (w.conn.node, w.epoch) and not later:
        return f"{w.conn.node} acknowledged it and is still primary in epoch {w.epoch}"
    for ob in observations:
        if ob.node != w.conn.node or ob.epoch != w.epoch:
            continue
        if any(p.t <= ob.t for p in later):
            continue  # seen after a newer epoch began: not evidence
        after = [p for p in promotions if p.t > ob.t]
        for s, acked in sorted(ob.acked.items()):
            if (s == w.conn.node and not ob.demoted) or acked < w.lsn:
                continue
            if all(s in p.reachable for p in after):
                where = ", ".join(f"{p.node} (epoch {p.epoch}) at {p.t:.2f}s" for p in after)
                held = (
                    f"{s}, demoted, had logged LSN {acked} >= {w.lsn}"
                    if ob.demoted
                    else f"sync secondary {s} had acknowledged LSN {acked} >= {w.lsn}"
                )
                return (
                    f"{held} (status of {ob.node} at {ob.t:.2f}s) and was reachable at "
                    f"every later promotion: {where or 'none'}"
                )
    return None


def check_acknowledged_survive(
    ledger: Ledger,
    history: Sequence[Sequence[int]],
    end: int,
    promotions: Sequence[Promotion],
    observations: Sequence[Observation],
    final_primary: tuple[str, int] | None,
    limit: int = 4,
) -> list[Violation]:
    lost = []
    for w in ledger.completed():
        if in_history(w, history, end):
            continue
        why = protection(w, promotions, observations, final_primary)
        if why is not None:
            lost.append((w, why))
    if not lost:
        return []
    lost.sort(key=lambda x: x[0].lsn or 0)
    parts = []
    for w, why in lost[:limit]:
        assert w.lsn is not None
        now = (
            f"epoch {epoch_of(history, w.lsn)} holds LSN {w.lsn}"
            if w.lsn < end
            else f"the history ends at {end}"
        )
        parts.append(f"{w.describe()} at {w.t_done:.2f}s: lost ({now}); must survive: {why}")
    return [
        Violation(
            "acknowledged-lost",
            f"{len(lost)} acknowledged writes are not in the history that won "
            f"{[list(h) for h in history]} (end {end}): " + " | ".join(parts),
            sorted({w.conn.node for w, _ in lost}),
        )
    ]


#: what a timed-out stalled write names as holding the log (node.primary.log_holder)
_HOLDER = re.compile(
    r"this node's own volume, applied up to LSN -?\d+|records not yet durable here"
    r"|(\w+) \((\w+, (?:not )?connected, acknowledged|in dcm or a resync, covered)"
    r" up to LSN -?\d+\)"
)


def _held_by_block(err: str, sync_nodes: frozenset[str]) -> bool:
    """Whether a `write timed out: SRL full` under srl_full = "dcm" names only holders that
    on_sync_loss = "block" makes every write wait for anyway: a sync secondary still
    connected that has not acknowledged (dcm switches a sync secondary only once it is
    gone: a hung disk keeps it connected and silent) or the primary's own disk. Such writes fail after
    `sync_timeout` whichever way they are told; a log held by an async node, or by a node
    in dcm or a resync, is the dcm policy failing."""
    held = err.partition("; held by ")[2].removesuffix(")")
    found = list(_HOLDER.finditer(held))
    if not found or ", ".join(m.group(0) for m in found) != held:
        return False
    return all(
        m.group(1) is None
        or (m.group(2) == "sync, connected, acknowledged" and m.group(1) in sync_nodes)
        for m in found
    )


def check_srl_policy(
    ledger: Ledger,
    srl_full: str,
    on_sync_loss: str = "degrade",
    limit: int = 3,
    sync_nodes: frozenset[str] = frozenset(),
) -> list[Violation]:
    """README, "The SRL fills": `stall` makes writers wait and `dcm` releases the lagging
    secondary's records; only `fail` fails writes with `SRL full` — and, docs/config.md,
    `stall` under on_sync_loss = "block" after `sync_timeout` seconds (`write timed out:
    SRL full for Ns`), and `dcm` under block when what holds the log is what block waits
    for (_held_by_block; ``sync_nodes``, the nodes in sync mode during the round)."""
    if srl_full == "fail":
        return []

    def allowed(err: str) -> bool:
        if on_sync_loss != "block" or not err.startswith("write timed out: SRL full for"):
            return False
        return srl_full == "stall" or _held_by_block(err, sync_nodes)

    bad = [
        w
        for w in ledger.all()
        if w.error is not None and "SRL full" in w.error and not allowed(w.error)
    ]
    if not bad:
        return []
    return [
        Violation(
            "srl-policy",
            f"srl_full={srl_full}, yet {len(bad)} writes failed with 'SRL full': "
            + "; ".join(w.describe() for w in bad[:limit]),
            sorted({w.conn.node for w in bad}),
        )
    ]
