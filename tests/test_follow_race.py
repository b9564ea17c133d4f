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

import signal

import pytest

from tests.wire_peer import Peer, Primaries

pytestmark = pytest.mark.slow


def test_records_of_the_old_primary_in_flight_are_not_acknowledged_to_the_new_one(
    resource,
) -> None:
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "sync"})
    r.up("beta")
    p = Primaries(r)
    hello, update = p.hello, p.update
    peer = Peer(p.cfg.node("beta").address, "alpha")
    try:
        p.follow_alpha(peer)

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
        peer.send(p.marker(3, "gamma"))
        r.signal("beta", signal.SIGCONT)
        r.wait_for(
            lambda: "malformed message from gamma dropped: PULL range [9, 3)" in r.log("beta"),
            30,
            "beta to handle every message",
        )
    finally:
        peer.close()

    assert "from gamma is already logged" not in r.log("beta"), r.log("beta")[-3000:]
    # beta holds alpha's epoch-2 records at 11..13, gamma's line has others there: it must
    # rewind that tail from gamma (which this test does not serve), not take gamma's as its
    # own. (gamma, played here, goes silent after its messages: beta may call it gone since,
    # so what it follows is not asserted; the rewind waits for a primary either way)
    r.wait_for(lambda: r.status("beta")["end_lsn"] == 11, 10, "beta to cut its tail")
    assert r.status("beta")["rewinding"]
    log = r.log("beta")
    assert "divergent tail discarded: 3 records" in log and "block ranges from gamma" in log


def test_a_primary_whose_history_changed_below_our_end_gets_the_tail_rewound(resource) -> None:
    """The primary followed comes back in a new epoch that starts below this node's end (it
    lost records 8-10 and was promoted again, forced, while beta was away for less than the
    time it takes to call a primary gone): beta never saw it step down, so Node.follow did
    not run again. Its next record cannot be joined to beta's history; beta must rewind
    the tail rather than refuse every record from then on."""
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "sync"})
    r.up("beta")
    p = Primaries(r)
    peer = Peer(p.cfg.node("beta").address, "alpha")
    try:
        p.follow_alpha(peer)
        peer.send(p.hello(2, "alpha", [[1, 1], [2, 8]], 12))
        peer.send(p.update(2, "alpha", 11))
        peer.send(p.marker(2, "alpha"))
        r.wait_for(
            lambda: "malformed message from alpha dropped: PULL range [9, 3)" in r.log("beta"),
            30,
            "beta to handle every message",
        )
    finally:
        peer.close()
    r.wait_for(lambda: r.status("beta")["end_lsn"] == 8, 10, "beta to cut its tail")
    assert r.status("beta")["rewinding"]
    assert "divergent tail discarded: 3 records" in r.log("beta")
