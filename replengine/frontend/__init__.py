"""Block device frontends: how a primary's volume becomes a device applications use.

One interface (frontend.base.Frontend) and one implementation that runs on every kernel with
FUSE and loop devices (frontend.fuseloop). nbd, ublk and device-mapper are detected and, on a
kernel without them, reported in one line (frontend.detect).
"""

from __future__ import annotations

from replengine.frontend.base import BlockTarget, Frontend
from replengine.frontend.detect import KINDS, check_kind, make_frontend

__all__ = ["KINDS", "BlockTarget", "Frontend", "check_kind", "make_frontend"]
