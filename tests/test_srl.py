"""SRL: format round trip, wrap-around, full, group commit, recovery, clear/truncate/reset.

Every test uses a real file (or a loop device) and reopens it, because the SRL's whole point is
what survives on disk. Crash tests with a killed process are in test_srl_crash.py.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replengine.errors import SRLCorruptError, SRLError, SRLFullError
from replengine.log import srl_format as fmt
from replengine.log.record import Record
from replengine.log.srl import MIN_SRL_SIZE, SRL

UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")
SMALL = MIN_SRL_SIZE  # 1 MiB area: wraps quickly


def make(path: Path, size: int = 8 << 20, **kw) -> SRL:
    return SRL.create(path, resource="r0", uuid=UUID, node="alpha", size=size, **kw)


def payload(lsn: int, length: int) -> bytes:
    """Deterministic data per LSN, so a record read back can be checked without bookkeeping."""
    return random.Random(lsn * 7919 + length).randbytes(length)


def find_record(path: Path, lsn: int, rtype: int = fmt.TYPE_DATA) -> int:
    """Absolute byte position of the header of record ``lsn`` (independent of SRL internals)."""
    data = Path(path).read_bytes()
    for pos in range(fmt.AREA_OFFSET, len(data), fmt.REC_ALIGN):
        hdr = fmt.parse_header(data[pos : pos + fmt.HEADER_SIZE])
        if hdr is not None and hdr.lsn == lsn and hdr.type == rtype:
            return pos
    raise AssertionError(f"record {lsn} not found")


def flip_bit(path: Path, pos: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ (1 << bit)]))


def header_at(path: Path, pos: int) -> fmt.RecordHeader | None:
    with open(path, "rb") as f:
        f.seek(pos)
        return fmt.parse_header(f.read(fmt.HEADER_SIZE))


# ---------------------------------------------------------------- format round trip


def test_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    lengths = [0, 1, 4032, 4033, 4096, 65536, 100_000, 3]
    with make(p) as srl:
        assert (srl.start_lsn, srl.end_lsn, srl.epoch, srl.history) == (1, 1, 0, [])
        for i, n in enumerate(lengths):
            assert srl.append(7, i * 512, payload(i + 1, n)) == i + 1
        assert srl.end_lsn == len(lengths) + 1
    assert SRL.is_initialised(p)
    with SRL.open(p) as srl:
        assert (srl.resource, srl.uuid, srl.node) == ("r0", UUID, "alpha")
        assert (srl.start_lsn, srl.end_lsn) == (1, len(lengths) + 1)
        got = list(srl.read(1, srl.end_lsn))
        want = [Record(i + 1, 7, i * 512, payload(i + 1, n)) for i, n in enumerate(lengths)]
        assert got == want
        assert srl.get(5) == want[4]
        assert srl.used_bytes == sum(fmt.record_size(n) for n in lengths)
        assert srl.free_bytes == srl.capacity - srl.used_bytes


def test_record_size() -> None:
    assert fmt.record_size(0) == 512
    assert fmt.record_size(512 - 64) == 512
    assert fmt.record_size(512 - 63) == 1024
    # a 4 KiB write costs 4.5 KiB of log (format 1: 8 KiB, its header spilled into a block)
    assert fmt.record_size(4096) == 4608
    assert fmt.record_size(1 << 20) == (1 << 20) + 512


def test_header_and_superblock_layout() -> None:
    hdr = fmt.pack_header(fmt.TYPE_DATA, 3, 42, 8192, 5, 40, 0xABC, 0)
    assert len(hdr) == 64 and hdr[:4] == b"RPLR"
    parsed = fmt.parse_header(hdr)
    assert parsed is not None and (
        parsed.epoch,
        parsed.lsn,
        parsed.offset,
        parsed.length,
        parsed.committed_lsn,
        parsed.log_id,
    ) == (3, 42, 8192, 5, 40, 0xABC)
    assert int.from_bytes(hdr[16:24], "little") == 42  # little-endian LSN at offset 16
    assert fmt.parse_header(hdr[:20] + bytes([hdr[20] ^ 1]) + hdr[21:]) is None  # header CRC
    sb = fmt.Superblock("r0", UUID, "n", 8192, 1 << 20, 5, 1, 0, 1, 0, [(1, 1)], generation=9)
    raw = sb.pack()
    assert len(raw) == 4096 and raw[:8] == b"RPLSRLSB"
    assert fmt.unpack_superblock(raw) == sb
    assert fmt.unpack_superblock(raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]) is None
    assert int.from_bytes(raw[244:248], "little") == 0  # flags: not closed cleanly
    marked = fmt.Superblock("r0", UUID, "n", 8192, 1 << 20, 5, 1, 0, 1, 0, [], clean=True)
    raw = marked.pack()
    assert int.from_bytes(raw[244:248], "little") == fmt.SB_CLEAN
    assert fmt.unpack_superblock(raw) == marked


def test_create_refuses_existing_without_force(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    with make(p) as srl:
        srl.append(1, 0, b"old")
    with pytest.raises(SRLError, match="use --force"):
        make(p)
    with make(p, force=True) as srl:
        assert (srl.start_lsn, srl.end_lsn) == (1, 1)
        srl.append(1, 0, b"x" * 100)  # LSN 1 again: the old LSN 1 must not come back
    with SRL.open(p) as srl:
        assert [r.data for r in srl.read(1, srl.end_lsn)] == [b"x" * 100]


def test_create_too_small_and_open_uninitialised(tmp_path: Path) -> None:
    p = tmp_path / "tiny"
    with pytest.raises(SRLError, match="too small"):
        make(p, size=MIN_SRL_SIZE - 4096)
    assert not SRL.is_initialised(p)
    with pytest.raises(SRLError, match="not an initialised SRL"):
        SRL.open(p)
    with pytest.raises(SRLError, match="does not exist"):
        SRL.open(tmp_path / "missing")
    with pytest.raises(SRLError, match="resource name"):
        SRL.create(tmp_path / "bad", resource="x" * 65, uuid=UUID, node="n", size=SMALL)


def test_open_twice_refused(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    with make(p), pytest.raises(SRLError, match="in use by another process"):
        SRL.open(p)


# ---------------------------------------------------------------- wrap-around and full


def test_wrap_around_many_laps(tmp_path: Path) -> None:
    """Small SRL, random sizes, clears behind the writer; reopen at many points (some right
    across a wrap) and read ranges spanning it."""
    p = tmp_path / "srl"
    rng = random.Random(1)
    srl = make(p, size=SMALL)
    lengths: dict[int, int] = {}
    wraps = 0
    try:
        for step in range(700):
            n = rng.choice([0, 100, 4000, 5000, 20_000, 70_000])
            while srl.free_bytes < srl.record_size(n) + srl.record_size(70_000):
                srl.advance_start(min(srl.end_lsn, srl.start_lsn + rng.randint(1, 4)))
            before = srl._next_pos
            lsn = srl.append(2, step, payload(step, n))
            lengths[lsn] = n
            wraps += srl._next_pos < before
            if step % 37 == 0 or (srl._next_pos < before and step % 3 == 0):
                srl.close()
                srl = SRL.open(p)
            if step % 25 == 0:  # a range from start to end spans the wrap once wrapped
                got = list(srl.read(srl.start_lsn, srl.end_lsn))
                assert [r.lsn for r in got] == list(range(srl.start_lsn, srl.end_lsn))
                assert all(r.data == payload(r.offset, lengths[r.lsn]) for r in got)
        assert wraps >= 10, "test did not wrap often enough"
    finally:
        srl.close()


def test_full_leaves_state_unchanged(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    with make(p, size=SMALL) as srl:
        n = 60_000
        while srl.free_bytes >= srl.record_size(n):
            srl.append(1, 0, payload(srl.end_lsn, n))
        state = (srl.start_lsn, srl.end_lsn, srl.next_lsn, srl.used_bytes, srl.free_bytes)
        with pytest.raises(SRLFullError) as exc:
            srl.append(1, 0, payload(0, n))
        msg = str(exc.value)
        m = re.search(r"needs (\d+) bytes, (\d+) of", msg)
        assert m, msg
        needed, free = int(m[1]), int(m[2])
        assert free == srl.free_bytes < srl.record_size(n) <= needed  # needed counts the tail
        assert f"start LSN {srl.start_lsn}" in msg and f"end LSN {srl.end_lsn}" in msg
        assert (srl.start_lsn, srl.end_lsn, srl.next_lsn, srl.used_bytes, srl.free_bytes) == state
        end = srl.end_lsn
        srl.advance_start(3)
        assert srl.append(1, 0, payload(end, n)) == end  # space freed by the clear is reused
    with SRL.open(p) as srl:
        assert srl.start_lsn == 3 and srl.end_lsn == end + 1


def test_free_space_counts_wasted_tail(tmp_path: Path) -> None:
    with make(tmp_path / "srl", size=SMALL) as srl:
        cap = srl.capacity
        big = 300_000
        srl.append(1, 0, bytes(big))  # 73 blocks
        srl.append(1, 0, bytes(big))
        srl.append(1, 0, bytes(big))  # 3 * 296 KiB = 888 KiB used; 132 KiB tail left
        srl.advance_start(4)  # empty, but positioned near the end
        assert srl.used_bytes == 0
        srl.append(1, 0, bytes(big))  # does not fit in the tail: WRAP, tail is wasted
        tail = cap - 3 * fmt.record_size(big)
        assert srl.used_bytes == tail + fmt.record_size(big)
        assert srl.free_bytes == cap - srl.used_bytes
    with SRL.open(tmp_path / "srl") as srl:  # recovery follows the WRAP marker
        assert srl.end_lsn == 5 and srl.used_bytes == tail + fmt.record_size(big)
        assert srl.get(4).data == bytes(big)


def test_record_larger_than_srl(tmp_path: Path) -> None:
    with make(tmp_path / "srl", size=SMALL) as srl:
        with pytest.raises(SRLError, match="more than the whole SRL"):
            srl.append(1, 0, bytes(2 << 20))
        with pytest.raises(SRLError, match="out of range"):
            srl.append(-1, 0, b"")
        assert srl.end_lsn == 1


# ---------------------------------------------------------------- appends


def test_group_commit_shares_fdatasync(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    threads, per = 8, 150
    results: dict[int, tuple[int, bytes]] = {}
    lock = threading.Lock()
    start = threading.Barrier(threads)
    with make(p, size=32 << 20) as srl:
        syncs0 = srl.stats.syncs

        def writer(t: int) -> None:
            rng = random.Random(t)
            start.wait()
            for i in range(per):
                data = rng.randbytes(rng.choice([10, 500, 4000, 9000]))
                lsn = srl.append(1, t * 1000 + i, data)
                with lock:
                    results[lsn] = (t * 1000 + i, data)

        ts = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        syncs = srl.stats.syncs - syncs0
        appends = threads * per
        assert sorted(results) == list(range(1, appends + 1))
        assert syncs < appends, f"{syncs} fdatasyncs for {appends} appends: no group commit"
    with SRL.open(p) as srl:
        assert srl.end_lsn == appends + 1
        for rec in srl.read(1, srl.end_lsn):
            assert (rec.offset, rec.data) == results[rec.lsn]


def test_append_nowait_and_wait(tmp_path: Path) -> None:
    with make(tmp_path / "srl") as srl:
        pend = [srl.append_nowait(1, i, payload(i, 1000)) for i in range(20)]
        assert [pa.lsn for pa in pend] == list(range(1, 21))
        assert srl.next_lsn == 21
        assert [pa.wait(timeout=30) for pa in pend] == list(range(1, 21))
        assert all(pa.done for pa in pend) and srl.end_lsn == 21
        assert pend[3].wait() == 4  # waiting twice is fine


def test_append_nowait_is_committed_without_a_waiter(tmp_path: Path) -> None:
    """The committer thread makes nowait appends durable even if nobody calls wait()."""
    p = tmp_path / "srl"
    srl = make(p)
    durable = threading.Event()
    real = srl._fdatasync

    def sync() -> None:
        real()
        durable.set()

    srl._fdatasync = sync  # type: ignore[method-assign]
    srl.append_nowait(1, 0, b"abc")
    assert durable.wait(30)
    srl._crash()
    with SRL.open(p) as srl:
        assert srl.get(1).data == b"abc"


def test_append_record_checks_lsn(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    with make(p) as srl:
        srl.reset(10)
        srl.append_record(Record(10, 2, 4096, b"a" * 10))
        with pytest.raises(SRLError, match="record LSN 12 .*expected LSN 11"):
            srl.append_record(Record(12, 2, 0, b"b"))
        assert srl.end_lsn == 11
        srl.append_record_nowait(Record(11, 2, 0, b"b")).wait()
    with SRL.open(p) as srl:
        assert list(srl.read(10, 12)) == [Record(10, 2, 4096, b"a" * 10), Record(11, 2, 0, b"b")]


def test_read_concurrent_with_appends(tmp_path: Path) -> None:
    with make(tmp_path / "srl", size=16 << 20) as srl:
        stop = threading.Event()
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                while not stop.is_set():
                    end = srl.end_lsn
                    for rec in srl.read(srl.start_lsn, end):
                        assert rec.data == payload(rec.lsn, 3000)
            except BaseException as exc:
                errors.append(exc)

        th = threading.Thread(target=reader)
        th.start()
        try:
            for lsn in range(1, 400):
                assert srl.append(1, 0, payload(lsn, 3000)) == lsn
        finally:
            stop.set()
            th.join()
        assert not errors, errors


def test_read_range_errors(tmp_path: Path) -> None:
    with make(tmp_path / "srl") as srl:
        for _ in range(5):
            srl.append(1, 0, b"x")
        srl.advance_start(2)
        with pytest.raises(SRLError, match=r"\[1, 3\).*holds \[2, 6\)"):
            srl.read(1, 3)
        with pytest.raises(SRLError):
            srl.read(2, 7)
        with pytest.raises(SRLError, match="LSN 6 is not in the log"):
            srl.get(6)
        assert list(srl.read(3, 3)) == []
        with pytest.raises(SRLError, match="cannot move start"):
            srl.advance_start(1)
        with pytest.raises(SRLError, match="cannot move start"):
            srl.advance_start(7)


# ---------------------------------------------------------------- recovery


def test_bit_flip_in_middle_is_corruption_on_open(tmp_path: Path) -> None:
    """Later records' committed_lsn proves LSN 5 was durable: a bad CRC there is corruption,
    even without the superblock's end hint (process crashed, superblock not rewritten)."""
    p = tmp_path / "srl"
    srl = make(p)
    for lsn in range(1, 11):
        srl.append(1, 0, payload(lsn, 6000))
    srl._crash()
    flip_bit(p, find_record(p, 5) + fmt.HEADER_SIZE + 3000, 4)
    with pytest.raises(SRLCorruptError, match=r"LSN 5 at byte \d+.*LSN 6 at byte") as exc:
        SRL.open(p)
    assert str(p) in str(exc.value)


def test_bit_flip_with_superblock_hint_is_corruption(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    with make(p) as srl:
        for lsn in range(1, 6):
            srl.append(1, 0, payload(lsn, 100))
    flip_bit(p, find_record(p, 5) + fmt.HEADER_SIZE + 50)  # last record, but closed cleanly
    with pytest.raises(SRLCorruptError, match="LSN 5 .*superblock records LSNs up to 5"):
        SRL.open(p)


def newest_superblock(path: Path) -> fmt.Superblock:
    """The copy the next open would take."""
    from replengine.log.srl_recovery import choose_superblock

    with open(path, "rb") as f:
        return choose_superblock(path, f.fileno())[0]


def test_a_clean_close_is_recorded_and_the_next_open_clears_it(tmp_path: Path) -> None:
    """The clean mark lets the next open skip the torn-tail search; it must be gone from disk
    before anything is appended, so a crash after the open gets the whole recovery."""
    p = tmp_path / "srl"
    with make(p) as srl:
        for lsn in range(1, 6):
            srl.append(1, 0, payload(lsn, 5000))
        assert not newest_superblock(p).clean  # open, appending: a crash must scan
    sb = newest_superblock(p)
    assert sb.clean and (sb.end_lsn, sb.start_lsn) == (6, 1)
    srl = SRL.open(p)
    assert not newest_superblock(p).clean and srl.end_lsn == 6
    srl.append(1, 0, payload(6, 5000))
    srl._crash()
    with SRL.open(p) as srl:
        assert srl.end_lsn == 7
        assert [r.data for r in srl.read(1, 7)] == [payload(n, 5000) for n in range(1, 7)]


def test_opening_a_cleanly_closed_log_reads_no_window_past_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a crash, open reads up to 64 MiB past the end looking for a torn tail's headers
    (docs/srl-format.md, Recovery): with a cold page cache, most of a restarted node's start.
    After a clean close nothing can follow the end, so open reads only the live records."""
    from replengine.log import srl_recovery

    read: list[int] = []
    real = srl_recovery.pread_all

    def counting(fd: int, n: int, offset: int) -> bytes:
        read.append(n)
        return real(fd, n, offset)

    monkeypatch.setattr(srl_recovery, "pread_all", counting)
    p = tmp_path / "srl"
    with make(p, size=80 << 20) as srl:
        for lsn in range(1, 11):
            srl.append(1, 0, payload(lsn, 4096))
    read.clear()
    with SRL.open(p) as srl:
        assert srl.end_lsn == 11
    assert sum(read) < 64 << 10, f"a clean open read {sum(read)} bytes"
    srl = SRL.open(p)
    srl.append(1, 0, payload(11, 4096))
    srl._crash()
    read.clear()
    with SRL.open(p) as srl:
        assert srl.end_lsn == 12
    assert sum(read) >= srl_recovery.SCAN_WINDOW, "after a crash the tail must be searched"


def test_a_clean_end_is_exact(tmp_path: Path) -> None:
    """What the clean mark promises: the end it records is the end. (Records past it cannot
    exist, since every write of the superblock after the close clears the mark first; here
    the mark is put back by hand over two durable records, which the open must not take.)"""
    p = tmp_path / "srl"
    with make(p) as srl:
        for lsn in range(1, 4):
            srl.append(1, 0, payload(lsn, 100))
    clean = p.read_bytes()[: fmt.AREA_OFFSET]
    srl = SRL.open(p)
    srl.append(1, 0, payload(4, 100))
    srl.append(1, 0, payload(5, 100))
    srl._crash()
    with open(p, "r+b") as f:
        f.write(clean)
    with SRL.open(p) as srl:
        assert srl.end_lsn == 4
    flip_bit(p, find_record(p, 2) + fmt.HEADER_SIZE + 10)  # and a bad record inside it
    with pytest.raises(SRLCorruptError, match="LSN 2 .*superblock records LSNs up to 3"):
        SRL.open(p)


def test_bit_flip_found_by_read(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    with make(p) as srl:
        for lsn in range(1, 6):
            srl.append(1, 0, payload(lsn, 100))
        pos = find_record(p, 3)
        flip_bit(p, pos + fmt.HEADER_SIZE + 7)
        with pytest.raises(SRLCorruptError, match=f"LSN 3 at byte {pos}"):
            list(srl.read(1, 6))


def test_bit_flip_in_last_record_is_torn_tail(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    srl = make(p)
    for lsn in range(1, 11):
        srl.append(1, 0, payload(lsn, 6000))
    srl._crash()
    pos = find_record(p, 10)
    flip_bit(p, pos + fmt.HEADER_SIZE + 100)
    with SRL.open(p) as srl:
        assert srl.end_lsn == 10
        assert header_at(p, pos) is None  # erased: cannot come back later
        assert srl.append(1, 0, b"new") == 10
    with SRL.open(p) as srl:
        assert srl.end_lsn == 11 and srl.get(10).data == b"new"
        assert [r.data for r in srl.read(1, 10)] == [payload(n, 6000) for n in range(1, 10)]


def _one_batch_of_three(p: Path) -> SRL:
    """LSN 1 alone, then LSNs 2-4 queued while LSN 1's fdatasync is held: one batch."""
    srl = make(p)
    release, in_sync = threading.Event(), threading.Event()
    real = srl._fdatasync

    def held_sync() -> None:
        in_sync.set()
        assert release.wait(30)
        real()

    srl._fdatasync = held_sync  # type: ignore[method-assign]
    first = srl.append_nowait(1, 0, payload(1, 5000))
    assert in_sync.wait(30)
    rest = [srl.append_nowait(1, 0, payload(n, 5000)) for n in (2, 3, 4)]
    release.set()
    for pa in (first, *rest):
        pa.wait(30)
    assert srl.stats.batches == 2
    srl._crash()
    return srl


def test_torn_first_record_of_last_batch_drops_batch(tmp_path: Path) -> None:
    """Records 3 and 4 are intact but belong to the unsynced batch of record 2 (their
    committed_lsn is 2): torn tail, all three dropped and their headers erased so a later
    shorter tail cannot resurrect them."""
    p = tmp_path / "srl"
    _one_batch_of_three(p)
    positions = [find_record(p, n) for n in (2, 3, 4)]
    assert {header_at(p, q).committed_lsn for q in positions} == {2}  # type: ignore[union-attr]
    flip_bit(p, positions[0] + fmt.HEADER_SIZE + 1)
    with SRL.open(p) as srl:
        assert srl.end_lsn == 2
        assert all(header_at(p, q) is None for q in positions)
        assert srl.append(1, 0, payload(2, 5000)) == 2  # same size: same place as before
    with SRL.open(p) as srl:
        assert srl.end_lsn == 3


def test_flip_in_earlier_batch_is_corruption(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    _one_batch_of_three(p)
    flip_bit(p, find_record(p, 1) + fmt.HEADER_SIZE + 1)
    with pytest.raises(SRLCorruptError, match="LSN 1 .*committed|LSN 1 .*durable"):
        SRL.open(p)


def test_zeroed_header_in_middle_is_corruption(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    srl = make(p)
    for lsn in range(1, 8):
        srl.append(1, 0, payload(lsn, 10))
    srl._crash()
    with open(p, "r+b") as f:
        f.seek(find_record(p, 4))
        f.write(bytes(64))
    with pytest.raises(SRLCorruptError, match="LSN 4"):
        SRL.open(p)


@pytest.mark.parametrize("slot", [0, 1])
def test_zeroed_superblock_copy_recovers_from_other(tmp_path: Path, slot: int) -> None:
    p = tmp_path / "srl"
    with make(p) as srl:
        for lsn in range(1, 6):
            srl.append(1, 0, payload(lsn, 100))
        srl.advance_start(3)
        srl.add_epoch(4, 3)
    with open(p, "r+b") as f:
        f.seek(slot * fmt.SB_SIZE)
        f.write(bytes(fmt.SB_SIZE))
    with SRL.open(p) as srl:
        # the copy written last may be the zeroed one: the other is one step older, and
        # its start/history are still right because they were written before it
        assert srl.start_lsn == 3 and srl.end_lsn == 6 and srl.history == [(4, 3)]
        assert [r.data for r in srl.read(3, 6)] == [payload(n, 100) for n in (3, 4, 5)]
    raw = p.read_bytes()
    assert all(fmt.unpack_superblock(raw[i * 4096 : (i + 1) * 4096]) for i in (0, 1))


def test_a_4k_write_costs_4_5_kib_of_log(tmp_path: Path) -> None:
    """Format 2: a 4 KiB record takes 4608 bytes of log (format 1 took 8192), and 4 KiB
    records written back to back all read back after a reopen, each on its 512-byte slot."""
    p = tmp_path / "srl"
    with make(p) as srl:
        for i in range(100):
            srl.append(1, i * 4096, payload(i, 4096))
        assert srl.used_bytes == 100 * 4608
    with SRL.open(p) as srl:
        assert srl.end_lsn == 101
        got = list(srl.read(1, 101))
        assert [r.data for r in got] == [payload(i, 4096) for i in range(100)]
    assert find_record(p, 2) - find_record(p, 1) == 4608


def test_get_many_reads_back_to_back_records_and_stops_at_a_wrap(tmp_path: Path) -> None:
    """Catch-up's batched read: the records asked for, in order, verified; never past a wrap
    (they are not back to back there) nor far past ``max_bytes``; a flipped bit is corruption."""
    p = tmp_path / "srl"
    with make(p, size=SMALL) as srl:
        lsns = []
        while srl._next_pos + fmt.record_size(20_000) <= srl._cap:  # fill up to the wrap
            lsns.append(srl.append(1, len(lsns), payload(len(lsns), 20_000)))
        last = lsns[-1]
        srl.advance_start(last - 2)
        wrapped = srl.append(1, len(lsns), payload(len(lsns), 20_000))  # at position 0
        got = srl.get_many(last - 2, wrapped + 1, 1 << 20)
        assert [r.lsn for r in got] == [last - 2, last - 1, last]  # stops at the wrap
        assert [bytes(r.data) for r in got] == [payload(r.offset, 20_000) for r in got]
        assert [r.lsn for r in srl.get_many(wrapped, wrapped + 1, 1 << 20)] == [wrapped]
        assert [r.lsn for r in srl.get_many(last - 2, wrapped, 30_000)] == [last - 2]
        flip_bit(p, find_record(p, last - 1) + fmt.HEADER_SIZE + 100)  # under the open log
        with pytest.raises(SRLCorruptError, match=f"record LSN {last - 1} at byte"):
            srl.get_many(last - 2, wrapped + 1, 1 << 20)


def test_create_allocates_a_sparse_file_log(tmp_path: Path) -> None:
    """A sparse file gets its record area written at create (no block allocation during
    appends, no ENOSPC in the middle of replication)."""
    p = tmp_path / "srl"
    with open(p, "wb") as f:
        f.truncate(8 << 20)
    assert os.stat(p).st_blocks * 512 < 1 << 20
    make(p, size=8 << 20).close()
    assert os.stat(p).st_blocks * 512 >= 8 << 20


def test_create_on_a_full_file_system_says_so(tmp_path: Path) -> None:
    """A sparse 8 MiB SRL on a 4 MiB file system: init fails, naming the cause, instead of a
    node failing once its log reaches the missing blocks."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        p = mnt / "srl"
        with open(p, "wb") as f:
            f.truncate(8 << 20)
        with pytest.raises(SRLError, match="could not allocate the SRL's .* free space"):
            make(p, size=8 << 20)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_format_1_srl_is_refused_saying_how_to_reinitialise(tmp_path: Path) -> None:
    """An SRL written by a replengine of format 1 is not misread: open refuses it with what to
    do, and its bytes stay as they were."""
    p = tmp_path / "srl"
    with make(p) as srl:
        srl.append(1, 0, b"x" * 100)
    raw = bytearray(p.read_bytes())
    for i in (0, 1):
        sb = fmt.unpack_superblock(bytes(raw[i * 4096 : (i + 1) * 4096]))
        assert sb is not None
        sb.version = 1
        raw[i * 4096 : (i + 1) * 4096] = sb.pack()
    p.write_bytes(raw)
    with pytest.raises(SRLError) as exc:
        SRL.open(p)
    msg = str(exc.value)
    assert "SRL format version 1, this replengine reads version 2 only" in msg
    assert "replctl init --force" in msg and "nothing was changed" in msg
    assert p.read_bytes() == raw


def test_both_superblocks_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    make(p).close()
    flip_bit(p, 100)
    flip_bit(p, 4096 + 100)
    assert not SRL.is_initialised(p)
    with pytest.raises(SRLCorruptError, match="both SRL superblock copies"):
        SRL.open(p)
    with pytest.raises(SRLError, match="use --force"):
        make(p)


# ---------------------------------------------------------------- truncate, reset, epochs


def test_truncate_persists_and_never_resurrects(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    with make(p, size=SMALL) as srl:
        for lsn in range(1, 30):  # ~ 1.3 laps of the 1 MiB area with clears: wraps
            if srl.free_bytes < 3 * fmt.record_size(50_000):
                srl.advance_start(srl.end_lsn - 3)
            srl.append(1, lsn, payload(lsn, 50_000))
        start = srl.start_lsn
        dropped = srl.truncate(27)
        assert [r.lsn for r in dropped] == [27, 28, 29]
        assert all(r.data == payload(r.lsn, 50_000) for r in dropped)
        assert srl.end_lsn == 27 and srl.truncate(27) == []
    with SRL.open(p) as srl:
        assert (srl.start_lsn, srl.end_lsn) == (start, 27)
        srl.append(1, 0, payload(999, 50_000))  # LSN 27 anew, same size: same position
    with SRL.open(p) as srl:  # old 28, 29 are still valid-looking on disk? must not return
        assert srl.end_lsn == 28 and srl.get(27).data == payload(999, 50_000)
        with pytest.raises(SRLError, match="cannot truncate"):
            srl.truncate(start - 1)


def test_truncating_a_tail_that_fills_the_log_keeps_the_record_after_it(tmp_path: Path) -> None:
    """The dead tail's headers are erased one record boundary each, never a whole block:
    erasing 4 KiB at the last tail record (512 bytes long, right before the start record
    in a full log) wiped the start record's header, and the next open found the SRL
    corrupt. Found by the fault campaign (seed 301 round 4, netns, degrade, srl_full=fail:
    a primary split from its sync secondaries wrote a 147-record tail that filled its SRL,
    was fenced, discarded the tail, was killed; its restart refused the SRL)."""
    p = tmp_path / "srl"
    with make(p, size=SMALL) as srl:
        for lsn in range(1, 15):
            srl.append(1, 0, payload(lsn, 50_000))
        srl.advance_start(10)  # live: 10..14, the start record well inside the area
        first_tail = srl.end_lsn
        while srl.free_bytes >= fmt.record_size(50_000) + fmt.record_size(448):
            srl.append(2, 0, payload(srl.end_lsn, 50_000))  # round the end of the area
        while srl.free_bytes >= fmt.record_size(448):
            srl.append(2, 0, payload(srl.end_lsn, 448))  # 512-byte records up to the start
        assert srl.free_bytes == 0
        dropped = srl.truncate(first_tail)
        assert dropped and dropped[-1].lsn == srl.end_lsn + len(dropped) - 1
    with SRL.open(p) as srl:
        assert (srl.start_lsn, srl.end_lsn) == (10, first_tail)
        for n in range(10, first_tail):
            assert srl.get(n).data == payload(n, 50_000)


def test_truncate_interrupted_is_finished_by_recovery(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    srl = make(p)
    for lsn in range(1, 11):
        srl.append(1, 0, payload(lsn, 8000))

    def crash(positions: list[int]) -> None:
        raise OSError("simulated crash between the superblock write and the erase")

    srl._zero_headers = crash  # type: ignore[method-assign]
    with pytest.raises(OSError):
        srl.truncate(6)
    srl._crash()
    assert header_at(p, find_record(p, 8)) is not None  # still on disk
    with SRL.open(p) as srl:  # no corruption report, and the dead tail is erased
        assert srl.end_lsn == 6
    with pytest.raises(AssertionError):
        find_record(p, 8)


def test_reset_persists(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    with make(p) as srl:
        for lsn in range(1, 6):
            srl.append(1, 0, payload(lsn, 100))
        srl.reset(3)  # backwards: old records 3, 4, 5 must not reappear
        assert (srl.start_lsn, srl.end_lsn, srl.used_bytes) == (3, 3, 0)
    with SRL.open(p) as srl:
        assert (srl.start_lsn, srl.end_lsn) == (3, 3)
        srl.reset(100)
        assert srl.append(1, 0, b"z") == 100
    with SRL.open(p) as srl:
        assert (srl.start_lsn, srl.end_lsn) == (100, 101)
        with pytest.raises(SRLError):
            srl.reset(0)


def test_add_epoch_persists_and_checks(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    with make(p) as srl:
        srl.add_epoch(1, 1)
        srl.append(1, 0, b"a")
        srl.add_epoch(3, 2)
        with pytest.raises(SRLError, match="must exceed the current epoch 3"):
            srl.add_epoch(3, 5)
        with pytest.raises(SRLError, match="before epoch 3"):
            srl.add_epoch(4, 1)
    with SRL.open(p) as srl:
        assert srl.history == [(1, 1), (3, 2)] and srl.epoch == 3


def test_history_limit(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    with make(p) as srl:
        for e in range(1, fmt.MAX_HISTORY + 1):
            srl.add_epoch(e, e)
        assert fmt.MAX_HISTORY >= 128
        with pytest.raises(SRLError, match=f"epoch history is full \\({fmt.MAX_HISTORY}"):
            srl.add_epoch(fmt.MAX_HISTORY + 1, 10_000)
    with SRL.open(p) as srl:
        assert len(srl.history) == fmt.MAX_HISTORY and srl.epoch == fmt.MAX_HISTORY


# ---------------------------------------------------------------- model-based


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(0, 120_000)),
            st.tuples(st.just("clear"), st.integers(0, 5)),
            st.tuples(st.just("truncate"), st.integers(0, 3)),
            st.tuples(st.just("reopen"), st.just(0)),
        ),
        max_size=60,
    )
)
def test_model(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]) -> None:
    """Random appends/clears/truncates/reopens against a dict model of what must be there."""
    p = tmp_path_factory.mktemp("model") / "srl"
    srl = make(p, size=SMALL)
    model: dict[int, bytes] = {}
    start = 1
    try:
        for op, arg in ops:
            end = start + len(model)
            if op == "append":
                data = payload(end, arg)
                try:
                    assert srl.append(1, 0, data) == end
                    model[end] = data
                except SRLFullError:
                    assert srl.free_bytes < srl.record_size(arg)
            elif op == "clear":
                new = min(end, start + arg)
                srl.advance_start(new)
                for lsn in range(start, new):
                    del model[lsn]
                start = new
            elif op == "truncate":
                new = max(start, end - arg)
                assert [r.lsn for r in srl.truncate(new)] == list(range(new, end))
                for lsn in range(new, end):
                    del model[lsn]
            else:
                srl.close()
                srl = SRL.open(p)
            assert (srl.start_lsn, srl.end_lsn) == (start, start + len(model))
        assert {r.lsn: r.data for r in srl.read(srl.start_lsn, srl.end_lsn)} == model
    finally:
        srl.close()


# ---------------------------------------------------------------- block device


@pytest.fixture
def loop_dev(tmp_path: Path) -> Iterator[str]:
    """A 4 MiB loop device over a file, detached at the end."""
    backing = tmp_path / "backing"
    with open(backing, "wb") as f:
        f.truncate(4 << 20)
    try:
        dev = subprocess.run(
            ["losetup", "-f", "--show", str(backing)], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"losetup cannot attach a loop device here: {exc}")
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_loop_device(loop_dev: str) -> None:
    dev = loop_dev
    with SRL.create(dev, resource="r0", uuid=UUID, node="alpha") as srl:
        assert srl.capacity == (4 << 20) - fmt.AREA_OFFSET
        for lsn in range(1, 40):
            if srl.free_bytes < fmt.record_size(300_000):
                srl.advance_start(srl.end_lsn - 2)
            srl.append(1, lsn, payload(lsn, 300_000 if lsn % 2 else 77))
    assert SRL.is_initialised(dev)
    with SRL.open(dev) as srl:
        assert srl.end_lsn == 40
        for rec in srl.read(srl.start_lsn, 40):
            assert rec.data == payload(rec.lsn, 300_000 if rec.lsn % 2 else 77)
    with pytest.raises(SRLError, match="use --force"):
        SRL.create(dev, resource="r0", uuid=UUID, node="alpha")


def test_os_error_fails_pending_appends(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    srl = make(p)
    srl.append(1, 0, b"ok")

    def broken() -> None:
        raise OSError(5, "Input/output error")

    srl._fdatasync = broken  # type: ignore[method-assign]
    with pytest.raises(SRLError, match="writing LSNs 2..2 failed.*reopened"):
        srl.append(1, 0, b"lost")
    with pytest.raises(SRLError, match="failed"):
        srl.append(1, 0, b"refused")
    srl.close()
    with SRL.open(p) as srl:
        assert srl.get(1).data == b"ok"


def test_closed(tmp_path: Path) -> None:
    srl = make(tmp_path / "srl")
    srl.close()
    srl.close()
    with pytest.raises(SRLError, match="closed"):
        srl.append(1, 0, b"")
    assert os.path.exists(tmp_path / "srl")


def test_bytes_between_counts_log_space(tmp_path):
    """Status reports a peer's lag in bytes from this: records' on-disk sizes, wrap included."""
    import uuid as _uuid

    from replengine.log.srl import SRL

    path = tmp_path / "bb.srl"
    path.write_bytes(b"")
    srl = SRL.create(path, resource="r0", uuid=_uuid.uuid4(), node="a", size=(1 << 20) + 8192)
    srl.add_epoch(1, 1)
    for i in range(10):
        srl.append(1, i * 4096, b"x" * 4096)
    assert srl.bytes_between(1, 11) == 10 * srl.record_size(4096)
    assert srl.bytes_between(4, 6) == 2 * srl.record_size(4096)
    assert srl.bytes_between(11, 11) == 0
    srl.advance_start(5)
    assert srl.bytes_between(1, 11) == 6 * srl.record_size(4096)  # cleared ones are gone
    srl.close()


def test_big_batches_overlap_and_a_later_sync_covers_earlier_batches(tmp_path: Path) -> None:
    """Big records do not wait for the sync in flight: a second batch is written meanwhile,
    and its own fdatasync (started after both writes) makes both durable, in LSN order, even
    while the first batch's fdatasync has not returned yet."""
    p = tmp_path / "srl"
    srl = make(p, size=16 << 20)
    release, in_sync = threading.Event(), threading.Event()
    real = srl._fdatasync
    calls = 0

    def first_sync_held() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            in_sync.set()
            assert release.wait(30)
        real()

    srl._fdatasync = first_sync_held  # type: ignore[method-assign]
    big = 300 << 10
    first = srl.append_nowait(1, 0, payload(1, big))
    assert in_sync.wait(30)
    rest = [srl.append_nowait(1, 0, payload(n, big)) for n in (2, 3)]
    for pa in (first, *rest):
        assert pa.wait(30) == pa.lsn  # durable although the first fdatasync is still held
    assert srl.end_lsn == 4 and srl.stats.batches >= 2
    release.set()
    srl._crash()
    with SRL.open(p) as srl:
        assert srl.end_lsn == 4
        assert [r.data for r in srl.read(1, 4)] == [payload(n, big) for n in (1, 2, 3)]


def test_concurrent_big_appends_recover_in_order(tmp_path: Path) -> None:
    p = tmp_path / "srl"
    threads, per = 8, 12
    results: dict[int, bytes] = {}
    lock = threading.Lock()
    with make(p, size=64 << 20) as srl:

        def writer(t: int) -> None:
            rng = random.Random(t)
            for _ in range(per):
                data = rng.randbytes(rng.choice([200_000, 300_000, 1 << 20]))
                lsn = srl.append(1, t, data)
                assert srl.end_lsn > lsn  # durable (and everything before it) on return
                with lock:
                    results[lsn] = data

        ts = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        assert sorted(results) == list(range(1, threads * per + 1))
        assert srl.stats.syncs <= srl.stats.batches  # a batch syncs at most once
    with SRL.open(p) as srl:
        assert [r.data for r in srl.read(1, srl.end_lsn)] == [results[n] for n in sorted(results)]


def test_block_device_srl_waits_out_a_probers_shared_lock(
    loop_dev: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """udevd holds a shared flock on a block device while it probes it (after an attach, or
    when a writer closes it): opening the SRL then must wait, not report it in use. A lock
    held for good (another daemon) is still refused."""
    import fcntl
    import threading

    from replengine.log import srl_io

    dev = loop_dev
    with SRL.create(dev, resource="r0", uuid=UUID, node="alpha"):
        pass
    prober = os.open(dev, os.O_RDONLY)
    fcntl.flock(prober, fcntl.LOCK_SH)
    release = threading.Timer(0.3, lambda: os.close(prober))
    release.start()
    with SRL.open(dev) as srl:  # waited for the prober to let go
        assert srl.end_lsn == 1
    release.join()
    holder = os.open(dev, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_SH)
    monkeypatch.setattr(srl_io, "LOCK_WAIT_S", 0.3)
    try:
        with pytest.raises(SRLError, match="in use by another process"):
            SRL.open(dev)
    finally:
        os.close(holder)


def test_a_batch_of_received_records_is_logged_together_and_survives_a_reopen(
    tmp_path: Path,
) -> None:
    """A secondary's batched append (one UPDATES message): every record durable once the
    last one is, read back the same after a reopen; a batch that is not consecutive, or does
    not follow the log, is refused with nothing queued."""
    p = tmp_path / "srl"
    with make(p) as srl:
        recs = [Record(lsn, 1, lsn * 4096, payload(lsn, 4096)) for lsn in range(1, 41)]
        pending, n = srl.append_records_nowait(recs)
        assert n == 40 and pending is not None and pending.lsn == 40
        pending.wait()
        assert srl.end_lsn == 41
        with pytest.raises(SRLError, match="not consecutive: LSN 43 after 41"):
            srl.append_records_nowait([Record(41, 1, 0, b"a"), Record(43, 1, 0, b"b")])
        with pytest.raises(SRLError, match="LSN 42 does not follow the log: expected LSN 41"):
            srl.append_records_nowait([Record(42, 1, 0, b"a")])
        assert srl.next_lsn == 41  # neither refusal queued anything
    with SRL.open(p) as srl:
        got = list(srl.read(1, 41))
        assert [(r.lsn, r.offset, bytes(r.data)) for r in got] == [
            (r.lsn, r.offset, r.data) for r in recs
        ]


def test_a_batch_that_does_not_fit_logs_what_fits(tmp_path: Path) -> None:
    """Past the free space, the rest of a batch changes nothing: the caller learns how many
    went in and asks for the rest later; nothing fits at all: SRLFullError."""
    p = tmp_path / "srl"
    with make(p, size=SMALL) as srl:
        per = fmt.record_size(4096)
        fit = (srl.capacity - srl.used_bytes) // per
        recs = [Record(lsn, 1, 0, payload(lsn, 4096)) for lsn in range(1, fit + 6)]
        pending, n = srl.append_records_nowait(recs)
        assert n == fit and pending is not None and pending.lsn == fit
        pending.wait()
        assert srl.end_lsn == fit + 1 and srl.next_lsn == fit + 1
        with pytest.raises(SRLFullError):
            srl.append_records_nowait(recs[n:])
        assert srl.next_lsn == fit + 1


def test_a_batch_cut_short_where_its_next_record_would_wrap_leaves_the_tail_where_it_was(
    tmp_path: Path,
) -> None:
    """The record after the last that fits would have to wrap to the front, which is not
    free: the batch stops before it, and the log goes on from where the last record ended.
    Sent again once the front is cleared, it wraps as any record does and survives a reopen."""
    p = tmp_path / "srl"
    big, small = 100_000, 4096
    s_big, s_small = fmt.record_size(big), fmt.record_size(small)
    with make(p, size=SMALL) as srl:
        lsn = 1
        while srl._next_pos + s_big + s_small <= srl._cap:  # the tail: room for a small one
            srl.append(1, lsn, payload(lsn, small))
            lsn += 1
        a, b = Record(lsn, 1, 0, payload(lsn, small)), Record(lsn + 1, 1, 1, payload(lsn + 1, big))
        pending, n = srl.append_records_nowait([a, b])
        assert n == 1 and pending is not None and pending.lsn == a.lsn
        pending.wait()
        srl.advance_start(a.lsn)  # the front is free now
        pending, n = srl.append_records_nowait([b])
        assert n == 1 and pending is not None
        pending.wait()
        assert srl.end_lsn == b.lsn + 1
    with SRL.open(p) as srl:
        got = list(srl.read(a.lsn, b.lsn + 1))
        assert [(r.lsn, bytes(r.data)) for r in got] == [(a.lsn, a.data), (b.lsn, b.data)]
