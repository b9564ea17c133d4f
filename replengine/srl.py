"""The Storage Replication Log: an on-disk circular log of records with group commit.

Every write on the primary and every UPDATE on a secondary goes through ``append``; nothing is
acknowledged before its record is durable here (invariant 1), and after a crash ``open`` gives
back exactly the records that were durable, never a corrupt one silently (invariant 7).
The byte layout lives in srl_format.py and docs/srl-format.md; this module is the behaviour:
reservation of LSNs and positions, the committer that turns many appends into one
``pwritev`` + ``fdatasync``, recovery with torn-tail vs corruption detection, clears and
truncation.

Threading: ``_lock`` guards the in-memory state (queue, positions, index); ``_sb_lock``
serialises superblock writes (always taken before ``_lock``). Batches are led by a waiting
appender or by the committer thread; at most two are in flight, and records become durable
(and visible to readers) strictly in LSN order.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
import threading
import time
import uuid as uuid_mod
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import crc32c

from .errors import SRLCorruptError, SRLError, SRLFullError
from .record import Record
from .srl_format import (
    AREA_OFFSET,
    BLOCK,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAX_HISTORY,
    MAX_LENGTH,
    MIN_AREA_SIZE,
    SB_COPIES,
    SB_SIZE,
    TYPE_DATA,
    TYPE_WRAP,
    RecordHeader,
    Superblock,
    data_matches,
    has_sb_magic,
    pack_header,
    parse_header,
    record_size,
    unpack_superblock,
)

__all__ = ["SRL", "PendingAppend", "SRLStats", "MIN_SRL_SIZE"]

#: Smallest device/file accepted: both superblock copies plus 1 MiB of circular area.
MIN_SRL_SIZE = AREA_OFFSET + MIN_AREA_SIZE
#: One batch writes at most this much (a single larger record goes alone). Bounds how far a
#: torn batch can reach beyond its first record, which recovery's look-ahead must cover.
MAX_BATCH_BYTES = 16 << 20
#: Batches in flight at once, together at most MAX_INFLIGHT_BYTES (see _can_lead). A second
#: batch may start while a big one (>= OVERLAP_MIN_BYTES) is still being written or synced, so
#: copying large records into the page cache overlaps the other batch's I/O; for small
#: batches two concurrent fdatasyncs of one ext4 file measured slower than one bigger batch.
MAX_INFLIGHT = 2
OVERLAP_MIN_BYTES = 256 << 10
MAX_INFLIGHT_BYTES = 2 * MAX_BATCH_BYTES
#: How far recovery looks past the first bad header for evidence that it was durable.
SCAN_WINDOW = 64 << 20
_SCAN_CHUNK = 1 << 20
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
_ZEROS = memoryview(bytes(BLOCK))

_PENDING, _DURABLE, _FAILED = 0, 1, 2


@dataclass
class SRLStats:
    """Counters for tests and metrics: group commit works when ``syncs`` << ``appends``."""

    appends: int = 0
    batches: int = 0
    syncs: int = 0
    bytes_written: int = 0
    superblock_writes: int = 0
    delay_timeouts: int = 0


@dataclass(eq=False, slots=True)
class _Item:
    """One queued append: LSN and position were reserved under the lock at enqueue time."""

    lsn: int
    epoch: int
    offset: int
    data: memoryview
    data_crc: int
    pos: int
    size: int
    wrap_pos: int | None
    thread: int = 0  # ident of the appending thread, for the group commit delay
    state: int = _PENDING
    error: SRLError | None = None
    #: Held until the item's waiter is signalled (durable, failed, or asked to lead a batch):
    #: a bare lock is the cheapest per-waiter wakeup CPython has, no thundering herd.
    waiter: threading.Lock = field(default_factory=threading.Lock)
    signalled: bool = False
    waiting: bool = False

    def __post_init__(self) -> None:
        self.waiter.acquire()

    def signal(self) -> None:
        """Wake whoever waits on this item (call with the SRL lock held)."""
        if not self.signalled:
            self.signalled = True
            self.waiter.release()


class PendingAppend:
    """Handle of an append in flight: ``lsn`` is final, ``wait()`` returns once it is durable."""

    __slots__ = ("lsn", "_srl", "_item")

    def __init__(self, srl: SRL, item: _Item) -> None:
        self.lsn = item.lsn
        self._srl = srl
        self._item = item

    @property
    def done(self) -> bool:
        return self._item.state != _PENDING

    def wait(self, timeout: float | None = None) -> int:
        """Block until durable; returns the LSN. Raises SRLError if the write failed and
        TimeoutError if ``timeout`` seconds passed first (the append stays queued)."""
        return self._srl._wait_item(self._item, timeout)


class _Index:
    """LSN -> (position, data length) for the records in the log, O(1) lookups.

    LSNs in the log are contiguous, so two flat arrays indexed by ``lsn - base`` suffice; a
    dead prefix left by clears is compacted once it is more than half the arrays.
    """

    def __init__(self, first_lsn: int) -> None:
        self._base = first_lsn
        self._head = 0
        self._pos = array("q")
        self._len = array("q")

    @property
    def end(self) -> int:
        return self._base + len(self._pos)

    def add(self, lsn: int, pos: int, length: int) -> None:
        assert lsn == self.end, (lsn, self.end)
        self._pos.append(pos)
        self._len.append(length)

    def lookup(self, lsn: int) -> tuple[int, int]:
        i = lsn - self._base
        if i < self._head or i >= len(self._pos):
            raise KeyError(lsn)
        return self._pos[i], self._len[i]

    def drop_before(self, lsn: int) -> None:
        self._head = max(self._head, min(lsn - self._base, len(self._pos)))
        if self._head > 4096 and self._head * 2 > len(self._pos):
            del self._pos[:self._head]
            del self._len[:self._head]
            self._base += self._head
            self._head = 0

    def truncate(self, lsn: int) -> None:
        del self._pos[lsn - self._base:]
        del self._len[lsn - self._base:]

    def reset(self, lsn: int) -> None:
        self.__init__(lsn)  # type: ignore[misc]


def _pwritev_all(fd: int, bufs: list, offset: int) -> None:
    """pwritev that survives IOV_MAX and short writes, without copying the buffers."""
    while bufs:
        chunk = bufs[:_IOV_MAX]
        want = sum(len(b) for b in chunk)
        n = os.pwritev(fd, chunk, offset)
        if n <= 0:
            raise OSError(f"pwritev wrote {n} of {want} bytes at offset {offset}")
        offset += n
        if n == want:
            bufs = bufs[_IOV_MAX:]
            continue
        rest: list = []
        for b in chunk:
            if n >= len(b):
                n -= len(b)
            else:
                rest.append(memoryview(b)[n:])
                n = 0
        bufs = rest + bufs[_IOV_MAX:]


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    while len(data) < n:
        more = os.pread(fd, n - len(data), offset + len(data))
        if not more:
            raise OSError(f"short read: {len(data)} of {n} bytes at offset {offset}")
        data += more
    return data


def _open_locked(path: Path) -> int:
    """Open read-write and take an exclusive flock: two processes on one SRL would corrupt it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SRLError(f"{path}: SRL device or file does not exist") from None
    except OSError as exc:
        raise SRLError(f"{path}: cannot open SRL: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SRLError(f"{path}: SRL is in use by another process (is replengined running?)"
                       ) from None
    return fd


def _new_log_id() -> int:
    return secrets.randbits(64) or 1


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
        self._queue: deque[_Item] = deque()
        self._inflight = 0  # batches being written or synced
        self._inflight_bytes = 0
        self._forming = False  # a leader is waiting for siblings: nobody else starts a batch
        self._last_writers: set[int] = set()  # threads whose records formed the last batch
        self._last_sync = 0.0  # seconds the last batch's fdatasync took
        self._arrival_cv = threading.Condition(self._lock)
        self._written: dict[int, list[_Item]] = {}  # written batches not yet contiguous
        self._unsynced: deque[_Item] = deque()  # written contiguously, awaiting a sync
        self._paused = False
        self._closing = False
        self._closed = False
        self._failed: SRLError | None = None
        self._index = _Index(sb.start_lsn)
        self._start_lsn = self._durable_end = self._next_lsn = sb.start_lsn
        self._written_end = sb.start_lsn
        self._start_pos = self._durable_pos = self._next_pos = sb.start_pos
        self._committer: threading.Thread | None = None

    @classmethod
    def create(cls, path: str | os.PathLike, *, resource: str, uuid: uuid_mod.UUID, node: str,
               force: bool = False, size: int | None = None) -> SRL:
        """Initialise an empty SRL (start = end = LSN 1) and return it open.

        ``size`` (addition) creates or grows a regular file first, for tests and file-backed
        SRLs. Refuses a device that already holds an SRL unless ``force``: overwriting one
        throws away records a peer may still need.
        """
        path = Path(path)
        if size is not None and not path.exists():
            with open(path, "wb"):
                pass
        fd = _open_locked(path)
        try:
            if size is not None and stat.S_ISREG(os.fstat(fd).st_mode) \
                    and os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            dev_size = os.lseek(fd, 0, os.SEEK_END)
            if dev_size < MIN_SRL_SIZE:
                raise SRLError(f"{path}: {dev_size} bytes is too small for an SRL; need at "
                               f"least {MIN_SRL_SIZE} (1 MiB log area + 8 KiB superblocks)")
            old = [_pread_all(fd, SB_SIZE, i * SB_SIZE) for i in range(SB_COPIES)]
            if not force and any(has_sb_magic(b) for b in old):
                desc = next((f" (resource {s.resource!r}, node {s.node!r})" for s in
                             map(unpack_superblock, old) if s), "")
                raise SRLError(f"{path} already holds an SRL{desc}; use --force to overwrite it "
                               "(its records are lost)")
            gen = max((s.generation for s in map(unpack_superblock, old) if s), default=0)
            sb = Superblock(resource=resource, uuid=uuid, node=node, area_offset=AREA_OFFSET,
                            area_size=(dev_size - AREA_OFFSET) // BLOCK * BLOCK,
                            log_id=_new_log_id(), start_lsn=1, start_pos=0, end_lsn=1,
                            end_pos=0, history=[], generation=gen + 1)
            try:
                copies = [sb.pack(), replace(sb, generation=gen + 2).pack()]
            except ValueError as exc:
                raise SRLError(f"{path}: {exc}") from None
            for slot, buf in enumerate(copies):
                os.pwrite(fd, buf, slot * SB_SIZE)
            os.fsync(fd)
            srl = cls(path, fd, replace(sb, generation=gen + 2), 1)
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
        fd = _open_locked(path)
        try:
            sb, slot = cls._choose_superblock(path, fd)
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
        try:
            with open(path, "rb") as f:
                bufs = [f.read(SB_SIZE), f.read(SB_SIZE)]
        except OSError:
            return False
        return any(unpack_superblock(b) is not None for b in bufs)

    @staticmethod
    def _choose_superblock(path: Path, fd: int) -> tuple[Superblock, int]:
        """Newest valid copy wins: copies are written alternately, so a torn write only ever
        damages the older one."""
        dev_size = os.lseek(fd, 0, os.SEEK_END)
        raw = [_pread_all(fd, SB_SIZE, i * SB_SIZE) if dev_size >= (i + 1) * SB_SIZE
               else b"" for i in range(SB_COPIES)]
        found = [(s, i) for i, s in enumerate(map(unpack_superblock, raw)) if s is not None]
        if not found:
            if any(has_sb_magic(b) for b in raw):
                raise SRLCorruptError(f"{path}: both SRL superblock copies (bytes 0 and "
                                      f"{SB_SIZE}) fail their checksum; re-create the SRL and "
                                      "resync this node")
            raise SRLError(f"{path}: not an initialised SRL (no superblock); create it first")
        sb, slot = max(found, key=lambda f: f[0].generation)
        if sb.version != FORMAT_VERSION:
            raise SRLError(f"{path}: SRL format version {sb.version}, this replengine reads "
                           f"version {FORMAT_VERSION}")
        if (sb.area_offset != AREA_OFFSET or sb.area_size < MIN_AREA_SIZE
                or sb.area_size % BLOCK or sb.area_offset + sb.area_size > dev_size):
            raise SRLCorruptError(f"{path}: superblock describes a log area of {sb.area_size} "
                                  f"bytes at {sb.area_offset}, device has {dev_size} bytes "
                                  "(device shrunk or superblock damaged)")
        if sb.start_pos % BLOCK or sb.start_pos >= sb.area_size:
            raise SRLCorruptError(f"{path}: superblock start position {sb.start_pos} is invalid")
        return sb, slot

    def _start(self) -> None:
        self._committer = threading.Thread(target=self._commit_loop, daemon=True,
                                           name=f"srl-commit:{self.path.name}")
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

    def append_nowait(self, epoch: int, offset: int, data: bytes) -> PendingAppend:
        """Reserve the next LSN and queue the record; the committer makes it durable."""
        return PendingAppend(self, self._enqueue(None, epoch, offset, data, kick=True))

    def append_record(self, rec: Record) -> None:
        """Log a record received from the primary (or a peer in log-diff sync), same LSN."""
        self._wait_item(self._enqueue(rec.lsn, rec.epoch, rec.offset, rec.data, kick=False),
                        None)

    def append_record_nowait(self, rec: Record) -> PendingAppend:
        """(Addition) append_record without waiting, so a secondary can pipeline UPDATEs."""
        return PendingAppend(self, self._enqueue(rec.lsn, rec.epoch, rec.offset, rec.data,
                                                 kick=True))

    def _enqueue(self, lsn: int | None, epoch: int, offset: int, data: bytes, *,
                 kick: bool) -> _Item:
        """Reserve LSN + space and queue the record. ``kick`` wakes the committer thread, for
        callers that will not wait (and lead) right away."""
        mv = memoryview(data).cast("B")
        if len(mv) > MAX_LENGTH or not 0 <= offset < 1 << 64 or not 0 <= epoch < 1 << 64:
            raise SRLError(f"{self.path}: record out of range (epoch {epoch}, offset {offset}, "
                           f"length {len(mv)})")
        data_crc = crc32c.crc32c(mv)  # outside the lock: appenders checksum in parallel
        with self._lock:
            while self._paused:
                self._done_cv.wait()
            self._check_usable()
            if lsn is not None and lsn != self._next_lsn:
                raise SRLError(f"{self.path}: record LSN {lsn} does not follow the log: expected "
                               f"LSN {self._next_lsn} (end of log)")
            item = self._reserve(epoch, offset, mv, data_crc)
            self._queue.append(item)
            self.stats.appends += 1
            self._arrival_cv.notify()
            if kick:
                self._work_cv.notify()
        return item

    def _check_usable(self) -> None:
        if self._closing or self._closed:
            raise SRLError(f"{self.path}: SRL is closed")
        if self._failed is not None:
            raise self._failed

    def _reserve(self, epoch: int, offset: int, mv: memoryview, data_crc: int) -> _Item:
        """Assign LSN and position (wrapping if the record does not fit at the tail), or raise
        SRLFullError changing nothing. Free space counts from the durable start."""
        size = record_size(len(mv))
        if size > self._cap:
            raise SRLError(f"{self.path}: a record of {len(mv)} bytes needs {size} bytes, more "
                           f"than the whole SRL ({self._cap} bytes)")
        pos, wrap_pos, need = self._next_pos, None, size
        if pos + size > self._cap:
            wrap_pos, need, pos = pos, size + self._cap - pos, 0
        free = self._cap - self._used()
        if need > free:
            raise SRLFullError(
                f"{self.path}: SRL full: LSN {self._next_lsn} needs {need} bytes, {free} of "
                f"{self._cap} free (start LSN {self._start_lsn}, end LSN {self._next_lsn}); "
                "a secondary is lagging or the SRL is too small")
        item = _Item(self._next_lsn, epoch, offset, mv, data_crc, pos, size, wrap_pos,
                     threading.get_ident())
        self._next_lsn += 1
        self._next_pos = (pos + size) % self._cap
        return item

    # ------------------------------------------------------------------ committer

    def _wait_item(self, item: _Item, timeout: float | None) -> int:
        """Leader-follower group commit: while ``item`` is not durable, either this thread
        may start the next batch (then it writes everything queued, its own record included)
        or it sleeps until its record is durable or the finishing leader nominates it.
        A lone writer thus commits its own record without any thread handoff, and concurrent
        writers share one fdatasync per batch."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._lock.acquire()
        try:
            while item.state == _PENDING:
                if self._can_lead():
                    self._lead_batch()
                    continue
                item.waiting = True
                self._lock.release()
                left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
                woken = item.waiter.acquire(timeout=left)
                self._lock.acquire()
                item.waiting = False
                if not woken and item.signalled:  # signalled just after the timeout
                    woken = item.waiter.acquire(blocking=False)
                if woken:
                    item.signalled = False
                elif item.state == _PENDING:
                    raise TimeoutError(f"{self.path}: LSN {item.lsn} not durable after "
                                       f"{timeout} s")
            item.signal()  # pass the wakeup on to any other thread waiting on this append
        finally:
            self._lock.release()
        if item.state == _FAILED:
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
        """A new batch may start when none is in flight, or when one is and both together stay
        within MAX_INFLIGHT_BYTES: overlapping two fdatasyncs lets the disk work on one batch
        while the next fills, and the bound keeps a torn tail inside recovery's look-ahead."""
        if not self._queue or self._forming:
            return False
        if self._inflight == 0:
            return True
        return (self._inflight < MAX_INFLIGHT and self._inflight_bytes >= OVERLAP_MIN_BYTES
                and self._inflight_bytes + self._queue[0].size <= MAX_INFLIGHT_BYTES)

    def _lead_batch(self) -> None:
        """Write + fdatasync the next batch. Called and returns with ``_lock`` held; the I/O
        runs without it so appends keep queueing for the next batch.

        An fdatasync makes durable every write that completed before it was called, so the
        LSNs it covers are those written contiguously (``_written_end``) when it starts; a
        batch whose predecessor was still being written is covered by that one's sync.
        """
        if not self._inflight and self._await_siblings():
            return
        limit = MAX_BATCH_BYTES if not self._inflight else MAX_INFLIGHT_BYTES - self._inflight_bytes
        batch = self._take_batch(limit)
        self._last_writers = {it.thread for it in batch}
        nbytes = sum(it.size for it in batch)
        committed = self._durable_end
        self._inflight += 1
        self._inflight_bytes += nbytes
        self._lock.release()
        try:
            try:
                written = self._write_batch(batch, committed)
            finally:
                self._lock.acquire()
            covered = self._mark_written(batch)
            self._lock.release()
            t0 = time.monotonic()
            try:
                self._fdatasync()
            finally:
                self._lock.acquire()
            self._last_sync = time.monotonic() - t0
        except OSError as exc:
            self._fail(batch, exc)
            return
        self._inflight -= 1
        self._inflight_bytes -= nbytes
        self.stats.batches += 1
        self.stats.bytes_written += written
        self._make_durable(covered)

    def _await_siblings(self) -> bool:
        """Group commit's commit_delay: writers of the last batch are on their way back with
        their next record; waiting (at most one fdatasync's time) for them to queue it lets
        this batch, and its single fdatasync, carry them too instead of half of them. Only
        after a batch from two or more threads: a lone writer (or writers serialised
        elsewhere) never waits. Returns True if another thread took over meanwhile."""
        if len(self._last_writers) < 2:  # no sign of concurrent writers: never delay
            return False
        queued = {it.thread for it in self._queue}
        if not self._last_writers - queued:
            return False
        deadline = time.monotonic() + min(self._last_sync, 0.001)
        self._forming = True
        try:
            while self._last_writers - queued:
                left = deadline - time.monotonic()
                if left <= 0 or not self._arrival_cv.wait(left):
                    self.stats.delay_timeouts += 1
                    break
                queued = {it.thread for it in self._queue}
        finally:
            self._forming = False
        self._last_writers = set()
        return not self._can_lead()

    def _mark_written(self, batch: list[_Item]) -> int:
        """Record that ``batch`` is on its way to disk; returns the LSN end a sync now covers."""
        self._written[batch[0].lsn] = batch
        while self._written_end in self._written:
            done = self._written.pop(self._written_end)
            self._unsynced.extend(done)
            self._written_end = done[-1].lsn + 1
        return self._written_end

    def _make_durable(self, covered: int) -> None:
        """Everything below ``covered`` is durable: index it, wake its waiters."""
        while self._unsynced and self._unsynced[0].lsn < covered:
            it = self._unsynced.popleft()
            self._index.add(it.lsn, it.pos, len(it.data))
            it.state = _DURABLE
            it.data = _ZEROS[:0]  # drop the caller's buffer early
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

    def _take_batch(self, limit: int) -> list[_Item]:
        batch = [self._queue.popleft()]
        total = batch[0].size
        while self._queue and total + self._queue[0].size <= limit:
            total += self._queue[0].size
            batch.append(self._queue.popleft())
        return batch

    def _write_batch(self, batch: list[_Item], committed: int) -> int:
        """Write WRAP markers and records (header, data, zero padding) without copying data."""
        log_id, runs = self._sb.log_id, []
        run_pos, run_end, bufs = -1, -1, []
        total = 0

        def add(pos: int, parts: list, size: int) -> None:
            nonlocal run_pos, run_end, bufs
            if pos != run_end:
                if bufs:
                    runs.append((run_pos, bufs))
                run_pos, run_end, bufs = pos, pos, []
            bufs.extend(parts)
            run_end += size

        for it in batch:
            if it.wrap_pos is not None:
                hdr = pack_header(TYPE_WRAP, it.epoch, it.lsn, 0, 0, committed, log_id, 0)
                add(it.wrap_pos, [hdr, _ZEROS[HEADER_SIZE:]], BLOCK)
                total += BLOCK
            hdr = pack_header(TYPE_DATA, it.epoch, it.lsn, it.offset, len(it.data), committed,
                              log_id, it.data_crc)
            parts = [hdr, it.data] if len(it.data) else [hdr]
            pad = it.size - HEADER_SIZE - len(it.data)
            if pad:
                parts.append(_ZEROS[:pad])
            add(it.pos, parts, it.size)
            total += it.size
        runs.append((run_pos, bufs))
        for pos, parts in runs:
            _pwritev_all(self._fd, parts, self._area_off + pos)
        return total

    def _fail(self, batch: list[_Item], exc: OSError) -> None:
        """An I/O error leaves the on-disk tail unknown: fail everything, refuse further use."""
        err = SRLError(f"{self.path}: writing LSNs {batch[0].lsn}..{batch[-1].lsn} failed: "
                       f"{exc}; the SRL must be reopened (recovery decides what survived)")
        self._failed = err
        for it in (*self._unsynced, *batch, *self._queue,
                   *(i for b in self._written.values() for i in b)):
            if it.state == _PENDING:
                it.state, it.error = _FAILED, err
                it.signal()
        self._queue.clear()
        self._unsynced.clear()
        self._written.clear()
        self._inflight -= 1
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
                raise SRLError(f"{self.path}: cannot read LSNs [{first_lsn}, {end_lsn}): the "
                               f"log holds [{self._start_lsn}, {self._durable_end})")
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
                raise SRLError(f"{self.path}: LSN {lsn} is not in the log [{self._start_lsn}, "
                               f"{self._durable_end})") from None
        try:
            return self._read_at(lsn, pos, length)
        except SRLCorruptError:
            if lsn < self._start_lsn:
                raise SRLError(f"{self.path}: LSN {lsn} was cleared while being read") from None
            raise

    def _read_at(self, lsn: int, pos: int, length: int) -> Record:
        raw = _pread_all(self._fd, HEADER_SIZE, self._area_off + pos)
        hdr = parse_header(raw)
        data = _pread_all(self._fd, length, self._area_off + pos + HEADER_SIZE) if length else b""
        if (hdr is None or hdr.type != TYPE_DATA or hdr.lsn != lsn or hdr.length != length
                or hdr.log_id != self._sb.log_id or not data_matches(hdr, raw, data)):
            raise SRLCorruptError(
                f"{self.path}: record LSN {lsn} at byte {self._area_off + pos} fails its "
                "checksum (media corruption); resync this node's SRL from a peer")
        return Record(lsn=lsn, epoch=hdr.epoch, offset=hdr.offset, data=data)

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
                    raise SRLError(f"{self.path}: cannot move start to LSN {new_start}: log "
                                   f"holds [{self._start_lsn}, {self._durable_end}) durable")
                pos = self._pos_of(new_start)
                end, end_pos = self._durable_end, self._durable_pos
            self._write_superblock(start_lsn=new_start, start_pos=pos, end_lsn=end,
                                   end_pos=end_pos)
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
                raise SRLError(f"{self.path}: cannot truncate to LSN {new_end}: log holds "
                               f"[{self._start_lsn}, {self._durable_end})")
            old_end, old_end_pos = self._durable_end, self._durable_pos
            if new_end == old_end:
                return []
            records = [self._read_at(n, *self._index.lookup(n)) for n in range(new_end, old_end)]
            end_pos = self._end_pos_of(new_end)
            self._write_superblock(end_lsn=new_end, end_pos=end_pos, trunc_lsn=new_end,
                                   trunc_end_pos=old_end_pos)
            self._zero_headers(self._positions_from(new_end, end_pos, old_end))
            self._write_superblock(trunc_lsn=0, trunc_end_pos=0)
            self._index.truncate(new_end)
            self._durable_end = self._next_lsn = self._written_end = new_end
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
            os.pwrite(self._fd, _ZEROS, self._area_off + pos)
        self._fdatasync()

    def reset(self, lsn: int) -> None:
        """Make the log empty at ``lsn`` (start == end == lsn). A fresh log id in the
        superblock makes every older record on disk unrecognisable in one atomic write."""
        if lsn < 1:
            raise SRLError(f"{self.path}: cannot reset to LSN {lsn}: LSNs start at 1")
        with self._sb_lock, self._paused_appends():
            self._write_superblock(log_id=_new_log_id(), start_lsn=lsn, start_pos=0,
                                   end_lsn=lsn, end_pos=0, trunc_lsn=0, trunc_end_pos=0)
            self._index.reset(lsn)
            self._start_lsn = self._durable_end = self._next_lsn = self._written_end = lsn
            self._start_pos = self._durable_pos = self._next_pos = 0

    def _paused_appends(self) -> _Paused:
        return _Paused(self)

    def add_epoch(self, epoch: int, first_lsn: int) -> None:
        """Record (epoch, first_lsn) in the history, durable before return (invariant 4)."""
        with self._sb_lock:
            hist = list(self._sb.history)
            if epoch <= self.epoch:
                raise SRLError(f"{self.path}: epoch {epoch} must exceed the current epoch "
                               f"{self.epoch}")
            if hist and first_lsn < hist[-1][1]:
                raise SRLError(f"{self.path}: epoch {epoch} cannot start at LSN {first_lsn}, "
                               f"before epoch {hist[-1][0]} (LSN {hist[-1][1]})")
            if len(hist) >= MAX_HISTORY:
                raise SRLError(f"{self.path}: epoch history is full ({MAX_HISTORY} entries); "
                               "re-create the SRL after a full resync to start a new history")
            with self._lock:
                self._check_usable()
                end, end_pos = self._durable_end, self._durable_pos
            self._write_superblock(history=[*hist, (epoch, first_lsn)], end_lsn=end,
                                   end_pos=end_pos)

    # ------------------------------------------------------------------ superblock

    def _write_superblock(self, **changes: object) -> None:
        """Write the *other* copy with generation+1 and fdatasync: the current copy stays
        intact until the new one is durable, so a torn write loses nothing. Caller holds
        ``_sb_lock``."""
        sb = replace(self._sb, generation=self._sb.generation + 1, **changes)
        slot = 1 - self._sb_slot
        os.pwrite(self._fd, sb.pack(), slot * SB_SIZE)
        self._fdatasync()
        self._sb, self._sb_slot = sb, slot
        self.stats.superblock_writes += 1

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        """Rebuild the index by scanning from the durable start (the superblock's end is a
        hint only), settle the tail, make what we found durable and record it."""
        sb = self._sb
        lsn, pos, used = sb.start_lsn, sb.start_pos, 0
        while lsn != sb.trunc_lsn:
            found = self._probe(lsn, pos, self._cap - used)
            if found is None:
                break
            rpos, length, consumed = found
            self._index.add(lsn, rpos, length)
            used += consumed
            lsn, pos = lsn + 1, (rpos + record_size(length)) % self._cap
        if sb.end_lsn > lsn:
            raise SRLCorruptError(
                f"{self.path}: record LSN {lsn} at byte {self._area_off + pos} is missing or "
                f"fails its checksum, but the superblock records LSNs up to {sb.end_lsn - 1} as "
                "durable: the SRL is corrupt; resync this node")
        if sb.trunc_lsn:  # crashed inside truncate(): finish erasing the dead tail
            span = (sb.trunc_end_pos - pos) % self._cap or self._cap
            self._zero_headers(self._dead_headers(pos, span, lsn, None)[0])
        else:
            self._settle_tail(lsn, pos, used)
        self._durable_end = self._next_lsn = self._written_end = lsn
        self._durable_pos = self._next_pos = pos
        self._fdatasync()  # what the scan read may only be in the page cache after a kill
        with self._sb_lock:
            self._write_superblock(end_lsn=lsn, end_pos=pos, trunc_lsn=0, trunc_end_pos=0)

    def _read_header(self, pos: int) -> tuple[RecordHeader | None, bytes]:
        raw = _pread_all(self._fd, HEADER_SIZE, self._area_off + pos)
        hdr = parse_header(raw)
        if hdr is not None and hdr.log_id != self._sb.log_id:
            hdr = None  # from before a create --force or reset: not ours
        return hdr, raw

    def _probe(self, lsn: int, pos: int, room: int) -> tuple[int, int, int] | None:
        """If a valid record ``lsn`` sits at ``pos`` (or after a WRAP marker there), return
        (record position, data length, bytes consumed incl. wasted tail), else None."""
        hdr, raw = self._read_header(pos)
        waste = 0
        if hdr is not None and hdr.type == TYPE_WRAP and hdr.lsn == lsn and pos != 0:
            waste, pos = self._cap - pos, 0
            hdr, raw = self._read_header(0)
        if hdr is None or hdr.type != TYPE_DATA or hdr.lsn != lsn:
            return None
        size = record_size(hdr.length)
        if pos + size > self._cap or waste + size > room:
            return None
        data = _pread_all(self._fd, hdr.length, self._area_off + pos + HEADER_SIZE)
        if not data_matches(hdr, raw, data):
            return None
        return pos, hdr.length, waste + size

    def _settle_tail(self, lsn: int, pos: int, used: int) -> None:
        """The scan stopped at ``lsn`` (position ``pos``): clean end, torn tail or corruption?

        (The superblock's end hint was checked by the caller.) Corruption if a record written
        later says ``lsn`` was durable through its committed_lsn (it was formed after ``lsn``'s fdatasync).
        Otherwise whatever is there was never acknowledged: erase every header of ours with
        LSN >= lsn in reach so a later, shorter tail cannot make them valid again.
        """
        where = f"{self.path}: record LSN {lsn} at byte {self._area_off + pos}"
        free = self._cap - used
        if free <= 0:
            return
        dead, evidence = self._dead_headers(pos, min(SCAN_WINDOW, free), lsn, lsn)
        if evidence is not None:
            epos, ehdr = evidence
            raise SRLCorruptError(
                f"{where} is missing or fails its checksum, but record LSN {ehdr.lsn} at byte "
                f"{self._area_off + epos} was written after LSN {ehdr.committed_lsn - 1} was "
                "durable: corruption in the middle of the log; resync this node")
        if dead:
            self._zero_headers(dead)

    def _dead_headers(self, pos: int, span: int, min_lsn: int, durable_lsn: int | None
                      ) -> tuple[list[int], tuple[int, RecordHeader] | None]:
        """Scan ``span`` bytes from ``pos`` (circularly) at every 4 KiB boundary for headers of
        this log with LSN >= min_lsn. Also returns the first whose committed_lsn proves
        ``durable_lsn`` was durable (evidence of corruption), if asked."""
        dead: list[int] = []
        evidence = None
        done = 0
        while done < span:
            start = (pos + done) % self._cap
            n = min(_SCAN_CHUNK, span - done, self._cap - start)
            buf = memoryview(_pread_all(self._fd, n, self._area_off + start))
            for off in range(0, n, BLOCK):
                if buf[off:off + 4] != b"RPLR":
                    continue
                hdr = parse_header(buf[off:off + HEADER_SIZE])
                if hdr is None or hdr.log_id != self._sb.log_id or hdr.lsn < min_lsn:
                    continue
                dead.append(start + off)
                if (durable_lsn is not None and evidence is None
                        and hdr.committed_lsn > durable_lsn):
                    evidence = (start + off, hdr)
            done += n
        return dead, evidence

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Finish queued appends, record the clean end in the superblock, release the SRL."""
        if not self._stop_committer():
            return
        try:
            if self._failed is None:
                with self._sb_lock:
                    self._write_superblock(end_lsn=self._durable_end,
                                           end_pos=self._durable_pos)
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
        return (f"SRL({str(self.path)!r}, start={self._start_lsn}, end={self._durable_end}, "
                f"used={self.used_bytes}/{self._cap})")


class _Paused:
    """Context: block new appends and wait for the committer to go idle, holding ``_lock``.

    truncate and reset rewrite positions the committer relies on, so they run alone.
    """

    def __init__(self, srl: SRL) -> None:
        self.srl = srl

    def __enter__(self) -> None:
        srl = self.srl
        srl._lock.acquire()
        try:
            srl._check_usable()
            while srl._paused:
                srl._done_cv.wait()
            srl._paused = True
            srl._done_cv.wait_for(lambda: not srl._queue and not srl._inflight)
        except BaseException:
            srl._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        self.srl._paused = False
        self.srl._done_cv.notify_all()
        self.srl._lock.release()

