"""The volume: the storage area holding one node's copy of the data.

A Volume is a thin, bounds-checked wrapper over a file or block device. It never reorders
writes: the caller (primary/secondary pipelines) applies records in LSN order (invariant 2),
and an out-of-range record is refused before a byte is written (invariant 7).

Checksums exist for `replctl verify`: per-chunk digests that two nodes compute independently
and compare, so only the differing chunks need to be looked at. Holes in sparse files are
skipped with SEEK_DATA/SEEK_HOLE (a hole reads as zeros, so its digest is known without
reading), which makes verifying a large, mostly empty test volume nearly free.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from replengine.errors import VolumeError
from replengine.log.record import Record
from replengine.storage.chunksums import digest, zero_digest
from replengine.storage.writeback import start_writeback

__all__ = [
    "DEFAULT_CHUNK",
    "Volume",
    "VolumeChecksum",
    "chunk_digest",
    "device_size",
    "diff",
]

DEFAULT_CHUNK = 1 << 20
#: the page cache's largest folio here (x86-64: a PMD, 2 MiB), naturally aligned
LARGEST_FOLIO = 2 << 20
#: an applied record at least this large leaves the page cache once flushed: its write
#: made large folios (see Volume.drop_cached)
LARGE_WRITE = 32 << 10
LARGE_KEPT = 4096
_DIGEST_SIZE = 16  # 128-bit blake2b per chunk: ample against accidental collisions, small lists
_ZEROS_CAP = 1 << 20  # hash zero chunks in pieces of at most this many bytes


def chunk_digest(data: bytes | bytearray | memoryview) -> str:
    """Digest of one chunk's bytes, as used in VolumeChecksum.chunks (blake2b-128, hex)."""
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE).hexdigest()


@functools.lru_cache(maxsize=64)
def _zero_digest(length: int) -> str:
    """Digest of `length` zero bytes, computed once per length (holes of any size are free)."""
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    zeros = bytes(min(length, _ZEROS_CAP))
    left = length
    while left:
        n = min(left, len(zeros))
        h.update(zeros[:n] if n < len(zeros) else zeros)
        left -= n
    return h.hexdigest()


def _whole_digest(size: int, chunk_size: int, chunks: list[str]) -> str:
    """Digest over the chunk list; size and chunk size are included so they must match too."""
    h = hashlib.blake2b(digest_size=32)
    h.update(f"replengine-volume-v1 {size} {chunk_size}\n".encode())
    for c in chunks:
        h.update(c.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class VolumeChecksum:
    """Per-chunk digests of a volume, comparable between nodes with diff()."""

    digest: str
    chunks: list[str]
    chunk_size: int
    size: int

    def diff(self, other: VolumeChecksum) -> list[tuple[int, int]]:
        """Same as the module function diff(self, other)."""
        return diff(self, other)


def diff(a: VolumeChecksum, b: VolumeChecksum) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` where two checksums differ, adjacent chunks merged.

    Ranges are clipped to the larger size; bytes present in only one volume (sizes differ) count
    as different. Checksums taken with different chunk sizes cannot be compared chunk by chunk:
    that is a VolumeError rather than a misleading answer.
    """
    if a.chunk_size != b.chunk_size:
        raise VolumeError(
            f"cannot compare checksums taken with different chunk sizes "
            f"({a.chunk_size} and {b.chunk_size} bytes); checksum both with the same chunk"
        )
    cs = a.chunk_size
    size = max(a.size, b.size)
    n = max(len(a.chunks), len(b.chunks))
    out: list[tuple[int, int]] = []
    for i in range(n):
        ca = a.chunks[i] if i < len(a.chunks) else None
        cb = b.chunks[i] if i < len(b.chunks) else None
        # A final partial chunk of equal bytes but different volume sizes hashes differently
        # only if the lengths differ, which is exactly when the sizes differ there: fine.
        if ca == cb and ca is not None:
            continue
        start, end = i * cs, min((i + 1) * cs, size)
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def device_size(path: str | os.PathLike[str]) -> int:
    """Size in bytes of a file or block device (lseek SEEK_END works for both)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


class Volume:
    """A file or block device opened for bounds-checked positional I/O.

    Positional I/O (pread/pwrite) keeps no file offset, so concurrent readers and the single
    applying writer need no lock. ``exclusive=True`` opens a block device with O_EXCL, which the
    kernel refuses while it is mounted or claimed by another exclusive opener (e.g. a
    filesystem), protecting a secondary's copy from being written behind our back.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, readonly: bool = False, exclusive: bool = False
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._fd = -1
        try:
            # Stat before opening: opening a FIFO would block and a directory is never right.
            st = os.stat(self.path)
        except FileNotFoundError:
            raise VolumeError(f"volume {self.path} does not exist") from None
        except OSError as e:
            raise VolumeError(f"cannot stat volume {self.path}: {e.strerror or e}") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise VolumeError(
                f"volume {self.path} is not a regular file or block device "
                f"({_kind(st.st_mode)}); point the config's volume at the data device"
            )
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        if exclusive and stat.S_ISBLK(st.st_mode):
            flags |= os.O_EXCL
        try:
            fd = os.open(self.path, flags)
        except OSError as e:
            hint = (
                " (in use: mounted or opened exclusively elsewhere?)"
                if e.errno == errno.EBUSY
                else ""
            )
            mode = "read-only" if readonly else "read-write"
            raise VolumeError(
                f"cannot open volume {self.path} {mode}: {e.strerror or e}{hint}"
            ) from None
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                raise VolumeError(f"volume {self.path} changed while being opened; try again")
            self.is_block_device = stat.S_ISBLK(fst.st_mode)
            self.size = os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            os.close(fd)
            raise VolumeError(f"cannot size volume {self.path}: {e.strerror or e}") from None
        except BaseException:
            os.close(fd)
            raise
        if self.size == 0:
            os.close(fd)
            raise VolumeError(
                f"volume {self.path} has size 0; it must hold the data (e.g. lvcreate, or "
                f"truncate -s SIZE {self.path})"
            )
        self._fd = fd
        #: ranges of large records applied since the last flush started (drop_cached);
        #: bounded, for a node whose clears wait long (the oldest then just stay cached)
        self._large: deque[tuple[int, int]] = deque(maxlen=LARGE_KEPT)

    # ------------------------------------------------------------------ lifecycle

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else ("ro" if self.readonly else "rw")
        return f"Volume({str(self.path)!r}, size={self.size}, {state})"

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the descriptor; idempotent. Does not flush: call flush() when that matters."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        return self._live_fd()

    def _live_fd(self) -> int:
        if self._fd < 0:
            raise VolumeError(f"volume {self.path} is closed")
        return self._fd

    # ------------------------------------------------------------------ I/O

    def apply(self, rec: Record) -> None:
        """Write one record's data at its offset; the caller applies records in LSN order.

        Refused as a whole (nothing written) if the record does not fit the volume: a record
        outside the volume means the nodes disagree about its size, which must not be papered
        over.
        """
        if rec.offset < 0 or rec.offset + rec.length > self.size:
            raise VolumeError(
                f"record LSN {rec.lsn} (offset {rec.offset}, length {rec.length}) does not fit "
                f"volume {self.path} of size {self.size}; are all nodes' volumes the same size?"
            )
        self._pwrite(rec.offset, rec.data, what=f"record LSN {rec.lsn}")
        if len(rec.data) >= LARGE_WRITE:
            self._large.append((rec.offset, len(rec.data)))

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset`` (bounds-checked; nothing is written if out of range)."""
        length = memoryview(data).nbytes
        if offset < 0 or offset + length > self.size:
            raise VolumeError(
                f"write at offset {offset}, length {length} does not fit volume {self.path} "
                f"of size {self.size}"
            )
        self._pwrite(offset, data, what=f"write at offset {offset}")

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview, *, what: str) -> None:
        fd = self._live_fd()
        if self.readonly:
            raise VolumeError(f"volume {self.path} is open read-only; cannot apply {what}")
        view = memoryview(data).cast("B")
        pos = 0
        try:
            while pos < len(view):
                n = os.pwrite(fd, view[pos:], offset + pos)
                if n <= 0:  # pragma: no cover - the kernel reports errors as exceptions
                    raise OSError(errno.EIO, "short write")
                pos += n
        except OSError as e:
            raise VolumeError(
                f"{what} failed on volume {self.path} at byte {offset + pos}: {e.strerror or e}"
            ) from None

    def is_hole(self, offset: int, length: int) -> bool:
        """Whether ``[offset, offset+length)`` of a file volume is a hole (reads as zeros,
        stored nowhere): a blank sparse volume's checksum pass then reads nothing. False
        when unsure (a block device, a file system without SEEK_DATA)."""
        if self.is_block_device:
            return False
        try:
            data = os.lseek(self._live_fd(), offset, os.SEEK_DATA)
        except OSError as e:
            # ENXIO: no data at or after offset (the rest of the file is a hole)
            return e.errno == errno.ENXIO
        return data >= offset + length

    def digest_of(self, offset: int, length: int) -> bytes:
        """The chunk digest (storage.chunksums) of a range, as a block copy compares them:
        a hole's without reading it (a blank sparse volume costs nothing), else read once."""
        if self.is_hole(offset, length):
            return zero_digest(length)
        return digest(self.read(offset, length, once=True))

    def read(self, offset: int, length: int, *, once: bool = False) -> bytes:
        """``length`` bytes at ``offset``; VolumeError if the range leaves the volume.

        ``once``: a read no one repeats soon (a copy's scan, a checksum pass): its pages
        leave the page cache afterwards (drop_cached)."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise VolumeError(
                f"read at offset {offset}, length {length} is outside volume {self.path} "
                f"of size {self.size}"
            )
        fd = self._live_fd()
        parts: list[bytes] = []
        pos = 0
        try:
            while pos < length:
                b = os.pread(fd, length - pos, offset + pos)
                if not b:
                    raise VolumeError(
                        f"volume {self.path} ended at byte {offset + pos} while reading "
                        f"(expected size {self.size}); was it shrunk?"
                    )
                parts.append(b)
                pos += len(b)
        except OSError as e:
            raise VolumeError(
                f"read failed on volume {self.path} at byte {offset + pos}: {e.strerror or e}"
            ) from None
        if once:
            # from the start of the largest folio this read can lie in: a folio is dropped
            # only once the range covers it whole, so one that ends past this read goes at
            # the next read of a scan (readahead brings it in before the scan gets there)
            start = offset - offset % LARGEST_FOLIO
            self.drop_cached(start, offset + length - start)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def drop_cached(self, offset: int, length: int) -> None:
        """Let the kernel drop the clean cached pages of a range (advice; dirty pages stay).

        A read or a write of a MiB fills the page cache with large folios, and later 4 KiB
        writes into them cost the kernel several times more: 17-30 us of system time per
        pwrite against 5 on a cold range (Linux 6.18, ext4; a full sync's scan of the
        primary's volume made its applier spend 1.2 s of system time on 20 000 writes,
        0.24 s once dropped). The daemon's copy of the volume in the page cache is a cache
        under the device's own, so there is little to lose."""
        try:
            os.posix_fadvise(self._live_fd(), offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass

    def write_copied(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """``write`` for a block copy's stream (full sync, dcm resync, rewind): its
        writeback starts at once, without waiting (and its pages go once written), so the
        stream reaches the disk as it arrives, not in a burst at each fdatasync, and does
        not fill the page cache with a volume no one reads here. The advice is only that:
        an error is left for flush() to report."""
        self.write(offset, data)
        self.drop_cached(offset, memoryview(data).nbytes)

    def start_writeback(self) -> None:
        """Start writing what was written so far to disk, without waiting (see
        storage/writeback.py: it keeps the next flush short). Advice only: flush() is what
        makes writes durable, and reports an I/O error."""
        start_writeback(self._live_fd())

    def flush(self) -> None:
        """fdatasync: make every write so far durable (before clearing SRL records, inv. 3).

        Then the large records applied before it leave the page cache (drop_cached): one
        applied meanwhile stays listed for the next flush (the deque is shared with the
        applying thread, which only appends)."""
        fd = self._live_fd()
        large = [self._large.popleft() for _ in range(len(self._large))]
        try:
            os.fdatasync(fd)
        except OSError as e:
            raise VolumeError(
                f"flush (fdatasync) of volume {self.path} failed: {e.strerror or e}"
            ) from None
        for offset, length in large:
            self.drop_cached(offset, length)

    # ------------------------------------------------------------------ checksums

    def checksum(
        self,
        chunk: int = DEFAULT_CHUNK,
        progress: Callable[[int, int], None] | None = None,
    ) -> VolumeChecksum:
        """Per-chunk blake2b digests plus a whole digest over them.

        Holes found with SEEK_DATA/SEEK_HOLE are not read: their digest is the (cached) digest
        of zeros, identical to what reading them would give, so a sparse file and a fully
        allocated device with the same content produce the same checksum. Where SEEK_DATA is
        unsupported (block devices report everything as data) every chunk is read.
        ``progress(done_bytes, total_bytes)`` is called as chunks are done.
        """
        if chunk <= 0:
            raise VolumeError(f"checksum chunk size must be positive, got {chunk}")
        fd = self._live_fd()
        size = self.size
        nchunks = (size + chunk - 1) // chunk
        chunks: list[str] = []

        def zero(i: int) -> str:
            return _zero_digest(min(chunk, size - i * chunk))

        def read_chunk(i: int) -> str:
            start = i * chunk
            return chunk_digest(self.read(start, min(chunk, size - start), once=True))

        def report() -> None:
            if progress is not None:
                progress(min(len(chunks) * chunk, size), size)

        i = 0  # next chunk index to emit
        sparse = True
        while i < nchunks:
            if sparse:
                try:
                    data_at = os.lseek(fd, i * chunk, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # no data at or after this offset
                        data_at = size
                    elif e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                        sparse = False
                        continue
                    else:
                        raise VolumeError(
                            f"seeking data in volume {self.path} failed: {e.strerror or e}"
                        ) from None
                first_data = nchunks if data_at >= size else data_at // chunk
                if first_data > i:
                    chunks.extend(zero(j) for j in range(i, first_data))  # holes: not read
                    i = first_data
                    report()
                if i >= nchunks:
                    break
                try:
                    hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
                except OSError as e:
                    raise VolumeError(
                        f"seeking holes in volume {self.path} failed: {e.strerror or e}"
                    ) from None
                last_data = min((max(hole_at, data_at + 1) - 1) // chunk, nchunks - 1)
                for j in range(i, last_data + 1):
                    chunks.append(read_chunk(j))
                    report()
                i = last_data + 1
            else:
                chunks.append(read_chunk(i))
                i += 1
                report()
        return VolumeChecksum(
            digest=_whole_digest(size, chunk, chunks), chunks=chunks, chunk_size=chunk, size=size
        )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "an unsupported file type"
