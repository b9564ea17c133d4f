"""Persistent dirty-region bitmap (VVR's Data Change Map, DCM).

When the SRL fills because a secondary lags too far (``srl_full = "dcm"``), the primary stops
keeping records for it and instead marks, one bit per fixed-size region, which parts of the
volume were written. On reconnect only the marked regions are copied -- far less than a full
resync, and the SRL never silently drops records a secondary still needs.

On-disk format (little endian), one file::

    offset  size  field
    0       8     magic  b"REPLDCM\\0"
    8       2     version (1)
    10      2     reserved (0)
    12      4     CRC32C over bytes 0..47 with this field zeroed, followed by the bitmap
    16      8     volume_size   (bytes)
    24      8     region_size   (bytes)
    32      8     regions       ceil(volume_size / region_size)
    40      8     generation    (incremented by every flush; for diagnostics)
    48      ...   bitmap: bit i (byte i // 8, bit i % 8, LSB first) = region i dirty;
                  unused bits of the last byte are zero

Durability: :meth:`DirtyMap.flush` writes the whole map to ``<path>.tmp``, fsyncs it, renames
it over ``<path>`` and fsyncs the directory. rename() is atomic on POSIX file systems, so
after a crash the file is either the old or the new map -- never a torn mix -- and the CRC
needs to catch only media corruption, not our own half-written updates. The alternative (two
alternating in-place copies with a generation number) would be needed only if the map lived
on a raw block device; the map is small (1 bit per region: 2 MiB for 1 TiB at 64 KiB regions),
so rewriting it whole is cheap and keeps the code simple.

Marks are made in memory (the primary's write path must not do an extra fsync per write); the
caller flushes at the points where losing marks would matter, e.g. before it frees SRL
space holding records the lagging secondary has not received.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from replengine.errors import ReplError
from replengine.log.crc import crc32c
from replengine.storage.durable import replace_durably

MAGIC = b"REPLDCM\0"
VERSION = 1
_HEADER = struct.Struct("<8sHHIQQQQ")
HEADER_SIZE = _HEADER.size  # 48
_CRC_OFFSET = 12

_NON_ZERO = re.compile(rb"[^\x00]")
_NON_FF = re.compile(rb"[^\xff]")


class DCMError(ReplError):
    """The dirty-region map cannot be created, opened or updated as asked."""


class DCMCorruptError(DCMError):
    """The map file is not a DCM, is truncated, or fails its CRC; the message names the path."""


class DCMRangeError(DCMError, ValueError):
    """A byte range passed to mark/clear lies outside the volume or is negative."""


class DirtyMap:
    """One bit per ``region_size`` bytes of a ``volume_size``-byte volume.

    Use :meth:`create` or :meth:`open`; the constructor builds an all-clean map in memory
    without touching the disk. Thread-safe: the primary marks from its write path while a
    resync clears.
    """

    def __init__(self, path: str | os.PathLike[str], *, volume_size: int, region_size: int):
        if volume_size <= 0:
            raise DCMError(f"DCM {path}: volume_size must be > 0, got {volume_size}")
        if region_size <= 0:
            raise DCMError(f"DCM {path}: region_size must be > 0, got {region_size}")
        self.path = Path(path)
        self.volume_size = volume_size
        self.region_size = region_size
        self.regions_total = -(-volume_size // region_size)
        self._bits = bytearray((self.regions_total + 7) // 8)
        self._generation = 0
        self._lock = threading.Lock()
        #: one flush at a time, snapshot to rename: a flush from another thread (resync
        #: progress, node.dcm) never lands an older snapshot over a newer one's marks
        self._flush_lock = threading.Lock()

    # --- files ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        volume_size: int,
        region_size: int,
        force: bool = False,
    ) -> DirtyMap:
        """Write a new, all-clean map durably. Refuses to replace an existing file unless
        ``force`` -- an existing map may hold the only record of what a secondary lacks."""
        dm = cls(path, volume_size=volume_size, region_size=region_size)
        if dm.path.exists() and not force:
            raise DCMError(f"DCM {dm.path}: already exists (use force to overwrite)")
        dm.flush()
        return dm

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        volume_size: int | None = None,
        region_size: int | None = None,
    ) -> DirtyMap:
        """Load a map, verifying magic, version, geometry, length and CRC32C.

        If ``volume_size`` / ``region_size`` are given they must match the file (a map made
        for a different geometry would mark the wrong regions).
        """
        p = Path(path)
        try:
            raw = p.read_bytes()
        except FileNotFoundError as exc:
            raise DCMError(f"DCM {p}: no such file") from exc
        except OSError as exc:
            raise DCMError(f"DCM {p}: cannot read: {exc.strerror}") from exc
        if len(raw) < HEADER_SIZE:
            raise DCMCorruptError(f"DCM {p}: file is {len(raw)} bytes, shorter than its header")
        magic, version, _res, crc, vsize, rsize, nregions, gen = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise DCMCorruptError(f"DCM {p}: bad magic {magic!r}, not a replengine DCM file")
        if version != VERSION:
            raise DCMCorruptError(f"DCM {p}: unsupported version {version} (know {VERSION})")
        body = bytearray(raw)
        body[_CRC_OFFSET : _CRC_OFFSET + 4] = b"\0\0\0\0"
        if crc32c(bytes(body)) != crc:
            raise DCMCorruptError(f"DCM {p}: CRC32C mismatch, the map is corrupt")
        if vsize <= 0 or rsize <= 0 or nregions != -(-vsize // rsize):
            raise DCMCorruptError(
                f"DCM {p}: inconsistent geometry volume_size={vsize} region_size={rsize} "
                f"regions={nregions}"
            )
        nbytes = (nregions + 7) // 8
        if len(raw) != HEADER_SIZE + nbytes:
            raise DCMCorruptError(
                f"DCM {p}: file is {len(raw)} bytes, expected {HEADER_SIZE + nbytes}"
            )
        if nregions % 8 and raw[-1] >> (nregions % 8):
            raise DCMCorruptError(f"DCM {p}: bits set beyond the last region")
        if volume_size is not None and volume_size != vsize:
            raise DCMError(f"DCM {p}: made for volume_size {vsize}, not {volume_size}")
        if region_size is not None and region_size != rsize:
            raise DCMError(f"DCM {p}: made for region_size {rsize}, not {region_size}")
        dm = cls(p, volume_size=vsize, region_size=rsize)
        dm._bits[:] = raw[HEADER_SIZE:]
        dm._generation = gen
        return dm

    def flush(self) -> None:
        """Make the current marks durable (temp file + fsync + rename + fsync dir)."""
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            gen = self._generation + 1
            header = bytearray(
                _HEADER.pack(
                    MAGIC,
                    VERSION,
                    0,
                    0,
                    self.volume_size,
                    self.region_size,
                    self.regions_total,
                    gen,
                )
            )
            data = bytes(header) + bytes(self._bits)
            struct.pack_into("<I", header, _CRC_OFFSET, crc32c(data))
            data = bytes(header) + bytes(self._bits)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            replace_durably(tmp, self.path)
        except OSError as exc:
            raise DCMError(f"DCM {self.path}: cannot write: {exc.strerror or exc}") from exc
        with self._lock:
            self._generation = max(self._generation, gen)

    def close(self) -> None:
        """Nothing is held open between flushes; present for symmetry with SRL/Volume."""

    def __enter__(self) -> DirtyMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- marking ----------------------------------------------------------------------------

    def _region_span(self, offset: int, length: int) -> tuple[int, int]:
        if offset < 0 or length < 0 or offset + length > self.volume_size:
            raise DCMRangeError(
                f"DCM {self.path}: range offset={offset} length={length} is outside the "
                f"volume of {self.volume_size} bytes"
            )
        return offset // self.region_size, -(-(offset + length) // self.region_size)

    def _set(self, first: int, end: int, value: bool) -> None:
        """Set bits [first, end) to value: partial bytes bit by bit, whole bytes by slice."""
        bits = self._bits
        while first < end and first % 8:
            self._set_bit(first, value)
            first += 1
        while end > first and end % 8:
            end -= 1
            self._set_bit(end, value)
        if first < end:
            bits[first // 8 : end // 8] = (b"\xff" if value else b"\0") * ((end - first) // 8)

    def _set_bit(self, i: int, value: bool) -> None:
        if value:
            self._bits[i // 8] |= 1 << (i % 8)
        else:
            self._bits[i // 8] &= ~(1 << (i % 8)) & 0xFF

    def mark(self, offset: int, length: int) -> None:
        """Mark every region the write ``[offset, offset+length)`` touches (in memory).

        A write touching part of a region marks all of it: the resync copies whole regions.
        """
        if length == 0:
            self._region_span(offset, 0)
            return
        first, end = self._region_span(offset, length)
        with self._lock:
            self._set(first, end, True)

    def mark_all(self) -> None:
        """Mark the whole volume (e.g. the secondary's state is unknown)."""
        with self._lock:
            self._set(0, self.regions_total, True)

    def clear(self, offset: int, length: int) -> None:
        """Clear the regions *wholly* inside ``[offset, offset+length)`` (after resyncing it).

        A region only partly covered stays dirty: the rest of it may not have been copied.
        The volume's last, short region counts as wholly covered when the range reaches the
        end of the volume.
        """
        self._region_span(offset, length)
        rs = self.region_size
        first = -(-offset // rs)
        stop = offset + length
        end = self.regions_total if stop == self.volume_size else stop // rs
        if first < end:
            with self._lock:
                self._set(first, end, False)

    # --- queries ----------------------------------------------------------------------------

    def is_dirty(self, region: int) -> bool:
        """Whether region number ``region`` is marked."""
        return bool(self._bits[region // 8] >> (region % 8) & 1)

    def _next(self, pattern: re.Pattern[bytes], want: bool, i: int) -> int:
        """First region index >= i whose bit == want (regions_total if none)."""
        n = self.regions_total
        while i < n and i % 8:
            if self.is_dirty(i) == want:
                return i
            i += 1
        if i >= n:
            return n
        m = pattern.search(self._bits, i // 8)
        if m is None:
            return n
        i = m.start() * 8
        while i < n and self.is_dirty(i) != want:
            i += 1
        return min(i, n)

    def regions(self) -> Iterator[tuple[int, int]]:
        """Dirty byte ranges ``(offset, length)``, adjacent regions merged, in volume order.

        The last range is clipped to the volume size. Iterates over a snapshot, so the map
        may be changed while the resync walks it.
        """
        with self._lock:
            snap = DirtyMap.__new__(DirtyMap)
            snap.regions_total = self.regions_total
            snap._bits = bytearray(self._bits)
        rs, i = self.region_size, 0
        while True:
            i = snap._next(_NON_ZERO, True, i)
            if i >= snap.regions_total:
                return
            j = snap._next(_NON_FF, False, i)
            start = i * rs
            yield start, min(j * rs, self.volume_size) - start
            i = j

    @property
    def count(self) -> int:
        """Number of dirty regions."""
        with self._lock:
            return int.from_bytes(self._bits, "little").bit_count()

    @property
    def dirty_bytes(self) -> int:
        """Bytes the resync would copy (the last region counted at its real, short size)."""
        with self._lock:
            n = int.from_bytes(self._bits, "little").bit_count()
            last = self.regions_total - 1
            short = self.region_size * self.regions_total - self.volume_size
            last_dirty = bool(self._bits[last // 8] >> (last % 8) & 1)
        return n * self.region_size - (short if last_dirty else 0)

    @property
    def is_empty(self) -> bool:
        """True when nothing is marked."""
        with self._lock:
            return not any(self._bits)

    @property
    def generation(self) -> int:
        """How many times this map has been flushed (from the file header)."""
        return self._generation

    def __repr__(self) -> str:
        return (
            f"DirtyMap({str(self.path)!r}, volume_size={self.volume_size}, "
            f"region_size={self.region_size}, dirty={self.count}/{self.regions_total})"
        )


class RegionTally:
    """Clears a region of ``dmap`` once every piece of it is done, the pieces done in any
    order: a resync's chunks smaller than the map's regions (resync_chunk_size below
    dcm_region_size) each cover no whole region, so clearing them one by one (clear() keeps
    a region only partly covered) would record no progress at all, and a resync cut short
    would start over from nothing. Pieces are chunks of whole-region ranges (what the map's
    regions() gives a copy), so a piece lies in one region or covers whole regions."""

    def __init__(self, dmap: DirtyMap) -> None:
        self.dmap = dmap
        #: bytes done of each region partly done
        self.partial: dict[int, int] = {}

    def done(self, offset: int, length: int) -> None:
        dmap, rs = self.dmap, self.dmap.region_size
        if length >= rs or offset + length == dmap.volume_size and offset % rs == 0:
            dmap.clear(offset, length)
            return
        region = offset // rs
        size = min(rs, dmap.volume_size - region * rs)
        got = self.partial.get(region, 0) + length
        if got < size:
            self.partial[region] = got
            return
        self.partial.pop(region, None)
        dmap.clear(region * rs, size)
