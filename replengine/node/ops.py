"""Control-socket operations of the daemon: client I/O, status, promote, demote, down.

Long operations (promotion pulling records, demotion draining writes, shutdown) are small
state machines advanced by the loop, so the daemon keeps replicating while they run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replengine.failover.promotion import Promotion, PromotionRefused
from replengine.node.promote import NodePromotionContext
from replengine.node.pulls import PullServer
from replengine.node.reads import consistent_read
from replengine.node.states import Role
from replengine.node.status import status

if TYPE_CHECKING:
    from replengine.node.core import Node

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0


@dataclass
class Request:
    client: bytes
    req_id: Any


@dataclass
class Operations:
    node: Node
    flushes: list[tuple[Request, int]] = field(default_factory=list)
    promotion: Promotion | None = None
    promotion_req: Request | None = None
    demotion: Request | None = None
    down: list[Request] = field(default_factory=list)
    down_since: float = 0.0
    pull_source: str = ""
    finished_jobs: list = field(default_factory=list)
    last_promotion: dict | None = None
    pulled_bytes: int = 0

    def __post_init__(self) -> None:
        node = self.node
        self.pulls = PullServer(
            bounds=lambda: (node.srl.start_lsn, node.watcher.durable_end),
            read=node.srl.get,
            send=node.send_pulled,
        )

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
            node.reply_ok(req.client, req.req_id, {"role": Role.SECONDARY})
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
            node.reply_ok(req.client, req.req_id, {"role": Role.SECONDARY})
        self._promotion_progress()
        self.pulls.pump()
        self._reply_jobs()

    # ---- promote: probe peers, pull what we lack, raise the epoch ----------------------------

    def op_promote(self, req: Request, doc: dict, data: Any) -> None:
        node = self.node
        if node.primary is not None:
            node.reply_ok(
                req.client, req.req_id, {"role": Role.PRIMARY, "epoch": node.epoch, "already": True}
            )
            return
        if self.promotion:
            node.reply_error(req.client, req.req_id, "a promotion is already running")
            return
        min_peers = doc.get("min_peers")
        self.pulled_bytes = 0
        try:
            self.promotion = Promotion(
                NodePromotionContext(node),
                force=bool(doc.get("force", False)),
                min_peers=node.cfg.promote_min_peers if min_peers is None else int(min_peers),
            )
            self.promotion_req = req
        except PromotionRefused as exc:
            log.error("promotion refused: %s", exc)
            node.reply_error(req.client, req.req_id, str(exc))

    def _promotion_progress(self) -> None:
        if self.promotion is None or self.promotion_req is None:
            return
        req = self.promotion_req
        try:
            result = self.promotion.step()
        except PromotionRefused as exc:
            self.promotion = self.promotion_req = None
            log.error("promotion refused: %s", exc)
            self.node.reply_error(req.client, req.req_id, str(exc))
            return
        if result is not None:
            self.promotion = self.promotion_req = None
            self.last_promotion = result
            self.node.reply_ok(req.client, req.req_id, result)

    def tick(self) -> None:
        self._promotion_progress()
