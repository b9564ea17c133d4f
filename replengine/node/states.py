"""The names of a node's role and of a peer's replication state, spelled once.

StrEnums, so they print, compare and travel (HELLO's role, `replctl status --json`) as the
plain words operators already read.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    PRIMARY = "primary"
    SECONDARY = "secondary"


class PeerState(StrEnum):
    """How a primary sees one secondary."""

    UNKNOWN = "unknown"
    UP_TO_DATE = "up-to-date"
    CATCHING_UP = "catching-up"
    DCM = "dcm"  # fell off the log: its regions are tracked in a dirty-region map
    DCM_RESYNC = "dcm-resync"  # those regions are being copied to it
    #: how status names a dcm-resync that owes most of the volume (a new node, a replaced
    #: disk, `replctl sync --full`): inconsistent there until it ends
    FULL_SYNC = "full-sync"
    REWINDING = "rewinding"  # it holds a divergent tail and is rewinding it
    DISCONNECTED = "disconnected"


IN_DCM = (PeerState.DCM, PeerState.DCM_RESYNC)

__all__ = ["IN_DCM", "PeerState", "Role"]
