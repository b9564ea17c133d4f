"""Tests for replengine.storage.volume: bounds-checked apply/read, flush, and sparse-aware checksums."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from replengine.errors import VolumeError
from replengine.log.record import Record
from replengine.storage import volume as volmod
from replengine.storage.volume import Volume, VolumeChecksum, chunk_digest, diff

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def make_file(path: Path, size: int, content: dict[int, bytes] | None = None) -> Path:
    """A sparse file of `size` bytes with `content` written at the given offsets."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in (content or {}).items():
            f.seek(off)
            f.write(data)
    return path


def supports_seek_data(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
        return True
    except OSError as e:
        return e.errno == errno.ENXIO  # ENXIO: supported, just no data
    finally:
        os.close(fd)


class PreadCounter:
    """Wraps os.pread to count how many bytes the checksum actually reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        self.calls = 0
        real = os.pread

        def pread(fd: int, n: int, off: int) -> bytes:
            self.calls += 1
            b = real(fd, n, off)
            self.bytes += len(b)
            return b

        monkeypatch.setattr(volmod.os, "pread", pread)


# --------------------------------------------------------------------------- open


def test_open_reports_size_and_kind(tmp_path: Path) -> None:
    p = make_file(tmp_path / "v", 3 * MiB + 17)
    with Volume(p) as v:
        assert v.size == 3 * MiB + 17
        assert not v.is_block_device and not v.readonly
    assert v.closed


def test_open_missing_names_path(tmp_path: Path) -> None:
    p = tmp_path / "nope"
    with pytest.raises(VolumeError, match="does not exist") as ei:
        Volume(p)
    assert str(p) in str(ei.value)


def test_open_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="not a regular file or block device") as ei:
        Volume(tmp_path)
    assert str(tmp_path) in str(ei.value) and "a directory" in str(ei.value)


def test_open_fifo_refused_without_blocking(tmp_path: Path) -> None:
    p = tmp_path / "fifo"
    os.mkfifo(p)
    with pytest.raises(VolumeError, match="a FIFO"):
        Volume(p, readonly=True)  # an O_RDONLY open of a FIFO would hang: never attempted


def test_open_zero_size_refused(tmp_path: Path) -> None:
    p = make_file(tmp_path / "empty", 0)
    with pytest.raises(VolumeError, match="size 0") as ei:
        Volume(p)
    assert str(p) in str(ei.value)


# --------------------------------------------------------------------------- I/O


def test_apply_then_read(tmp_path: Path) -> None:
    p = make_file(tmp_path / "v", 64 * KiB)
    with Volume(p) as v:
        v.apply(Record(lsn=1, epoch=1, offset=0, data=b"A" * 4096))
        v.apply(Record(lsn=2, epoch=1, offset=4096 - 2, data=b"BCDE"))
        v.apply(Record(lsn=3, epoch=1, offset=64 * KiB - 3, data=b"end"))
        assert v.read(4090, 10) == b"AAAABCDE\0\0"
        assert v.read(64 * KiB - 3, 3) == b"end"
        assert v.read(0, 0) == b""
    raw = p.read_bytes()
    assert raw[:4094] == b"A" * 4094 and raw[4094:4098] == b"BCDE" and raw[-3:] == b"end"


def test_later_record_overwrites_earlier(tmp_path: Path) -> None:
    p = make_file(tmp_path / "v", 8 * KiB)
    with Volume(p) as v:
        v.apply(Record(1, 1, 100, b"old-data"))
        v.apply(Record(2, 1, 104, b"NEW"))
        assert v.read(100, 8) == b"old-NEWa"


def test_write_accepts_buffers(tmp_path: Path) -> None:
    p = make_file(tmp_path / "v", 8 * KiB)
    with Volume(p) as v:
        v.write(10, bytearray(b"xy"))
        v.write(12, memoryview(b"zw"))
        assert v.read(10, 4) == b"xyzw"


@pytest.mark.parametrize("offset,length", [(8 * KiB - 3, 4), (8 * KiB, 1), (-1, 2), (1 << 40, 1)])
def test_apply_out_of_bounds_writes_nothing(tmp_path: Path, offset: int, length: int) -> None:
    p = make_file(tmp_path / "v", 8 * KiB, {0: b"keep"})
    before = p.read_bytes()
    with Volume(p) as v:
        with pytest.raises(VolumeError) as ei:
            v.apply(Record(lsn=77, epoch=2, offset=offset, data=b"Z" * length))
    msg = str(ei.value)
    for part in ("LSN 77", f"offset {offset}", f"length {length}", f"size {8 * KiB}", str(p)):
        assert part in msg, msg
    assert p.read_bytes() == before
    assert os.path.getsize(p) == 8 * KiB


def test_write_out_of_bounds_writes_nothing(tmp_path: Path) -> None:
    p = make_file(tmp_path / "v", 8 * KiB)
    with Volume(p) as v, pytest.raises(VolumeError, match=r"offset 8190, length 4 .* size 8192"):
        v.write(8190, b"1234")
    assert p.read_bytes() == bytes(8 * KiB)


@pytest.mark.parametrize("offset,length", [(8 * KiB - 1, 2), (-1, 1), (0, -1), (8 * KiB + 1, 0)])
def test_read_out_of_bounds(tmp_path: Path, offset: int, length: int) -> None:
    p = make_file(tmp_path / "v", 8 * KiB)
    with Volume(p) as v, pytest.raises(VolumeError, match="outside volume"):
        v.read(offset, length)


def test_readonly_refuses_writes(tmp_path: Path) -> None:
    p = make_file(tmp_path / "v", 8 * KiB, {0: b"data"})
    with Volume(p, readonly=True) as v:
        assert v.read(0, 4) == b"data"
        with pytest.raises(VolumeError, match="read-only"):
            v.apply(Record(1, 1, 0, b"x"))
    assert p.read_bytes()[:4] == b"data"


def test_flush_fdatasyncs_the_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = make_file(tmp_path / "v", 8 * KiB)
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(volmod.os, "fdatasync", fdatasync)
    with Volume(p) as v:
        v.apply(Record(1, 1, 0, b"durable"))
        assert synced == []
        v.flush()
        assert synced == [v.fileno()]


def test_flush_error_becomes_volume_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(volmod.os, "fdatasync", fdatasync)
    p = make_file(tmp_path / "v", 8 * KiB)
    with Volume(p) as v, pytest.raises(VolumeError, match="fdatasync.*Input/output error"):
        v.flush()


def cached_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (fincore(1), util-linux: mincore(2))."""
    out = subprocess.run(
        ["fincore", "--raw", "--noheadings", "--output", "PAGES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def uncached_file(path: Path, size: int) -> Path:
    """Random data, on disk and out of the page cache (or the test is skipped)."""
    path.write_bytes(os.urandom(size))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if cached_pages(path):
        pytest.skip(f"the page cache of {path} cannot be dropped on this file system")
    return path


SCAN = 64 * MiB


def test_a_scans_reads_leave_the_page_cache(tmp_path: Path) -> None:
    """A copy's or a checksum's pass over the volume must not leave it cached in large
    folios: 4 KiB writes into them cost the kernel several times more (Volume.drop_cached)."""
    p = uncached_file(tmp_path / "v", SCAN)  # long enough for readahead to reach 2 MiB folios
    with Volume(p) as v:
        for off in range(0, SCAN, MiB):
            v.read(off, MiB)
        assert cached_pages(p) == SCAN // (4 * KiB)  # an ordinary read stays cached
        v.drop_cached(0, SCAN)
        assert cached_pages(p) == 0
        for off in range(0, SCAN, MiB):
            v.read(off, MiB, once=True)
        assert cached_pages(p) == 0  # readahead past each read went at the next one
        v.checksum()
        assert cached_pages(p) == 0


def test_flush_drops_large_records_and_keeps_small_ones(tmp_path: Path) -> None:
    p = uncached_file(tmp_path / "v", 8 * MiB)
    with Volume(p) as v:
        v.apply(Record(1, 1, 0, os.urandom(volmod.LARGE_WRITE)))
        v.apply(Record(2, 1, 2 * MiB, os.urandom(MiB)))
        v.apply(Record(3, 1, 5 * MiB, os.urandom(4 * KiB)))
        assert cached_pages(p) == volmod.LARGE_WRITE // (4 * KiB) + 256 + 1
        v.flush()
        assert cached_pages(p) == 1  # the 4 KiB record's page: small writes find it
        assert v.read(2 * MiB, 4) == p.read_bytes()[2 * MiB : 2 * MiB + 4]


def test_large_records_awaiting_a_flush_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose clears wait long (a lone primary) does not grow a list per record."""
    monkeypatch.setattr(volmod, "LARGE_KEPT", 4)
    p = make_file(tmp_path / "v", 8 * MiB)
    with Volume(p) as v:
        for i in range(6):
            v.apply(Record(i + 1, 1, i * MiB, bytes(volmod.LARGE_WRITE)))
        assert len(v._large) == 4
        v.flush()
        assert not v._large


def test_closed_volume_refuses_io(tmp_path: Path) -> None:
    v = Volume(make_file(tmp_path / "v", 8 * KiB))
    v.close()
    v.close()  # idempotent
    for op in (lambda: v.read(0, 1), v.flush, lambda: v.apply(Record(1, 1, 0, b"x")), v.checksum):
        with pytest.raises(VolumeError, match="closed"):
            op()


# --------------------------------------------------------------------------- checksums


def test_checksum_equal_for_equal_content_sparse_or_not(tmp_path: Path) -> None:
    content = {0: b"hello", 3 * MiB + 5: b"world"}
    a = make_file(tmp_path / "a", 4 * MiB, content)
    b = tmp_path / "b"  # same bytes, fully allocated (no holes)
    b.write_bytes(a.read_bytes())
    with Volume(a) as va, Volume(b) as vb:
        ca, cb = va.checksum(), vb.checksum()
    assert ca == cb
    assert ca.size == 4 * MiB and ca.chunk_size == MiB and len(ca.chunks) == 4
    assert ca.chunks[0] == chunk_digest(a.read_bytes()[:MiB])
    assert diff(ca, cb) == []


def test_checksum_diff_reports_differing_chunk(tmp_path: Path) -> None:
    a = make_file(tmp_path / "a", 4 * MiB, {0: b"same"})
    b = make_file(tmp_path / "b", 4 * MiB, {0: b"same", 2 * MiB + 100: b"x"})
    with Volume(a) as va, Volume(b) as vb:
        ca, cb = va.checksum(), vb.checksum()
        assert ca.digest != cb.digest
        assert diff(ca, cb) == [(2 * MiB, 3 * MiB)]
        assert ca.diff(cb) == diff(cb, ca)
        # smaller chunks narrow the range down
        assert diff(va.checksum(64 * KiB), vb.checksum(64 * KiB)) == [(2 * MiB, 2 * MiB + 64 * KiB)]


def test_diff_merges_adjacent_chunks_and_covers_size_change() -> None:
    z = "0" * 32

    def cs(chunks: list[str], size: int) -> VolumeChecksum:
        return VolumeChecksum(digest="d", chunks=chunks, chunk_size=10, size=size)

    a = cs([z, "a", "b", z, "c"], 45)
    b = cs([z, "x", "y", z, "c", "extra"], 55)
    assert diff(a, b) == [(10, 30), (50, 55)]
    with pytest.raises(VolumeError, match="different chunk sizes"):
        diff(a, VolumeChecksum("d", [], 20, 0))


def test_checksum_differs_when_sizes_differ(tmp_path: Path) -> None:
    a = make_file(tmp_path / "a", 2 * MiB)
    b = make_file(tmp_path / "b", 2 * MiB + 4096)
    with Volume(a) as va, Volume(b) as vb:
        ca, cb = va.checksum(), vb.checksum()
    assert ca.digest != cb.digest
    assert diff(ca, cb) == [(2 * MiB, 2 * MiB + 4096)]


def test_checksum_partial_last_chunk(tmp_path: Path) -> None:
    size = 2 * MiB + 1000
    hole = make_file(tmp_path / "hole", size)
    data = make_file(tmp_path / "data", size, {size - 1: b"\x01"})
    with Volume(hole) as vh, Volume(data) as vd:
        ch, cd = vh.checksum(), vd.checksum()
    assert len(ch.chunks) == 3
    assert ch.chunks[2] == chunk_digest(bytes(1000))
    assert cd.chunks[2] == chunk_digest(bytes(999) + b"\x01")
    assert diff(ch, cd) == [(2 * MiB, size)]


def test_checksum_sparse_64gib_is_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = 64 * GiB
    content = {0: b"boot", 40 * GiB + 5: b"middle", size - 3: b"end"}
    p = make_file(tmp_path / "big", size, content)
    if not supports_seek_data(p):
        pytest.skip(f"filesystem of {tmp_path} has no SEEK_DATA support")
    reads = PreadCounter(monkeypatch)
    with Volume(p, readonly=True) as v:
        t0 = time.monotonic()
        cs = v.checksum()
        elapsed = time.monotonic() - t0
    assert len(cs.chunks) == size // MiB
    # only the three chunks holding data were read (a filesystem may report a little more
    # as data around each write, but never more than a block per write)
    assert reads.bytes <= 3 * MiB + 3 * 64 * KiB, reads.bytes
    zero = chunk_digest(bytes(MiB))
    data_chunks = {0: b"boot", (40 * GiB) // MiB: b"\0" * 5 + b"middle", size // MiB - 1: None}
    for i, c in enumerate(cs.chunks):
        if i not in data_chunks:
            assert c == zero, i
    assert cs.chunks[0] == chunk_digest(b"boot" + bytes(MiB - 4))
    assert cs.chunks[40 * 1024] == chunk_digest(bytes(5) + b"middle" + bytes(MiB - 11))
    assert cs.chunks[-1] == chunk_digest(bytes(MiB - 3) + b"end")
    assert elapsed < 5.0, f"sparse checksum took {elapsed:.2f}s"


def test_checksum_without_seek_data_reads_everything_same_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block devices and some filesystems lack SEEK_DATA: the fallback must agree exactly."""
    p = make_file(tmp_path / "v", 5 * MiB + 123, {MiB + 1: b"abc", 5 * MiB: b"tail"})
    with Volume(p) as v:
        sparse = v.checksum()
    real_lseek = os.lseek

    def lseek(fd: int, pos: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(volmod.os, "lseek", lseek)
    reads = PreadCounter(monkeypatch)
    with Volume(p) as v:
        dense = v.checksum()
    assert reads.bytes == 5 * MiB + 123
    assert dense == sparse


def test_checksum_progress(tmp_path: Path) -> None:
    p = make_file(tmp_path / "v", 3 * MiB + 1, {MiB: b"x"})
    seen: list[tuple[int, int]] = []
    with Volume(p) as v:
        v.checksum(progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (3 * MiB + 1, 3 * MiB + 1)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_checksum_rejects_bad_chunk(tmp_path: Path) -> None:
    with Volume(make_file(tmp_path / "v", 4096)) as v, pytest.raises(VolumeError, match="chunk"):
        v.checksum(0)


# --------------------------------------------------------------------------- block device


def _losetup(path: Path) -> str:
    try:
        out = subprocess.run(
            ["losetup", "-f", "--show", str(path)], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"losetup unavailable: {e}")
    if out.returncode != 0:
        pytest.skip(f"losetup failed (no loop device support here?): {out.stderr.strip()}")
    return out.stdout.strip()


def test_loop_device_volume(tmp_path: Path) -> None:
    backing = make_file(tmp_path / "backing.img", 4 * MiB, {MiB: b"before"})
    dev = _losetup(backing)
    try:
        with Volume(dev) as v:
            assert v.is_block_device
            assert v.size == 4 * MiB  # lseek(SEEK_END) sizes block devices too
            assert v.read(MiB, 6) == b"before"
            v.apply(Record(lsn=1, epoch=1, offset=2 * MiB, data=b"via-loop" * 512))
            v.flush()
            with pytest.raises(VolumeError, match="LSN 2"):
                v.apply(Record(lsn=2, epoch=1, offset=4 * MiB - 1, data=b"xx"))
            dev_cs = v.checksum()
        assert backing.read_bytes()[2 * MiB : 2 * MiB + 8] == b"via-loop"
        with Volume(backing, readonly=True) as f:
            assert f.checksum() == dev_cs  # device (read all) and sparse file agree
        with Volume(dev, exclusive=True):
            with pytest.raises(VolumeError, match="in use"):
                Volume(dev, exclusive=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False, timeout=30)


def test_is_hole_only_where_nothing_is_stored(tmp_path: Path) -> None:
    """A blank sparse volume's checksum pass reads nothing: is_hole says where no data is
    stored, and never says so of written bytes (a wrong 'hole' would skip a differing chunk)."""
    mib = 1 << 20
    p = make_file(tmp_path / "v.img", 8 * mib, {3 * mib: b"x" * 4096})
    if not supports_seek_data(p):
        pytest.skip("this file system has no SEEK_DATA")
    with Volume(p) as v:
        assert v.is_hole(0, mib) and v.is_hole(6 * mib, 2 * mib)
        assert not v.is_hole(3 * mib, mib) and not v.is_hole(2 * mib, 2 * mib)
        assert v.read(0, mib) == bytes(mib)
