"""Rewinding a divergent tail (pg_rewind's idea, on blocks).

A node that comes back with records nobody else kept (a former primary that wrote after the
others moved to a new epoch) drops those records from its SRL and asks the new primary for
exactly the blocks they touched. Once those blocks are rewritten, the node's volume equals its
remaining log's state plus newer primary data on those blocks; the normal catch-up from the
divergence point then replays the rest, and the node is consistent again once it has reached
the primary's end as of the block copy. No full resync.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from typing import TYPE_CHECKING

from replengine.wire.protocol import Block, BlockDone, BlockReq

if TYPE_CHECKING:
    from replengine.node.core import Node
    from replengine.node.peers import Peer

log = logging.getLogger(__name__)

BLOCK_CHUNK = 1 << 20


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged (offset, length) ranges."""
    out: list[list[int]] = []
    for off, length in sorted(ranges):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + length - out[-1][0])
        else:
            out.append([off, length])
    return [(a, b) for a, b in out]


class Rewinder:
    def __init__(self, node: Node, source: str, divergence: int) -> None:
        self.node = node
        self.source = source
        self.divergence = divergence
        self.tag = uuidlib.uuid4().hex[:12]
        self.primary_end = 0
        self.blocks_done = False
        self.bytes_received = 0

    def start(self) -> None:
        node = self.node
        d = self.divergence
        # the applier must have finished with the records we are about to drop
        node.applier.barrier().wait()
        tail = node.srl.truncate(d)
        ranges = merge_ranges([(r.offset, len(r.data)) for r in tail])
        with node.applier.lock:
            node.applier.applied_end = min(node.applier.applied_end, d)
            node.applier.overlay.clear()
        node.watcher.durable_end = d
        node.secondary.assigned_end = d
        node.consistent = False
        nbytes = sum(len(r.data) for r in tail)
        node.last_divergent = {
            "records": len(tail),
            "bytes": nbytes,
            "first_lsn": tail[0].lsn if tail else d,
            "end_lsn": (tail[-1].lsn + 1) if tail else d,
            "epochs": sorted({r.epoch for r in tail}),
            "block_ranges": [list(r) for r in ranges],
            "rewritten_from": self.source,
        }
        log.warning(
            "divergent tail discarded: %d records (%d bytes), LSNs [%d, %d); rewriting "
            "%d block ranges from %s: %s",
            len(tail),
            nbytes,
            d,
            node.last_divergent["end_lsn"],
            len(ranges),
            self.source,
            ", ".join(f"{o}+{n}" for o, n in ranges),
        )
        node.send(self.source, BlockReq(ranges, self.tag))

    def on_message(self, peer: Peer, body: Block | BlockDone) -> None:
        if peer.name != self.source:
            return
        if isinstance(body, Block):
            self.node.volume.write(body.offset, body.data)
            self.bytes_received += len(body.data)
            return
        if body.tag != self.tag:
            return
        self.node.volume.flush()
        self.primary_end = body.primary_end
        self.blocks_done = True
        log.info(
            "divergent blocks rewritten (%d bytes); catching up from LSN %d to %d",
            self.bytes_received,
            self.divergence,
            self.primary_end,
        )
        self.node.send(self.source, self.node.hello())

    def progress(self) -> None:
        node = self.node
        if self.blocks_done and node.applier.applied_end >= self.primary_end:
            node.consistent = True
            node.rewinder = None
            log.info("rewind complete: consistent at LSN %d", node.applier.applied_end)


def serve_block_req(node: Node, peer: Peer, req: BlockReq) -> None:
    """Send the requested volume ranges as of every completed write, then BLOCK_DONE."""
    from replengine.node.reads import consistent_read

    end_at_copy = node.watcher.durable_end
    for off, length in req.ranges:
        if off + length > node.volume.size:
            log.error(
                "%s asked for blocks %d+%d beyond the volume; refused", peer.name, off, length
            )
            return
        pos = off
        while pos < off + length:
            n = min(BLOCK_CHUNK, off + length - pos)
            node.send(peer.name, Block(pos, consistent_read(node, pos, n)))
            pos += n
    node.send(peer.name, BlockDone(req.tag, end_at_copy))
    log.info("sent %d block ranges to %s for its rewind", len(req.ranges), peer.name)
