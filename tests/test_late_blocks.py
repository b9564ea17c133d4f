"""Blocks of a copy cut short that arrive after the secondary has started to rewind are
dropped, not taken for a new dcm resync.

Found by the fault campaign (seed 3104 round 10, 30 % packet loss on delta): alpha, newly
promoted, began a full sync of delta; delta called alpha gone in the middle of it (lost
packets) and, alpha heard again, turned the unfinished copy into a rewind that fetches
everything owed. The rest of the first copy was still on its way. Its blocks reached delta
while the rewind was draining its log, before its request was out, and were taken for a new
dcm resync; that one's BLOCK_DONE counted half the bytes, so it stayed open for good. The
rewind then got every block it asked for, but waited for that receive to end, and delta
refused every record from alpha until the round's 30 s were up.

beta runs as a real replengined; the test plays alpha, its primary: a raw DEALER for what
alpha sends (tests/wire_peer.py) and a ROUTER at alpha's address for what beta asks.
"""

from __future__ import annotations

import signal

import pytest

from replengine.wire import protocol as proto
from tests.wire_peer import Primaries

pytestmark = pytest.mark.slow

MIB = 1 << 20


def test_the_rest_of_a_copy_cut_short_does_not_hold_the_rewind_back(resource) -> None:
    r = resource({"alpha": "sync", "beta": "sync"}, heartbeat_ms=1000)
    r.up("beta")
    p = Primaries(r)
    inbox, peer, hello = p.play_alpha()
    try:
        # a copy of two blocks begins; alpha goes silent after the first
        peer.send(p.frames(1, "alpha", proto.Block(0, p.rng.randbytes(MIB))))
        r.wait_for(lambda: "dcm resync from alpha started" in r.log("beta"), 20, "the copy")
        r.wait_for(lambda: "primary alpha gone" in r.log("beta"), 20, "beta to call alpha gone")

        # alpha is heard again, the rest of the copy right behind its HELLO: beta takes them
        # in one turn, its rewind not yet asking
        r.freeze("beta")
        peer.send(hello)
        peer.send(p.frames(1, "alpha", proto.Block(MIB, p.rng.randbytes(MIB))))
        peer.send(p.frames(1, "alpha", proto.BlockDone("copy-1", 1, 1, 2 * MIB)))
        r.signal("beta", signal.SIGCONT)

        # the rewind asks for everything with its digests; alpha finds every chunk equal
        req, _ = inbox.expect(proto.BlockReq)
        assert req.ranges == [(0, p.size)]
        peer.send(p.frames(1, "alpha", proto.BlockDone(req.tag, 1, 0, 0)))
        r.wait_for(
            lambda: r.status("beta")["consistent"] and not r.status("beta")["rewinding"],
            20,
            "beta's rewind to end",
        )

        # records flow again
        peer.send(hello)
        peer.send(p.update(1, "alpha", 1))
        r.wait_for(lambda: r.status("beta")["applied_end"] == 2, 20, "beta to apply LSN 1")
    finally:
        peer.close()
        inbox.close()
    log = r.log("beta")
    assert "blocks of a copy from alpha cut short arrive late: dropped" in log
    assert "incomplete" not in log, log[-3000:]
