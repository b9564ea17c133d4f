"""The stable name /dev/replengine/<resource>, made by udev (udev/65-replengine.rules).

The daemon waits for udev's event for the new loop device rather than sleeping: a monitor is
listening before the device is attached, so the event cannot be missed. Without udevd the
device still works under its kernel name, and the daemon says the stable name is missing.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pyudev

log = logging.getLogger(__name__)

LINK_DIR = Path("/dev/replengine")


def stable_name(resource: str) -> Path:
    return LINK_DIR / resource


def udevd_running() -> bool:
    return Path("/run/udev/control").exists()


def points_to(link: Path, dev: str) -> bool:
    try:
        return os.path.realpath(link) == os.path.realpath(dev)
    except OSError:
        return False


class LinkWaiter:
    """Listen for udev before attaching; then wait for the link to the new device."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.monitor: pyudev.Monitor | None = None
        if udevd_running():
            context = pyudev.Context()
            self.monitor = pyudev.Monitor.from_netlink(context, source="udev")
            self.monitor.filter_by("block")
            self.monitor.start()

    def wait(self, dev: str, timeout: float) -> bool:
        """True once ``link`` names ``dev``; False when udevd is absent or too slow."""
        if self.monitor is None:
            return points_to(self.link, dev)
        name = os.path.basename(dev)
        deadline = time.monotonic() + timeout
        while not points_to(self.link, dev):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            event = self.monitor.poll(timeout=left)
            if event is not None and event.sys_name == name:
                continue  # udev has processed an event for it: look at the link again
        return True

    def close(self) -> None:
        self.monitor = None


__all__ = ["LINK_DIR", "LinkWaiter", "points_to", "stable_name", "udevd_running"]
