"""replengine.node.liveness against a fake node: a peer is gone after missed beats or a
dropped connection, but not for what this node's own stall made it miss.

The same rules run in real processes (SIGSTOP of a primary and of secondaries) in
tests/test_failover.py and tests/test_rejoin.py; here each one is taken alone."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from replengine.node.liveness import Liveness
from replengine.node.peers import Peer
from replengine.node.states import PeerState, Role

HB = 0.5


@dataclass
class FakePrimary:
    checks: int = 0

    def check_sync_peers(self) -> None:
        self.checks += 1


@dataclass
class FakeDcm:
    """The primary's resyncs: which peers' copies were started over."""

    resyncs: dict[str, object] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def connection_dropped(self, peer: Peer) -> None:
        self.dropped.append(peer.name)


@dataclass
class FakeTransport:
    reconnects: int = 0

    def reconnect_all(self) -> None:
        self.reconnects += 1


@dataclass
class FakeNode:
    peers: dict[str, Peer]
    role: Role = Role.PRIMARY
    following: str = ""
    heartbeat_s: float = HB
    primary: Any = field(default_factory=FakePrimary)
    transport: FakeTransport = field(default_factory=FakeTransport)
    dcm: FakeDcm = field(default_factory=FakeDcm)


def streaming_peer(name: str, seen: float) -> Peer:
    p = Peer(name, "sync", last_seen=seen, hello=object(), streaming=True)  # type: ignore[arg-type]
    p.state = PeerState.UP_TO_DATE
    return p


def test_a_silent_peer_is_gone_after_three_beats_not_before() -> None:
    now = time.monotonic()
    node = FakeNode({"beta": streaming_peer("beta", now)})
    live = Liveness(node)  # type: ignore[arg-type]
    live.check(node.peers["beta"], now + 2.9 * HB)
    assert node.peers["beta"].streaming
    live.check(node.peers["beta"], now + 3.1 * HB)
    assert not node.peers["beta"].streaming
    assert node.peers["beta"].state is PeerState.DISCONNECTED


def test_a_dropped_connection_is_gone_at_once() -> None:
    node = FakeNode({"beta": streaming_peer("beta", time.monotonic())})
    Liveness(node).on_disconnect("beta")  # type: ignore[arg-type]
    assert not node.peers["beta"].streaming
    assert node.primary.checks == 1  # the sync peers are judged again now


def test_after_a_stall_every_peer_gets_a_fresh_window() -> None:
    """Frozen for 10 beats: the peers look silent only because this node was not running.
    None is gone, and a drop reported within the grace window is forgiven."""
    long_ago = time.monotonic() - 10 * HB
    node = FakeNode({"beta": streaming_peer("beta", long_ago)})
    live = Liveness(node)  # type: ignore[arg-type]
    live.turn(10 * HB)
    live.check(node.peers["beta"], time.monotonic())
    assert node.peers["beta"].streaming
    live.on_disconnect("beta")
    assert node.peers["beta"].streaming
    assert node.transport.reconnects == 0  # a slow turn, not a stop: the links are fine
    assert node.dcm.dropped == ["beta"]  # but a copy to it starts over: blocks were lost


def test_a_stop_past_the_zmtp_timeout_reconnects_every_peer() -> None:
    now = time.monotonic()
    node = FakeNode({p: streaming_peer(p, now) for p in ("beta", "gamma")})
    node.dcm.resyncs["gamma"] = object()
    live = Liveness(node)  # type: ignore[arg-type]
    live.continued = True  # the daemon's SIGCONT handler
    live.turn(4 * HB)
    assert node.transport.reconnects == 1
    assert node.dcm.dropped == ["gamma"]  # its copy starts over: the old links held blocks
    assert not live.continued
    live.continued = True
    live.turn(0.01)  # a stop too short to matter is forgotten
    assert not live.continued and node.transport.reconnects == 1


def test_a_secondary_stops_following_a_primary_gone_silent() -> None:
    now = time.monotonic()
    node = FakeNode({"alpha": streaming_peer("alpha", now)}, role=Role.SECONDARY)
    node.following = "alpha"
    Liveness(node).check(node.peers["alpha"], now + 4 * HB)  # type: ignore[arg-type]
    assert node.following == ""
