"""The interface every device frontend offers the node, and what it needs from the node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

#: Called once per request with None (done) or the error that failed it.
Done = Callable[[str | None], None]
#: Called once when exposing ends: the device path, or None and the error.
Exposed = Callable[[str | None, str | None], None]


class BlockTarget(Protocol):
    """The node's side of a device (node.device_io.DeviceIO): thread-safe."""

    fenced: bool

    @property
    def size(self) -> int: ...

    def submit_write(self, offset: int, data: memoryview | bytes, done: Done) -> None: ...

    def submit_flush(self, done: Done) -> None: ...

    def read(self, offset: int, length: int) -> bytes: ...


class Frontend(Protocol):
    """A block device over a resource's volume, present only while the node is primary."""

    kind: str
    #: the path applications use (the stable udev name when there is one), once exposed
    path: str | None
    #: the kernel device behind it (/dev/loop3), once exposed
    kernel_device: str | None
    #: why the device is missing or broken, for status
    error: str
    #: exposed, then broken under its users (the kernel ended the FUSE connection)
    lost: bool

    def expose(self, done: Exposed) -> None:
        """Start exposing in the background; ``done`` is called from another thread."""
        ...

    def holders(self) -> list[str]:
        """Who has the device mounted or open, as `umount` would name them; [] when free."""
        ...

    def withdraw(self) -> None:
        """Detach the device and undo everything expose did (blocking, idempotent). I/O
        still in the kernel gets EIO."""
        ...

    def cleanup_stale(self) -> list[str]:
        """Remove what a killed daemon of this node left behind; what was removed."""
        ...


__all__ = ["BlockTarget", "Done", "Exposed", "Frontend"]
