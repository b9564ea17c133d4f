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
import time
import uuid as uuid_mod
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from threading import get_ident

import crc32c

from replengine.errors import SRLCorruptError, SRLError, SRLFullError
from replengine.log.history import check, divergence_point, epoch_at, normalise
from replengine.log.record import Record
from replengine.log.srl_format import (
    BLOCK,
    MAX_HISTORY,
    MAX_LENGTH,
    SB_SIZE,
    Superblock,
    record_size,
)
from replengine.log.srl_io import (
    DURABLE,
    FAILED,
    PENDING,
    ZEROS,
    Batch,
    Index,
    Item,
    PendingAppend,
    SRLStats,
    new_log_id,
    open_locked,
    read_record,
    write_records,
)
from replengine.log.srl_recovery import (
    MIN_SRL_SIZE,
    SCAN_WINDOW,
    choose_superblock,
    format_log,
    is_initialised,
    scan_log,
)

__all__ = ["SRL", "PendingAppend", "SRLStats", "MIN_SRL_SIZE"]

#: One batch writes at most this much (a single larger record goes alone). Bounds how far a
#: torn batch can reach beyond its first record, which recovery's look-ahead must cover.
MAX_BATCH_BYTES = 16 << 20
#: Batches in flight at once, together at most MAX_INFLIGHT_BYTES (see _can_lead). Another
#: batch may start while some are being written or synced once >= OVERLAP_MIN_BYTES are
#: queued: big records then overlap their copy and fdatasync with the other batches' (the
#: disk does better with several syncs in flight), while small ones wait and share the next
#: fdatasync (for them, concurrent fdatasyncs of one ext4 file measured slower).
MAX_INFLIGHT = 8
OVERLAP_MIN_BYTES = 256 << 10
MAX_INFLIGHT_BYTES = 2 * MAX_BATCH_BYTES
assert SCAN_WINDOW > 2 * MAX_INFLIGHT_BYTES - BLOCK  # recovery's look-ahead covers them


class SRL:
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
        self._wait_item(self._enqueue(rec.lsn, rec.epoch, rec.offset, rec.data, kick=False), None)

    def append_record_nowait(self, rec: Record, *, kick: bool = True) -> PendingAppend:
        """(Addition) append_record without waiting, so a secondary can pipeline UPDATEs;
        `kick` as for append_nowait."""
        return PendingAppend(
            self, self._enqueue(rec.lsn, rec.epoch, rec.offset, rec.data, kick=kick)
        )

    def _enqueue(
        self, lsn: int | None, epoch: int, offset: int, data: bytes, *, kick: bool
    ) -> Item:
        """Reserve LSN + space and queue the record. ``kick`` wakes the committer thread, for
        callers that will not wait (and lead) right away."""
        mv = memoryview(data).cast("B")
        if len(mv) > MAX_LENGTH or not 0 <= offset < 1 << 64 or not 0 <= epoch < 1 << 64:
            raise SRLError(
                f"{self.path}: record out of range (epoch {epoch}, offset {offset}, "
                f"length {len(mv)})"
            )
        data_crc = crc32c.crc32c(mv)  # outside the lock: appenders checksum in parallel
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
        size = record_size(len(mv))
        if size > self._cap:
            raise SRLError(
                f"{self.path}: a record of {len(mv)} bytes needs {size} bytes, more "
                f"than the whole SRL ({self._cap} bytes)"
            )
        pos, wrap_pos, need = self._next_pos, None, size
        if pos + size > self._cap:
            wrap_pos, need, pos = pos, size + self._cap - pos, 0
        free = self._cap - self._used()
        if need > free:
            raise SRLFullError(
                f"{self.path}: SRL full: LSN {self._next_lsn} needs {need} bytes, {free} of "
                f"{self._cap} free (start LSN {self._start_lsn}, end LSN {self._next_lsn}); "
                "a secondary is lagging or the SRL is too small"
            )
        item = Item(
            self._next_lsn, epoch, offset, mv, len(mv), data_crc, pos, size, wrap_pos, get_ident()
        )
        self._next_lsn += 1
        self._next_pos = (pos + size) % self._cap
        return item

    # ------------------------------------------------------------------ committer

    def _wait_item(self, item: Item, timeout: float | None) -> int:
        """Leader-follower group commit: while ``item`` is not durable, either this thread
        may start the next batch (then it writes everything queued, its own record included)
        or it sleeps until its record is durable or the finishing leader nominates it.
        A lone writer thus commits its own record without any thread handoff, and concurrent
        writers share one fdatasync per batch. A waiter woken for a durable record returns
        without touching ``_lock``, so the wakeups after a sync do not convoy on it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        lock = self._lock
        while item.state == PENDING:
            with lock:
                while item.state == PENDING and self._can_lead():
                    self._lead_batch()
                if item.state != PENDING:
                    item.signal()  # pass the wakeup on to any other thread waiting on it
                    break
                item.waiting = True
            left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            woken = item.waiter.acquire(timeout=left)
            if woken and item.state != PENDING:
                item.waiter.release()  # final state: stays released for any other waiter
                break
            with lock:
                item.waiting = False
                if not woken and item.signalled:  # signalled just after the timeout
                    woken = item.waiter.acquire(blocking=False)
                if woken:
                    item.signalled = False
                    if item.state != PENDING:  # finished after the wakeup: pass it on
                        item.signal()
                elif item.state == PENDING:
                    raise TimeoutError(f"{self.path}: LSN {item.lsn} not durable after {timeout} s")
        if item.state == FAILED:
            assert item.error is not None
            raise item.error
        return item.lsn

    def _commit_loop(self) -> None:
        """Committer thread: leads batches for appends nobody waits on yet (append_nowait),
        so their fdatasync runs while the caller sends the UPDATE; drains the queue at close."""
        with self._lock:
            while True:
                if self._can_lead():
                    self._lead_batch()
                elif self._closing and not self._queue and not self._inflight:
                    return
                else:
                    self._work_cv.wait()

    def _can_lead(self) -> bool:
        """A new batch may start when none is in flight, or when the queued records are big
        (>= OVERLAP_MIN_BYTES), up to MAX_INFLIGHT batches and MAX_INFLIGHT_BYTES together:
        several fdatasyncs in flight keep the disk busy while the next records are copied,
        and the bound keeps a torn tail inside recovery's look-ahead. Small records wait for
        the syncs in flight and share the next one."""
        if not self._queue or self._forming:
            return False
        if self._inflight == 0:
            return True
        return (
            self._inflight < MAX_INFLIGHT
            and self._queued_bytes >= OVERLAP_MIN_BYTES
            and self._inflight_bytes + self._queue[0].size <= MAX_INFLIGHT_BYTES
        )

    def _lead_batch(self) -> None:
        """Write + fdatasync the next batch. Called and returns with ``_lock`` held; the I/O
        runs without it so appends keep queueing for the next batch.

        An fdatasync makes durable every write that completed before it was called, so the
        LSNs it covers are those of the batches written contiguously when it starts. A batch
        written while an earlier one is still being written skips its own fdatasync: the
        earlier batch's, which starts after both writes, covers it.
        """
        if not self._inflight and self._await_siblings():
            return
        limit = min(MAX_BATCH_BYTES, MAX_INFLIGHT_BYTES - self._inflight_bytes)
        items, nbytes = self._take_batch(limit)
        # small records from several threads: their next ones are worth waiting for
        writers = {it.thread for it in items} if nbytes < OVERLAP_MIN_BYTES else set()
        self._last_writers = writers if len(writers) > 1 else set()
        batch = Batch(items, nbytes, items[-1].lsn + 1)
        self._flight.append(batch)
        self._inflight += 1
        self._inflight_bytes += nbytes
        committed, lock = self._durable_end, self._lock
        lock.release()
        try:
            try:
                written = write_records(self._fd, self._area_off, self._sb.log_id, items, committed)
            finally:
                lock.acquire()
            if self._failed is not None:  # another batch failed meanwhile: this one too
                return
            batch.written = True
            self.stats.batches += 1
            self.stats.bytes_written += written
            covered = self._covered()
            if covered < batch.end:
                return  # an earlier batch is still being written; its sync covers this one
            lock.release()
            t0 = time.monotonic()
            try:
                self._fdatasync()
            finally:
                lock.acquire()
            self._last_sync = time.monotonic() - t0
        except OSError as exc:
            if self._failed is None:
                self._fail(items, exc)
            return
        if self._failed is None:
            self._make_durable(covered)

    def _await_siblings(self) -> bool:
        """Group commit's commit_delay: writers of the last (small-record) batch are on their
        way back with their next record; waiting (at most one fdatasync's time) for them to
        queue it lets this batch, and its single fdatasync, carry them too instead of half of
        them. Only after a batch from two or more threads: a lone writer (or writers
        serialised elsewhere) never waits. Returns True if another thread took over."""
        missing = self._last_writers
        if not missing:
            return False
        self._last_writers = set()
        missing.difference_update(it.thread for it in self._queue)
        if not missing:
            return False
        deadline = time.monotonic() + min(self._last_sync, 0.001)
        self._awaited = missing  # _enqueue removes arrivals and notifies when it is empty
        self._forming = True
        try:
            while missing:
                left = deadline - time.monotonic()
                if left <= 0 or not self._arrival_cv.wait(left):
                    self.stats.delay_timeouts += 1
                    break
        finally:
            self._forming = False
            self._awaited = set()
        return not self._can_lead()

    def _covered(self) -> int:
        """The LSN end an fdatasync starting now makes durable: the batches in flight that are
        completely written, up to the first one that is not."""
        end = self._durable_end
        for b in self._flight:
            if not b.written:
                break
            end = b.end
        return end

    def _make_durable(self, covered: int) -> None:
        """Everything below ``covered`` is durable: index it, wake its waiters."""
        flight, add = self._flight, self._index.add
        if flight and flight[0].end <= covered:
            while flight and flight[0].end <= covered:
                b = flight.popleft()
                self._inflight -= 1
                self._inflight_bytes -= b.nbytes
                for it in b.items:
                    add(it.lsn, it.pos, it.length)
                    it.state = DURABLE
                    it.data = ZEROS[:0]  # drop the caller's buffer early
                    it.signal()
            self._durable_end = it.lsn + 1
            self._durable_pos = (it.pos + it.size) % self._cap
        self._done_cv.notify_all()  # admin operations waiting for the log to go idle
        self._nominate()

    def _nominate(self) -> None:
        """Hand the next batch to the waiter of the oldest queued record, or to the committer
        thread if nobody waits on it yet (append_nowait)."""
        if self._can_lead():
            head = self._queue[0]
            if head.waiting:
                head.signal()
            else:
                self._work_cv.notify()

    def _take_batch(self, limit: int) -> tuple[list[Item], int]:
        queue = self._queue
        batch = [queue.popleft()]
        total = batch[0].size
        while queue and total + queue[0].size <= limit:
            total += queue[0].size
            batch.append(queue.popleft())
        self._queued_bytes -= total
        return batch, total

    def _fail(self, batch: list[Item], exc: OSError) -> None:
        """An I/O error leaves the on-disk tail unknown: fail everything, refuse further use."""
        err = SRLError(
            f"{self.path}: writing LSNs {batch[0].lsn}..{batch[-1].lsn} failed: "
            f"{exc}; the SRL must be reopened (recovery decides what survived)"
        )
        self._failed = err
        for it in (*(i for b in self._flight for i in b.items), *self._queue):
            if it.state == PENDING:
                it.state, it.error = FAILED, err
                it.signal()
        self._queue.clear()
        self._flight.clear()
        self._queued_bytes = self._inflight = self._inflight_bytes = 0
        self._done_cv.notify_all()
        self._work_cv.notify_all()

    def _fdatasync(self) -> None:
        os.fdatasync(self._fd)
        self.stats.syncs += 1

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
        """One record by LSN (index lookup + two preads), CRC-verified."""
        with self._lock:
            try:
                pos, length = self._index.lookup(lsn)
            except KeyError:
                raise SRLError(
                    f"{self.path}: LSN {lsn} is not in the log [{self._start_lsn}, "
                    f"{self._durable_end})"
                ) from None
        try:
            return self._read_at(lsn, pos, length)
        except SRLCorruptError:
            if lsn < self._start_lsn:
                raise SRLError(f"{self.path}: LSN {lsn} was cleared while being read") from None
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

    def truncate(self, new_end: int) -> list[Record]:
        """Drop records >= new_end (a divergent tail) and return them.

        Three steps, each durable: superblock marks [new_end, old end) dead (so a crash
        midway cannot resurrect them nor be mistaken for corruption), their headers are
        zeroed, and the superblock clears the mark.
        """
        with self._sb_lock, self._paused_appends():
            if not self._start_lsn <= new_end <= self._durable_end:
                raise SRLError(
                    f"{self.path}: cannot truncate to LSN {new_end}: log holds "
                    f"[{self._start_lsn}, {self._durable_end})"
                )
            old_end, old_end_pos = self._durable_end, self._durable_pos
            if new_end == old_end:
                return []
            records = [self._read_at(n, *self._index.lookup(n)) for n in range(new_end, old_end)]
            end_pos = self._end_pos_of(new_end)
            self._write_superblock(
                end_lsn=new_end, end_pos=end_pos, trunc_lsn=new_end, trunc_end_pos=old_end_pos
            )
            self._zero_headers(self._positions_from(new_end, end_pos, old_end))
            self._write_superblock(trunc_lsn=0, trunc_end_pos=0)
            self._index.truncate(new_end)
            self._durable_end = self._next_lsn = new_end
            self._durable_pos = self._next_pos = end_pos
            return records

    def _positions_from(self, lsn: int, pos: int, end: int) -> list[int]:
        """Block positions of records [lsn, end) and of WRAP markers in front of them."""
        out = []
        for n in range(lsn, end):
            rpos, length = self._index.lookup(n)
            if rpos != pos:
                out.append(pos)  # a WRAP marker sits where the record was expected
            out.append(rpos)
            pos = (rpos + record_size(length)) % self._cap
        return out

    def _zero_headers(self, positions: list[int]) -> None:
        for pos in positions:
            os.pwrite(self._fd, ZEROS, self._area_off + pos)
        self._fdatasync()

    def reset(self, lsn: int) -> None:
        """Make the log empty at ``lsn`` (start == end == lsn). A fresh log id in the
        superblock makes every older record on disk unrecognisable in one atomic write."""
        if lsn < 1:
            raise SRLError(f"{self.path}: cannot reset to LSN {lsn}: LSNs start at 1")
        with self._sb_lock, self._paused_appends():
            self._write_superblock(
                log_id=new_log_id(),
                start_lsn=lsn,
                start_pos=0,
                end_lsn=lsn,
                end_pos=0,
                trunc_lsn=0,
                trunc_end_pos=0,
            )
            self._index.reset(lsn)
            self._start_lsn = self._durable_end = self._next_lsn = lsn
            self._start_pos = self._durable_pos = self._next_pos = 0

    @contextmanager
    def _paused_appends(self) -> Generator[None, None, None]:
        """Block new appends and wait for the committer to go idle, holding ``_lock``:
        truncate and reset rewrite positions the committer relies on, so they run alone."""
        with self._lock:
            self._check_usable()
            while self._paused:
                self._done_cv.wait()
            self._paused = True
            try:
                self._done_cv.wait_for(lambda: not self._queue and not self._inflight)
                yield
            finally:
                self._paused = False
                self._done_cv.notify_all()

    def add_epoch(self, epoch: int, first_lsn: int) -> None:
        """Record (epoch, first_lsn) in the history, durable before return (invariant 4)."""
        with self._sb_lock:
            hist = list(self._sb.history)
            if epoch <= self.epoch:
                raise SRLError(
                    f"{self.path}: epoch {epoch} must exceed the current epoch {self.epoch}"
                )
            if hist and first_lsn < hist[-1][1]:
                raise SRLError(
                    f"{self.path}: epoch {epoch} cannot start at LSN {first_lsn}, "
                    f"before epoch {hist[-1][0]} (LSN {hist[-1][1]})"
                )
            if len(hist) >= MAX_HISTORY:
                raise SRLError(
                    f"{self.path}: epoch history is full ({MAX_HISTORY} entries); "
                    "re-create the SRL after a full resync to start a new history"
                )
            with self._lock:
                self._check_usable()
                end, end_pos = self._durable_end, self._durable_pos
            self._write_superblock(
                history=[*hist, (epoch, first_lsn)], end_lsn=end, end_pos=end_pos
            )

    def set_history(self, history: Sequence[tuple[int, int]]) -> None:
        """Replace the epoch history, durable before return.

        Only a history that names the same epoch for every LSN this one knows below the end is
        taken: a follower may drop epochs that wrote nothing it kept (a promotion lost before
        its first write) and take its primary's newer ones, but never re-label a record.
        """
        new = normalise(history)
        check(new)
        with self._sb_lock:
            with self._lock:
                self._check_usable()
                end, end_pos = self._durable_end, self._durable_pos
            old = self._sb.history
            if divergence_point(old, new, end) < end:
                raise SRLError(
                    f"{self.path}: history {list(new)} names another epoch than {list(old)} "
                    f"for a record below LSN {end}"
                )
            if end > self._start_lsn and epoch_at(new, self._start_lsn) is None:
                raise SRLError(
                    f"{self.path}: history {list(new)} does not say which epoch wrote LSN "
                    f"{self._start_lsn}, the oldest record in the log"
                )
            if len(new) > MAX_HISTORY:
                raise SRLError(f"{self.path}: history of {len(new)} entries exceeds {MAX_HISTORY}")
            if new == tuple(old):
                return
            self._write_superblock(history=list(new), end_lsn=end, end_pos=end_pos)

    # ------------------------------------------------------------------ superblock

    def _write_superblock(self, **changes: object) -> None:
        """Write the *other* copy with generation+1 and fdatasync: the current copy stays
        intact until the new one is durable, so a torn write loses nothing. Caller holds
        ``_sb_lock``."""
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
                    self._write_superblock(end_lsn=self._durable_end, end_pos=self._durable_pos)
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
