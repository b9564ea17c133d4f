"""Who is alive, as the loop judges it: peers that miss their heartbeats or drop their
connection, and this process's own stalls, which must not be taken for the peers'.

A node frozen for a while (SIGSTOP, a VM pause, swap) wakes with a stale view: every peer
looks silent. Judging them by it would degrade every sync secondary at once and let a
primary that others have replaced complete writes alone. So a stall first gives every peer a
fresh window, and a connection dropped during it says nothing either.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from replengine.node.states import PeerState, Role

if TYPE_CHECKING:
    from replengine.node.core import Node
    from replengine.node.peers import Peer

log = logging.getLogger("replengined")


class Liveness:
    def __init__(self, node: Node) -> None:
        self.node = node
        #: connections reported lost before this are forgiven (dropped while we stalled)
        self.stall_grace_until = 0.0
        #: set by the daemon's SIGCONT handler: the next stall seen was a stop (SIGSTOP)
        self.continued = False
        #: when the running turn began, or when a stall within it was last taken into account
        self.turn_began = 0.0

    def turn(self, gap: float) -> None:
        """The loop starts a turn ``gap`` seconds after the last one began."""
        now = time.monotonic()
        if self.turn_began:  # a stall within the last turn was dealt with then
            gap = min(gap, now - self.turn_began)
        self.turn_began = now
        if gap > 2 * self.node.heartbeat_s:
            self.after_stall(gap)
        elif self.continued:
            self.continued = False  # a stop too short to matter

    def within_turn(self) -> None:
        """Before the turn does what a stale view forbids (a write completed on this node's
        word alone): a turn that has itself not ended for a while is a stall too. The loop
        waits within a turn on a disk that hangs (the SRL's write, under a write of the
        application), or was stopped part way through one, and what it does next in that turn
        would otherwise use the view from before (the fault campaign, seed 7400: a primary
        replaced while its disk hung acknowledged a write alone as it answered)."""
        now = time.monotonic()
        if self.turn_began and now - self.turn_began > 2 * self.node.heartbeat_s:
            self.after_stall(now - self.turn_began)
            self.turn_began = now

    def after_stall(self, gap: float) -> None:
        """This process did not run for ``gap`` seconds: its view of who is alive is stale.
        Every peer gets a fresh liveness window; a deposed primary hears the newer epoch
        within it."""
        node = self.node
        log.warning("this node did not run for %.1fs: re-checking peers before judging them", gap)
        now = time.monotonic()
        # connections the peers dropped while we were frozen report as lost right now: they
        # say nothing about the peers either
        self.stall_grace_until = now + 3 * node.heartbeat_s
        for p in node.peers.values():
            if p.hello is not None:
                p.last_seen = now
        if node.primary is not None:
            # the peers may have taken this silence for a death and promoted another node:
            # a write only this node would hold (no sync secondary to wait for, under
            # degrade) is not acknowledged until their HELLOs had the time to say so
            node.primary.alone_hold_until = now + 3 * node.heartbeat_s
        if self.continued and gap > 3 * node.heartbeat_s:
            # stopped past the ZMTP heartbeat timeout: the peers have dropped our connections
            # (a turn that was merely slow had its I/O thread running: they are fine)
            log.info("stopped for %.1fs (SIGSTOP): reconnecting to every peer now", gap)
            node.transport.reconnect_all()
            if node.primary is not None:  # what the old connections held is gone
                for name in list(node.dcm.resyncs):
                    node.dcm.connection_dropped(node.peers[name])
        self.continued = False

    def on_disconnect(self, name: str) -> None:
        """The connection to a peer dropped (its process died, or the link): treat it as
        gone now rather than after three silent heartbeats; a HELLO brings it back."""
        node = self.node
        peer = node.peers[name]
        if peer.hello is None or not peer.alive(node.heartbeat_s):
            return
        if time.monotonic() < self.stall_grace_until:
            log.info(
                "connection to %s dropped while this node was stalled; waiting for its beacon", name
            )
            if node.primary is not None:
                node.dcm.connection_dropped(peer)
            return
        log.warning("connection to %s lost", name)
        peer.last_seen = 0.0
        self.check(peer, time.monotonic())
        if node.primary:
            node.primary.check_sync_peers()

    def check(self, p: Peer, now: float) -> None:
        """Mark ``p`` gone if it has been silent too long (a beat of the loop, or a drop)."""
        node = self.node
        if p.streaming and not p.alive(node.heartbeat_s, now):
            log.warning(
                "peer %s silent for %.1fs: considered gone",
                p.name,
                now - p.last_seen if p.last_seen else 0.0,
            )
            p.streaming = False
            p.state = PeerState.DISCONNECTED
        if (
            node.role == Role.SECONDARY
            and p.name == node.following
            and not p.alive(node.heartbeat_s, now)
        ):
            log.warning("primary %s gone; waiting for a primary", p.name)
            node.following = ""
