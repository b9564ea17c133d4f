"""The receiving side of a checksummed block copy: digests of this volume's chunks.

Asked by the primary (SUM_REQ) before it copies a whole volume to us (`replctl sync --full`,
a node that fell off the log): chunks whose digests match are not sent, so a volume that is
already mostly right costs a read pass on each side, not a copy. The digests are taken in a
thread, after every record this node has logged is applied: nothing changes the volume
between them and the copy (the primary streams no records to a node it is copying to).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from replengine.node.copier import CHUNK
from replengine.node.rewind import write_marker
from replengine.node.states import Role
from replengine.storage.chunksums import DIGEST_SIZE, ChunkDigests, count
from replengine.storage.hashpool import volume_digests
from replengine.wire.protocol import SumReq, Sums

if TYPE_CHECKING:
    from replengine.node.core import Node

log = logging.getLogger(__name__)


@dataclass
class SumJob:
    peer: str
    req: SumReq
    digests: bytes | None = None
    error: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)


class ChunkSummer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.asked: SumJob | None = None
        self.running: SumJob | None = None
        self.finished: list[SumJob] = []
        self.answered: SumJob | None = None

    def on_request(self, peer: str, sender: str, req: SumReq) -> None:
        """The primary is about to copy blocks to us: our chunk digests first. Not while a
        rewind's blocks still arrive (it asked for them itself); the primary then copies
        all. A rewind whose blocks are all in hands the volume over to this resync: it
        covers what the rewind still waited for (the log restarts where it ends), and
        chunks equal to the primary's, the rewind's own among them, cost a digest."""
        node = self.node
        if node.role != Role.SECONDARY or sender != node.following:
            return  # not (yet) following it: the primary asks again
        if node.rewinder is not None:
            if not node.rewinder.requested(sender):
                return  # our own request (with our digests) is on its way and replaces it
            if node.rewinder.copying:
                node.send(peer, Sums(req.tag, b""))  # declined: copy it all, now
                return
            log.info(
                "rewind from %s has every block; the resync %s asks digests for takes over",
                sender,
                req.tag,
            )
            node.rewinder = None
        bad = [(o, n) for o, n in req.ranges if n <= 0 or o + n > node.volume.size]
        if bad:
            log.error("%s asked for digests of ranges outside the volume: %s", sender, bad[:3])
            return
        if self.ask(peer, req):
            # a (full) resync starts: from now on this volume is not a prefix state of the
            # history until it ends; durable first, so a restart knows it too. Its
            # acknowledgements count from here (blocks of a copy cut short came before)
            node.consistent = False
            write_marker(node.rewind_marker, [(0, node.volume.size)], 0)
            node.dcm_rx = None
            node.resync_announced_by = peer

    def ask(self, peer: str, req: SumReq) -> bool:
        """A newer request replaces an older one (a resync restarted); the same one again (the
        primary repeats it until it has an answer) changes nothing. True for a new one."""
        for job in (self.asked, self.running, self.answered):
            if job is not None and job.req.tag == req.tag and job.peer == peer:
                if job is self.answered:  # our answer was lost: send it again
                    self.node.send(peer, Sums(req.tag, job.digests or b""))
                return False
        for job in (self.asked, self.running):
            if job is not None:
                job.cancelled.set()
        self.asked, self.running = SumJob(peer, req), None
        return True

    def cancel(self) -> None:
        """Digests asked for are no longer wanted (`replctl invalidate`: this node's own
        rewind asks for the volume with its own digests, taken after the damage)."""
        for job in (self.asked, self.running):
            if job is not None:
                job.cancelled.set()
        self.asked = self.running = None

    def pump(self) -> None:
        """Run after the loop made what it received durable (so every record before the
        request is in the applier's queue, ahead of the barrier)."""
        node = self.node
        if self.asked is not None:
            job, self.asked = self.asked, None
            barrier = node.applier.barrier()
            self.running = job
            threading.Thread(
                target=self._work, args=(job, barrier), name="chunk-sums", daemon=True
            ).start()
        while self.finished:
            job = self.finished.pop(0)
            if job.cancelled.is_set():
                continue
            if self.running is job:
                self.running = None
            if job.error or job.digests is None:
                log.error("checksums for %s failed: %s", job.peer, job.error)
                continue
            node.send(job.peer, Sums(job.req.tag, job.digests))
            self.answered = job
            log.info(
                "sent %d chunk checksums to %s (%s)",
                len(job.digests) // DIGEST_SIZE,
                job.peer,
                job.req.tag,
            )

    def _work(self, job: SumJob, barrier: threading.Event) -> None:
        node = self.node
        barrier.wait()  # also flushes the volume: what the digests cover is durable
        try:
            job.digests = volume_digests(
                node.volume, job.req.ranges, job.req.chunk, job.cancelled.is_set
            )
            if job.digests is None:
                return
        except Exception as exc:  # reported in the log; the primary then copies everything
            job.error = str(exc)
        self.finished.append(job)
        node.transport.wake()


def offered_skip(
    sums: Sums | None, tag: str, ranges: list[tuple[int, int]], chunk: int = CHUNK
) -> ChunkDigests | None:
    """The chunks a requester says it holds, for the copier to skip; None when it offered
    none for this request, or digests that do not fit it."""
    if sums is None or sums.tag != tag or not sums.digests:
        return None
    n = count(ranges, chunk)
    if len(sums.digests) != n * DIGEST_SIZE:
        log.error(
            "digests offered with request %s do not fit it (%d bytes for %d chunks): ignored",
            tag,
            len(sums.digests),
            n,
        )
        return None
    return ChunkDigests(ranges, bytes(sums.digests), chunk)


__all__ = ["ChunkSummer", "offered_skip"]
