"""`replctl status`: what a node reports about itself and its peers.

The document is versioned (``schema_version``) and every field is described in
docs/status-schema.md; tests/test_status_cli.py fails when a field is added without being
documented there. Add fields freely (scripts ignore keys they do not know); renaming or
removing one, or changing its meaning, raises SCHEMA_VERSION.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from replengine.node.states import PeerState

if TYPE_CHECKING:
    from replengine.node.core import Node

#: raised only by an incompatible change (a field renamed, removed or changing meaning)
SCHEMA_VERSION = 1

#: the clock keeps at most one sample per this many seconds: lag in seconds is exact to it
CLOCK_RESOLUTION_S = 0.001


@dataclass
class WriteClock:
    """When the primary's writes were asked for, by LSN: a peer's lag in seconds is the age
    of the oldest write it has not acknowledged, which no other counter can give.

    Sampled (one sample per CLOCK_RESOLUTION_S at most) and trimmed below the SRL's start
    as the log is cleared, so it holds at most what the SRL holds and costs one list append
    per write on the write path.
    """

    lsns: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    _head: int = 0

    def note(self, lsn: int, t: float, floor: int) -> None:
        """Write ``lsn`` was asked for at monotonic time ``t``; LSNs below ``floor`` (the
        SRL's start: every peer has them) are forgotten."""
        if self.times and t - self.times[-1] < CLOCK_RESOLUTION_S:
            return
        self.lsns.append(lsn)
        self.times.append(t)
        head = self._head
        while head + 1 < len(self.lsns) and self.lsns[head + 1] <= floor:
            head += 1
        if head > 1024 and head * 2 > len(self.lsns):
            del self.lsns[:head], self.times[:head]
            head = 0
        self._head = head

    def age(self, first_missing: int, assigned_end: int, now: float) -> float | None:
        """Seconds since the write with LSN ``first_missing`` was asked for (0.0 when it is
        not assigned yet: nothing is missing); None when it predates every sample (written
        before this node became primary, or already forgotten)."""
        if first_missing >= assigned_end:
            return 0.0
        i = bisect_right(self.lsns, first_missing, lo=self._head) - 1
        if i < self._head:
            return None
        return max(0.0, round(now - self.times[i], 3))


def status(node: Node) -> dict:
    srl = node.srl
    peers = {}
    best_end = max(
        [node.watcher.durable_end] + [p.hello.end_lsn for p in node.peers.values() if p.hello]
    )
    for p in node.peers.values():
        connected = p.alive(node.heartbeat_s)
        if node.primary:
            acked = p.acked_end
            lag = max(0, node.primary.assigned_end - acked)
            state = p.state if connected or p.state == PeerState.DCM else PeerState.DISCONNECTED
            job = node.dcm.resyncs.get(p.name)
            if state == PeerState.DCM_RESYNC and job is not None and job.full:
                state = PeerState.FULL_SYNC
        else:
            acked = p.hello.end_lsn if p.hello else 0
            lag = max(0, best_end - acked) if p.hello else None
            state = (
                (p.hello.role if p.hello else "unknown") if connected else PeerState.DISCONNECTED
            )
        peers[p.name] = {
            "connected": connected,
            "lag_seconds": lag_seconds(node, acked) if node.primary else None,
            "mode": p.mode,
            "acked_lsn": max(0, acked - 1),
            "lag_records": lag,
            "lag_bytes": lag_bytes(node, acked) if node.primary else None,
            "state": state,
            "degraded": p.degraded,
            "epoch": p.epoch,
            "role": p.hello.role if p.hello else None,
            "rejected": p.rejected or None,
            "shipped_records": p.shipped_records,
            "shipped_bytes": p.shipped_bytes,
            # a primary's stream to it: whether records flow, and the next LSN to send
            "streaming": p.streaming if node.primary else None,
            "next_lsn": p.next_lsn if node.primary else None,
            "end_lsn": p.hello.end_lsn if p.hello else None,
            "consistent": p.hello.consistent if p.hello else None,
            "resync": resync_progress(node, p.name),
            "blocks_sent_bytes": node.copier.sent_total.get(p.name, 0),
            "blocks_resent_bytes": node.copier.resent_total.get(p.name, 0),
        }
    return {
        "schema_version": SCHEMA_VERSION,
        # a secondary may know a newer epoch than its log's last record: report that one
        "resource": node.cfg.name,
        "node": node.me,
        "role": node.role,
        "epoch": max(node.epoch, node.known_epoch),
        "log_epoch": node.epoch,
        "known_epoch": node.known_epoch,
        "history": [list(h) for h in srl.history],
        "start_lsn": srl.start_lsn,
        "end_lsn": node.watcher.durable_end,
        "applied_end": node.applier.applied_end,
        "consistent": node.consistent,
        "following": node.following or None,
        "srl": {
            "capacity": srl.capacity,
            "used_bytes": srl.used_bytes,
            "free_bytes": srl.free_bytes,
        },
        "volume": {"path": str(node.cfg.local.volume), "size": node.volume.size},
        "divergent_tail": node.last_divergent or None,
        "rewinding": node.rewinder is not None,
        "rewind": node.rewinder.summary() if node.rewinder is not None else None,
        "writes_pending": len(node.primary.pending) if node.primary else 0,
        "writes_stalled": len(node.primary.stalled) if node.primary else 0,
        "pid": os.getpid(),
        "security": node.transport.security,
        "peers": peers,
        "dcm": node.dcm.summary() if node.primary else None,
        "resync_pacing": node.copier.pacer.summary() if node.copier.pacer else None,
        "last_promotion": node.ops.last_promotion,
        "verify": node.verifier.summary() if node.verifier.running else node.verifier.last,
        "promotion": promotion_progress(node),
        "stopping": stopping_progress(node),
        **device_status(node),
    }


def lag_seconds(node: Node, acked_end: int) -> float | None:
    """Age of the oldest write a peer has not acknowledged (primary only)."""
    prim = node.primary
    if prim is None:
        return None
    return prim.clock.age(acked_end, prim.assigned_end, time.monotonic())


def promotion_progress(node: Node) -> dict | None:
    """A `replctl promote` running on this node: probing its peers, or pulling the records
    it lacks from the most up-to-date one (what `promote` draws its progress bar from)."""
    prom = node.ops.promotion
    if prom is None:
        return None
    pulling = prom.phase.value == "pull"
    first = prom.target_end - prom.pulled
    return {
        "phase": prom.phase.value,
        "seconds": round(time.monotonic() - prom.t0, 3),
        "source": prom.source or None,
        "records_total": prom.pulled if pulling else None,
        "records_done": max(0, min(node.watcher.durable_end - first, prom.pulled))
        if pulling
        else None,
        "bytes_pulled": node.ops.pulled_bytes if pulling else None,
    }


def stopping_progress(node: Node) -> dict | None:
    """`replctl down` asked: the writes it still waits for (drained once every sync secondary
    acknowledged them, or failed after the drain timeout)."""
    from replengine.node.ops import DRAIN_TIMEOUT_S  # ops imports this module

    ops = node.ops
    if not ops.down_since:
        return None
    return {
        "seconds": round(time.monotonic() - ops.down_since, 3),
        "writes_pending": len(node.primary.pending) if node.primary else 0,
        "drain_timeout_s": DRAIN_TIMEOUT_S,
    }


def device_status(node: Node) -> dict:
    """The block device: its path applications use (the stable udev name when udev made
    one, else the kernel's loop device), or None while not exposed."""
    dev = node.device
    if dev is None:
        return {
            "device": None,
            "device_kind": "none",
            "device_kernel": None,
            "device_error": None,
            "device_lost": False,
            "device_fenced": False,
        }
    return {
        "device": dev.path,
        "device_kind": dev.kind,
        "device_kernel": dev.kernel_device,
        "device_error": dev.error or None,
        "device_lost": dev.lost,
        "device_fenced": node.device_io.fenced,
    }


def resync_progress(node: Node, peer: str) -> dict | None:
    """A block resync running to ``peer`` (sync --full, dcm): bytes done of owed, rate, ETA.
    Chunks it already held count as done: they cost a checksum, not a copy."""
    job = node.dcm.resyncs.get(peer) if node.primary else None
    if job is None:
        return None
    done = job.sent + job.skipped
    elapsed = max(time.monotonic() - job.started, 1e-6)
    rate = done / elapsed
    left = max(job.dirty_bytes - done, 0)
    return {
        "phase": "copying" if job.copying else "checksums",
        "bytes_done": done,
        "bytes_total": job.dirty_bytes,
        "bytes_sent": job.sent,
        "bytes_skipped": job.skipped,
        "bytes_resent": job.folded_bytes,
        "rate_bytes_per_s": round(rate),
        "eta_s": round(left / rate, 1) if rate > 0 else None,
    }


def lag_bytes(node: Node, acked_end: int) -> int:
    """Bytes of log a peer is behind: the SRL space between its end and ours."""
    return node.srl.bytes_between(acked_end, node.srl.next_lsn)


__all__ = [
    "SCHEMA_VERSION",
    "WriteClock",
    "lag_bytes",
    "lag_seconds",
    "promotion_progress",
    "resync_progress",
    "status",
    "stopping_progress",
]
