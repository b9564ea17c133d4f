"""The hot path's own multipart receive and send (replengine.wire.zmqio), on real sockets.

They replace pyzmq's recv_multipart/send_multipart on every peer and control message, so a
frame lost, split or reordered between messages would corrupt replication: each message must
arrive whole, in order, small frames and zero-copy ones alike, and an empty socket or a pipe
that takes nothing must say so without blocking.
"""

from __future__ import annotations

import os
import signal

import pytest
import zmq

from replengine.errors import ReplError
from replengine.wire.zmqio import COPY_THRESHOLD, recv_frames, send_frames


@pytest.fixture
def pair():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield router, dealer
    dealer.close(0)
    router.close(0)
    ctx.term()


def test_messages_arrive_whole_and_in_order_small_and_zero_copy_frames_alike(pair) -> None:
    router, dealer = pair
    big = os.urandom(COPY_THRESHOLD * 3)  # sent without a copy
    sent = [
        [b"alpha", b"head-0"],
        [b"alpha", b"head-1", memoryview(big)],
        [b"alpha", b"head-2", os.urandom(4096)],
        [b"alpha"],
    ]
    for frames in sent:
        send_frames(dealer, frames)
    got = []
    while len(got) < len(sent):
        assert router.poll(5000), f"only {len(got)} of {len(sent)} messages arrived"
        frames = recv_frames(router)
        assert frames is not None, "the ROUTER polled readable but recv_frames found nothing"
        got.append([f.bytes for f in frames[1:]])  # [0]: the routing id the ROUTER adds
    assert got == [[bytes(f) for f in m] for m in sent]
    assert recv_frames(router) is None  # drained: None, not zmq.Again, and no blocking


def test_a_pipe_that_takes_nothing_raises_again_and_sends_no_part(pair) -> None:
    router, dealer = pair
    ctx = zmq.Context.instance()
    lonely = ctx.socket(zmq.DEALER)
    lonely.setsockopt(zmq.LINGER, 0)
    lonely.setsockopt(zmq.IMMEDIATE, 1)  # as the node's DEALERs: no queue before a connection
    lonely.connect("tcp://127.0.0.1:9")  # nothing listens on the discard port
    try:
        with pytest.raises(zmq.Again):
            send_frames(lonely, [b"alpha", b"head", os.urandom(4096)])
    finally:
        lonely.close(0)
    # the working pair still carries whole messages afterwards
    send_frames(dealer, [b"alpha", b"after"])
    assert router.poll(5000)
    frames = recv_frames(router)
    assert frames is not None and [f.bytes for f in frames[1:]] == [b"alpha", b"after"]


def test_a_client_of_a_stopped_daemon_gets_a_timeout_then_only_its_own_replies(
    resource,
) -> None:
    """The client library waits with a receive timeout on its socket: a daemon that stops
    answering (SIGSTOP, as a hung node) costs a caller its timeout and a clear error, never
    a hang; once the daemon runs again, the late answer to the timed-out request is not
    taken for the next request's."""
    r = resource({"alpha": "sync", "beta": "sync"})
    r.up("alpha")
    r.promote("alpha", "--force")
    vol = r.connect("alpha")
    ctl = r.control("alpha", timeout_s=0.5)
    try:
        vol.write(0, b"a" * 4096)
        r.freeze("alpha")
        try:
            late = ctl.send("read", offset=0, length=4096)
            with pytest.raises(ReplError, match=r"did not answer within"):
                ctl.wait(late)
        finally:
            r.signal("alpha", signal.SIGCONT)
        doc, data = ctl.call("read", offset=0, length=4096, timeout_s=10)
        assert doc["ok"] and data == b"a" * 4096
        vol.write(4096, b"b" * 4096)
        doc, data = ctl.call("read", offset=4096, length=4096, timeout_s=10)
        assert data == b"b" * 4096  # the late reply (to offset 0) was not taken for this one
        assert ctl.next_reply(0) is None  # nothing left over, and a zero wait returns at once
    finally:
        ctl.close()
        vol.close()
