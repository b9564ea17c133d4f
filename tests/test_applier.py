"""The applier's memory is bounded however far the volume lags the log: past HOLD_BYTES a
record waits as its LSN and is read back from the SRL, and reads on the primary still see it
(the volume plus every record not yet applied)."""

from __future__ import annotations

import os
import random
import threading
import uuid
from pathlib import Path

import pytest

from replengine.errors import VolumeError
from replengine.log.record import Record
from replengine.log.srl import SRL
from replengine.node import applier as applier_mod
from replengine.node.applier import Applier
from replengine.node.reads import consistent_read
from replengine.storage.volume import Volume
from replengine.storage.writeback import start_writeback

KiB = 1 << 10


class _Node:
    """What consistent_read needs: the volume and the applier."""

    def __init__(self, volume: Volume, applier: Applier) -> None:
        self.volume, self.applier = volume, applier


def test_records_past_the_memory_bound_wait_as_lsns_and_are_applied_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(applier_mod, "HOLD_BYTES", 64 * KiB)
    vol_path = tmp_path / "vol"
    with open(vol_path, "wb") as f:
        f.truncate(1 << 20)
    srl_path = tmp_path / "srl"
    srl = SRL.create(srl_path, resource="r0", uuid=uuid.uuid4(), node="a", size=8 << 20)
    volume = Volume(vol_path)
    progressed = threading.Event()
    ap = Applier(srl, volume, srl.start_lsn, progressed.set)
    expect = bytearray(1 << 20)
    rng = random.Random(5)
    for _ in range(100):  # 100 x 4 KiB, the same blocks written again and again
        off = rng.randrange(0, 64) * 4096
        data = os.urandom(4096)
        lsn = srl.append(1, off, data)
        ap.put(Record(lsn, 1, off, data))
        expect[off : off + 4096] = data
    # not applied yet (the thread is not running): 16 records held, 84 wait as LSNs only
    assert len(ap.overlay) == 16 and len(ap.lazy) == 84
    assert ap.held_bytes == 64 * KiB
    node = _Node(volume, ap)
    assert consistent_read(node, 0, 1 << 20) == bytes(expect)  # reads see all 100
    ap.start()
    ev = ap.barrier()
    assert ev.wait(30)
    assert ap.applied_end == 101 and not ap.overlay and not ap.lazy and ap.held_bytes == 0
    assert volume.read(0, 1 << 20) == bytes(expect)
    ap.stop()
    ap.join(10)
    srl.close()
    volume.close()


class _SlowFlushVolume(Volume):
    """A real volume whose flush waits to be let go (a disk slow to sync), or fails."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        #: flushes wait for let_go while this is set
        self.hold = False
        self.flushing = threading.Event()
        self.let_go = threading.Event()
        self.fail: Exception | None = None
        self.writebacks = 0
        self.wrote_back = threading.Event()

    def flush(self) -> None:
        if self.hold:
            self.flushing.set()
            assert self.let_go.wait(30)
        if self.fail is not None:
            raise self.fail
        super().flush()

    def start_writeback(self) -> None:
        self.writebacks += 1
        self.wrote_back.set()
        super().start_writeback()


def _setup(tmp_path: Path) -> tuple[SRL, _SlowFlushVolume]:
    vol_path = tmp_path / "vol"
    with open(vol_path, "wb") as f:
        f.truncate(1 << 20)
    srl = SRL.create(tmp_path / "srl", resource="r0", uuid=uuid.uuid4(), node="a", size=8 << 20)
    return srl, _SlowFlushVolume(vol_path)


class _Progress:
    """The applier's on_progress: lets a test wait for a state instead of sleeping."""

    def __init__(self) -> None:
        self.cond = threading.Condition()

    def __call__(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pred, timeout: float = 30) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)


def _put(srl: SRL, ap: Applier, n: int) -> None:
    for i in range(n):
        off = (i % 64) * 4096
        data = os.urandom(4096)
        ap.put(Record(srl.append(1, off, data), 1, off, data))


def _clear_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[SRL, _SlowFlushVolume, Applier, _Progress]:
    """A running applier that applied LSNs 1..10 and is clearing them: its flush waits for
    ``volume.let_go``."""
    monkeypatch.setattr(applier_mod, "CLEAR_EVERY_S", 0.0)
    srl, volume = _setup(tmp_path)
    progress = _Progress()
    ap = Applier(srl, volume, srl.start_lsn, progress)
    ap.start()
    _put(srl, ap, 10)
    assert ap.barrier().wait(30)
    volume.hold = True
    ap.clear(11)
    assert volume.flushing.wait(30)
    return srl, volume, ap, progress


def test_a_clear_waiting_on_the_disk_does_not_hold_up_applying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush a clear needs runs beside the applier: records go on to the volume while
    it waits, and the log's start moves only once the flush is done."""
    srl, volume, ap, progress = _clear_in_flight(tmp_path, monkeypatch)
    _put(srl, ap, 10)
    assert progress.wait_for(lambda: ap.applied_end == 21), ap.applied_end
    assert srl.start_lsn == 1  # not cleared before its flush returned
    volume.let_go.set()
    assert progress.wait_for(lambda: srl.start_lsn == 11), srl.start_lsn
    assert ap.error is None
    ap.stop()
    ap.join(10)
    srl.close()
    volume.close()


def test_a_log_cut_waits_for_a_clear_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clear computed before the log is cut back must not move its start after the cut:
    the cut (clears_held) waits for it, and sees the start it set."""
    srl, volume, ap, progress = _clear_in_flight(tmp_path, monkeypatch)
    entered = threading.Event()
    seen: list[int] = []

    def cut() -> None:
        with ap.clears_held():
            seen.append(srl.start_lsn)
            entered.set()

    t = threading.Thread(target=cut)
    t.start()
    assert not entered.wait(0.3)  # held while the clear's flush runs
    volume.let_go.set()
    assert entered.wait(30)
    t.join(10)
    assert seen == [11]
    assert ap.error is None
    ap.stop()
    ap.join(10)
    srl.close()
    volume.close()


def test_a_failed_flush_of_a_clear_fails_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error in the flush beside the applier is the applier's error (the loop stops
    the node on it), and the log keeps every record the flush did not cover."""
    monkeypatch.setattr(applier_mod, "CLEAR_EVERY_S", 0.0)
    srl, volume = _setup(tmp_path)
    progress = _Progress()
    ap = Applier(srl, volume, srl.start_lsn, progress)
    _put(srl, ap, 5)
    ap.clear(6)
    volume.fail = VolumeError("flush (fdatasync) of volume vol failed: Input/output error")
    ap.start()
    assert progress.wait_for(lambda: ap.error is not None)
    assert isinstance(ap.error, VolumeError) and "Input/output error" in str(ap.error)
    assert srl.start_lsn == 1
    srl.close()
    volume.close()


def test_the_volume_s_writeback_starts_as_records_are_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dirty pages are sent to the disk every WRITEBACK_BYTES applied, not left for one
    burst at the next clear."""
    monkeypatch.setattr(applier_mod, "WRITEBACK_BYTES", 16 * KiB)
    srl, volume = _setup(tmp_path)
    ap = Applier(srl, volume, srl.start_lsn, _Progress())
    _put(srl, ap, 3)
    ap.start()
    assert ap.barrier().wait(30)
    assert volume.writebacks == 0  # 12 KiB applied
    _put(srl, ap, 1)
    assert volume.wrote_back.wait(30)
    assert volume.writebacks == 1
    ap.stop()
    ap.join(10)
    srl.close()
    volume.close()


def test_start_writeback_asks_the_kernel(tmp_path: Path) -> None:
    """sync_file_range is reached (a wrong binding would do nothing, silently)."""
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(fd, os.urandom(1 << 20), 0)
        assert start_writeback(fd) is True
    finally:
        os.close(fd)
    assert start_writeback(fd) is False  # closed: EBADF, reported as not asked
