"""The interface every device frontend offers the node, and what it needs from the node.

The frontend's side is the node's own DeviceHooks (node.context: the loop names what it asks
of a frontend); the node's side, BlockTarget, is what node.device_io.DeviceIO offers.
"""

from __future__ import annotations

from typing import Protocol

from replengine.node.context import DeviceHooks as Frontend
from replengine.node.context import Exposed
from replengine.node.device_io import Done


class BlockTarget(Protocol):
    """The node's side of a device (node.device_io.DeviceIO): thread-safe."""

    fenced: bool

    @property
    def size(self) -> int: ...

    def submit_write(self, offset: int, data: memoryview | bytes, done: Done) -> None: ...

    def flushed(self) -> bool:
        """True when a flush now has nothing to wait for (no write in flight, not fenced)."""
        ...

    def submit_flush(self, done: Done) -> None: ...

    def read(self, offset: int, length: int) -> bytes: ...


__all__ = ["BlockTarget", "Done", "Exposed", "Frontend"]
