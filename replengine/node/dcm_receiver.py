"""The secondary's side of a dcm resync (node.dcm): take the blocks, then restart the log.

Kept apart from the primary's DcmTracker: the two run on different nodes and share only the
wire messages and the rewind marker.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from replengine.node.rewind import ACK_EVERY, owe_whole_volume, write_marker
from replengine.storage.durable import remove_durably
from replengine.wire.protocol import Block, BlockAck, BlockDone

if TYPE_CHECKING:
    from replengine.node.context import DcmContext

log = logging.getLogger(__name__)


class DcmReceiver:
    """Secondary side of a dcm resync: write blocks, then restart the log at resume_lsn.

    It never blocks the loop. Until the applier has written every record logged before the
    copy began, blocks are held (at most the sender's window): written now, an older record
    applied after them would undo them. Records the primary still had in flight are refused
    until the copy is done (Secondary.on_update).
    """

    def __init__(self, node: DcmContext, source: str) -> None:
        self.node = node
        self.source = source
        self.received = 0
        self.primary_end = 0
        self.done = False
        self.held: list[tuple[int, bytes]] = []
        self.draining = True
        self._barrier: threading.Event | None = None
        self._acked = 0
        self.finish: BlockDone | None = None
        #: consistent again, said once (progress() runs from on_done and from the loop)
        self.complete = False
        #: the copy came short: a rewind fetches the volume again (_fetch_again)
        self.handed_over = False
        node.consistent = False
        # durable before the first block lands: a restart, or a new primary before this copy
        # ends, must find this volume mixed and fetch every block again (node.rewind)
        write_marker(node.rewind_marker, [(0, node.volume.size)], 0)
        log.warning("dcm resync from %s started: this node is inconsistent until it ends", source)

    def _drained(self) -> bool:
        node = self.node
        if (
            self.draining
            and self._barrier is None
            and node.watcher.idle
            and node.applier.applied_end >= node.watcher.durable_end
        ):
            # every record logged here is on the volume: clear them from the log, or a
            # restart would replay them over blocks already copied (and acknowledged to the
            # primary, which no longer owes those regions)
            self._barrier = node.applier.barrier(clear_to=node.watcher.durable_end)
        if self.draining and self._barrier is not None and self._barrier.is_set():
            self.draining = False
            for off, data in self.held:
                self.node.volume.write_copied(off, data)
            if self.held:
                self.held = []
                self._ack()
        return not self.draining

    def on_block(self, block: Block) -> None:
        if not len(block.data):
            return  # the source reads chunks we already hold: only a sign of life
        if self._drained():
            self.node.volume.write_copied(block.offset, block.data)
        else:
            self.held.append((block.offset, bytes(block.data)))
        self.received += len(block.data)
        if self.received - self._acked >= ACK_EVERY and not self.held:
            self._ack()

    def _ack(self) -> None:
        """Durable before acknowledged: the primary stops owing what we acknowledge."""
        self.node.volume.flush()
        self._acked = self.received
        self.node.send(self.source, BlockAck(self.received))

    def on_done(self, done: BlockDone) -> None:
        if self.received != done.total:
            self._fetch_again(done)
            return
        if not self.held:
            self._ack()
        self.finish = done
        self.progress()

    def _fetch_again(self, done: BlockDone) -> None:
        """Blocks were lost on the way (with a connection the primary did not see drop: it
        forgives the drops it sees on waking from a stall), or an aborted copy's blocks were
        counted with this one's (its BLOCK_DONE never came). Which ones is not known here, and
        the primary, counting our acknowledgements as bytes in order, may hold some of them
        for copied: so the whole volume is fetched again from it, as a rewind offering the
        digests of what we hold, and only what differs travels (tests/test_short_copy.py)."""
        node = self.node
        log.error(
            "dcm resync from %s incomplete: %d of %d bytes arrived; fetching what is "
            "missing from it (inconsistent until then)",
            self.source,
            self.received,
            done.total,
        )
        self.held = []
        self.handed_over = True
        owe_whole_volume(node).retarget(self.source, node.watcher.durable_end)

    def _finish(self, done: BlockDone) -> None:
        node = self.node
        node.volume.flush()
        if done.resume_lsn:
            # records still queued for the applier are older than resume_lsn: it skips them
            node.restart_log_at(done.resume_lsn, self.source)
        self.primary_end = done.primary_end
        self.done = True
        log.warning(
            "dcm resync: %d bytes of regions received; log restarts at LSN %d; "
            "consistent once LSN %d is applied",
            self.received,
            done.resume_lsn,
            done.primary_end,
        )
        node.copy_ended(self.source)

    def progress(self) -> bool:
        """True once consistent again, or once a rewind took over (the receive is over)."""
        if self.complete or self.handed_over:
            return True
        drained = self._drained()
        if self.finish is not None and drained:
            done, self.finish = self.finish, None
            self._finish(done)
        if self.done and self.node.applier.applied_end >= self.primary_end:
            if self.node.rewinder is None:  # a rewind still under way decides for itself
                remove_durably(self.node.rewind_marker)
                self.node.consistent = True
                self.node.send(self.source, self.node.hello())  # it ends our resync there
            log.warning("dcm resync complete: consistent at LSN %d", self.node.applier.applied_end)
            self.complete = True
            return True
        return False
