"""Byte layout of the SRL: the two superblock copies and the record header.

Kept apart from srl.py so the on-disk format (documented byte by byte in docs/srl-format.md)
can be read and reviewed without the concurrency code around it. Everything here is pure:
bytes in, dataclasses out, no I/O.

All integers are little-endian. CRCs are CRC32C (Castagnoli), as computed by ``crc32c.crc32c``.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

from replengine.log.crc import crc32c

#: The size of one superblock copy; the record area starts and ends on this boundary.
BLOCK = 4096
#: Records start on this boundary (format 2). A 4 KiB write costs 64 + 4096 bytes rounded up
#: to 4608 of log, not the 8192 that 4 KiB alignment cost (format 1): the replicated write's
#: log traffic is 1.125x its data instead of 2x. A record's tail and the next one's head then
#: share a 4 KiB page; rewriting that page rewrites the earlier record's bytes unchanged, so
#: a torn page write leaves them as they were (the same argument as PostgreSQL's WAL, which
#: rewrites its last partial page on every commit).
REC_ALIGN = 512
#: A WRAP marker: one header, zeros up to the record alignment.
WRAP_SIZE = REC_ALIGN
SB_SIZE = 4096
SB_COPIES = 2
#: The circular record area starts right after the two superblock copies.
AREA_OFFSET = SB_SIZE * SB_COPIES
#: Smallest circular area we accept: smaller logs fill before a lagging secondary is noticed.
MIN_AREA_SIZE = 1 << 20

SB_MAGIC = b"RPLSRLSB"
FORMAT_VERSION = 2
NAME_MAX = 64
#: Room in one 4 KiB superblock copy for this many (epoch, first_lsn) pairs.
MAX_HISTORY = 240
#: Superblock flag: written by a clean close. end_lsn/end_pos are exact and nothing was in
#: flight, so recovery need not look past the end for a torn tail (a 64 MiB read; most of a
#: restarted secondary's start with a cold page cache). Every other superblock write clears
#: it, the first one at open before anything is appended. Format 2 logs written before the
#: flag have 0 here (reserved), which is read as "not clean": the full scan, as before.
SB_CLEAN = 1

REC_MAGIC = b"RPLR"
HEADER_SIZE = 64
TYPE_DATA = 1
TYPE_WRAP = 2
MAX_LENGTH = (1 << 32) - 1

# magic, version, sb_size, generation, uuid, resource, node, area_offset, area_size, log_id,
# start_lsn, start_pos, end_lsn, end_pos, trunc_lsn, trunc_end_pos, history_count, flags
_SB_FIXED = struct.Struct("<8sIIQ16s64s64sQQQQQQQQQII")
_SB_HIST = struct.Struct("<QQ")
_SB_HIST_OFF = _SB_FIXED.size  # 248
_SB_CRC_OFF = SB_SIZE - 4
assert _SB_HIST_OFF + MAX_HISTORY * _SB_HIST.size <= _SB_CRC_OFF

# magic, type, flags, epoch, lsn, offset, length, reserved, committed_lsn, log_id, crc, hdr_crc
_HDR = struct.Struct("<4sHHQQQIIQQII")
assert _HDR.size == HEADER_SIZE
_HDR_CRC_SPAN = 56  # bytes [0, 56) take part in the record CRC
_HDR_HCRC_SPAN = 60  # bytes [0, 60) take part in the header CRC
#: The header up to the record CRC, and one u32: pack_header runs once per record.
_HDR_HEAD = struct.Struct(_HDR.format[:-2])
_U32 = struct.Struct("<I")
assert _HDR_HEAD.size == _HDR_CRC_SPAN


def round_up(n: int, to: int = BLOCK) -> int:
    return (n + to - 1) // to * to


def record_size(length: int) -> int:
    """Bytes of circular area a record with ``length`` data bytes occupies (header + padding)."""
    return round_up(HEADER_SIZE + length, REC_ALIGN)


def _pack_name(what: str, value: str) -> bytes:
    raw = value.encode("utf-8")
    if not raw or len(raw) > NAME_MAX or b"\0" in raw:
        raise ValueError(f"{what} {value!r} must be 1..{NAME_MAX} UTF-8 bytes without NUL")
    return raw


@dataclass
class Superblock:
    """One superblock copy's content. ``generation`` orders the two copies: newest valid wins."""

    resource: str
    uuid: uuid.UUID
    node: str
    area_offset: int
    area_size: int
    log_id: int
    start_lsn: int
    start_pos: int
    end_lsn: int
    end_pos: int
    history: list[tuple[int, int]] = field(default_factory=list)
    #: A truncate in progress: records with LSN >= trunc_lsn up to trunc_end_pos are dead and
    #: must be erased by recovery if the crash came before truncate finished (0 = none).
    trunc_lsn: int = 0
    trunc_end_pos: int = 0
    generation: int = 0
    version: int = FORMAT_VERSION
    #: Closed cleanly (SB_CLEAN): the end is exact, no torn tail can follow it.
    clean: bool = False

    def pack(self) -> bytes:
        """4096 bytes ready to pwrite, CRC in the last 4 bytes."""
        if len(self.history) > MAX_HISTORY:
            raise ValueError(f"epoch history has {len(self.history)} entries, max {MAX_HISTORY}")
        buf = bytearray(SB_SIZE)
        _SB_FIXED.pack_into(
            buf,
            0,
            SB_MAGIC,
            self.version,
            SB_SIZE,
            self.generation,
            self.uuid.bytes,
            _pack_name("resource name", self.resource),
            _pack_name("node name", self.node),
            self.area_offset,
            self.area_size,
            self.log_id,
            self.start_lsn,
            self.start_pos,
            self.end_lsn,
            self.end_pos,
            self.trunc_lsn,
            self.trunc_end_pos,
            len(self.history),
            SB_CLEAN if self.clean else 0,
        )
        for i, (epoch, first_lsn) in enumerate(self.history):
            _SB_HIST.pack_into(buf, _SB_HIST_OFF + i * _SB_HIST.size, epoch, first_lsn)
        struct.pack_into("<I", buf, _SB_CRC_OFF, crc32c(bytes(buf[:_SB_CRC_OFF])))
        return bytes(buf)


def has_sb_magic(buf: bytes) -> bool:
    return buf[: len(SB_MAGIC)] == SB_MAGIC


def unpack_superblock(buf: bytes) -> Superblock | None:
    """The superblock in ``buf``, or None if it is not a valid copy (zeroed, torn, corrupt).

    Validity is magic + CRC; a copy from a newer format version is rejected by the caller
    with its own message, so it is returned here.
    """
    if len(buf) < SB_SIZE or not has_sb_magic(buf):
        return None
    (crc,) = struct.unpack_from("<I", buf, _SB_CRC_OFF)
    if crc32c(bytes(buf[:_SB_CRC_OFF])) != crc:
        return None
    (
        _magic,
        version,
        _sb_size,
        generation,
        uuid_b,
        res,
        node,
        area_offset,
        area_size,
        log_id,
        start_lsn,
        start_pos,
        end_lsn,
        end_pos,
        trunc_lsn,
        trunc_end_pos,
        nhist,
        flags,
    ) = _SB_FIXED.unpack_from(buf, 0)
    if nhist > MAX_HISTORY:
        return None
    history = [_SB_HIST.unpack_from(buf, _SB_HIST_OFF + i * _SB_HIST.size) for i in range(nhist)]
    return Superblock(
        resource=res.rstrip(b"\0").decode("utf-8", "replace"),
        uuid=uuid.UUID(bytes=uuid_b),
        node=node.rstrip(b"\0").decode("utf-8", "replace"),
        area_offset=area_offset,
        area_size=area_size,
        log_id=log_id,
        start_lsn=start_lsn,
        start_pos=start_pos,
        end_lsn=end_lsn,
        end_pos=end_pos,
        history=[tuple(h) for h in history],
        trunc_lsn=trunc_lsn,
        trunc_end_pos=trunc_end_pos,
        generation=generation,
        version=version,
        clean=bool(flags & SB_CLEAN),
    )


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """A record header whose own CRC (hdr_crc) checked out; the data may still be torn."""

    type: int
    epoch: int
    lsn: int
    offset: int
    length: int
    committed_lsn: int
    log_id: int
    crc: int

    @property
    def size(self) -> int:
        return record_size(self.length) if self.type == TYPE_DATA else WRAP_SIZE


def pack_header(
    rtype: int,
    epoch: int,
    lsn: int,
    offset: int,
    length: int,
    committed_lsn: int,
    log_id: int,
    data_crc: int,
) -> bytes:
    """The 64-byte header. ``data_crc`` is CRC32C(data), computed by the appender beforehand.

    The record CRC is CRC32C(data || header[0:56]): data first so the expensive part can be
    computed by each appender in parallel before the committer knows ``committed_lsn``.
    """
    head = _HDR_HEAD.pack(REC_MAGIC, rtype, 0, epoch, lsn, offset, length, 0, committed_lsn, log_id)
    head += _U32.pack(crc32c(head, data_crc))
    return head + _U32.pack(crc32c(head))


def parse_header(buf: bytes | memoryview) -> RecordHeader | None:
    """Decode a header, or None if it is not one (zeros, garbage, torn, stale format)."""
    if len(buf) < HEADER_SIZE or bytes(buf[:4]) != REC_MAGIC:
        return None
    (_m, rtype, _flags, epoch, lsn, offset, length, _r, committed, log_id, crc, hcrc) = (
        _HDR.unpack_from(buf, 0)
    )
    if crc32c(bytes(buf[:_HDR_HCRC_SPAN])) != hcrc or rtype not in (TYPE_DATA, TYPE_WRAP):
        return None
    return RecordHeader(rtype, epoch, lsn, offset, length, committed, log_id, crc)


def check_data_record(
    buf: memoryview, at: int, lsn: int, length: int, log_id: int
) -> tuple[int, int, int] | None:
    """(epoch, offset, data CRC) of the data record at ``buf[at:]`` if it is ``lsn`` of log
    ``log_id`` with ``length`` data bytes and both its CRCs hold, else None: what
    parse_header and data_matches say together, without their copies and objects (a
    catch-up reads tens of thousands of records a second through this)."""
    end = at + HEADER_SIZE + length
    if len(buf) < end:
        return None
    (magic, rtype, _f, epoch, hlsn, offset, hlen, _r, _c, hlog, crc, hcrc) = _HDR.unpack_from(
        buf, at
    )
    if (
        magic != REC_MAGIC
        or rtype != TYPE_DATA
        or hlsn != lsn
        or hlen != length
        or hlog != log_id
        or crc32c(buf[at : at + _HDR_HCRC_SPAN]) != hcrc
    ):
        return None
    data_crc = crc32c(buf[at + HEADER_SIZE : end])
    if crc32c(buf[at : at + _HDR_CRC_SPAN], data_crc) != crc:
        return None
    return epoch, offset, data_crc


def data_matches(
    hdr: RecordHeader, header_bytes: bytes | memoryview, data: bytes | memoryview
) -> bool:
    """Whether the record CRC covers exactly these data bytes (detects torn/flipped data)."""
    if len(data) != hdr.length:
        return False
    return crc32c(bytes(header_bytes[:_HDR_CRC_SPAN]), crc32c(data)) == hdr.crc
