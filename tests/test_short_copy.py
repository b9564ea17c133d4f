"""A dcm copy that reaches the secondary short (a block lost on the way) is fetched again by
the secondary itself, with the digests of what it holds, not left waiting for a copy no one
sends.

Blocks are lost only with the connection that held them, and the primary aborts a resync
when it sees that connection drop; but a primary that was itself stalled forgives the drops
it sees on waking (node.liveness), so its copy goes on over the new connection with a gap.
The primary counts the secondary's BLOCK_ACKs as bytes in order, so after such a gap it may
also hold regions for copied that never arrived: a copy "again" of its dirty-region map would
leave them stale. Until this was fixed the secondary stayed inconsistent for good: it waited
for the primary to copy the regions again, and the primary waited for it to say consistent.

beta runs as a real replengined; the test plays alpha, its primary (tests/wire_peer.py).
"""

from __future__ import annotations

import pytest

from replengine.storage.chunksums import DIGEST_SIZE, digest
from replengine.wire import protocol as proto
from tests.wire_peer import Primaries

pytestmark = pytest.mark.slow

MIB = 1 << 20


def test_a_short_copy_is_fetched_again_whole_with_digests(resource) -> None:
    r = resource({"alpha": "sync", "beta": "sync"}, heartbeat_ms=1000)
    r.up("beta")
    p = Primaries(r)
    a, b, c = (p.rng.randbytes(MIB) for _ in range(3))
    inbox, peer, hello = p.play_alpha()
    try:
        # a copy of three blocks whose middle one was lost with a connection
        peer.send(p.frames(1, "alpha", proto.Block(0, a)))
        peer.send(p.frames(1, "alpha", proto.Block(2 * MIB, c)))
        peer.send(p.frames(1, "alpha", proto.BlockDone("copy-1", 1, 1, 3 * MIB)))
        r.wait_for(lambda: "incomplete: 2097152 of 3145728" in r.log("beta"), 20, "the check")

        # beta asks for the whole volume, its digests first: alpha sends the chunks that
        # differ (beta may have written the first and last blocks, or not yet: the copy
        # waits for its log to drain first)
        sums, _ = inbox.expect(proto.Sums)
        req, _ = inbox.expect(proto.BlockReq)
        assert req.ranges == [(0, p.size)]
        assert sums.tag == req.tag
        assert r.status("beta")["consistent"] is False
        truth = a + b + c + bytes(p.size - 3 * MIB)
        differ = [
            off
            for off in range(0, p.size, MIB)
            if digest(truth[off : off + MIB])
            != sums.digests[off // MIB * DIGEST_SIZE :][:DIGEST_SIZE]
        ]
        assert MIB in differ and max(differ) <= 2 * MIB, differ
        peer.send(hello)  # alpha's heartbeat: beta must not call it gone on a slow machine
        for off in differ:
            peer.send(p.frames(1, "alpha", proto.Block(off, truth[off : off + MIB])))
        peer.send(p.frames(1, "alpha", proto.BlockDone(req.tag, 1, 0, len(differ) * MIB)))
        r.wait_for(
            lambda: r.status("beta")["consistent"] and not r.status("beta")["rewinding"],
            20,
            "beta's rewind to end",
        )

        # the volume holds all three blocks, and records flow again
        with open(p.cfg.node("beta").volume, "rb") as f:
            assert f.read(3 * MIB) == a + b + c
        peer.send(hello)
        peer.send(p.update(1, "alpha", 1))
        r.wait_for(lambda: r.status("beta")["applied_end"] == 2, 20, "beta to apply LSN 1")
    finally:
        peer.close()
        inbox.close()
