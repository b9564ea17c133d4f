"""The handshake: what a node makes of a peer's HELLO (sent on connect and as a heartbeat).

It checks the peer belongs (config digest, volume size), learns newer epochs (a primary
that hears of one steps down, invariant 4), starts or restarts the stream to a secondary
that follows this primary, and makes a secondary follow the primary with the newest epoch.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from replengine.log.history import divergence_point
from replengine.node.states import IN_DCM, PeerState, Role
from replengine.wire.protocol import Flag, Hello, Reject

if TYPE_CHECKING:
    from replengine.node.core import Node
    from replengine.node.peers import Peer

log = logging.getLogger("replengined")


def on_hello(node: Node, peer: Peer, epoch: int, h: Hello, flags: int = 0) -> None:
    if not configs_agree(node, h):
        reason = (
            f"config digest mismatch: {peer.name} has {h.digest[:12]}, {node.me} has "
            f"{node.cfg.digest[:12]} (node list or settings of {node.cfg.name} differ)"
        )
        reject(node, peer, reason)
        return
    if node.role == Role.PRIMARY and h.following == node.me and h.volume_size < node.volume.size:
        reject(
            node,
            peer,
            f"volume of {peer.name} ({h.volume_size} bytes) is smaller than "
            f"the primary's ({node.volume.size} bytes)",
        )
        return
    restarted = h.session != peer.session
    was_alive = peer.alive(node.heartbeat_s)
    if peer.rejected:
        log.warning("peer %s accepted again", peer.name)
    peer.rejected = ""
    peer.hello, peer.session, peer.epoch = h, h.session, epoch
    peer.hellos += 1
    peer.last_seen = time.monotonic()
    if flags & Flag.ANSWERED:
        peer.answered_at = peer.last_seen
    if epoch > node.known_epoch:
        node.known_epoch = epoch
    if node.role == Role.PRIMARY and node.known_epoch > node.epoch:
        node.step_down(
            f"{peer.name} knows epoch {node.known_epoch}, newer than this primary's {node.epoch}"
        )
    if restarted or not was_alive:
        node.transport.hasten(peer.name)
    if restarted or not was_alive or flags & Flag.ANSWER:
        # answer a newcomer, or a promotion probing its peers, now: not at our next beat.
        # The probe tells this answer from a HELLO sent before it began (ANSWERED)
        if flags & Flag.ANSWER:
            peer.answer_owed = True
        hello_to(node, peer.name)
    if node.role == Role.PRIMARY:
        primary_hello(node, peer, h, restarted or not was_alive)
    else:
        secondary_hello(node, peer, epoch, h)


def hello_to(node: Node, name: str, hello: Hello | None = None, flags: int = 0) -> None:
    """A HELLO to one peer; flagged ANSWERED when it probed us and has no answer yet (ours
    was dropped for want of a connection, as right after a reconnect): the probe waits for
    an answer, and this HELLO holds our state from after its request."""
    peer = node.peers[name]
    owed = Flag.ANSWERED if peer.answer_owed else 0
    if node.send(name, hello or node.hello(), flags | owed) and owed:
        peer.answer_owed = False


def configs_agree(node: Node, h: Hello) -> bool:
    """The same config file, or one step of a rollout apart (`replctl adjust` ran on one of
    the two and not yet on the other: one's previous digest is the other's)."""
    ours = {node.cfg.digest, node.prev_digest} - {""}
    return bool(ours & ({h.digest, h.prev_digest} - {""}))


def reject(node: Node, peer: Peer, reason: str) -> None:
    if peer.rejected != reason:
        log.error("refused peer %s: %s", peer.name, reason)
    peer.rejected = reason
    peer.streaming = False
    node.send(peer.name, Reject(reason))


def primary_hello(node: Node, peer: Peer, h: Hello, fresh: bool) -> None:
    assert node.primary is not None
    if h.following != node.me:
        peer.streaming = False
        return
    if not h.history and node.srl.history and peer.state not in IN_DCM:
        # no history in common (a new node, a re-initialised SRL, the peers of a resource's
        # first primary): nothing says its volume matches ours, so it gets a full sync; the
        # digests make the chunks it already holds (a blank volume's) cost a read, not a copy
        node.dcm.enter_full(
            peer, node.primary, "has no history in common with this primary (a new node)"
        )
        node.dcm.start_resync(peer)
        return
    if peer.state == PeerState.DCM or (peer.state == PeerState.DCM_RESYNC and fresh):
        node.dcm.start_resync(peer)  # back (or restarted mid-copy): copy the regions
        return
    if peer.state == PeerState.DCM_RESYNC:
        return
    if divergence_point(h.history, node.srl.history, h.end_lsn) < h.end_lsn:
        peer.streaming = False
        peer.state = PeerState.REWINDING
        return
    peer.acked_end = max(peer.acked_end, h.end_lsn)
    if (
        peer.streaming
        and not fresh
        and h.end_lsn < peer.next_lsn
        and time.monotonic() - peer.last_progress > 2 * node.heartbeat_s
    ):
        # it reports less than we sent and has not acked anything for two beats: what
        # was in flight was lost (a replaced connection); resend from its end
        log.warning(
            "secondary %s stuck at LSN %d while %d was sent: resending",
            peer.name,
            h.end_lsn,
            peer.next_lsn - 1,
        )
        peer.restart_stream(h.end_lsn)
        peer.last_progress = time.monotonic()
    if fresh or not peer.streaming:
        peer.restart_stream(h.end_lsn)
        peer.streaming = True
        node.primary.on_connect(peer)
        log.info(
            "secondary %s connected at LSN %d (primary end %d)",
            peer.name,
            h.end_lsn,
            node.primary.assigned_end,
        )


def secondary_hello(node: Node, peer: Peer, epoch: int, h: Hello) -> None:
    if h.role == Role.PRIMARY and epoch >= node.known_epoch:
        if node.following != peer.name:
            node.follow(peer, h)
    elif node.following == peer.name and h.role != Role.PRIMARY:
        log.warning("%s is no longer primary; waiting for a primary", peer.name)
        node.following = ""
