"""The SRL's building blocks below its group commit: whole-buffer pread/pwritev, the
exclusive open, the LSN index, a queued record (``Item``) and a batch of them, and the one
place that lays records out on disk (``write_records``) and reads one back (``read_record``).

Nothing here decides when to write or sync, nor what recovery concludes; srl.py (behaviour)
and srl_recovery.py (format at create, scan at open) build on these.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from replengine.errors import SRLCorruptError, SRLError
from replengine.log.record import Record
from replengine.log.srl_format import (
    BLOCK,
    HEADER_SIZE,
    TYPE_DATA,
    TYPE_WRAP,
    WRAP_SIZE,
    check_data_record,
    pack_header,
    record_size,
)

if TYPE_CHECKING:
    from replengine.log.srl import SRL

__all__ = [
    "DURABLE",
    "FAILED",
    "IOV_MAX",
    "PENDING",
    "ZEROS",
    "Batch",
    "Index",
    "Item",
    "PendingAppend",
    "SRLStats",
    "new_log_id",
    "open_locked",
    "pread_all",
    "pwritev_all",
    "read_record",
    "write_records",
]

IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
#: One block of zeros: padding and header erasure write slices of it, never a copy.
ZEROS = memoryview(bytes(BLOCK))


def pwritev_all(fd: int, bufs: list, offset: int) -> None:
    """pwritev that survives IOV_MAX and short writes, without copying the buffers."""
    while bufs:
        chunk = bufs[:IOV_MAX]
        want = sum(map(len, chunk))
        n = os.pwritev(fd, chunk, offset)
        if n <= 0:
            raise OSError(f"pwritev wrote {n} of {want} bytes at offset {offset}")
        offset += n
        if n == want:
            bufs = bufs[IOV_MAX:]
            continue
        rest: list = []
        for b in chunk:
            if n >= len(b):
                n -= len(b)
            else:
                rest.append(memoryview(b)[n:])
                n = 0
        bufs = rest + bufs[IOV_MAX:]


def pread_all(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    while len(data) < n:
        more = os.pread(fd, n - len(data), offset + len(data))
        if not more:
            raise OSError(f"short read: {len(data)} of {n} bytes at offset {offset}")
        data += more
    return data


#: how long a block device SRL's lock may be held by someone else (udev probing) at open
LOCK_WAIT_S = 5.0


def open_locked(path: Path) -> int:
    """Open read-write and take an exclusive flock: two processes on one SRL would corrupt it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SRLError(f"{path}: SRL device or file does not exist") from None
    except OSError as exc:
        raise SRLError(f"{path}: cannot open SRL: {exc.strerror}") from None
    # udevd takes a shared flock on a block device while it probes it (after every attach,
    # and whenever a writer closes it): that lasts moments, a running daemon's lock does not.
    # The kernel offers no wait with a timeout on a flock, so look again for a while.
    deadline = time.monotonic() + (LOCK_WAIT_S if stat.S_ISBLK(os.fstat(fd).st_mode) else 0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SRLError(
                    f"{path}: SRL is in use by another process (is replengined running?)"
                ) from None
            time.sleep(0.02)


def new_log_id() -> int:
    return secrets.randbits(64) or 1


class Index:
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
            del self._pos[: self._head]
            del self._len[: self._head]
            self._base += self._head
            self._head = 0

    def truncate(self, lsn: int) -> None:
        del self._pos[lsn - self._base :]
        del self._len[lsn - self._base :]

    def reset(self, lsn: int) -> None:
        self.__init__(lsn)  # type: ignore[misc]


PENDING, DURABLE, FAILED = 0, 1, 2


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
class Item:
    """One queued append: LSN and position were reserved under the lock at enqueue time."""

    lsn: int
    epoch: int
    offset: int
    data: memoryview
    length: int
    data_crc: int
    pos: int
    size: int
    wrap_pos: int | None
    thread: int = 0  # ident of the appending thread, for the group commit delay
    state: int = PENDING
    error: SRLError | None = None
    #: Held until the item's waiter is signalled (durable, failed, or asked to lead a batch):
    #: a bare lock is the cheapest per-waiter wakeup CPython has, no thundering herd. Made
    #: by the first waiter (`arm`): of a batch of a catch-up, one record in 256 is waited
    #: on, and a lock made and taken for each of the others was a tenth of the append.
    waiter: threading.Lock | None = None
    signalled: bool = False
    waiting: bool = False

    def arm(self) -> threading.Lock:
        """The item's wakeup lock, held unless signalled (call with the SRL lock held)."""
        if self.waiter is None:
            self.waiter = threading.Lock()
            if not self.signalled:
                self.waiter.acquire()
        return self.waiter

    def signal(self) -> None:
        """Wake whoever waits on this item (call with the SRL lock held)."""
        if not self.signalled:
            self.signalled = True
            if self.waiter is not None:
                self.waiter.release()


@dataclass(eq=False, slots=True)
class Batch:
    """Records written (and synced) together; ``end`` is the LSN after the last one."""

    items: list[Item]
    nbytes: int
    end: int
    written: bool = False


class PendingAppend:
    """Handle of an append in flight: ``lsn`` is final, ``wait()`` returns once it is durable."""

    __slots__ = ("lsn", "_srl", "_item")

    def __init__(self, srl: SRL, item: Item) -> None:
        self.lsn = item.lsn
        self._srl = srl
        self._item = item

    @property
    def done(self) -> bool:
        return self._item.state != PENDING

    def wait(self, timeout: float | None = None) -> int:
        """Block until durable; returns the LSN. Raises SRLError if the write failed and
        TimeoutError if ``timeout`` seconds passed first (the append stays queued)."""
        return self._srl._wait_item(self._item, timeout)


def write_records(fd: int, area_off: int, log_id: int, items: list[Item], committed: int) -> int:
    """Write WRAP markers and records (header, data, zero padding) without copying data: one
    pwritev per contiguous stretch. Returns the bytes written."""
    runs: list[tuple[int, list]] = []
    run_pos = run_end = -1
    bufs: list = []
    total = 0
    for it in items:
        if it.wrap_pos is not None:
            hdr = pack_header(TYPE_WRAP, it.epoch, it.lsn, 0, 0, committed, log_id, 0)
            if it.wrap_pos != run_end:
                if bufs:
                    runs.append((run_pos, bufs))
                run_pos = run_end = it.wrap_pos
                bufs = []
            bufs += (hdr, ZEROS[HEADER_SIZE:WRAP_SIZE])
            run_end += WRAP_SIZE
            total += WRAP_SIZE
        if it.pos != run_end:
            if bufs:
                runs.append((run_pos, bufs))
            run_pos = run_end = it.pos
            bufs = []
        length = it.length
        bufs.append(
            pack_header(
                TYPE_DATA, it.epoch, it.lsn, it.offset, length, committed, log_id, it.data_crc
            )
        )
        if length:
            bufs.append(it.data)
        pad = it.size - HEADER_SIZE - length
        if pad:
            bufs.append(ZEROS[:pad])
        run_end += it.size
        total += it.size
    runs.append((run_pos, bufs))
    for pos, parts in runs:
        pwritev_all(fd, parts, area_off + pos)
    return total


def read_records(
    fd: int,
    path: Path,
    area_off: int,
    log_id: int,
    first_lsn: int,
    pos: int,
    lengths: list[int],
) -> list[Record]:
    """Records ``first_lsn``.. lying back to back from area position ``pos`` (their data
    lengths given), read with one pread and each verified by its CRCs (SRLCorruptError if
    not): a laggard's catch-up costs a syscall per stretch, not two per record."""
    sizes = [record_size(n) for n in lengths]
    buf = memoryview(pread_all(fd, sum(sizes), area_off + pos))
    out = []
    at = 0
    lsn = first_lsn
    for length, size in zip(lengths, sizes, strict=True):
        found = check_data_record(buf, at, lsn, length, log_id)
        if found is None:
            raise SRLCorruptError(
                f"{path}: record LSN {lsn} at byte {area_off + pos + at} fails its "
                "checksum (media corruption); resync this node's SRL from a peer"
            )
        data = buf[at + HEADER_SIZE : at + HEADER_SIZE + length]
        out.append(Record(lsn, found[0], found[1], data, found[2]))
        at += size
        lsn += 1
    return out


def read_record(
    fd: int, path: Path, area_off: int, log_id: int, lsn: int, pos: int, length: int
) -> Record:
    """Record ``lsn`` at area position ``pos``, verified by its CRCs (SRLCorruptError if not)."""
    return read_records(fd, path, area_off, log_id, lsn, pos, [length])[0]
