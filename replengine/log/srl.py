"""The Storage Replication Log: an on-disk circular log of records with group commit.

Every write on the primary and every UPDATE on a secondary goes through ``append``; nothing is
acknowledged before its record is durable here (invariant 1), and after a crash ``open`` gives
back exactly the records that were durable, never a corrupt one silently (invariant 7).
The byte layout lives in srl_format.py and docs/srl-format.md, recovery (torn tail vs
corruption) in srl_recovery.py, whole-buffer I/O and the LSN index in srl_io.py. This module
is the behaviour of an open log: reservation of LSNs and positions, the group commit that
turns many appends into few ``pwritev`` + ``fdatasync``, reads, clears and truncation.

Threading: ``_lock`` guards the in-memory state (queue, positions, index); ``_sb_lock``
serialises superblock writes (always taken before ``_lock``). Batches are led by a waiting
appender or by the committer thread; several may be in flight (big records), and records
become durable (and visible to readers) strictly in LSN order.
"""

from __future__ import annotations

import os
import threading
import uuid as uuid_mod
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from threading import get_ident

from replengine.errors import SRLCorruptError, SRLError, SRLFullError
from replengine.log.crc import crc32c
from replengine.log.record import Record
from replengine.log.srl_commit import GroupCommit
from replengine.log.srl_format import (
    MAX_LENGTH,
    SB_SIZE,
    Superblock,
    record_size,
)
from replengine.log.srl_io import (
    Batch,
    Index,
    Item,
    PendingAppend,
    SRLStats,
    open_locked,
    read_record,
    read_records,
)
from replengine.log.srl_recovery import (
    MIN_SRL_SIZE,
    choose_superblock,
    format_log,
    is_initialised,
    scan_log,
)
from replengine.log.srl_surgery import LogSurgery

__all__ = ["SRL", "PendingAppend", "SRLStats", "MIN_SRL_SIZE"]


class SRL(GroupCommit, LogSurgery):
    """An open SRL. Build with ``SRL.create`` or ``SRL.open``; all methods are thread-safe."""

    # ------------------------------------------------------------------ construction

    def __init__(self, path: Path, fd: int, sb: Superblock, slot: int) -> None:
        """Private: use create() or open(). ``slot`` is the copy (0/1) holding ``sb``."""
        self.path = path
        self._fd = fd
        self._sb = sb
        self._sb_slot = slot
        self._cap = sb.area_size
        self._area_off = sb.area_offset
        self.stats = SRLStats()
        self._lock = threading.Lock()
        self._sb_lock = threading.Lock()
        self._work_cv = threading.Condition(self._lock)
        self._done_cv = threading.Condition(self._lock)
        self._queue: deque[Item] = deque()
        self._inflight = 0  # batches being written or synced: len(_flight)
        self._inflight_bytes = 0
        self._queued_bytes = 0  # bytes of the records in _queue
        self._forming = False  # a leader is waiting for siblings: nobody else starts a batch
        #: threads whose small records formed the last batch; while a leader waits for them
        #: (_forming), _awaited holds those that have not queued their next record yet
        self._last_writers: set[int] = set()
        self._awaited: set[int] = set()
        self._last_sync = 0.0  # seconds the last batch's fdatasync took
        self._arrival_cv = threading.Condition(self._lock)
        self._flight: deque[Batch] = deque()  # batches not durable yet, in LSN order
        self._paused = False
        self._closing = False
        self._closed = False
        self._failed: SRLError | None = None
        self._index = Index(sb.start_lsn)
        self._start_lsn = self._durable_end = self._next_lsn = sb.start_lsn
        self._start_pos = self._durable_pos = self._next_pos = sb.start_pos
        self._committer: threading.Thread | None = None

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        resource: str,
        uuid: uuid_mod.UUID,
        node: str,
        force: bool = False,
        size: int | None = None,
    ) -> SRL:
        """Initialise an empty SRL (start = end = LSN 1) and return it open.

        ``size`` (addition) creates or grows a regular file first, for tests and file-backed
        SRLs. Refuses a device that already holds an SRL unless ``force``: overwriting one
        throws away records a peer may still need.
        """
        path = Path(path)
        if size is not None and not path.exists():
            with open(path, "wb"):
                pass
        fd = open_locked(path)
        try:
            sb = format_log(
                path, fd, resource=resource, uuid=uuid, node=node, force=force, size=size
            )
            srl = cls(path, fd, sb, 1)
            srl._start()
            return srl
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def open(cls, path: str | os.PathLike) -> SRL:
        """Open an initialised SRL: pick the newest valid superblock copy, scan the records
        from start, drop a torn tail (or raise SRLCorruptError), and rewrite the superblock."""
        path = Path(path)
        fd = open_locked(path)
        try:
            sb, slot = choose_superblock(path, fd)
            srl = cls(path, fd, sb, slot)
            srl._recover()
            srl._start()
            return srl
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def is_initialised(path: str | os.PathLike) -> bool:
        """True if either superblock copy is valid (the device holds an SRL)."""
        return is_initialised(path)

    def _start(self) -> None:
        self._committer = threading.Thread(
            target=self._commit_loop, daemon=True, name=f"srl-commit:{self.path.name}"
        )
        self._committer.start()

    # ------------------------------------------------------------------ properties

    @property
    def resource(self) -> str:
        return self._sb.resource

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self._sb.uuid

    @property
    def node(self) -> str:
        return self._sb.node

    @property
    def start_lsn(self) -> int:
        return self._start_lsn

    @property
    def end_lsn(self) -> int:
        """Next LSN after the last *durable* record: what recovery would give back."""
        return self._durable_end

    @property
    def next_lsn(self) -> int:
        """(Addition) next LSN to be assigned; > end_lsn while appends are in flight."""
        return self._next_lsn

    @property
    def history(self) -> list[tuple[int, int]]:
        return list(self._sb.history)

    @property
    def epoch(self) -> int:
        return self._sb.history[-1][0] if self._sb.history else 0

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def used_bytes(self) -> int:
        """Bytes from the durable start to the last reserved record, wasted wrap tail included."""
        with self._lock:
            return self._used()

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return self._cap - self._used()

    def record_size(self, length: int) -> int:
        return record_size(length)

    def bytes_between(self, first: int, end: int) -> int:
        """SRL bytes taken by records [first, end) as far as this log holds them (wasted
        wrap tails included): how far behind, in log space, a peer at `first` is."""
        with self._lock:
            first = max(first, self._start_lsn)
            end = min(end, self._index.end)
            if end <= first:
                return 0
            a = self._index.lookup(first)[0]
            pos, length = self._index.lookup(end - 1)
        d = (pos + record_size(length) - a) % self._cap
        return d or self._cap

    def _used(self) -> int:
        if self._next_lsn == self._start_lsn:
            return 0
        d = (self._next_pos - self._start_pos) % self._cap
        return d if d else self._cap  # equal positions with records in between: full circle

    # ------------------------------------------------------------------ appends

    def append(self, epoch: int, offset: int, data: bytes) -> int:
        """Append with the next LSN; returns it once durable (concurrent callers share syncs)."""
        return self._wait_item(self._enqueue(None, epoch, offset, data, kick=False), None)

    def append_nowait(
        self, epoch: int, offset: int, data: bytes, *, kick: bool = True
    ) -> PendingAppend:
        """Reserve the next LSN and queue the record. With kick, the committer thread makes it
        durable; without, whoever first waits on it (or a later record) writes the batch in
        its own thread — the daemon's loop does that to avoid thread hand-offs."""
        return PendingAppend(self, self._enqueue(None, epoch, offset, data, kick=kick))

    def append_record(self, rec: Record) -> None:
        """Log a record received from the primary (or a peer in log-diff sync), same LSN."""
        self._wait_item(
            self._enqueue(rec.lsn, rec.epoch, rec.offset, rec.data, kick=False, crc=rec.crc), None
        )

    def append_record_nowait(self, rec: Record, *, kick: bool = True) -> PendingAppend:
        """(Addition) append_record without waiting, so a secondary can pipeline UPDATEs;
        `kick` as for append_nowait."""
        return PendingAppend(
            self, self._enqueue(rec.lsn, rec.epoch, rec.offset, rec.data, kick=kick, crc=rec.crc)
        )

    def append_records_nowait(self, recs: list[Record]) -> tuple[PendingAppend | None, int]:
        """Log consecutive records received from the primary (a batch of an UPDATES
        message), as append_record_nowait(kick=False) of each would, under one lock: the
        per-record cost of a secondary catching up was mostly this call's. Returns the
        handle of the last record queued and how many were queued: fewer than all when the
        SRL filled up (the rest change nothing). Any other refusal raises before anything
        is queued."""
        if not recs:
            return None, 0
        entries = []
        first = recs[0].lsn
        for i, rec in enumerate(recs):
            if rec.lsn != first + i:
                raise SRLError(
                    f"{self.path}: records of a batch are not consecutive: LSN {rec.lsn} "
                    f"after {first + i - 1}"
                )
            mv = memoryview(rec.data).cast("B")
            if (
                len(mv) > MAX_LENGTH
                or not 0 <= rec.offset < 1 << 64
                or not 0 <= rec.epoch < 1 << 64
            ):
                raise SRLError(
                    f"{self.path}: record LSN {rec.lsn} out of range (epoch {rec.epoch}, "
                    f"offset {rec.offset}, length {len(mv)})"
                )
            # outside the lock, as _enqueue; one the wire decoder checked is not redone
            crc = crc32c(mv) if rec.crc is None else rec.crc
            entries.append((rec.epoch, rec.offset, mv, crc))
        me = get_ident()
        with self._lock:
            while self._paused:
                self._done_cv.wait()
            self._check_usable()
            if recs[0].lsn != self._next_lsn:
                raise SRLError(
                    f"{self.path}: record LSN {recs[0].lsn} does not follow the log: expected "
                    f"LSN {self._next_lsn} (end of log)"
                )
            items, nbytes = self._reserve_many(entries, me)
            self._queue.extend(items)
            self._queued_bytes += nbytes
            self.stats.appends += len(items)
            if self._forming and me in self._awaited:
                self._awaited.discard(me)
                if not self._awaited:
                    self._arrival_cv.notify()
        return PendingAppend(self, items[-1]), len(items)

    def kick(self) -> None:
        """Have the committer thread write what is queued (appends made with kick=False),
        so the caller can go on while the write and the fdatasync run."""
        with self._lock:
            if self._queue:
                self._work_cv.notify()

    def _enqueue(
        self,
        lsn: int | None,
        epoch: int,
        offset: int,
        data: bytes,
        *,
        kick: bool,
        crc: int | None = None,
    ) -> Item:
        """Reserve LSN + space and queue the record. ``kick`` wakes the committer thread, for
        callers that will not wait (and lead) right away."""
        mv = memoryview(data).cast("B")
        if len(mv) > MAX_LENGTH or not 0 <= offset < 1 << 64 or not 0 <= epoch < 1 << 64:
            raise SRLError(
                f"{self.path}: record out of range (epoch {epoch}, offset {offset}, "
                f"length {len(mv)})"
            )
        # outside the lock: appenders checksum in parallel (not again if already checked)
        data_crc = crc32c(mv) if crc is None else crc
        with self._lock:
            while self._paused:
                self._done_cv.wait()
            self._check_usable()
            if lsn is not None and lsn != self._next_lsn:
                raise SRLError(
                    f"{self.path}: record LSN {lsn} does not follow the log: expected "
                    f"LSN {self._next_lsn} (end of log)"
                )
            item = self._reserve(epoch, offset, mv, data_crc)
            self._queue.append(item)
            self._queued_bytes += item.size
            self.stats.appends += 1
            if self._forming and item.thread in self._awaited:
                self._awaited.discard(item.thread)
                if not self._awaited:
                    self._arrival_cv.notify()
            if kick:
                self._work_cv.notify()
        return item

    def _check_usable(self) -> None:
        if self._closing or self._closed:
            raise SRLError(f"{self.path}: SRL is closed")
        if self._failed is not None:
            raise self._failed

    def _reserve(self, epoch: int, offset: int, mv: memoryview, data_crc: int) -> Item:
        """Assign LSN and position (wrapping if the record does not fit at the tail), or raise
        SRLFullError changing nothing. Free space counts from the durable start."""
        return self._reserve_many([(epoch, offset, mv, data_crc)], get_ident())[0][0]

    def _reserve_many(
        self, entries: list[tuple[int, int, memoryview, int]], thread: int
    ) -> tuple[list[Item], int]:
        """`_reserve` of consecutive records (epoch, offset, data, data CRC) in one pass (a
        batch of a catch-up: per-record calls and free-space sums were a third of a
        secondary's append), up to the first that does not fit, which changes nothing;
        SRLFullError if not even the first does. Returns the items and their bytes."""
        cap = self._cap
        free = cap - self._used()
        lsn, pos = self._next_lsn, self._next_pos
        items: list[Item] = []
        nbytes = 0
        for epoch, offset, mv, crc in entries:
            length = len(mv)
            size = record_size(length)
            if size > cap:
                raise SRLError(
                    f"{self.path}: a record of {length} bytes needs {size} bytes, more "
                    f"than the whole SRL ({cap} bytes)"
                )
            at, wrap_pos, need = pos, None, size
            if at + size > cap:
                wrap_pos, need, at = at, size + cap - at, 0
            if need > free:
                if items:
                    break
                raise SRLFullError(
                    f"{self.path}: SRL full: LSN {lsn} needs {need} bytes, {free} of "
                    f"{cap} free (start LSN {self._start_lsn}, end LSN {lsn}); "
                    "a secondary is lagging or the SRL is too small"
                )
            free -= need
            items.append(Item(lsn, epoch, offset, mv, length, crc, at, size, wrap_pos, thread))
            nbytes += size
            lsn += 1
            pos = (at + size) % cap
        self._next_lsn, self._next_pos = lsn, pos
        return items, nbytes

    # ------------------------------------------------------------------ reads

    def read(self, first_lsn: int, end_lsn: int) -> Iterator[Record]:
        """Records [first_lsn, end_lsn) in order, each CRC-verified. The range is checked now
        (SRLError), the records are read lazily with pread, concurrently with appends."""
        with self._lock:
            if not self._start_lsn <= first_lsn <= end_lsn <= self._durable_end:
                raise SRLError(
                    f"{self.path}: cannot read LSNs [{first_lsn}, {end_lsn}): the "
                    f"log holds [{self._start_lsn}, {self._durable_end})"
                )
        return self._iter_records(first_lsn, end_lsn)

    def _iter_records(self, first_lsn: int, end_lsn: int) -> Iterator[Record]:
        for lsn in range(first_lsn, end_lsn):
            yield self.get(lsn)

    def get(self, lsn: int) -> Record:
        """One record by LSN (index lookup + one pread), CRC-verified."""
        return self.get_many(lsn, lsn + 1, 0)[0]

    def get_many(self, first: int, end: int, max_bytes: int) -> list[Record]:
        """Records from ``first`` (at least it, then as many below ``end`` as lie back to
        back in the area within about ``max_bytes``), read with one pread, CRC-verified."""
        with self._lock:
            end = min(end, self._durable_end)
            try:
                pos, length = self._index.lookup(first)
            except KeyError:
                raise SRLError(
                    f"{self.path}: LSN {first} is not in the log [{self._start_lsn}, "
                    f"{self._durable_end})"
                ) from None
            lengths = [length]
            nxt = pos + record_size(length)
            total = record_size(length)
            for lsn in range(first + 1, end):
                p, n = self._index.lookup(lsn)
                size = record_size(n)
                if p != nxt or total + size > max_bytes:
                    break  # wrapped, or enough
                lengths.append(n)
                nxt += size
                total += size
        try:
            return read_records(
                self._fd, self.path, self._area_off, self._sb.log_id, first, pos, lengths
            )
        except SRLCorruptError:
            if first < self._start_lsn:
                raise SRLError(f"{self.path}: LSN {first} was cleared while being read") from None
            raise

    def _read_at(self, lsn: int, pos: int, length: int) -> Record:
        return read_record(self._fd, self.path, self._area_off, self._sb.log_id, lsn, pos, length)

    # ------------------------------------------------------------------ clear / truncate / reset

    def advance_start(self, new_start: int) -> None:
        """Clear records < new_start. The new start is durable in the superblock before the
        space is counted free, so a crash can never find a start pointing at reused space."""
        with self._sb_lock:
            with self._lock:
                self._check_usable()
                if new_start == self._start_lsn:
                    return
                if not self._start_lsn < new_start <= self._durable_end:
                    raise SRLError(
                        f"{self.path}: cannot move start to LSN {new_start}: log "
                        f"holds [{self._start_lsn}, {self._durable_end}) durable"
                    )
                pos = self._pos_of(new_start)
                end, end_pos = self._durable_end, self._durable_pos
            self._write_superblock(start_lsn=new_start, start_pos=pos, end_lsn=end, end_pos=end_pos)
            with self._lock:
                self._start_lsn, self._start_pos = new_start, pos
                self._index.drop_before(new_start)

    def _pos_of(self, lsn: int) -> int:
        """Where the record ``lsn`` starts, or for the durable end where it will be looked for."""
        return self._durable_pos if lsn == self._durable_end else self._index.lookup(lsn)[0]

    def _end_pos_of(self, lsn: int) -> int:
        """Position just after record lsn-1: where recovery looks for ``lsn`` (maybe a WRAP)."""
        if lsn == self._start_lsn:
            return self._start_pos
        pos, length = self._index.lookup(lsn - 1)
        return (pos + record_size(length)) % self._cap

    # ------------------------------------------------------------------ superblock

    def _write_superblock(self, **changes: object) -> None:
        """Write the *other* copy with generation+1 and fdatasync: the current copy stays
        intact until the new one is durable, so a torn write loses nothing. Caller holds
        ``_sb_lock``."""
        changes.setdefault("clean", False)  # only close() says the end is exact
        sb = replace(self._sb, generation=self._sb.generation + 1, **changes)
        slot = 1 - self._sb_slot
        try:
            os.pwrite(self._fd, sb.pack(), slot * SB_SIZE)
            self._fdatasync()
        except OSError as exc:
            raise SRLError(f"{self.path}: writing the superblock failed: {exc}") from exc
        self._sb, self._sb_slot = sb, slot
        self.stats.superblock_writes += 1

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        """Rebuild the index by scanning from the durable start (srl_recovery), erase the
        headers of a torn tail, make what we found durable and record it."""
        found = scan_log(self.path, self._fd, self._sb, self._index)
        if found.erase:
            self._zero_headers(found.dead)
        lsn, pos = found.end_lsn, found.end_pos
        self._durable_end = self._next_lsn = lsn
        self._durable_pos = self._next_pos = pos
        self._fdatasync()  # what the scan read may only be in the page cache after a kill
        with self._sb_lock:
            self._write_superblock(end_lsn=lsn, end_pos=pos, trunc_lsn=0, trunc_end_pos=0)

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Finish queued appends, record the clean end in the superblock, release the SRL."""
        if not self._stop_committer():
            return
        try:
            if self._failed is None:
                with self._sb_lock:
                    self._write_superblock(
                        end_lsn=self._durable_end, end_pos=self._durable_pos, clean=True
                    )
        finally:
            self._release()

    def _crash(self) -> None:
        """Test hook: stop like a killed process would (no superblock write at close)."""
        if self._stop_committer():
            self._release()

    def _stop_committer(self) -> bool:
        with self._lock:
            if self._closing or self._closed:
                return False
            self._closing = True
            self._work_cv.notify_all()
        if self._committer is not None:
            self._committer.join()
        return True

    def _release(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self._fd)

    def __enter__(self) -> SRL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SRL({str(self.path)!r}, start={self._start_lsn}, end={self._durable_end}, "
            f"used={self.used_bytes}/{self._cap})"
        )
