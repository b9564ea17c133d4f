"""Client I/O on the primary over the control socket: write, read, flush, checksum.

A mixin of node.ops.Operations: writes go to the primary pipeline and are answered when
durable per the resource's rules; reads see every completed write; a flush is answered once
everything submitted before it completed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from replengine.node.reads import consistent_read

if TYPE_CHECKING:
    from replengine.node.core import Node

log = logging.getLogger(__name__)


@dataclass
class Request:
    client: bytes
    req_id: Any


class ClientIO:
    node: Node
    flushes: list[tuple[Request, int]]
    finished_jobs: list
    down: list[Request]
    demotion: Request | None

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
