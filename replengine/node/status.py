"""`replctl status`: what a node reports about itself and its peers."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from replengine.node.states import PeerState

if TYPE_CHECKING:
    from replengine.node.core import Node


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
            "end_lsn": p.hello.end_lsn if p.hello else None,
            "consistent": p.hello.consistent if p.hello else None,
            "resync": resync_progress(node, p.name),
            "blocks_sent_bytes": node.copier.sent_total.get(p.name, 0),
        }
    return {
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
        "writes_pending": len(node.primary.pending) if node.primary else 0,
        "writes_stalled": len(node.primary.stalled) if node.primary else 0,
        "pid": os.getpid(),
        "security": node.transport.security,
        "peers": peers,
        "dcm": node.dcm.summary() if node.primary else None,
        "resync_pacing": node.copier.pacer.summary() if node.copier.pacer else None,
        "last_promotion": node.ops.last_promotion,
        "verify": node.verifier.summary() if node.verifier.running else node.verifier.last,
        **device_status(node),
    }


def device_status(node: Node) -> dict:
    """The block device: its path applications use (the stable udev name when udev made
    one, else the kernel's loop device), or None while not exposed."""
    dev = node.device
    if dev is None:
        return {"device": None, "device_kind": "none"}
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
        "rate_bytes_per_s": round(rate),
        "eta_s": round(left / rate, 1) if rate > 0 else None,
    }


def lag_bytes(node: Node, acked_end: int) -> int:
    """Bytes of log a peer is behind: the SRL space between its end and ours."""
    return node.srl.bytes_between(acked_end, node.srl.next_lsn)


__all__ = ["lag_bytes", "resync_progress", "status"]
