"""A peer that comes up is spoken to at once: the first message after our connection to it
is made gets there, and a peer that speaks to us first is connected to without waiting out
the reconnect interval.

Two real `Transport`s in this process, over TCP on loopback. Before these were fixed a
restarted secondary waited for the primary's HELLO until the primary's next heartbeat
(0.5 s in bench/resync.py, 30 s in a test with a long heartbeat) about one rejoin in three:
the HELLO sent when the monitor reported the connection was dropped, because libzmq hands a
new connection to the socket as a command that a send processes only every millisecond or so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from replengine.wire import transport as transport_mod
from replengine.wire.peerwatch import PeerWatch
from replengine.wire.transport import Transport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Callable[[str], Transport]]:
    """make("a") / make("b"): the transports of nodes a and b, each knowing the other."""
    ports = {"a": free_port(), "b": free_port()}
    made: list[Transport] = []

    def make(me: str) -> Transport:
        other = "b" if me == "a" else "a"
        t = Transport(
            me,
            f"127.0.0.1:{ports[me]}",
            {other: f"127.0.0.1:{ports[other]}"},
            str(tmp_path / f"{me}.sock"),
            heartbeat_ms=1000,
        )
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def receive(t: Transport, want: bytes, timeout: float = 5.0) -> None:
    """Poll ``t`` until a peer's message whose first frame is ``want`` arrives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t.poll(10)
        while (inc := t.recv_peer()) is not None:
            if inc.frames and inc.frames[0].bytes == want:
                return
    raise AssertionError(f"{t.me} did not receive {want!r} within {timeout}s")


def test_the_first_message_after_the_connection_is_reported_gets_there(pair) -> None:
    """a sends to b all the time b is down (every send fails, as they must: nothing queues
    for a peer that is not connected), then b starts. The message a sends the moment its
    monitor reports the connection is not dropped, and b receives it."""
    a = pair("a")
    assert not a.send("b", [b"early"])
    b = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        a.send("b", [b"spin"])  # keeps the socket processing its commands every few µs
        a.poll(0)
        if b is None:
            b = pair("b")
        if "b" in a.watch.take_connected():
            break
    else:
        raise AssertionError("a's monitor never reported its connection to b")
    assert a.send("b", [b"hello"]), "the first send after the connection was reported failed"
    assert b is not None
    receive(b, b"hello")


def test_a_peer_that_speaks_first_is_connected_to_now(pair, monkeypatch) -> None:
    """a's connection to b is between two attempts, the next one a minute away. b starts
    and sends to a; a, hearing from b, connects at once (`hasten`), so a's answer gets to b
    within seconds, not after the interval. (The transport's own retry of an attempt
    without a connection for RETRY_CONNECT_S, tested below, is put out of reach: on a busy
    machine it connected a before the test got to `hasten`, as CI saw once)"""
    monkeypatch.setattr(transport_mod, "RETRY_CONNECT_S", 3600.0)
    a = pair("a")
    a.dealers["b"].setsockopt(zmq.RECONNECT_IVL, 60_000)
    a.reconnect("b")  # the new attempt takes the one-minute interval
    deadline = time.monotonic() + 5
    while "b" not in a.watch.refused:  # refused: nothing listens yet, next try in 60 s
        assert time.monotonic() < deadline, "a's attempt to reach b was never refused"
        a.poll(10)
    b = pair("b")
    deadline = time.monotonic() + 5
    while not b.send("a", [b"hi"]):
        assert time.monotonic() < deadline, "b never connected to a"
        b.poll(10)
    receive(a, b"hi")
    assert not a.watch.is_linked("b")  # still waiting out the interval
    a.hasten("b")
    deadline = time.monotonic() + 5
    while not a.send("b", [b"answer"]):
        assert time.monotonic() < deadline, "a did not connect to b after hearing from it"
        a.poll(10)
    receive(b, b"answer")
    # the send can go through before a's loop has read its monitor's report of the
    # connection (it reads it when it polls): wait for that report, as the loop would
    deadline = time.monotonic() + 5
    while not a.watch.is_linked("b"):
        assert time.monotonic() < deadline, "a's monitor never reported its link to b"
        a.poll(10)
    a.hasten("b")  # connected: nothing to hasten, and nothing dropped
    assert a.send("b", [b"still"])
    receive(b, b"still")


class FakeMonitor:
    """A monitor socket that hands out these (event, value) messages, then none."""

    def __init__(self, events: list[int]) -> None:
        self.frames = [[struct.pack("=hi", e, 0), b"tcp://127.0.0.1:1"] for e in events]

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        if not self.frames:
            raise zmq.Again()
        return self.frames.pop(0)


def watched(events: list[int]) -> PeerWatch:
    w = PeerWatch("a", curve=False)
    mon = FakeMonitor(events)
    w.monitors[mon] = "b"  # type: ignore[index]
    w._read_at[mon] = time.monotonic()  # type: ignore[index]
    w.read_all()
    return w


def test_only_an_attempt_libzmq_will_retry_is_a_refusal() -> None:
    """An attempt that failed (refused, host unreachable) is closed and then retried after
    the reconnect interval. An attempt our own reconnect closed while it waited for the
    peer's answer (a link just healed, a slow one) is closed and not retried: it says
    nothing of the peer. Taken for a refusal, it let a promotion go ahead without a peer
    that held acknowledged writes (fault campaign, seed 7603)."""
    assert "b" in watched([zmq.EVENT_CLOSED, zmq.EVENT_CONNECT_RETRIED]).refused
    assert "b" not in watched([zmq.EVENT_CLOSED]).refused
    # a connection that dropped is retried too, but was no refused attempt
    assert "b" not in watched([zmq.EVENT_DISCONNECTED, zmq.EVENT_CONNECT_RETRIED]).refused
    # closed by us, then the new attempt connects
    w = watched([zmq.EVENT_CLOSED, zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_CONNECT_RETRIED])
    assert "b" not in w.refused and "b" in w.linked


#: run in a network namespace whose nftables drop what comes to port 7790, where b listens:
#: a's connection attempts to b wait for an answer (as behind a link cut a moment ago, or a
#: slow one); then a reconnects, as a promotion's probe does, and says what it took for
#: refused from then on
PENDING = """
import json, socket, sys, time
import zmq
from replengine.wire.transport import Transport
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
ctx = zmq.Context()
b = ctx.socket(zmq.ROUTER)
b.bind("tcp://127.0.0.1:7790")
a = Transport("a", f"127.0.0.1:{port}", {"b": "127.0.0.1:7790"}, sys.argv[1], heartbeat_ms=1000)
end = time.monotonic() + 0.5
while time.monotonic() < end:
    a.poll(10)
t0 = time.monotonic()
a.reconnect("b")
end = time.monotonic() + 0.5
while time.monotonic() < end:
    a.poll(10)
print(json.dumps(sorted(n for n, t in a.watch.refused.items() if t >= t0)))
a.close()
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("nft")),
    reason="needs root, ip and nft (a network namespace)",
)
def test_a_pending_attempt_closed_by_our_own_reconnect_is_no_refusal(tmp_path: Path) -> None:
    """The real sockets of the unit test above: libzmq reports the attempt our reconnect
    closes as closed, and only that (before the fix, b was taken for refused at once)."""
    ns = f"rf{os.getpid()}pw"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        rules = (
            "table inet t {\n chain input { type filter hook input priority 0; "
            "policy accept;\n tcp dport 7790 drop\n }\n}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True
        )
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", PENDING, str(tmp_path / "a.sock")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert json.loads(out.stdout) == [], out.stdout


def test_a_peer_without_a_tcp_connection_for_a_while_is_stuck() -> None:
    """The transport starts a new attempt to these (Transport.poll): the kernel resends
    an unanswered SYN at ever longer intervals, and a peer back after a long cut would stay
    unreachable until the next one."""

    def since_watched(events: list[int], t0: float) -> PeerWatch:
        w = PeerWatch("a", curve=False)
        mon = FakeMonitor(events)
        w.monitors[mon] = "b"  # type: ignore[index]
        w._read_at[mon] = t0  # type: ignore[index]
        w.down_since["b"] = t0  # as watch() sets it: no connection yet
        w.read_all()
        return w

    t0 = time.monotonic()
    w = since_watched([], t0)
    assert w.stuck(2.0, t0 + 1.0) == []
    assert w.stuck(2.0, t0 + 2.5) == ["b"]
    # TCP connected (the ZMTP handshake may wait on a stopped peer): nothing to retry
    assert since_watched([zmq.EVENT_CONNECTED], t0).stuck(2.0, t0 + 10) == []
    # connected, then the connection dropped: stuck once it stays down long enough
    w = since_watched(
        [zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_DISCONNECTED], t0
    )
    since = w.down_since["b"]
    assert w.stuck(2.0, since + 1.9) == [] and w.stuck(2.0, since + 2.0) == ["b"]
    # an attempt started by us restarts the clock
    w.attempting("b")
    assert w.stuck(2.0, since + 2.0) == []
