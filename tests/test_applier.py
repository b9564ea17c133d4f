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

from replengine.log.record import Record
from replengine.log.srl import SRL
from replengine.node import applier as applier_mod
from replengine.node.applier import Applier
from replengine.node.reads import consistent_read
from replengine.storage.volume import Volume

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
