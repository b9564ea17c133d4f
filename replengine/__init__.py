"""replengine: block-volume replication with log-diff fast failover."""

from __future__ import annotations

__version__ = "0.1.0"
