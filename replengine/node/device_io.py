"""I/O from the block device frontend into the loop.

The frontend serves the kernel from its own thread; every write and flush it receives crosses
into the loop here and takes the same path as a control-socket client's (node.client_io): the
primary pipeline, group commit, completion once durable wherever the resource's rules say.
Reads are served in the frontend's thread from the volume plus the applier's overlay, as of
every completed write, so a large read never holds up the loop.

Fencing lives here, on the node's side of the boundary: once `fence()` has run (demote, a lost
epoch, stop) every new request fails at once, so an application sees EIO, never a hang.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from replengine.errors import RoleError
from replengine.node.client_io import Request
from replengine.node.reads import consistent_read

if TYPE_CHECKING:
    from replengine.node.core import Node

log = logging.getLogger(__name__)

#: The control "client" identity of the device: replies to it go to DeviceIO.on_reply.
DEVICE_CLIENT = b"\x00device"

#: Called once per request with None (done) or the error that failed it.
Done = Callable[[str | None], None]


class DeviceIO:
    """The node's side of the device: thread-safe submission, loop-side dispatch."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._inbox: deque[tuple[str, int, Any, Done]] = deque()
        self._waiting: dict[int, Done] = {}
        self._ids = itertools.count(1)
        self.fenced = True  # nothing is served until a promotion opens the device
        #: writes handed in (counted by the frontend's thread) and answered (by the loop's):
        #: each counter has one writer, so their difference read by the frontend is never
        #: less than what is in flight
        self._writes_in = 0
        self._writes_out = 0

    # ---- the frontend's thread ------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.node.volume.size

    def submit_write(self, offset: int, data: memoryview | bytes, done: Done) -> None:
        if self.fenced:
            done(self._fenced_reason())
            return
        self._writes_in += 1

        def answered(err: str | None) -> None:
            self._writes_out += 1
            done(err)

        self._inbox.append(("write", offset, data, answered))
        self.node.transport.wake()

    def flushed(self) -> bool:
        """Whether a flush asked now is already done: every write handed in has been
        answered, and a write is answered only once durable wherever the resource's rules
        say (there is no volatile cache). Then the flush need not cross into the loop and
        back, two thread hand-offs that were a fifth of a 4 KiB write + fdatasync cycle.
        False when fenced: the flush is then refused by submit_flush."""
        return not self.fenced and self._writes_out == self._writes_in

    def submit_flush(self, done: Done) -> None:
        if self.fenced:
            done(self._fenced_reason())
            return
        self._inbox.append(("flush", 0, None, done))
        self.node.transport.wake()

    def read(self, offset: int, length: int) -> bytes:
        """Volume content as of every completed write; RoleError once fenced."""
        if self.fenced:
            raise RoleError(self._fenced_reason())
        return consistent_read(self.node, offset, length)

    def _fenced_reason(self) -> str:
        node = self.node
        return f"the device of {node.cfg.name} on {node.me} is fenced (not primary)"

    # ---- the loop -------------------------------------------------------------------------

    def open(self) -> None:
        """A promotion made this node primary: serve I/O again."""
        self.fenced = False

    def fence(self) -> None:
        """Refuse every new request from now on, and those queued but not yet handed to the
        pipeline. Writes already in the pipeline end as the pipeline decides (demote drains
        them; a lost epoch fails them)."""
        if not self.fenced:
            log.warning("device of %s fenced: new I/O gets EIO", self.node.cfg.name)
        self.fenced = True
        self.drain()

    def drain(self) -> None:
        """Hand every queued request to the pipeline (or fail it when fenced)."""
        ops = self.node.ops
        while self._inbox:
            op, offset, data, done = self._inbox.popleft()
            if self.fenced:
                done(self._fenced_reason())
                continue
            req_id = next(self._ids)
            self._waiting[req_id] = done
            req = Request(DEVICE_CLIENT, req_id)
            if op == "write":
                ops.op_write(req, {"offset": offset}, memoryview(data))
            else:
                ops.op_flush(req, {}, None)

    def on_reply(self, doc: dict) -> None:
        done = self._waiting.pop(doc.get("id"), None)  # type: ignore[arg-type]
        if done is None:
            return
        done(None if doc.get("ok") else str(doc.get("error", "failed")))

    @property
    def inflight(self) -> int:
        return len(self._waiting) + len(self._inbox)


__all__ = ["DEVICE_CLIENT", "DeviceIO", "Done"]
