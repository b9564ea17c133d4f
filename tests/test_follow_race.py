"""A secondary switches primaries with records of the old one still on their way to its
SRL: the new primary must not get them acknowledged as its own.

Found by the fault campaign (seed 1700, a split then a second promotion): beta, restarted,
took records 1673-1679 from the old primary alpha (epoch 9) and, in the same turn of its
loop, the HELLO of delta, promoted meanwhile (epoch 12 from LSN 1677). Its divergence check
looked only at its durable log, which ended at 1672, so it followed delta from there; the
records then became durable, and delta's epoch-12 records 1677-1679 were taken for resends
of beta's and acknowledged. delta counted beta as holding writes it did not hold, and beta
never rewound.

beta runs as a real replengined; the test plays both primaries over one raw DEALER
(tests/wire_peer.py), so beta handles their messages in the order sent. beta is
paused (SIGSTOP) while they are sent, so it takes them all in one turn of its loop.
"""

from __future__ import annotations

import random
import signal
import struct

import pytest

from replengine import config as configmod
from replengine.wire import protocol as proto
from tests.wire_peer import Peer, prefix

pytestmark = pytest.mark.slow

RECORD = 4096


def test_records_of_the_old_primary_in_flight_are_not_acknowledged_to_the_new_one(
    resource,
) -> None:
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "sync"})
    r.up("beta")
    cfg = configmod.load(r.config, node="alpha", check_local=False)
    size = cfg.node("beta").volume.stat().st_size
    rng = random.Random(1700)

    def frames(epoch: int, sender: str, body: object) -> list[bytes]:
        return [bytes(f) for f in proto.encode(cfg.uuid, epoch, sender, body)]

    def hello(epoch: int, sender: str, history: list[list[int]], end: int) -> list[bytes]:
        h = proto.Hello(
            role="primary",
            session=f"fake-{sender}-{epoch}",
            history=history,  # type: ignore[arg-type]
            start_lsn=1,
            end_lsn=end,
            applied_end=end,
            digest=cfg.digest,
            volume_size=size,
            primary=sender,
        )
        return frames(epoch, sender, h)

    def update(epoch: int, sender: str, lsn: int) -> list[bytes]:
        return frames(epoch, sender, proto.Update(lsn, epoch, lsn * RECORD, rng.randbytes(RECORD)))

    peer = Peer(cfg.node("beta").address, "alpha")
    try:
        # alpha, primary in epoch 1: LSNs 1..10, applied on beta
        peer.send(hello(1, "alpha", [[1, 1]], 11))
        r.wait_for(lambda: r.status("beta")["following"] == "alpha", 20, "beta to follow alpha")
        for lsn in range(1, 11):
            peer.send(update(1, "alpha", lsn))
        r.wait_for(lambda: r.status("beta")["applied_end"] == 11, 30, "beta to apply them")

        # in one turn of beta's loop: alpha's epoch 2 writes LSNs 11..13, then gamma, promoted
        # in epoch 3 from LSN 11 without them, takes over and sends its own 11..13
        r.freeze("beta")
        peer.send(hello(2, "alpha", [[1, 1], [2, 11]], 14))
        for lsn in range(11, 14):
            peer.send(update(2, "alpha", lsn))
        peer.name = b"gamma"
        peer.send(hello(3, "gamma", [[1, 1], [3, 11]], 14))
        for lsn in range(11, 14):
            peer.send(update(3, "gamma", lsn))
        marker = frames(3, "gamma", proto.Pull(1, 2))
        marker[0] = prefix(7, 3, b"gamma", cfg.uuid) + struct.pack("!QQ", 9, 3)
        peer.send(marker)  # handled last: beta logs it, so everything before was handled
        r.signal("beta", signal.SIGCONT)
        r.wait_for(
            lambda: "malformed message from gamma dropped: PULL range [9, 3)" in r.log("beta"),
            30,
            "beta to handle every message",
        )
    finally:
        peer.close()

    log = r.log("beta")
    st = r.status("beta")
    assert "from gamma is already logged" not in log, log[-3000:]
    # beta holds alpha's epoch-2 records at 11..13, gamma's line has others there: it must
    # rewind that tail from gamma (which this test does not serve), not take gamma's as its
    assert st["following"] == "gamma" and st["rewinding"], st
    assert st["end_lsn"] == 11, st
