"""Serving pulls: any node ships a promoting peer the records it lacks (design "Failover"
step 2), in a bounded window beside its normal work, paced by the puller's cumulative ACKs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from replengine.log.record import Record

log = logging.getLogger(__name__)

PULL_WINDOW = 2048
PULL_BUDGET = 16 << 20


@dataclass
class PullJob:
    peer: str
    next_lsn: int
    end: int
    acked: int


@dataclass
class PullServer:
    """``bounds()`` gives this node's (SRL start, durable end); ``read(lsn)`` one record;
    ``send(peer, record)`` queues it as a PULLED update and says whether it was taken."""

    bounds: Callable[[], tuple[int, int]]
    read: Callable[[int], Record]
    send: Callable[[str, Record], bool]
    jobs: dict[str, PullJob] = field(default_factory=dict)

    def serve(self, peer: str, first: int, end: int) -> None:
        start, durable_end = self.bounds()
        end = min(end, durable_end)
        if first < start:
            log.error(
                "%s asked for LSN %d but this SRL starts at %d: serving from there",
                peer,
                first,
                start,
            )
            first = start
        self.jobs[peer] = PullJob(peer, first, end, first)
        log.info("serving pull of LSNs [%d, %d) to %s", first, end, peer)
        self.pump()

    def on_ack(self, peer: str, durable_end: int) -> None:
        job = self.jobs.get(peer)
        if job:
            job.acked = max(job.acked, durable_end)
            if job.acked >= job.end:
                del self.jobs[peer]

    def resend_from(self, peer: str, lsn: int) -> None:
        """The puller refused records from ``lsn`` on (its log was full, or one went
        missing) and asks for them again (a NACK): send the pull on from there."""
        job = self.jobs.get(peer)
        if job is not None and job.acked <= lsn < job.next_lsn:
            log.info("%s asks for LSN %d again: resending its pull from there", peer, lsn)
            job.next_lsn = lsn
            self.pump()

    def cancel_all(self, why: str) -> None:
        """Pulls are for a peer's promotion: once this node is primary (that promotion was
        refused or lost), its peers follow it and get its records from its stream."""
        for peer in self.jobs:
            log.info("pull of %s ended: %s", peer, why)
        self.jobs.clear()

    def pump(self) -> None:
        start, _ = self.bounds()
        for job in list(self.jobs.values()):
            if job.next_lsn < job.end and job.next_lsn < start:
                # cleared here meanwhile (this node's own primary, or a promotion of its
                # own, moved its log on): the puller, refused, asks another node or gives up
                log.warning(
                    "pull of %s ended: LSN %d is no longer in this SRL (it starts at %d)",
                    job.peer,
                    job.next_lsn,
                    start,
                )
                del self.jobs[job.peer]
                continue
            budget = PULL_BUDGET
            while job.next_lsn < job.end and job.next_lsn - job.acked < PULL_WINDOW and budget:
                rec = self.read(job.next_lsn)
                if not self.send(job.peer, rec):
                    break
                budget = max(0, budget - len(rec.data))
                job.next_lsn += 1


__all__ = ["PullJob", "PullServer"]
