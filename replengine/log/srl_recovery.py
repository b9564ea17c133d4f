"""Bringing an SRL device into a known state: formatting it at create, and at open deciding
which superblock copy to trust, where the log ends, and whether a bad record there is a torn
tail (dropped) or corruption in the middle (SRLCorruptError).

The rules are docs/srl-format.md, "Superblock" and "Recovery". ``format_log`` writes both
copies; otherwise everything here only reads: ``choose_superblock`` picks the copy,
``scan_log`` rebuilds the index and says where the log ends and which stale headers must be
erased; srl.py then erases them, syncs and writes the superblock.
"""

from __future__ import annotations

import os
import stat
import uuid as uuid_mod
from dataclasses import dataclass, replace
from pathlib import Path

from replengine.errors import SRLCorruptError, SRLError
from replengine.log.srl_format import (
    AREA_OFFSET,
    BLOCK,
    FORMAT_VERSION,
    HEADER_SIZE,
    MIN_AREA_SIZE,
    REC_ALIGN,
    SB_COPIES,
    SB_SIZE,
    TYPE_DATA,
    TYPE_WRAP,
    RecordHeader,
    Superblock,
    data_matches,
    has_sb_magic,
    parse_header,
    record_size,
    unpack_superblock,
)
from replengine.log.srl_io import Index, new_log_id, pread_all

__all__ = [
    "MIN_SRL_SIZE",
    "SCAN_WINDOW",
    "Recovered",
    "choose_superblock",
    "format_log",
    "is_initialised",
    "scan_log",
]

#: Smallest device/file accepted: both superblock copies plus 1 MiB of circular area.
MIN_SRL_SIZE = AREA_OFFSET + MIN_AREA_SIZE

#: How far recovery looks past the first bad header for evidence that it was durable. Must
#: exceed everything that can be unsynced at a crash (srl.MAX_INFLIGHT_BYTES, plus one
#: wasted tail smaller than that).
SCAN_WINDOW = 64 << 20
_SCAN_CHUNK = 1 << 20


def format_log(
    path: Path,
    fd: int,
    *,
    resource: str,
    uuid: uuid_mod.UUID,
    node: str,
    force: bool,
    size: int | None,
) -> Superblock:
    """Write an empty log (start = end = LSN 1) into both superblock copies and fsync; the
    result is the copy in slot 1. ``size`` grows a regular file first. Refuses a device that
    already holds an SRL unless ``force``: overwriting one throws away records a peer may
    still need."""
    if size is not None and stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_size < size:
        os.ftruncate(fd, size)
    dev_size = os.lseek(fd, 0, os.SEEK_END)
    if dev_size < MIN_SRL_SIZE:
        raise SRLError(
            f"{path}: {dev_size} bytes is too small for an SRL; need at "
            f"least {MIN_SRL_SIZE} (1 MiB log area + 8 KiB superblocks)"
        )
    old = [pread_all(fd, SB_SIZE, i * SB_SIZE) for i in range(SB_COPIES)]
    if not force and any(has_sb_magic(b) for b in old):
        desc = next(
            (
                f" (resource {s.resource!r}, node {s.node!r})"
                for s in map(unpack_superblock, old)
                if s
            ),
            "",
        )
        raise SRLError(
            f"{path} already holds an SRL{desc}; use --force to overwrite it (its records are lost)"
        )
    if stat.S_ISREG(os.fstat(fd).st_mode):
        fill_holes(path, fd, AREA_OFFSET, (dev_size - AREA_OFFSET) // BLOCK * BLOCK)
    gen = max((s.generation for s in map(unpack_superblock, old) if s), default=0)
    sb = Superblock(
        resource=resource,
        uuid=uuid,
        node=node,
        area_offset=AREA_OFFSET,
        area_size=(dev_size - AREA_OFFSET) // BLOCK * BLOCK,
        log_id=new_log_id(),
        start_lsn=1,
        start_pos=0,
        end_lsn=1,
        end_pos=0,
        history=[],
        generation=gen + 1,
    )
    try:
        copies = [sb, replace(sb, generation=gen + 2)]
        raw = [c.pack() for c in copies]
    except ValueError as exc:
        raise SRLError(f"{path}: {exc}") from None
    for slot, buf in enumerate(raw):
        os.pwrite(fd, buf, slot * SB_SIZE)
    os.fsync(fd)
    return copies[1]


def fill_holes(path: Path, fd: int, start: int, length: int) -> None:
    """Write zeros into the holes of a file SRL's record area, durably. A sparse SRL would
    allocate blocks on its first lap, during appends: more than twice the cost of an append
    into written blocks, and ENOSPC in the middle of replication when the file system fills,
    instead of here, at init, with a clear message."""
    zeros = bytes(1 << 20)
    end = start + length
    pos = start
    try:
        while pos < end:
            try:
                hole = os.lseek(fd, pos, os.SEEK_HOLE)
            except OSError:
                return  # no SEEK_HOLE here: leave it as it is
            if hole >= end:
                break
            try:
                data = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError:
                data = end  # ENXIO: a hole to the end of the file
            stop = min(data, end)
            while hole < stop:
                n = os.pwrite(fd, zeros[: min(len(zeros), stop - hole)], hole)
                hole += n
            pos = stop
        os.fsync(fd)
    except OSError as exc:
        raise SRLError(
            f"{path}: could not allocate the SRL's {length} bytes of log area "
            f"({exc.strerror or exc}); free space on its file system or make the SRL smaller"
        ) from None


def is_initialised(path: str | os.PathLike) -> bool:
    """True if either superblock copy is valid (the device holds an SRL)."""
    try:
        with open(path, "rb") as f:
            bufs = [f.read(SB_SIZE), f.read(SB_SIZE)]
    except OSError:
        return False
    return any(unpack_superblock(b) is not None for b in bufs)


def choose_superblock(path: Path, fd: int) -> tuple[Superblock, int]:
    """Newest valid copy and its slot: copies are written alternately, so a torn write only
    ever damages the older one."""
    dev_size = os.lseek(fd, 0, os.SEEK_END)
    raw = [
        pread_all(fd, SB_SIZE, i * SB_SIZE) if dev_size >= (i + 1) * SB_SIZE else b""
        for i in range(SB_COPIES)
    ]
    found = [(s, i) for i, s in enumerate(map(unpack_superblock, raw)) if s is not None]
    if not found:
        if any(has_sb_magic(b) for b in raw):
            raise SRLCorruptError(
                f"{path}: both SRL superblock copies (bytes 0 and "
                f"{SB_SIZE}) fail their checksum; re-create the SRL and "
                "resync this node"
            )
        raise SRLError(f"{path}: not an initialised SRL (no superblock); create it first")
    sb, slot = max(found, key=lambda f: f[0].generation)
    if sb.version != FORMAT_VERSION:
        raise SRLError(
            f"{path}: SRL format version {sb.version}, this replengine reads version "
            f"{FORMAT_VERSION} only (format 2 packs records on 512-byte boundaries); "
            "nothing was changed. Re-initialise this node's SRL: stop its daemon "
            "('replctl down'), run 'replctl init --force' on it, and start it again: it gets a "
            "full sync from the primary (only differing chunks travel). Do this one node at a "
            "time, secondaries first, then switch the primary over and do the last one"
        )
    if (
        sb.area_offset != AREA_OFFSET
        or sb.area_size < MIN_AREA_SIZE
        or sb.area_size % BLOCK
        or sb.area_offset + sb.area_size > dev_size
    ):
        raise SRLCorruptError(
            f"{path}: superblock describes a log area of {sb.area_size} "
            f"bytes at {sb.area_offset}, device has {dev_size} bytes "
            "(device shrunk or superblock damaged)"
        )
    if sb.start_pos % REC_ALIGN or sb.start_pos >= sb.area_size:
        raise SRLCorruptError(f"{path}: superblock start position {sb.start_pos} is invalid")
    try:
        sb.pack()  # recovery writes it back: its names must be ones a superblock can hold
    except ValueError as exc:
        raise SRLCorruptError(
            f"{path}: superblock copy {slot} is damaged ({exc}); re-create the SRL and "
            "resync this node"
        ) from None
    return sb, slot


@dataclass
class Recovered:
    """Where the log ends, and the stale headers (positions) to erase before it is used.
    ``erase`` is set whenever the caller must erase and sync, even with no positions (an
    interrupted truncate is finished that way)."""

    end_lsn: int
    end_pos: int
    dead: list[int]
    erase: bool


def scan_log(path: Path, fd: int, sb: Superblock, index: Index) -> Recovered:
    """Rebuild ``index`` by scanning from the superblock's start (its end is a hint only) and
    settle the tail: torn (dropped; its headers listed for erasure) or corrupt (raises)."""
    return _Scan(path, fd, sb).run(index)


class _Scan:
    def __init__(self, path: Path, fd: int, sb: Superblock) -> None:
        self.path, self.fd, self.sb = path, fd, sb
        self.cap, self.area_off = sb.area_size, sb.area_offset

    def run(self, index: Index) -> Recovered:
        sb = self.sb
        lsn, pos, used = sb.start_lsn, sb.start_pos, 0
        # closed cleanly: the end is exact, so the scan stops there (SB_CLEAN)
        stop = sb.end_lsn if sb.clean else sb.trunc_lsn
        while lsn != stop:
            found = self._probe(lsn, pos, self.cap - used)
            if found is None:
                break
            rpos, length, consumed = found
            index.add(lsn, rpos, length)
            used += consumed
            lsn, pos = lsn + 1, (rpos + record_size(length)) % self.cap
        if sb.end_lsn > lsn:
            raise SRLCorruptError(
                f"{self.path}: record LSN {lsn} at byte {self.area_off + pos} is missing or "
                f"fails its checksum, but the superblock records LSNs up to {sb.end_lsn - 1} "
                "as durable: the SRL is corrupt; resync this node"
            )
        if sb.trunc_lsn:  # crashed inside truncate(): finish erasing the dead tail
            span = (sb.trunc_end_pos - pos) % self.cap or self.cap
            return Recovered(lsn, pos, self._dead_headers(pos, span, lsn, None)[0], True)
        if sb.clean:  # nothing was in flight at the close: no torn tail to look for
            return Recovered(lsn, pos, [], False)
        dead = self._settle_tail(lsn, pos, used)
        return Recovered(lsn, pos, dead, bool(dead))

    def _read_header(self, pos: int) -> tuple[RecordHeader | None, bytes]:
        raw = pread_all(self.fd, HEADER_SIZE, self.area_off + pos)
        hdr = parse_header(raw)
        if hdr is not None and hdr.log_id != self.sb.log_id:
            hdr = None  # from before a create --force or reset: not ours
        return hdr, raw

    def _probe(self, lsn: int, pos: int, room: int) -> tuple[int, int, int] | None:
        """If a valid record ``lsn`` sits at ``pos`` (or after a WRAP marker there), return
        (record position, data length, bytes consumed incl. wasted tail), else None."""
        hdr, raw = self._read_header(pos)
        waste = 0
        if hdr is not None and hdr.type == TYPE_WRAP and hdr.lsn == lsn and pos != 0:
            waste, pos = self.cap - pos, 0
            hdr, raw = self._read_header(0)
        if hdr is None or hdr.type != TYPE_DATA or hdr.lsn != lsn:
            return None
        size = record_size(hdr.length)
        if pos + size > self.cap or waste + size > room:
            return None
        data = pread_all(self.fd, hdr.length, self.area_off + pos + HEADER_SIZE)
        if not data_matches(hdr, raw, data):
            return None
        return pos, hdr.length, waste + size

    def _settle_tail(self, lsn: int, pos: int, used: int) -> list[int]:
        """The scan stopped at ``lsn`` (position ``pos``): clean end, torn tail or corruption?

        (The superblock's end hint was checked by the caller.) Corruption if a record written
        later says ``lsn`` was durable through its committed_lsn (it was formed after
        ``lsn``'s fdatasync). Otherwise whatever is there was never acknowledged: every
        header of ours with LSN >= lsn in reach is returned for erasure, so a later, shorter
        tail cannot make them valid again.
        """
        free = self.cap - used
        if free <= 0:
            return []
        dead, evidence = self._dead_headers(pos, min(SCAN_WINDOW, free), lsn, lsn)
        if evidence is not None:
            epos, ehdr = evidence
            raise SRLCorruptError(
                f"{self.path}: record LSN {lsn} at byte {self.area_off + pos} is missing or "
                f"fails its checksum, but record LSN {ehdr.lsn} at byte "
                f"{self.area_off + epos} was written after LSN {ehdr.committed_lsn - 1} was "
                "durable: corruption in the middle of the log; resync this node"
            )
        return dead

    def _dead_headers(
        self, pos: int, span: int, min_lsn: int, durable_lsn: int | None
    ) -> tuple[list[int], tuple[int, RecordHeader] | None]:
        """Scan ``span`` bytes from ``pos`` (circularly) at every record boundary (REC_ALIGN)
        for headers of this log with LSN >= min_lsn. Also returns the first whose committed_lsn proves
        ``durable_lsn`` was durable (evidence of corruption), if asked."""
        dead: list[int] = []
        evidence = None
        done = 0
        while done < span:
            start = (pos + done) % self.cap
            n = min(_SCAN_CHUNK, span - done, self.cap - start)
            raw = pread_all(self.fd, n, self.area_off + start)
            buf = memoryview(raw)
            for off in _magic_at_boundaries(raw, n):
                hdr = parse_header(buf[off : off + HEADER_SIZE])
                if hdr is None or hdr.log_id != self.sb.log_id or hdr.lsn < min_lsn:
                    continue
                dead.append(start + off)
                if durable_lsn is not None and evidence is None and hdr.committed_lsn > durable_lsn:
                    evidence = (start + off, hdr)
            done += n
        return dead, evidence


def _magic_at_boundaries(buf: bytes, n: int) -> list[int]:
    """Offsets of a record magic on a record boundary within ``buf[:n]`` (found by
    bytes.find rather than a Python step per boundary: 128 Ki boundaries in a 64 MiB window)."""
    out = []
    i = buf.find(b"RPLR", 0, n)
    while i >= 0:
        if i % REC_ALIGN == 0:
            out.append(i)
            i = buf.find(b"RPLR", i + REC_ALIGN, n)
        else:
            i = buf.find(b"RPLR", i - i % REC_ALIGN + REC_ALIGN, n)
    return out
