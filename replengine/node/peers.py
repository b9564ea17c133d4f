"""What a node knows of each peer, from its HELLO beacons and ACKs."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from replengine.node.states import PeerState
from replengine.wire.protocol import Hello

# A peer is alive while its beacons keep arriving; three missed heartbeats mean gone.
MISSED_BEATS = 3


@dataclass
class Peer:
    name: str
    mode: str  # "sync" | "async": how a primary replicates to it
    last_seen: float = 0.0
    hello: Hello | None = None
    #: HELLOs taken from it so far: tells a HELLO sent after some other message from one
    #: that was already on its way (node.dcm: the end of a resync)
    hellos: int = 0
    epoch: int = 0
    session: str = ""
    rejected: str = ""  # why we refused it (handshake), "" when fine
    #: monotonic time of its latest HELLO flagged ANSWERED (a reply to a promotion's probe)
    answered_at: float = 0.0
    #: it probed us and our answer could not be sent (no connection yet): the next HELLO
    #: that goes to it is the answer
    answer_owed: bool = False
    # primary-side replication state
    acked_end: int = 0  # every LSN below this is durable in its SRL
    applied_end: int = 0
    next_lsn: int = 0  # next LSN to send it
    sent: deque = field(default_factory=deque)  # (lsn, nbytes) in flight
    inflight_bytes: int = 0
    state: PeerState = PeerState.UNKNOWN
    degraded: bool = False  # sync peer treated as async until it catches up
    streaming: bool = False  # primary: handshake done, stream running
    clear_sent: int = 0
    shipped_records: int = 0  # records sent to it since this node became primary
    shipped_bytes: int = 0
    last_progress: float = 0.0  # when its acked_end last moved (or the stream restarted)
    #: primary: (its acked_end, its HELLO count) when a write began waiting on it (None
    #: while none waits): beacons counted since, with no acknowledgement, say it is stuck
    ack_wait: tuple[int, int] | None = None

    def alive(self, heartbeat_s: float, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.hello is not None and now - self.last_seen < heartbeat_s * MISSED_BEATS

    def on_ack(self, durable_end: int, applied_end: int) -> None:
        if durable_end > self.acked_end:
            self.acked_end = durable_end
            self.last_progress = time.monotonic()
        self.applied_end = max(self.applied_end, applied_end)
        while self.sent and self.sent[0][0] < self.acked_end:
            self.inflight_bytes -= self.sent.popleft()[1]

    def restart_stream(self, from_lsn: int) -> None:
        """Resend from from_lsn: after a reconnect, a restart of the peer, or a NACK."""
        self.next_lsn = from_lsn
        self.last_progress = time.monotonic()
        self.sent.clear()
        self.inflight_bytes = 0
