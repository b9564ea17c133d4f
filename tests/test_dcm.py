"""Tests for replengine.storage.dirtymap: the persistent dirty-region bitmap."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replengine.errors import ReplError
from replengine.storage.dirtymap import (
    HEADER_SIZE,
    DCMCorruptError,
    DCMError,
    DCMRangeError,
    DirtyMap,
    RegionTally,
)

KiB = 1024


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "r0.dcm"


def test_create_is_clean_and_refuses_overwrite(path: Path) -> None:
    dm = DirtyMap.create(path, volume_size=1 << 20, region_size=64 * KiB)
    assert dm.is_empty and dm.count == 0 and dm.dirty_bytes == 0 and list(dm.regions()) == []
    assert path.stat().st_size == HEADER_SIZE + 2  # 16 regions -> 2 bytes
    with pytest.raises(DCMError, match="already exists"):
        DirtyMap.create(path, volume_size=1 << 20, region_size=64 * KiB)
    DirtyMap.create(path, volume_size=1 << 20, region_size=64 * KiB, force=True)
    assert not path.with_name(path.name + ".tmp").exists()


def test_flushes_from_two_threads_never_land_an_older_snapshot_last(path: Path) -> None:
    """A resync's progress is flushed in a thread while the loop flushes marks: whatever
    the interleaving, the file ends with the marks of the last flush begun."""
    import threading

    dm = DirtyMap.create(path, volume_size=1 << 20, region_size=4 * KiB)
    stop = threading.Event()

    def progress() -> None:
        while not stop.is_set():
            dm.flush()

    t = threading.Thread(target=progress)
    t.start()
    try:
        for i in range(200):
            dm.mark(i * 4 * KiB, 1)
            dm.flush()
    finally:
        stop.set()
        t.join()
    dm.flush()
    again = DirtyMap.open(path, volume_size=1 << 20, region_size=4 * KiB)
    assert again.count == 200 and again.generation == dm.generation


def test_marks_persist_across_reopen_after_flush(path: Path) -> None:
    dm = DirtyMap.create(path, volume_size=1 << 20, region_size=64 * KiB)
    dm.mark(0, 4096)
    dm.mark(5 * 64 * KiB, 1)
    # Not flushed yet: the file still says clean.
    assert DirtyMap.open(path).is_empty
    dm.flush()
    again = DirtyMap.open(path, volume_size=1 << 20, region_size=64 * KiB)
    assert list(again.regions()) == [(0, 64 * KiB), (5 * 64 * KiB, 64 * KiB)]
    assert again.count == 2 and again.generation == dm.generation == 2


def test_adjacent_regions_merge(path: Path) -> None:
    dm = DirtyMap.create(path, volume_size=1 << 20, region_size=4 * KiB)
    for r in (3, 4, 5, 9, 10, 200, 255):
        dm.mark(r * 4 * KiB, 10)
    assert list(dm.regions()) == [
        (3 * 4 * KiB, 3 * 4 * KiB),
        (9 * 4 * KiB, 2 * 4 * KiB),
        (200 * 4 * KiB, 4 * KiB),
        (255 * 4 * KiB, 4 * KiB),
    ]
    dm.mark(0, 1 << 20)
    assert list(dm.regions()) == [(0, 1 << 20)] and dm.count == 256


def test_partial_region_write_marks_the_whole_region(path: Path) -> None:
    dm = DirtyMap.create(path, volume_size=1 << 20, region_size=64 * KiB)
    dm.mark(64 * KiB - 1, 2)  # straddles regions 0 and 1
    assert list(dm.regions()) == [(0, 128 * KiB)]
    assert dm.dirty_bytes == 128 * KiB
    dm.mark(300 * KiB, 512)  # inside region 4
    assert (256 * KiB, 64 * KiB) in list(dm.regions())


def test_clear_only_wholly_covered_regions(path: Path) -> None:
    dm = DirtyMap.create(path, volume_size=1 << 20, region_size=64 * KiB)
    dm.mark(0, 256 * KiB)  # regions 0..3
    dm.clear(32 * KiB, 128 * KiB)  # covers region 1 wholly, 0 and 2 partly
    assert list(dm.regions()) == [(0, 64 * KiB), (128 * KiB, 128 * KiB)]
    for off, length in list(dm.regions()):
        dm.clear(off, length)
    assert dm.is_empty


def test_last_short_region(path: Path) -> None:
    size = 10 * 4096 + 100  # 11 regions of 4 KiB, the last one 100 bytes
    dm = DirtyMap.create(path, volume_size=size, region_size=4096)
    assert dm.regions_total == 11
    dm.mark(size - 1, 1)
    assert list(dm.regions()) == [(10 * 4096, 100)]
    assert dm.dirty_bytes == 100 and dm.count == 1
    dm.mark(9 * 4096, 1)
    assert list(dm.regions()) == [(9 * 4096, 4096 + 100)]
    dm.flush()
    assert list(DirtyMap.open(path).regions()) == [(9 * 4096, 4096 + 100)]
    # Clearing up to the end of the volume clears the short region too.
    dm.clear(10 * 4096, 100)
    assert list(dm.regions()) == [(9 * 4096, 4096)]
    with pytest.raises(DCMRangeError, match="outside the volume"):
        dm.mark(size - 1, 2)
    with pytest.raises(ValueError):
        dm.mark(-1, 1)


def test_a_region_is_cleared_once_every_chunk_of_it_is_done_in_any_order(path: Path) -> None:
    """A resync's chunks smaller than the map's regions: each region goes once all of its
    chunks are done (sent and acknowledged, or found equal), whatever their order; one chunk
    short keeps it, and chunks of whole regions or of the short last one clear at once."""
    size = 4 * 64 * KiB + 8 * KiB  # 4 regions of 64 KiB and a short one of 8 KiB
    dm = DirtyMap.create(path, volume_size=size, region_size=64 * KiB)
    dm.mark_all()
    tally = RegionTally(dm)
    for off in (48, 0, 16):  # region 0 less the chunk at 32 KiB
        tally.done(off * KiB, 16 * KiB)
    for off in (112, 96, 80, 64):  # region 1, backwards
        tally.done(off * KiB, 16 * KiB)
    tally.done(128 * KiB, 128 * KiB)  # regions 2 and 3 in one piece
    assert list(dm.regions()) == [(0, 64 * KiB), (256 * KiB, 8 * KiB)]
    tally.done(32 * KiB, 16 * KiB)
    tally.done(256 * KiB, 8 * KiB)  # the short last region
    assert dm.is_empty and tally.partial == {}


def test_mark_all_and_many_regions(path: Path) -> None:
    dm = DirtyMap.create(path, volume_size=(1 << 30) + 3, region_size=64 * KiB)
    dm.mark_all()
    assert list(dm.regions()) == [(0, (1 << 30) + 3)]
    assert dm.dirty_bytes == (1 << 30) + 3
    dm.flush()
    assert DirtyMap.open(path).count == dm.regions_total == (1 << 14) + 1


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b[:20], "shorter than its header"),
        (lambda b: b"NOTADCM\0" + b[8:], "bad magic"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0x01]), "CRC32C mismatch"),
        (lambda b: b[:17] + bytes([b[17] ^ 0x10]) + b[18:], "CRC32C mismatch"),
        (lambda b: b + b"\0", "CRC32C mismatch"),
        (lambda b: b[:8] + b"\x09\x00" + b[10:], "unsupported version"),
    ],
)
def test_corrupt_file_detected(path: Path, damage, match: str) -> None:
    dm = DirtyMap.create(path, volume_size=1 << 20, region_size=4 * KiB)
    dm.mark(12345, 99999)
    dm.flush()
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DCMCorruptError, match=match) as info:
        DirtyMap.open(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ReplError)


def test_open_errors(path: Path) -> None:
    with pytest.raises(DCMError, match="no such file"):
        DirtyMap.open(path)
    DirtyMap.create(path, volume_size=1 << 20, region_size=4 * KiB)
    with pytest.raises(DCMError, match="region_size 4096, not 8192"):
        DirtyMap.open(path, region_size=8 * KiB)
    with pytest.raises(DCMError, match="volume_size"):
        DirtyMap.open(path, volume_size=1 << 21)
    with pytest.raises(DCMError, match="region_size must be > 0"):
        DirtyMap(path, volume_size=1, region_size=0)


def test_stale_temp_file_is_harmless(path: Path) -> None:
    dm = DirtyMap.create(path, volume_size=1 << 20, region_size=4 * KiB)
    path.with_name(path.name + ".tmp").write_bytes(b"half written garbage")
    dm.mark(0, 1)
    dm.flush()
    assert DirtyMap.open(path).count == 1
    assert sorted(os.listdir(path.parent)) == ["r0.dcm"]


@settings(max_examples=200, deadline=None)
@given(
    volume_size=st.integers(1, 5000),
    region_size=st.integers(1, 700),
    ops=st.lists(st.tuples(st.booleans(), st.floats(0, 1), st.floats(0, 1)), max_size=12),
)
def test_property_matches_a_set_of_regions(
    tmp_path_factory: pytest.TempPathFactory, volume_size: int, region_size: int, ops
) -> None:
    path = tmp_path_factory.mktemp("dcm") / "m.dcm"
    dm = DirtyMap.create(path, volume_size=volume_size, region_size=region_size)
    model: set[int] = set()
    n = dm.regions_total
    for is_mark, a, b in ops:
        off = int(a * volume_size)
        length = int(b * (volume_size - off))
        if is_mark:
            dm.mark(off, length)
            if length:
                model |= set(range(off // region_size, (off + length - 1) // region_size + 1))
        else:
            dm.clear(off, length)
            stop = off + length
            last = n if stop == volume_size else stop // region_size
            model -= set(range(-(-off // region_size), last))
    expect = [
        (r * region_size, min((r + 1) * region_size, volume_size) - r * region_size)
        for r in sorted(model)
    ]
    merged: list[tuple[int, int]] = []
    for off, length in expect:
        if merged and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((off, length))
    assert list(dm.regions()) == merged
    assert dm.count == len(model) and dm.dirty_bytes == sum(x for _, x in expect)
    dm.flush()
    assert list(DirtyMap.open(path).regions()) == merged


def test_a_large_volumes_digests_are_taken_over_larger_chunks_so_they_fit_one_message() -> None:
    """16 bytes per 1 MiB chunk fill one SUMS message at about 1 TiB: a larger volume is
    compared in 2, 4 or 8 MiB chunks rather than copied whole; past 8 TiB it is copied."""
    from replengine.node.dcm import sum_chunk

    TiB = 1 << 40
    assert sum_chunk([(0, 4 << 30)]) == 1 << 20
    assert sum_chunk([(0, TiB - (128 << 30))]) == 1 << 20
    assert sum_chunk([(0, TiB)]) == 2 << 20
    assert sum_chunk([(0, 3 * TiB)]) == 4 << 20
    assert sum_chunk([(0, 7 * TiB)]) == 8 << 20
    assert sum_chunk([(0, 9 * TiB)]) is None
    # the resource's resync_chunk_size is where it starts
    assert sum_chunk([(0, 4 << 30)], 64 << 10) == 64 << 10
    assert sum_chunk([(0, 4 << 30)], 4096) == 8192  # 1 Mi digests of 4 KiB: one too many


def test_the_configs_chunk_bounds_are_the_wires() -> None:
    from replengine.config.defaults import MAX_RESYNC_CHUNK_SIZE
    from replengine.storage.chunksums import MAX_CHUNK

    assert MAX_RESYNC_CHUNK_SIZE == MAX_CHUNK


def test_a_peer_stuck_after_its_resync_gets_the_stream_again_from_its_end() -> None:
    """The copy is over (its log restarted at the resume LSN) and the peer catches up from
    the primary's log. If its HELLO shows it behind what was sent, or nothing is being sent,
    with nothing acknowledged for two beats, the stream starts again from its end; a HELLO
    from before its log restarted, or a peer that acknowledged lately, changes nothing."""

    from replengine.node.dcm import Resync
    from replengine.node.peers import Peer
    from replengine.node.resync_end import unstick
    from replengine.wire.protocol import Hello

    job = Resync("delta", resume_lsn=7515, done=True)

    def peer(end: int, streaming: bool, next_lsn: int, idle_s: float) -> Peer:
        p = Peer("delta", "async", streaming=streaming, next_lsn=next_lsn)
        p.hello = Hello("secondary", "s", [(1, 1)], end, end, end, "d", 1 << 22, consistent=False)
        p.last_progress = time.monotonic() - idle_s
        return p

    off = peer(7515, False, 7515, 1.0)  # the stream never (re)started after the copy
    unstick(off, job, 0.1)
    assert off.streaming and off.next_lsn == 7515
    lost = peer(7515, True, 7520, 1.0)  # 7515..7519 sent, none arrived
    unstick(lost, job, 0.1)
    assert lost.streaming and lost.next_lsn == 7515
    for unchanged in (
        peer(5347, False, 7515, 1.0),  # its HELLO is from before the copy ended
        peer(7515, True, 7520, 0.05),  # acknowledged lately: records are on their way
        peer(7520, True, 7520, 1.0),  # has everything sent
    ):
        before = (unchanged.streaming, unchanged.next_lsn)
        unstick(unchanged, job, 0.1)
        assert (unchanged.streaming, unchanged.next_lsn) == before
