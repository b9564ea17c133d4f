"""Control-socket operations of the daemon: client I/O, status, promote, demote, down.

Long operations (promotion pulling records, demotion draining writes, shutdown) are small
state machines advanced by the loop, so the daemon keeps replicating while they run.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replengine.failover.planner import NodeLog, plan_sync
from replengine.log.record import Record
from replengine.node.peers import Peer
from replengine.wire.protocol import Ack, Flag, Pull, Update, encode

if TYPE_CHECKING:
    from replengine.node.core import Node

log = logging.getLogger(__name__)

PULL_WINDOW = 2048
PULL_BUDGET = 16 << 20
DRAIN_TIMEOUT_S = 60.0


@dataclass
class Request:
    client: bytes
    req_id: Any


@dataclass
class Promotion:
    req: Request
    force: bool
    t0: float
    phase: str = "probe"  # probe -> pull -> done
    probe_until: float = 0.0
    source: str = ""
    target_end: int = 0
    pulled: int = 0
    deadline: float = 0.0
    min_peers: int = 0


@dataclass
class PullJob:
    peer: str
    next_lsn: int
    end: int
    acked: int


@dataclass
class Operations:
    node: Node
    flushes: list[tuple[Request, int]] = field(default_factory=list)
    promotion: Promotion | None = None
    demotion: Request | None = None
    down: list[Request] = field(default_factory=list)
    down_since: float = 0.0
    pulls: dict[str, PullJob] = field(default_factory=dict)
    pull_source: str = ""
    finished_jobs: list = field(default_factory=list)
    last_promotion: dict | None = None
    pulled_bytes: int = 0

    # ---- dispatch -------------------------------------------------------------------------

    def handle(self, client: bytes, frames: list) -> None:
        node = self.node
        try:
            doc = json.loads(frames[0].bytes)
            op = doc["op"]
            req = Request(client, doc.get("id"))
        except (ValueError, KeyError, TypeError, IndexError):
            node.reply(client, {"id": None, "ok": False, "error": "malformed control request"})
            return
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            node.reply_error(client, req.req_id, f"unknown operation {op!r}")
            return
        try:
            handler(req, doc, frames[1].buffer if len(frames) > 1 else None)
        except (KeyError, TypeError, ValueError) as exc:
            node.reply_error(client, req.req_id, f"bad {op} request: {exc}")
        except Exception as exc:  # a bug in one request must not take the node down
            log.exception("control operation %s failed", op)
            node.reply_error(client, req.req_id, f"{op} failed: {exc}")

    def _writable(self, req: Request) -> bool:
        node = self.node
        if node.primary is None:
            where = f"; the primary is {node.following}" if node.following else ""
            node.reply_error(
                req.client,
                req.req_id,
                f"node {node.me} of {node.cfg.name} is a secondary (read-only){where}",
            )
            return False
        if self.down or self.demotion or not node.primary.accepting:
            node.reply_error(req.client, req.req_id, f"node {node.me} is stopping or demoting")
            return False
        return True

    def op_write(self, req: Request, doc: dict, data: Any) -> None:
        if data is None:
            raise ValueError("write without data")
        if self._writable(req):
            self.node.primary.submit(req.client, req.req_id, int(doc["offset"]), data)
            self.node.primary.pump()

    def op_read(self, req: Request, doc: dict, data: Any) -> None:
        node = self.node
        if node.primary is None:
            self._writable(req)
            return
        offset, length = int(doc["offset"]), int(doc["length"])
        if offset < 0 or length < 0 or offset + length > node.volume.size:
            node.reply_error(
                req.client,
                req.req_id,
                f"read of {length} bytes at {offset} is "
                f"outside the volume ({node.volume.size} bytes)",
            )
            return
        node.reply(
            req.client, {"id": req.req_id, "ok": True}, consistent_read(node, offset, length)
        )

    def op_flush(self, req: Request, doc: dict, data: Any) -> None:
        if self._writable(req):
            self.flushes.append((req, self.node.primary.assigned_end))
            self.serve_flushes()

    def serve_flushes(self) -> None:
        node = self.node
        if not self.flushes or node.primary is None:
            return
        done_below = (
            node.primary.pending[0].lsn if node.primary.pending else node.primary.assigned_end
        )
        keep = []
        for req, target in self.flushes:
            if target <= done_below:
                node.reply_ok(req.client, req.req_id)
            else:
                keep.append((req, target))
        self.flushes = keep

    def op_checksum(self, req: Request, doc: dict, data: Any) -> None:
        """Checksum the volume in a thread once everything logged is applied."""
        node = self.node
        barrier = node.applier.barrier()

        def work() -> None:
            barrier.wait()
            try:
                cs = node.volume.checksum()
                result = {
                    "digest": cs.digest,
                    "chunks": cs.chunks,
                    "chunk_size": cs.chunk_size,
                    "size": cs.size,
                    "applied_end": node.applier.applied_end,
                }
            except Exception as exc:  # reported to the caller, the node goes on
                result = {"error": f"checksum failed: {exc}"}
            self.finished_jobs.append((req, result))
            node.transport.wake()

        threading.Thread(target=work, name="checksum", daemon=True).start()

    def _reply_jobs(self) -> None:
        while self.finished_jobs:
            req, result = self.finished_jobs.pop(0)
            if "error" in result:
                self.node.reply_error(req.client, req.req_id, result["error"])
            else:
                self.node.reply_ok(req.client, req.req_id, result)

    def op_status(self, req: Request, doc: dict, data: Any) -> None:
        self.node.reply_ok(req.client, req.req_id, status(self.node))

    def op_down(self, req: Request, doc: dict, data: Any) -> None:
        self.request_down(req)

    def request_down(self, req: Request | None = None) -> None:
        if req:
            self.down.append(req)
        if not self.down_since:
            self.down_since = time.monotonic()
            log.info("shutting down: draining writes, applying the log")
            if self.node.primary:
                self.node.primary.accepting = False

    def finished(self) -> bool:
        if not self.down_since:
            return False
        node = self.node
        if node.primary and not node.primary.drained():
            if time.monotonic() - self.down_since < DRAIN_TIMEOUT_S:
                return False
            node.primary.fail_all("daemon stopping: write not replicated in time")
        return True

    def final_replies(self) -> None:
        for req in self.down:
            self.node.reply_ok(
                req.client, req.req_id, {"applied_end": self.node.applier.applied_end}
            )

    # ---- demote ---------------------------------------------------------------------------

    def op_demote(self, req: Request, doc: dict, data: Any) -> None:
        node = self.node
        if node.primary is None:
            node.reply_ok(req.client, req.req_id, {"role": "secondary"})
            return
        node.primary.accepting = False
        self.demotion = req

    def progress(self) -> None:
        node = self.node
        if self.demotion and node.primary and node.primary.drained():
            req, self.demotion = self.demotion, None
            node.become_secondary()
            node.beacon()
            log.warning("DEMOTED to secondary at LSN %d", node.watcher.durable_end)
            node.reply_ok(req.client, req.req_id, {"role": "secondary"})
        self._promotion_progress()
        self._pump_pulls()
        self._reply_jobs()

    # ---- promote: probe peers, pull what we lack, raise the epoch ----------------------------

    def op_promote(self, req: Request, doc: dict, data: Any) -> None:
        node = self.node
        if node.primary is not None:
            node.reply_ok(
                req.client, req.req_id, {"role": "primary", "epoch": node.epoch, "already": True}
            )
            return
        if self.promotion:
            node.reply_error(req.client, req.req_id, "a promotion is already running")
            return
        if node.rewinder:
            node.reply_error(
                req.client,
                req.req_id,
                "this node is rewinding a divergent tail; "
                "promote another node or retry when it is done",
            )
            return
        force = bool(doc.get("force", False))
        min_peers = doc.get("min_peers")
        self.pulled_bytes = 0
        now = time.monotonic()
        self.promotion = Promotion(
            Request(req.client, req.req_id),
            force,
            now,
            probe_until=now + node.heartbeat_s * 1.5,
            min_peers=node.cfg.promote_min_peers if min_peers is None else int(min_peers),
        )
        node.beacon()

    def _refuse(self, why: str) -> None:
        assert self.promotion is not None
        log.error("promotion refused: %s", why)
        self.node.reply_error(self.promotion.req.client, self.promotion.req.req_id, why)
        self.promotion = None
        self.pull_source = ""

    def _promotion_progress(self) -> None:
        pr = self.promotion
        if pr is None:
            return
        node = self.node
        now = time.monotonic()
        if pr.phase == "probe":
            fresh = [p for p in node.peers.values() if p.last_seen > pr.t0 and not p.rejected]
            if now < pr.probe_until and len(fresh) < len(node.peers):
                return
            self._plan(pr, fresh)
        elif pr.phase == "pull":
            if node.watcher.durable_end >= pr.target_end:
                self._finish(pr)
            elif now > pr.deadline:
                self._refuse(
                    f"could not pull LSNs [{node.watcher.durable_end}, "
                    f"{pr.target_end}) from {pr.source} in time; refusing so another "
                    "node can be promoted"
                )

    def _plan(self, pr: Promotion, fresh: list[Peer]) -> None:
        node = self.node
        primaries = [p.name for p in fresh if p.hello and p.hello.role == "primary"]
        if primaries:
            self._refuse(f"{', '.join(primaries)} is primary and reachable: demote it first")
            return
        need = pr.min_peers
        if len(fresh) < need:
            if not pr.force:
                self._refuse(
                    f"only {len(fresh)} of {len(node.peers)} peers reachable "
                    f"({', '.join(p.name for p in fresh) or 'none'}); promotion needs "
                    f"{need} so that no acknowledged write is left behind on an "
                    "unreachable node; use --force to promote anyway"
                )
                return
            log.error(
                "FORCED PROMOTION with %d of %d peers reachable (need %d): writes only "
                "unreachable nodes hold may be lost",
                len(fresh),
                len(node.peers),
                need,
            )
        logs = [
            NodeLog(
                node.me,
                tuple(map(tuple, node.srl.history)),
                node.srl.start_lsn,
                node.watcher.durable_end,
            )
        ]
        for p in fresh:
            h = p.hello
            assert h is not None
            if h.consistent:
                logs.append(NodeLog(p.name, tuple(map(tuple, h.history)), h.start_lsn, h.end_lsn))
        plan = plan_sync(logs, node.me)
        if node.me in plan.divergent:
            first, end = plan.divergent[node.me]
            self._refuse(
                f"this node holds a divergent tail (LSNs [{first}, {end}) of an older "
                f"epoch); promote {plan.best} instead"
            )
            return
        if plan.pull is None:
            self._finish(pr)
            return
        pr.phase, pr.source, pr.target_end = "pull", plan.pull.source, plan.pull.end_lsn
        pr.pulled = plan.pull.end_lsn - plan.pull.first_lsn
        pr.deadline = time.monotonic() + 30.0 + pr.pulled / 2000.0
        self.pull_source = pr.source
        log.warning(
            "promotion: %s is ahead; pulling LSNs [%d, %d) from it first",
            pr.source,
            plan.pull.first_lsn,
            plan.pull.end_lsn,
        )
        node.send(pr.source, Pull(plan.pull.first_lsn, plan.pull.end_lsn))

    def _finish(self, pr: Promotion) -> None:
        node = self.node
        epochs = [node.known_epoch, node.epoch] + [p.epoch for p in node.peers.values()]
        new_epoch = max(epochs) + 1
        node.become_primary(new_epoch)
        took = time.monotonic() - pr.t0
        self.last_promotion = {
            "role": "primary",
            "epoch": new_epoch,
            "first_lsn": node.watcher.durable_end,
            "pulled_records": pr.pulled,
            "pulled_bytes": self.pulled_bytes,
            "pulled_from": pr.source,
            "seconds": round(took, 3),
        }
        node.reply_ok(pr.req.client, pr.req.req_id, self.last_promotion)
        self.promotion = None
        self.pull_source = ""

    def tick(self) -> None:
        self._promotion_progress()

    # ---- serving pulls (any node, for a peer being promoted) ---------------------------------

    def serve_pull(self, peer: Peer, pull: Pull) -> None:
        node = self.node
        end = min(pull.end, node.watcher.durable_end)
        first = max(pull.first, node.srl.start_lsn)
        if first != pull.first:
            log.error(
                "%s asked for LSN %d but this SRL starts at %d",
                peer.name,
                pull.first,
                node.srl.start_lsn,
            )
        self.pulls[peer.name] = PullJob(peer.name, first, end, first)
        log.info("serving pull of LSNs [%d, %d) to %s", first, end, peer.name)
        self._pump_pulls()

    def on_ack(self, peer: Peer, ack: Ack) -> None:
        job = self.pulls.get(peer.name)
        if job:
            job.acked = max(job.acked, ack.durable_end)
            if job.acked >= job.end:
                del self.pulls[peer.name]

    def _pump_pulls(self) -> None:
        node = self.node
        for job in list(self.pulls.values()):
            budget = PULL_BUDGET
            while job.next_lsn < job.end and job.next_lsn - job.acked < PULL_WINDOW and budget:
                rec = node.srl.get(job.next_lsn)
                frames = encode(
                    node.cfg.uuid,
                    node.known_epoch,
                    node.me,
                    Update(rec.lsn, rec.epoch, rec.offset, rec.data),
                    Flag.PULLED,
                )
                if not node.transport.send(job.peer, frames):
                    break
                budget = max(0, budget - len(rec.data))
                job.next_lsn += 1


def consistent_read(node: Node, offset: int, length: int) -> bytes:
    """Volume content as of every completed write: the volume plus records not yet applied.

    The overlay is snapshotted before the volume is read: a record missing from the snapshot
    was already applied, so the read sees it either way."""
    snap = node.applier.snapshot_overlay()
    buf = bytearray(node.volume.read(offset, length))
    end = offset + length
    for rec in snap:
        lo, hi = max(offset, rec.offset), min(end, rec.offset + len(rec.data))
        if lo < hi:
            buf[lo - offset : hi - offset] = rec.data[lo - rec.offset : hi - rec.offset]
    return bytes(buf)


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
            state = p.state if connected or p.state == "dcm" else "disconnected"
        else:
            acked = p.hello.end_lsn if p.hello else 0
            lag = max(0, best_end - acked) if p.hello else None
            state = (p.hello.role if p.hello else "unknown") if connected else "disconnected"
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
        "peers": peers,
        "dcm": node.dcm.summary() if node.primary else None,
        "last_promotion": node.ops.last_promotion,
    }


def lag_bytes(node: Node, acked_end: int) -> int:
    """Bytes of log a peer is behind: the SRL space between its end and ours."""
    return node.srl.bytes_between(acked_end, node.srl.next_lsn)


__all__ = ["Operations", "Record", "consistent_read", "status"]
