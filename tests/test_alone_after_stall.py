"""A primary that completes writes alone (under degrade, no sync secondary to wait for) and
wakes from a stall: another node may have been promoted while it did not run. Its writes wait
until the peers' HELLOs had the time to say so (README, "When things go wrong": a primary
that was frozen re-checks its peers, so it learns it was replaced and steps down instead of
acknowledging alone).

Found by the fault campaign (seed 4700 round 9, zombie-ack): gamma, primary, both of its
sync secondaries behind and so async until caught up, was frozen; beta was promoted; gamma,
continued, completed two late writes in its first turn, before beta's HELLO, whose
connection was still being made again after a partition, told it of the newer epoch. Those
writes were then discarded with its divergent tail. Unit tests of node.primary and
node.liveness: the timing that let the HELLO come late is not reproducible on one machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from replengine.node.liveness import Liveness
from replengine.node.peers import Peer
from replengine.node.primary import PendingWrite, Primary

HB = 0.3


@dataclass
class FakeNode:
    """What Primary.complete and Liveness.after_stall read of a node."""

    peers: dict[str, Peer]
    on_sync_loss: str = "degrade"
    heartbeat_s: float = HB
    replies: list[tuple[int, dict]] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.srl = SimpleNamespace(end_lsn=1, start_lsn=1)
        self.watcher = SimpleNamespace(durable_end=1)
        self.cfg = SimpleNamespace(on_sync_loss=self.on_sync_loss, sync_timeout=30.0)
        self.metrics = SimpleNamespace(note_write=lambda *a: None)
        self.copier = SimpleNamespace(pacer=None)
        self.transport = SimpleNamespace(reconnect_all=lambda: None)
        self.dcm = SimpleNamespace(resyncs={})
        self.primary = Primary(self)  # type: ignore[arg-type]
        self.liveness = Liveness(self)  # type: ignore[arg-type]

    def reply_ok(self, client: bytes, req_id: int, doc: dict) -> None:
        self.replies.append((req_id, doc))

    def reply_error(self, client: bytes, req_id: int, msg: str) -> None:
        self.errors.append((req_id, msg))


def one_durable_write(node: FakeNode) -> None:
    node.primary.pending.append(PendingWrite(1, b"c", 7, time.monotonic()))
    node.watcher.durable_end = 2


def async_peer(name: str) -> Peer:
    return Peer(name, "async", last_seen=time.monotonic(), hello=object())  # type: ignore[arg-type]


def test_a_write_only_this_node_holds_waits_after_a_stall_then_completes() -> None:
    node = FakeNode({"beta": async_peer("beta")})
    node.liveness.turn(10 * HB)
    one_durable_write(node)
    node.primary.complete()
    assert not node.replies  # a newer epoch may be on its way
    node.primary.alone_hold_until = time.monotonic() - 0.001  # its window has passed
    node.primary.complete()
    assert node.replies == [(7, {"lsn": 1})]


def test_without_a_stall_a_write_only_this_node_holds_completes_at_once() -> None:
    node = FakeNode({"beta": async_peer("beta")})
    one_durable_write(node)
    node.primary.complete()
    assert node.replies == [(7, {"lsn": 1})]


def test_a_write_a_sync_secondary_acknowledged_is_not_held() -> None:
    """Acknowledged by a sync secondary, the write is in the history it follows: a peer
    that had moved to a newer epoch would have refused the record instead."""
    beta = Peer("beta", "sync", last_seen=time.monotonic(), hello=object())  # type: ignore[arg-type]
    node = FakeNode({"beta": beta})
    node.liveness.turn(10 * HB)
    one_durable_write(node)
    node.primary.complete()
    assert not node.replies  # waits for beta, as always
    beta.acked_end = 2
    node.primary.complete()
    assert node.replies == [(7, {"lsn": 1})]


def test_a_write_completed_in_a_turn_that_itself_stalled_waits() -> None:
    """The loop waited within a turn (the SRL's write on a hung disk, a SIGSTOP part way):
    the turn's gap to the next one has not been seen yet, but the view is as stale
    (seed 7400 round 5; tests/test_hung_volume.py has it with real processes)."""
    node = FakeNode({"beta": async_peer("beta")})
    node.liveness.turn(0.0)
    node.liveness.turn_began -= 10 * HB  # the turn began that long ago
    one_durable_write(node)
    node.primary.complete()
    assert not node.replies
    # and the next turn does not take the same stall for another one
    held = node.primary.alone_hold_until
    node.liveness.turn(10 * HB)
    assert node.primary.alone_hold_until == held
