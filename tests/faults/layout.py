"""The resource every round of the fault schedule runs on: four nodes, small files, so a
lag fills the SRL within a second or two and a full sync is a moment's work."""

from __future__ import annotations

NODES = {"alpha": "sync", "beta": "sync", "gamma": "sync", "delta": "async"}
VOLUME_SIZE = 4 << 20
SRL_SIZE = (1 << 20) + (256 << 10)  # fills after ~1.2 MiB of lag: a second or two away
MAX_AWAY = 2  # nodes killed or frozen at once

__all__ = ["MAX_AWAY", "NODES", "SRL_SIZE", "VOLUME_SIZE"]
