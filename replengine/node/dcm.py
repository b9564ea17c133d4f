"""srl_full = "dcm": keep writing when a secondary falls off the log (VVR's DCM).

When the SRL is full because a secondary lags or is gone, the primary stops keeping log
records for it: every region it has not received is marked in a persistent dirty-region
bitmap (replengine.storage.dirtymap.DirtyMap), the bitmap is made durable, and only then may the records
be cleared (`dcm_covered_end`). When the secondary returns, the primary copies just the dirty
regions (BLOCK messages, read as of every completed write), tells it where its log restarts
(BLOCK_DONE.resume_lsn) and streams records from there. The secondary is marked inconsistent
from the first block until it has applied past the primary's end at the end of the copy.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from replengine.node.copier import CHUNK, CopyJob
from replengine.node.resync_end import ended_there, unstick
from replengine.node.resync_fold import Written, fold, holds_log, prefold
from replengine.node.states import IN_DCM, PeerState
from replengine.node.sums import offered_skip
from replengine.storage.chunksums import DIGEST_SIZE, MAX_CHUNK, ChunkDigests, count
from replengine.storage.dirtymap import DCMError, DirtyMap, RegionTally
from replengine.wire.protocol import MAX_DATA, SumReq, Sums

if TYPE_CHECKING:
    from replengine.node.context import DcmContext
    from replengine.node.peers import Peer
    from replengine.node.primary import Primary

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.2
#: how often a running resync's progress (the regions the receiver now holds) is made
#: durable: a resync resumes from the last flush, so this bounds what is copied twice
PROGRESS_FLUSH_S = 1.0
#: a resync owing at least this share of the volume asks the receiver for its chunk digests
#: first (a full sync, a replaced disk): chunks it already holds cost a checksum, not a copy
CHECKSUM_SHARE = 0.5
#: ranges beyond this are copied without digests (the request would be too large)
CHECKSUM_MAX_RANGES = 10_000
#: time the receiver gets to read its volume for the digests: a slow disk still gets there
SUMS_MIN_WAIT_S = 30.0
SUMS_BYTES_PER_S = 20 << 20


def sum_chunk(ranges: Iterable[tuple[int, int]], base: int = CHUNK) -> int | None:
    """Bytes per digest for a checksummed copy of these ranges: ``base`` (the resource's
    resync_chunk_size), or the next power of two whose digests fit one SUMS message (16 bytes
    each: 1 TiB of volume per MAX_DATA at 1 MiB, 8 TiB at MAX_CHUNK). None beyond that: the
    copy then sends every chunk."""
    ranges = list(ranges)
    chunk = base
    while count(ranges, chunk) * DIGEST_SIZE >= MAX_DATA - (1 << 20):
        if chunk >= MAX_CHUNK:
            return None
        chunk *= 2
    return chunk


#: the request is repeated this often until answered: a node that has just (re)started may
#: not follow us yet when the first one arrives, and ignores it
SUMS_ASK_EVERY_S = 1.0


def dcm_path(node: DcmContext, peer: str) -> Path:
    """Beside a file SRL; under /var/lib/replengine for an SRL on a block device."""
    srl = Path(node.cfg.local.srl)
    if srl.is_file():
        return srl.with_name(f"{srl.name}.dcm-{peer}")
    base = Path("/var/lib/replengine") / node.cfg.name / node.me
    base.mkdir(parents=True, exist_ok=True)
    return base / f"dcm-{peer}"


class _ProgressFlusher:
    """Flushes resync progress in a thread, one flush at a time."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None

    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, maps: list[DirtyMap]) -> None:
        if maps:
            self.thread = threading.Thread(
                target=self._run, args=(maps,), name="dcm-progress", daemon=True
            )
            self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()

    @staticmethod
    def _run(maps: list[DirtyMap]) -> None:
        for dmap in maps:
            try:
                dmap.flush()
            except DCMError as exc:  # the resync goes on; a restart resumes from further back
                log.error("resync progress not saved: %s", exc)


@dataclass
class Resync:
    """A running copy of dirty regions to one secondary."""

    peer: str
    resume_lsn: int
    ranges: deque = field(default_factory=deque)
    sent: int = 0
    acked: int = 0
    done: bool = False
    tag: str = field(default_factory=lambda: "dcm-" + uuidlib.uuid4().hex[:10])
    started: float = 0.0
    dirty_bytes: int = 0
    #: waiting for the receiver's digests until this time (0: not asked)
    sums_deadline: float = 0.0
    sums_asked: float = 0.0
    copying: bool = False
    skipped: int = 0
    #: owes most of the volume (status: full-sync)
    full: bool = False
    #: bytes per digest the receiver is asked for (sum_chunk())
    chunk: int = CHUNK
    #: the peer's HELLO count (Peer.hellos) when BLOCK_DONE went out (set with done), and
    #: when its first BLOCK_ACK after that came in (-1: not yet): see node.resync_end
    hellos_at_done: int = 0
    hellos_at_ack: int = -1
    done_at: float = 0.0
    #: where the writes since resume_lsn went, and the copy's progress tally: a copy that
    #: holds too much of the log folds them in (node.resync_fold)
    written: Written = field(default_factory=Written)
    tally: RegionTally | None = None
    #: False for a rewind's copy (the rewinder, not resume_lsn, decides where it restarts)
    foldable: bool = True
    folds: int = 0
    #: regions folded in before the copy started that its ranges do not cover
    prefolded: list = field(default_factory=list)
    folded_bytes: int = 0
    fold_logged: float = 0.0


class DcmTracker:
    """Per-primary DCM state: bitmaps of peers in dcm, running resyncs."""

    def __init__(self, node: DcmContext) -> None:
        self.node = node
        self.maps: dict[str, DirtyMap] = {}
        self.covered_end: dict[str, int] = {}
        self.resyncs: dict[str, Resync] = {}
        self._dirty: set[str] = set()
        #: peers whose resync cleared regions since the last flush of their map
        self._progress: set[str] = set()
        self._progress_flusher = _ProgressFlusher()
        self._last_flush = 0.0
        self._last_progress_flush = 0.0
        self.last_resync: dict | None = None

    # ---- entering dcm ---------------------------------------------------------------------

    def load(self, primary: Primary) -> None:
        """On promotion: bitmaps left by an earlier term still owe those regions."""
        node = self.node
        for name, peer in node.peers.items():
            path = dcm_path(node, name)
            if not path.exists():
                continue
            dmap = DirtyMap.open(
                path, volume_size=node.volume.size, region_size=node.cfg.dcm_region_size
            )
            if dmap.is_empty:
                path.unlink()
                continue
            self._enter(peer, dmap, node.srl.start_lsn, primary)
            log.warning(
                "secondary %s still has %d dirty bytes from before: in dcm", name, dmap.dirty_bytes
            )

    def release_laggards(self, primary: Primary) -> bool:
        """Switch the peers whose unacknowledged records hold the log's start to dcm, the
        furthest behind first; True if any was switched.

        Only a peer that lacks the oldest record still logged holds space: switching one that
        is merely a few writes in flight behind frees nothing until the clear that the last
        switch allowed has run, and would copy its whole volume for no reason. A connected
        sync secondary is never switched: writers wait for it anyway."""
        node = self.node
        start = node.srl.start_lsn
        candidates = [
            p
            for p in node.peers.values()
            if p.state not in IN_DCM
            and not p.rejected
            and p.acked_end <= start
            and p.acked_end < primary.assigned_end
            and not (p.mode == "sync" and p.streaming and not p.degraded)
        ]
        if not candidates:
            return False
        floor = min(p.acked_end for p in candidates)
        switched = False
        for p in candidates:
            if p.acked_end == floor:
                path = dcm_path(node, p.name)
                dmap = DirtyMap.create(
                    path,
                    volume_size=node.volume.size,
                    region_size=node.cfg.dcm_region_size,
                    force=True,
                )
                self._enter(p, dmap, p.acked_end, primary)
                node.events.emit(
                    "policy",
                    policy="srl_full",
                    action="dcm",
                    peer=p.name,
                    acked_lsn=p.acked_end - 1,
                    dirty_bytes=dmap.dirty_bytes,
                )
                log.error(
                    "SRL FULL: secondary %s (acked LSN %d) switched to dcm: its records "
                    "are released and %d bytes of regions will be resynced when it "
                    "returns (srl_full=dcm)",
                    p.name,
                    p.acked_end - 1,
                    dmap.dirty_bytes,
                )
                switched = True
        self.flush(force=True)
        return switched

    def enter_full(
        self, peer: Peer, primary: Primary, why: str = "needs records older than this SRL"
    ) -> None:
        """The peer needs records this SRL no longer has (or the operator said its volume
        cannot be trusted): resync every region."""
        node = self.node
        dmap = DirtyMap.create(
            dcm_path(node, peer.name),
            volume_size=node.volume.size,
            region_size=node.cfg.dcm_region_size,
            force=True,
        )
        dmap.mark_all()
        self._enter(peer, dmap, primary.assigned_end, primary)
        self.flush(force=True)
        log.error(
            "secondary %s %s: full resync through dcm (%d bytes)",
            peer.name,
            why,
            dmap.dirty_bytes,
        )

    def full_sync(self, peer: Peer, primary: Primary) -> int:
        """The operator says the peer's volume cannot be trusted (a replaced or damaged disk,
        `replctl sync --full`): every region is owed to it, copied now if it is connected, else
        when it comes back. Bytes owed."""
        dmap = self.maps.get(peer.name)
        if dmap is None:
            self.enter_full(peer, primary, "to be rebuilt (replctl sync --full)")
        else:  # already tracked (it is away): owe it everything instead of its dirty regions
            dmap.mark_all()
            self._dirty.add(peer.name)
            self.flush(force=True)
        if peer.alive(self.node.heartbeat_s) and peer.hello is not None:
            self.start_resync(peer)
        return self.maps[peer.name].dirty_bytes

    def _enter(self, peer: Peer, dmap: DirtyMap, from_lsn: int, primary: Primary) -> None:
        node = self.node
        first = max(from_lsn, node.srl.start_lsn)
        durable = node.watcher.durable_end
        if first < durable:
            for rec in node.srl.read(first, durable):
                dmap.mark(rec.offset, len(rec.data))
        for lsn in range(max(first, durable), primary.assigned_end):
            rec = primary.cache.get(lsn)
            if rec is not None:
                dmap.mark(rec.offset, len(rec.data))
        self.maps[peer.name] = dmap
        self.covered_end[peer.name] = node.srl.start_lsn
        self._dirty.add(peer.name)
        self.resyncs.pop(peer.name, None)
        peer.state = PeerState.DCM
        peer.streaming = False
        peer.degraded = True

    # ---- while in dcm ---------------------------------------------------------------------

    def mark(self, lsn: int, offset: int, length: int) -> None:
        """A write was logged at ``lsn``: a peer in dcm owes its region; a running copy
        notes where it went, in case it must fold it in."""
        for name, dmap in self.maps.items():
            if self.node.peers[name].state == PeerState.DCM:
                dmap.mark(offset, length)
                self._dirty.add(name)
            else:
                job = self.resyncs.get(name)
                if job is not None and job.foldable and not job.done:
                    job.written.add(lsn, offset, length)

    def flush(self, force: bool = False) -> None:
        """Make the bitmaps durable; only then can the records they cover be cleared."""
        now = time.monotonic()
        if not force and now - self._last_flush < FLUSH_INTERVAL_S:
            return
        self._last_flush = now
        primary = self.node.primary
        end = primary.assigned_end if primary else self.node.watcher.durable_end
        for name in list(self._dirty):
            dmap = self.maps.get(name)
            if dmap is not None and self.node.peers[name].state == PeerState.DCM:
                dmap.flush()
                self.covered_end[name] = end
        self._dirty.clear()
        if (
            self._progress
            and now - self._last_progress_flush >= PROGRESS_FLUSH_S
            and not self._progress_flusher.busy()
        ):
            # off the loop: a flush is a file write, fsync, rename and directory fsync,
            # milliseconds every second during a resync that the application's writes,
            # waiting behind it in the loop, took as their p99. Progress only shortens a
            # resumed resync; what clearing records needs (the marks above) stays here
            self._last_progress_flush = now
            maps = [self.maps[n] for n in self._progress if n in self.maps and n in self.resyncs]
            self._progress.clear()
            self._progress_flusher.start(maps)

    def clear_floor(self, peer: Peer) -> int | None:
        """The LSN below which records may go, as far as this peer is concerned."""
        job = self.resyncs.get(peer.name)
        if job is not None:
            if job.done and peer.streaming:
                # the copy is over and the peer is streamed from resume_lsn: what it has
                # acknowledged since is in its log, as for any secondary. Holding it until
                # the resync is seen to end (a HELLO or two) filled a small SRL under a
                # busy application, at the very end of a copy that folding had kept going
                return max(job.resume_lsn, peer.acked_end)
            return job.resume_lsn
        if peer.name in self.maps:
            return self.covered_end.get(peer.name, 0)
        return None

    # ---- resync ---------------------------------------------------------------------------

    def resync_for_rewind(
        self,
        peer: Peer,
        ranges: list[tuple[int, int]],
        tag: str,
        skip: ChunkDigests | None = None,
    ) -> None:
        """A peer in dcm asks for the blocks of its divergent tail: add them to its dirty
        regions and copy everything, answering with the tag of its request."""
        dmap = self.maps[peer.name]
        for off, length in ranges:
            if 0 <= off and length > 0 and off + length <= self.node.volume.size:
                dmap.mark(off, length)
        self._dirty.add(peer.name)
        self.node.copier.cancel(peer.name)
        self.start_resync(peer, tag, skip)

    def start_resync(
        self,
        peer: Peer,
        tag: str | None = None,
        skip: ChunkDigests | None = None,
    ) -> None:
        node = self.node
        dmap = self.maps[peer.name]
        self.flush(force=True)
        job = Resync(
            peer.name,
            node.watcher.durable_end,
            deque(dmap.regions()),
            started=time.monotonic(),
            dirty_bytes=dmap.dirty_bytes,
        )
        if tag:
            job.tag = tag
            job.foldable = False
        primary = node.primary
        if primary is not None:  # logged before, durable since: past resume_lsn too
            for lsn in range(job.resume_lsn, primary.assigned_end):
                rec = primary.cache.get(lsn)
                if rec is not None:
                    job.written.add(lsn, rec.offset, len(rec.data))
        job.full = dmap.dirty_bytes >= CHECKSUM_SHARE * node.volume.size
        self.resyncs[peer.name] = job
        peer.state = PeerState.DCM_RESYNC
        node.events.emit(
            "full-sync-started" if job.full else "resync-started",
            peer=peer.name,
            bytes=dmap.dirty_bytes,
            resume_lsn=job.resume_lsn,
        )
        log.warning(
            "secondary %s back: resyncing %d bytes of dirty regions, then its log from LSN %d",
            peer.name,
            dmap.dirty_bytes,
            job.resume_lsn,
        )
        size = node.volume.size
        chunk = (
            sum_chunk(job.ranges, node.cfg.resync_chunk_size)
            if len(job.ranges) <= CHECKSUM_MAX_RANGES
            else None
        )
        if (
            not tag  # a rewind's copy: the rewinder owns that volume and asks for its blocks
            and dmap.dirty_bytes >= CHECKSUM_SHARE * size
            and chunk is not None
            and node.send(peer.name, SumReq(job.tag, list(job.ranges), chunk))
        ):
            job.chunk = chunk
            # our own digests meanwhile: the two hashing passes side by side
            node.copier.prehash(peer.name, job.tag, list(job.ranges), chunk)
            job.sums_asked = time.monotonic()
            job.sums_deadline = job.sums_asked + max(
                SUMS_MIN_WAIT_S, 2 * dmap.dirty_bytes / SUMS_BYTES_PER_S
            )
            log.info("asked %s for the digests of its chunks first (%s)", peer.name, job.tag)
            return
        self._start_copy(peer, job, skip, progress=False)

    def _start_copy(
        self,
        peer: Peer,
        job: Resync,
        skip: ChunkDigests | None,
        progress: bool = False,
    ) -> None:
        job.copying = True
        job.sums_deadline = 0.0
        tally = job.tally = RegionTally(self.maps[peer.name])

        def done_there(off: int, length: int) -> None:
            # the receiver holds this chunk durably: a resync cut short (either end killed,
            # the link) resumes after it. Only for a copy that began with our digest request:
            # the receiver counted its acknowledgements from there, and had cleared its log
            # (nothing replays over the blocks)
            tally.done(off, length)
            self._progress.add(peer.name)

        self.node.copier.start(
            peer.name,
            job.tag,
            sorted([*job.ranges, *job.prefolded]),  # and the regions folded in before it
            resume_lsn=job.resume_lsn,
            on_done=lambda copy: self._copied(peer, job, copy),
            skip=skip,
            on_chunk=done_there if progress else None,
            chunk=job.chunk,
            trust_prehash=not job.folds,  # our digests may predate a fold: read it all
        )

    def on_sums(self, peer: Peer, sums: Sums) -> bool:
        """The receiver's digests: copy only the chunks that differ. False if they answer
        no request of ours (an older resync's answer, or offered with a rewind's request)."""
        job = self.resyncs.get(peer.name)
        if job is None or job.copying or sums.tag != job.tag:
            return False
        if not sums.digests:
            log.info(
                "%s declined to send digests (it is rewinding): copying every chunk", peer.name
            )
            self._start_copy(peer, job, None)
            return True
        skip = offered_skip(sums, job.tag, list(job.ranges), job.chunk)  # logs a misfit
        self._start_copy(peer, job, skip, progress=skip is not None)
        return True

    def summary(self) -> dict:
        """For status: who is in dcm, how much is dirty, the last completed resync."""
        peers = {}
        for name, dmap in self.maps.items():
            job = self.resyncs.get(name)
            peers[name] = {
                "dirty_bytes": dmap.dirty_bytes,
                "resync_sent": job.sent if job else None,
            }
        return {"peers": peers, "last_resync": self.last_resync}

    def _copied(self, peer: Peer, job: Resync, copy: CopyJob) -> None:
        """Every dirty region was handed to the transport and BLOCK_DONE sent: stream the
        log from where the copy left it."""
        job.done = True
        job.written.clear()  # streamed from resume_lsn now: nothing more to fold
        job.sent = copy.sent
        job.skipped = copy.skipped
        job.hellos_at_done = peer.hellos
        job.done_at = time.monotonic()
        peer.restart_stream(job.resume_lsn)
        peer.acked_end = job.resume_lsn
        peer.streaming = True

    def pump(self) -> None:
        node = self.node
        for job in list(self.resyncs.values()):
            peer = node.peers[job.peer]
            if not peer.alive(node.heartbeat_s):
                self._abort(peer, job)
                continue
            if not job.copying:
                if job.foldable and holds_log(node.srl, job, node.watcher):  # digests awaited
                    prefold(job, self.maps[job.peer], node.watcher.durable_end)
                now = time.monotonic()
                if job.sums_deadline and now > job.sums_deadline:
                    log.warning("%s sent no chunk digests in time: copying every chunk", job.peer)
                    self._start_copy(peer, job, None)
                elif job.sums_deadline and now - job.sums_asked >= SUMS_ASK_EVERY_S:
                    job.sums_asked = now
                    node.send(job.peer, SumReq(job.tag, list(job.ranges), job.chunk))
                continue
            copy = node.copier.jobs.get(job.peer)
            if copy is not None and copy.tag == job.tag:
                job.sent = copy.sent
                job.skipped = copy.skipped
                if job.foldable and not copy.done and holds_log(node.srl, job, node.watcher):
                    self._progress_flusher.wait()  # the map is written here now
                    fold(job, copy, self.maps[job.peer], node.watcher.durable_end)
            if job.done and peer.acked_end >= job.resume_lsn and peer.hello:
                if not peer.hello.consistent:
                    unstick(peer, job, node.heartbeat_s)
                elif ended_there(peer, job, node.heartbeat_s):
                    self._finish(peer, job)
                    if node.primary is not None:
                        node.primary.check_sync_peers()  # synchronous again if caught up

    def on_block_ack(self, peer: Peer) -> None:
        """The receiver acknowledged blocks: once BLOCK_DONE is out, every HELLO it sends
        after this one says whether the copy ended there."""
        job = self.resyncs.get(peer.name)
        if job is not None and job.done and job.hellos_at_ack < 0:
            job.hellos_at_ack = peer.hellos

    def connection_dropped(self, peer: Peer) -> None:
        """What the connection to this peer held was lost, the peer not taken for gone (the
        drop came while this node was stalled, or its connections were replaced on waking:
        node.liveness). A copy running to it must start over from the map: its BLOCK_ACKs
        count bytes in order, so after a gap they would take lost blocks for copied and
        clear their regions (tests/test_resync_end.py). The chunks it holds cost a digest."""
        job = self.resyncs.get(peer.name)
        if job is not None:
            self._abort(peer, job, "its connection dropped while this node was stalled")

    def _abort(self, peer: Peer, job: Resync, why: str = "lost") -> None:
        """The peer went away mid-resync: back to dcm, owing everything since resume_lsn."""
        self.resyncs.pop(peer.name, None)
        self.node.copier.cancel(peer.name)
        primary = self.node.primary
        assert primary is not None
        self._enter(peer, self.maps[peer.name], job.resume_lsn, primary)
        log.warning("secondary %s %s during its dcm resync: back in dcm", peer.name, why)
        self.node.events.emit(
            "full-sync-aborted" if job.full else "resync-aborted",
            peer=peer.name,
            bytes_done=job.sent + job.skipped,
        )

    def _finish(self, peer: Peer, job: Resync) -> None:
        self.resyncs.pop(peer.name, None)
        self._progress_flusher.wait()  # or it could write the map again once removed
        dmap = self.maps.pop(peer.name)
        self.covered_end.pop(peer.name, None)
        dmap.close()
        dmap.path.unlink(missing_ok=True)
        peer.state = PeerState.CATCHING_UP
        peer.degraded = peer.mode == "sync"
        self.node.events.emit(
            "full-sync-finished" if job.full else "resync-finished",
            peer=peer.name,
            bytes=job.sent,
            skipped_bytes=job.skipped,
            seconds=round(time.monotonic() - job.started, 3),
        )
        self.last_resync = {
            "peer": peer.name,
            "bytes": job.sent,
            "skipped_bytes": job.skipped,
            "resume_lsn": job.resume_lsn,
            "seconds": round(time.monotonic() - job.started, 3),
        }
        log.warning(
            "secondary %s: dcm resync complete (%d bytes copied, %d it already had), "
            "consistent again",
            peer.name,
            job.sent,
            job.skipped,
        )
