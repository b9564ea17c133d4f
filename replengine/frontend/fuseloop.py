"""The fuse-loop frontend: the volume as a file on a FUSE mount the daemon serves, and a loop
device over that file, named /dev/replengine/<resource> by udev.

Runs on any kernel with FUSE and loop devices (no nbd, ublk or device-mapper needed).
Everything it creates lives under the node's runtime directory, so what a killed daemon left
behind (a loop device over a dead FUSE mount) is found and removed by the next one.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from replengine.errors import DeviceError
from replengine.frontend import loopdev
from replengine.frontend.fusefs import FuseServer, VolumeFS, raise_queue_depth
from replengine.frontend.udevlink import LinkWaiter, stable_name, udevd_running

if TYPE_CHECKING:
    from replengine.frontend.base import BlockTarget, Exposed

log = logging.getLogger(__name__)

MOUNT_DIR = "replengine-fuse"
#: beside the mount: the loop device attached, with its diskseq. Once the mount namespace of
#: a killed daemon is gone (a power-cut node in its own namespace) the kernel reports the
#: backing file as a bare "/<resource>", so the path alone cannot find a stale device
STATE_FILE = "device.attached"
UDEV_WAIT_S = 10.0
#: FUSE's own watchdog (Linux 6.14+): a request unanswered this long aborts the connection,
#: so a hung (stopped, not dead) daemon cannot hang the applications for ever
TIMEOUT_SYSCTL = Path("/proc/sys/fs/fuse/default_request_timeout")
MIN_REQUEST_TIMEOUT_S = 60


def ensure_request_timeout(sync_timeout: float) -> str:
    """Set the kernel's FUSE request timeout when it is off; a line saying what holds."""
    want = max(MIN_REQUEST_TIMEOUT_S, int(2 * sync_timeout) + 1)
    try:
        now = int(TIMEOUT_SYSCTL.read_text().strip() or 0)
    except (OSError, ValueError):
        return (
            "this kernel has no FUSE request timeout (Linux < 6.14): a hung daemon hangs "
            "device I/O until it is killed or /sys/fs/fuse/connections/*/abort is written"
        )
    if now:
        return f"FUSE request timeout {now}s (fs.fuse.default_request_timeout)"
    try:
        TIMEOUT_SYSCTL.write_text(f"{want}\n")
    except OSError as exc:
        return f"could not set fs.fuse.default_request_timeout to {want}s: {exc}"
    return f"FUSE request timeout set to {want}s (fs.fuse.default_request_timeout was 0)"


def recorded_device(state_file: Path) -> str | None:
    """The loop device a daemon recorded in ``state_file``, if it is still that very
    attachment (same diskseq); None when it is gone or the kernel has no diskseq."""
    try:
        dev, _, seq = state_file.read_text().strip().partition(" ")
    except OSError:
        return None
    return dev if dev and seq and loopdev.diskseq(dev) == seq else None


class FuseLoop:
    kind = "fuse-loop"

    def __init__(
        self, resource: str, runtime_dir: Path, target: BlockTarget, sync_timeout: float = 30.0
    ) -> None:
        self.resource = resource
        self.mountpoint = runtime_dir / MOUNT_DIR
        self.state_file = runtime_dir / STATE_FILE
        self.target = target
        self.sync_timeout = sync_timeout
        self.path: str | None = None
        self.kernel_device: str | None = None
        self.error = ""
        #: the device was exposed and then broke under its users
        self.lost = False
        self._server: FuseServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- expose ---------------------------------------------------------------------------

    def expose(self, done: Exposed) -> None:
        def work() -> None:
            try:
                with self._lock:
                    path = self._expose()
            except DeviceError as exc:
                self.error = str(exc)
                log.error("device of %s not exposed: %s", self.resource, exc)
                done(None, str(exc))
                return
            done(path, None)

        self._thread = threading.Thread(target=work, name="expose", daemon=True)
        self._thread.start()

    def _expose(self) -> str:
        if self.path is not None:
            return self.path
        self.error = ""
        self.lost = False
        self._cleanup_stale()
        log.info("%s", ensure_request_timeout(self.sync_timeout))
        server = FuseServer(
            VolumeFS(self.resource, self.target),
            self.mountpoint,
            f"replengine:{self.resource}",
            on_lost=self._lost,
        )
        server.start()
        self._server = server
        log.info("%s", raise_queue_depth(self.mountpoint))
        link = stable_name(self.resource)
        waiter = LinkWaiter(link)
        try:
            dev = loopdev.attach(server.file)
        except DeviceError:
            server.stop()
            self._server = None
            raise
        self.kernel_device = dev
        self.state_file.write_text(f"{dev} {loopdev.diskseq(dev) or ''}\n")
        if waiter.wait(dev, UDEV_WAIT_S):
            self.path = str(link)
        else:
            self.path = dev
            if udevd_running():
                self.error = (
                    f"udev made no {link} for {dev} in {UDEV_WAIT_S:.0f}s: is "
                    "65-replengine.rules installed in /usr/lib/udev/rules.d?"
                )
            else:
                self.error = f"udevd is not running: no stable name {link}; use {dev}"
            log.warning("device of %s: %s", self.resource, self.error)
        waiter.close()
        log.warning("DEVICE %s exposed (%s over %s)", self.path, dev, server.file)
        return self.path

    def _lost(self, why: str) -> None:
        self.lost = True
        self.error = (
            f"device {self.path or self.kernel_device} lost: {why}; every I/O on it fails "
            "until the resource is demoted and promoted again (or stopped)"
        )
        log.critical("%s", self.error)

    # ---- in use? --------------------------------------------------------------------------

    def holders(self) -> list[str]:
        return loopdev.holders(self.kernel_device) if self.kernel_device else []

    # ---- withdraw -------------------------------------------------------------------------

    def withdraw(self) -> None:
        if self._thread is not None:
            self._thread.join()  # an expose still running finishes first
            self._thread = None
        with self._lock:
            dev, server = self.kernel_device, self._server
            if dev is None and server is None:
                return
            if dev is not None:
                try:
                    loopdev.detach(dev)
                except DeviceError as exc:
                    log.error("%s", exc)
            if server is not None:
                try:
                    server.stop()
                except DeviceError as exc:
                    log.error("%s", exc)
            if loopdev.is_mounted(self.mountpoint):
                try:
                    loopdev.unmount_lazy(self.mountpoint)
                except DeviceError as exc:
                    log.error("%s", exc)
            self.state_file.unlink(missing_ok=True)
            log.warning("DEVICE %s withdrawn", self.path or dev)
            self.path = self.kernel_device = None
            self._server = None
            self.lost = False
            self.error = ""

    def cleanup_stale(self) -> list[str]:
        with self._lock:
            return self._cleanup_stale()

    def _recorded(self) -> list[str]:
        dev = recorded_device(self.state_file)
        if dev is None:
            self.state_file.unlink(missing_ok=True)  # long gone; the name may be another's
        return [dev] if dev else []

    def stale_devices(self) -> list[str]:
        """Loop devices a previous daemon of this node attached and left: the one it recorded,
        and any over a file under our mount point."""
        stale = self._recorded()
        stale += [d for d in loopdev.loops_under(self.mountpoint) if d not in stale]
        return [d for d in stale if d != self.kernel_device]

    def _cleanup_stale(self) -> list[str]:
        removed = []
        for dev in self.stale_devices():
            try:
                loopdev.detach(dev)
                removed.append(dev)
            except DeviceError as exc:
                log.error("stale %s: %s", dev, exc)
        if self.kernel_device is None:
            self.state_file.unlink(missing_ok=True)
        if self._server is None and loopdev.is_mounted(self.mountpoint):
            loopdev.unmount_lazy(self.mountpoint)
            removed.append(str(self.mountpoint))
        if removed:
            log.warning(
                "removed what a previous daemon of %s left behind: %s",
                self.resource,
                ", ".join(removed),
            )
        return removed


__all__ = ["STATE_FILE", "FuseLoop", "ensure_request_timeout", "recorded_device"]
