"""The source side of every block copy (a divergent-tail rewind, a dcm resync): volume ranges as of every completed write, in a bounded
window paced by the receiver's cumulative BLOCK_ACKs, then one BLOCK_DONE.

Used to serve a divergent-tail rewind. A send the transport refuses is retried on the next
turn, never skipped; BLOCK_DONE goes out only once every byte was handed to the transport,
and the receiver checks that it got every byte (it asks again for what it lacks).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from replengine.node.pacing import Pacer
from replengine.storage.chunksums import (
    DIGEST_SIZE,
    ChunkDigests,
    chunks,
    digest,
    is_zero,
    zero_digest,
)
from replengine.storage.hashpool import hash_workers, map_ordered
from replengine.wire.protocol import Block, BlockDone

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WINDOW = 32 << 20
#: bytes of skipped chunks read per turn of the loop (they take no window, so without this
#: a volume the receiver already holds would be read in one turn)
READ_BUDGET = 16 << 20
#: the application's writes a fold adds (CopyJob.hot) are read as one where less than this
#: apart, and at most this many of them per turn of the loop: 4 KiB writes all over the
#: volume are thousands of small reads and BLOCKs, and the loop's turn is a write's latency
HOT_GAP = 64 << 10
HOT_PER_TURN = 64
#: ... kept as byte ranges (a 4 KiB write costs 4 KiB, not its region's MiB) up to this many,
#: about 15 MiB; past it, ranges less than twice as far apart as before are joined with the
#: bytes between, until fewer are left. (Joined into whole 1 MiB regions at once, the 28 000
#: random 4 KiB writes of one fold through a 256 MiB SRL were most of a 4 GiB volume to send
#: again, at every fold)
HOT_MAX_RANGES = 131072


@dataclass
class CopyJob:
    peer: str
    tag: str
    ranges: deque = field(default_factory=deque)
    sent: int = 0
    acked: int = 0
    as_of: int = 0  # the source's durable end when the last chunk was read
    done: bool = False
    resume_lsn: int = 0  # dcm resync: where the receiver's log restarts
    on_done: Callable[[CopyJob], None] | None = None
    #: the receiver's digests of its chunks (offset, length): a chunk equal to ours is not sent
    skip: ChunkDigests | None = None
    skipped: int = 0
    #: told of every chunk the receiver holds durably (acknowledged, or equal to ours):
    #: a resync's progress, so an interrupted one resumes from there
    on_chunk: Callable[[int, int], None] | None = None
    #: chunks sent and not yet acknowledged: (bytes sent once it is in, offset, length,
    #: the job's gen when it was read)
    unacked: deque = field(default_factory=deque)
    #: a checksummed copy reads and hashes its chunks in this thread, off the loop
    scan: Scan | None = None
    #: the scan's next chunk, waiting for window or transport: (offset, length, data, as_of)
    pending: tuple | None = None
    #: our digests of these chunks, taken while the receiver took its own (PreHash)
    prehash: PreHash | None = None
    #: bytes per digest of a checksummed copy (skip's): a chunk that differs is read
    #: whole and sent in pieces of at most CHUNK
    chunk: int = CHUNK
    #: raised by every extend(): only chunks read since the last one are progress
    gen: int = 0
    #: False once the log was folded after our digests were taken (node.resync_fold)
    trust_prehash: bool = True
    #: what the application wrote after it was read (node.resync_fold): read first and
    #: unpaced, once no scan runs (a scan's chunks read before are still on their way, and
    #: the receiver writes blocks in the order they come)
    hot: deque = field(default_factory=deque)

    def extend(self, ranges: list[tuple[int, int]]) -> int:
        """Send these ranges again (node.resync_fold), read as of a later moment than now,
        whatever the receiver's digests say: it may hold an older copy of them from this very
        copy. Parts not read yet are left where they are: they will be read after now. What
        was read before no longer counts as progress. Bytes added."""
        self.gen += 1  # first: a scan chunk looked at from now on is read, not prehashed
        self.skip = None  # the scan thread keeps its own reference
        added = self.not_unread(joined(ranges))
        # a block written twice is read once, and writes close together in one read (the
        # bytes between are read as of now too, which is as good)
        gap = HOT_GAP
        hot = joined([*self.hot, *added], gap)
        while len(hot) > HOT_MAX_RANGES:
            gap *= 2
            hot = joined(hot, gap)
        self.hot = deque(hot)
        return sum(n for _, n in added)

    def not_unread(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Those of ``ranges`` that lie within no span this copy reads later than now."""
        return outside(ranges, self._unread())

    def _unread(self) -> list[tuple[int, int]]:
        """Byte spans this copy will read later than now: its queued ranges (the loop reads
        them, so none is part way), or a running scan's chunks past the one it is at."""
        spans = [(o, o + n) for o, n in self.hot]
        if self.scan is None:
            return spans + [(o, o + n) for o, n in self.ranges]
        at = self.scan.reading_end
        return spans + [(max(o, at), o + n) for o, n in self.scan.ranges if o + n > at]


def joined(ranges: list[tuple[int, int]], gap: int = 0) -> list[tuple[int, int]]:
    """These (offset, length) byte ranges as few as cover them, in volume order; ranges
    less than ``gap`` bytes apart are joined with the bytes between them."""
    out: list[list[int]] = []
    for off, n in sorted(ranges):
        if out and off <= out[-1][0] + out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], off + n - out[-1][0])
        else:
            out.append([off, n])
    return [(o, n) for o, n in out]


def outside(ranges: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Those (offset, length) ``ranges`` that the (start, end) spans, joined, do not hold
    whole (in their order). Sorted and bisected: a fold may hold thousands of each."""
    held = joined([(a, b - a) for a, b in spans if b > a])
    starts = [a for a, _ in held]
    out = []
    for o, n in ranges:
        i = bisect_right(starts, o) - 1
        if i < 0 or o + n > held[i][0] + held[i][1]:
            out.append((o, n))
    return out


def paced(pacer: Pacer | None, n: int, stopped: threading.Event) -> None:
    """Wait until the pacer lets ``n`` bytes be read (a reading thread's turn), or stopped."""
    while pacer is not None and not pacer.take(n) and not stopped.is_set():
        time.sleep(0.01)


class Scan(threading.Thread):
    """Reads each chunk of a checksummed copy as of every completed write, hashes it, and
    queues it -- without its data when it equals the receiver's -- for the loop to send.

    Hashing a volume costs seconds of CPU: done in the loop's thread it would stall
    replication and the application's writes for as long; here it runs beside them, paced
    like any copy, and the bounded queue keeps at most a window's worth of chunks read ahead.
    """

    def __init__(self, copier: BlockCopier, job: CopyJob) -> None:
        super().__init__(name=f"copy-scan-{job.peer}", daemon=True)
        self.copier, self.job = copier, job
        self.ranges = list(job.ranges)
        self.skip = job.skip  # read-only: shared with the job, not copied
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, WINDOW // CHUNK))
        self.stopped = threading.Event()
        #: the end of the chunk being (or last) looked at: set before it is read, so a chunk
        #: wholly past it will be read as of a later moment (CopyJob.unread; the ranges of a
        #: copy are in volume order)
        self.reading_end = 0

    def run(self) -> None:
        copier = self.copier
        pacer = copier.pacer
        pre = self.job.prehash
        if pre is not None and (pre.ranges, pre.chunk) != (self.ranges, self.job.chunk):
            pre = None  # taken for other ranges (a resync restarted since): not these chunks
        try:
            for i, (off, n) in enumerate(chunks(self.ranges, self.job.chunk)):
                self.reading_end = off + n
                theirs = self.skip.get(off, n) if self.skip is not None else None
                # after a fold (node.resync_fold) the receiver replays the log from a later
                # LSN than our digests were taken after: read the chunk as it is now
                job = self.job
                usable = pre is not None and theirs is not None
                ours = pre.get(i) if usable and job.gen == 0 and job.trust_prehash else None
                if ours is not None and ours == theirs:
                    # equal when we hashed it, after the resync began: the receiver replays
                    # the log from there, which brings any write since (as for a chunk read
                    # now). No read, no pacing: nothing is read or sent
                    if not self._put((off, n, None, copier.end())):
                        return
                    continue
                paced(pacer, n, self.stopped)
                as_of = copier.end()
                data = copier.read(off, n)
                if ours is not None:
                    same = False  # it differed when we hashed it: send it as it is now
                elif theirs is not None and theirs == zero_digest(n):
                    same = is_zero(data)  # a blank chunk there: a memcmp, not a hash, here
                else:
                    same = theirs is not None and theirs == digest(data)
                if same:
                    if not self._put((off, n, None, as_of)):
                        return
                    continue
                with memoryview(data) as view:
                    for pos in range(0, n, CHUNK):  # at most a window's worth queued
                        piece = bytes(view[pos : pos + CHUNK]) if n > CHUNK else data
                        if not self._put((off + pos, len(piece), piece, as_of)):
                            return
            self._put(None)
        except Exception as exc:  # e.g. the volume failed to read: the job stops, logged
            log.error("copy to %s: reading the volume failed: %s", self.job.peer, exc)
            self._put(("error", str(exc)))

    def _put(self, item: object) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            if self.copier.wake is not None:
                self.copier.wake()
            return True
        return False


class PreHash(threading.Thread):
    """Our digests of a checksummed copy's chunks, taken while the receiver takes its own.

    Without it the two hashing passes run one after the other: the receiver's (before it
    answers with its digests), then ours (the scan, chunk by chunk). Side by side they take
    one pass's time, on two machines or two cores. Chunks are read as of every completed
    write from after the resync began, so a chunk equal here holds on the receiver once it
    replays the log from the resync's start, whatever was written since -- the scan's own
    argument for a chunk it reads later. Stopped when the copy starts: the scan uses the
    digests taken by then and hashes the rest itself. Digests are kept packed, in chunk
    order (16 bytes per MiB), so a large volume costs little memory.

    Bound to its copy's tag: only that copy's receiver replays the log from the point the
    hashing began after. Another copy to the same peer (a rewind, a restarted resync) may
    replay from a later point, and a chunk hashed before it would miss the writes between.
    """

    def __init__(
        self,
        copier: BlockCopier,
        peer: str,
        tag: str,
        ranges: list[tuple[int, int]],
        chunk: int = CHUNK,
    ) -> None:
        super().__init__(name=f"copy-prehash-{peer}", daemon=True)
        self.copier, self.tag, self.ranges, self.chunk = copier, tag, list(ranges), chunk
        self.digests = bytearray()
        self.count = 0  # chunks hashed: raised only after their digest is in
        self.stopped = threading.Event()

    def run(self) -> None:
        pacer = self.copier.pacer
        read = self.copier.read

        def pieces() -> Iterator[tuple[int, int]]:
            for off, n in chunks(self.ranges, self.chunk):
                paced(pacer, n, self.stopped)
                if self.stopped.is_set():
                    return
                yield off, n

        digests = map_ordered(
            lambda piece: digest(read(*piece)), pieces(), hash_workers(), "copy-prehash"
        )
        try:
            for d in digests:
                self.digests += d
                self.count += 1
                if self.stopped.is_set():
                    break
        except Exception as exc:  # the scan reads (and reports) the volume itself
            log.warning("hashing chunks ahead of a copy stopped: %s", exc)
        finally:
            digests.close()

    def get(self, index: int) -> bytes | None:
        """Our digest of chunk ``index``, or None if not hashed (yet)."""
        if index >= self.count:
            return None
        return bytes(self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE])


@dataclass
class BlockCopier:
    """``read(offset, length)`` returns the bytes as of every completed write, ``end()`` the
    LSN they are as of, ``send(peer, body)`` whether the transport took the message."""

    read: Callable[[int, int], bytes]
    end: Callable[[], int]
    send: Callable[[str, object], bool]
    volume_size: int
    jobs: dict[str, CopyJob] = field(default_factory=dict)
    #: paces every chunk read (node.pacing); None: unpaced
    pacer: Pacer | None = None
    #: bytes of blocks sent to each peer since this daemon started, every copy counted
    sent_total: dict[str, int] = field(default_factory=dict)
    #: ... of which the application's writes sent again (CopyJob.hot)
    resent_total: dict[str, int] = field(default_factory=dict)
    #: called from a scan thread when it has queued a chunk (the loop's transport.wake)
    wake: Callable[[], None] | None = None
    #: digests being taken ahead of a checksummed copy, by peer (prehash())
    prehashes: dict[str, PreHash] = field(default_factory=dict)

    def prehash(
        self, peer: str, tag: str, ranges: list[tuple[int, int]], chunk: int = CHUNK
    ) -> None:
        """Start hashing these ranges for the copy ``tag`` to ``peer``, which its digests
        will start."""
        self._stop_prehash(peer)
        pre = self.prehashes[peer] = PreHash(self, peer, tag, ranges, chunk)
        pre.start()

    def _stop_prehash(self, peer: str) -> PreHash | None:
        pre = self.prehashes.pop(peer, None)
        if pre is not None:
            pre.stopped.set()
        return pre

    def start(
        self,
        peer: str,
        tag: str,
        ranges: list[tuple[int, int]],
        *,
        resume_lsn: int = 0,
        on_done: Callable[[CopyJob], None] | None = None,
        skip: ChunkDigests | None = None,
        on_chunk: Callable[[int, int], None] | None = None,
        chunk: int = CHUNK,
        trust_prehash: bool = True,
    ) -> bool:
        bad = [(o, n) for o, n in ranges if o < 0 or n <= 0 or o + n > self.volume_size]
        if bad:
            log.error(
                "%s asked for blocks %s outside the volume (%d bytes): refused",
                peer,
                ", ".join(f"{o}+{n}" for o, n in bad),
                self.volume_size,
            )
            return False
        self.cancel(peer, keep_prehash=True)
        pre = self._stop_prehash(peer)
        job = self.jobs[peer] = CopyJob(
            peer,
            tag,
            deque(ranges),
            resume_lsn=resume_lsn,
            on_done=on_done,
            skip=skip,
            on_chunk=on_chunk,
            prehash=pre if pre is not None and pre.tag == tag and skip is not None else None,
            chunk=chunk if skip is not None else CHUNK,
            trust_prehash=trust_prehash,
        )
        if skip is not None:
            job.scan = Scan(self, job)
            job.scan.start()
        log.info(
            "copying %d block ranges (%d bytes) to %s",
            len(ranges),
            sum(n for _, n in ranges),
            peer,
        )
        self.pump()
        return True

    def on_ack(self, peer: str, received: int) -> None:
        job = self.jobs.get(peer)
        if job:
            job.acked = max(job.acked, received)
            self._acked_chunks(job)

    @staticmethod
    def _acked_chunks(job: CopyJob) -> None:
        while job.unacked and job.unacked[0][0] <= job.acked:
            _, off, n, gen = job.unacked.popleft()
            if job.on_chunk is not None and gen == job.gen:
                job.on_chunk(off, n)

    def cancel(self, peer: str, keep_prehash: bool = False) -> None:
        if not keep_prehash:
            self._stop_prehash(peer)
        job = self.jobs.pop(peer, None)
        if job is not None and job.scan is not None:
            job.scan.stopped.set()

    def pump(self) -> None:
        pacer = self.pacer
        if pacer is not None and self.jobs:
            pacer.start()
        for job in list(self.jobs.values()):
            budget, hot_left = READ_BUDGET, HOT_PER_TURN
            sent_before, skipped_before = job.sent, job.skipped
            if job.scan is not None:
                self._pump_scan(job)
            while (
                job.scan is None
                and (job.hot or job.ranges)
                and job.sent - job.acked < WINDOW
                and budget > 0
            ):
                # the application's own writes first, unpaced: the replication stream would
                # have sent them anyway, and they were just written (in the page cache). The
                # pacer protects the application from the copy, not from its own writes, and
                # a copy slowed under them would never catch up with them
                hot = bool(job.hot)
                if hot:
                    if not hot_left:
                        break  # the rest on the next turns
                    hot_left -= 1
                todo = job.hot if hot else job.ranges
                off, length = todo[0]
                n = min(CHUNK, length)
                if not hot and pacer is not None and not pacer.take(n):
                    break  # over the rate: the loop comes back within a tick
                as_of = self.end()
                data = self.read(off, n)
                theirs = job.skip.get(off, n) if job.skip is not None and not hot else None
                if theirs is not None and theirs == digest(data):
                    job.skipped += n  # the receiver holds these very bytes
                    budget -= n
                    if job.on_chunk is not None:
                        job.on_chunk(off, n)
                elif not self.send(job.peer, Block(off, data)):
                    break  # the transport is full or the peer gone: retry next turn
                else:
                    job.sent += n
                    job.unacked.append((job.sent, off, n, job.gen))
                    self.sent_total[job.peer] = self.sent_total.get(job.peer, 0) + n
                    if hot:
                        self.resent_total[job.peer] = self.resent_total.get(job.peer, 0) + n
                job.as_of = max(job.as_of, as_of)
                if n == length:
                    todo.popleft()
                else:
                    todo[0] = (off + n, length - n)
            if job.skipped > skipped_before and job.sent == sent_before:
                # a turn of chunks the receiver already holds sends nothing: tell it we are
                # alive, or it takes the silence for a stalled copy
                self.send(job.peer, Block(job.ranges[0][0] if job.ranges else 0, b""))
            if not job.ranges and not job.hot and not job.done:
                done = BlockDone(job.tag, max(job.as_of, self.end()), job.resume_lsn, job.sent)
                if self.send(job.peer, done):
                    job.done = True
                    log.info(
                        "sent %d bytes of blocks to %s (%d bytes it already had)",
                        job.sent,
                        job.peer,
                        job.skipped,
                    )
                    if job.on_done is not None:
                        job.on_done(job)
            if job.done and not job.unacked:
                del self.jobs[job.peer]  # kept till then: the last acks are progress too

    def _pump_scan(self, job: CopyJob) -> None:
        """Send what the scan thread has read, within the window; chunks equal to the
        receiver's are only counted."""
        scan = job.scan
        assert scan is not None
        while job.ranges and job.sent - job.acked < WINDOW:
            if job.pending is None:
                try:
                    job.pending = scan.queue.get_nowait()
                except queue.Empty:
                    return
            item = job.pending
            if item is None:  # every chunk read: then what was written meanwhile (hot)
                job.pending = None
                job.ranges.clear()
                job.scan = None
                return
            if item[0] == "error":
                job.pending = None
                self.cancel(job.peer)
                return
            off, n, data, as_of = item
            if data is not None:
                if not self.send(job.peer, Block(off, data)):
                    return  # the transport is full or the peer gone: retry next turn
                job.sent += n
                job.unacked.append((job.sent, off, n, 0))
                self.sent_total[job.peer] = self.sent_total.get(job.peer, 0) + n
            else:
                job.skipped += n  # the receiver holds these very bytes
                if job.on_chunk is not None and job.gen == 0:
                    job.on_chunk(off, n)
            job.as_of = max(job.as_of, as_of)
            job.pending = None


__all__ = ["BlockCopier", "CopyJob", "joined", "outside"]
