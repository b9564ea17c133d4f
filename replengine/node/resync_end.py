"""When a running resync is over, as the receiver's HELLOs and BLOCK_ACKs tell the primary.

Kept apart from DcmTracker (node.dcm), which starts, paces and aborts resyncs: these rules
read only the peer's messages and the job's counters, so they are unit-tested without one.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replengine.node.dcm import Resync
    from replengine.node.peers import Peer

log = logging.getLogger("replengine.node.dcm")

#: a resync whose receiver's BLOCK_ACK after BLOCK_DONE never came (lost with a replaced
#: connection) ends on its HELLOs alone once this many have come since BLOCK_DONE, over at
#: least as many heartbeats, the last saying it is consistent
LATE_HELLOS = 4


def ended_there(peer: Peer, job: Resync, heartbeat_s: float) -> bool:
    """Whether the peer's last HELLO, which says it is consistent, was sent after the copy
    reached it. The receiver turns inconsistent at the copy's first message and says so
    until it has applied past the copy's end, so a HELLO sent after any of its BLOCK_ACKs
    tells. One sent before (a heartbeat on its way as the copy began, or the HELLO that
    started it) would end the resync while the blocks are still unwritten there, and with it
    the dirty-region map that a lost link then needs.

    A receiver whose BLOCK_ACK was lost (a replaced connection) says consistent on every
    beat; after LATE_HELLOS HELLOs since BLOCK_DONE, the last consistent, that is taken as
    the end: a HELLO that old would have needed that many beats on the way."""
    if 0 <= job.hellos_at_ack < peer.hellos:
        return True
    return (
        peer.hellos - job.hellos_at_done >= LATE_HELLOS
        and time.monotonic() - job.done_at >= LATE_HELLOS * heartbeat_s
    )


def unstick(peer: Peer, job: Resync, heartbeat_s: float) -> None:
    """The copy is over and the peer, its log restarted at the resume LSN, catches up from
    ours: a peer in a resync is left out of the handshake's check for a stuck stream, so the
    check is here. Its HELLO says where its log ends; when that is behind what was sent (or
    nothing is being sent) and nothing was acknowledged for two beats, the stream starts
    again from there. (A campaign round ended with a rewound node waiting 30 s for records
    its primary never sent after such a copy: docs/reliability.md.)"""
    h = peer.hello
    assert h is not None
    if h.end_lsn < job.resume_lsn:
        return  # a HELLO from before its log restarted: says nothing of the stream
    if peer.streaming and h.end_lsn >= peer.next_lsn:
        return  # everything sent is there: it is applying, or nothing more was written
    if time.monotonic() - peer.last_progress <= 2 * heartbeat_s:
        return
    log.warning(
        "secondary %s stuck at LSN %d after its resync (stream %s, next LSN %d): "
        "sending again from there",
        peer.name,
        h.end_lsn,
        "on" if peer.streaming else "off",
        peer.next_lsn,
    )
    peer.restart_stream(h.end_lsn)
    peer.streaming = True


__all__ = ["LATE_HELLOS", "ended_there", "unstick"]
