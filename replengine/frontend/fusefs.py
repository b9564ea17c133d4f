"""The volume as one file on a FUSE mount, served from a thread of the daemon.

The kernel's loop driver (frontend.loopdev) turns the file into a block device. Serving it
from inside the daemon is what makes fencing simple: when the daemon dies, the kernel aborts
the FUSE connection and every I/O on the device gets EIO within milliseconds; when the node
stops being primary, the target refuses and the application gets EIO at once.

pyfuse3 runs on trio: each request is a task, so with the loop device queueing several at a
time (direct I/O, async) they reach the pipeline together and share a group commit.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from replengine.errors import DeviceError

if TYPE_CHECKING:
    from replengine.frontend.base import BlockTarget

log = logging.getLogger(__name__)

ROOT = pyfuse3.ROOT_INODE
FILE = ROOT + 1


class VolumeFS(pyfuse3.Operations):
    """A directory holding one file, ``name``, of the volume's size."""

    def __init__(self, name: str, target: BlockTarget) -> None:
        super().__init__()
        self.name = name.encode()
        self.target = target
        self.token: trio.lowlevel.TrioToken | None = None
        #: requests the node has answered, to be woken in the trio thread (see _wait)
        self._answered: deque[trio.Event] = deque()
        self._waking = False

    # ---- metadata -------------------------------------------------------------------------

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = 300
        a.attr_timeout = 300
        a.st_uid = a.st_gid = 0
        a.st_blksize = 4096
        if inode == ROOT:
            a.st_mode = stat.S_IFDIR | 0o700
            a.st_nlink = 2
            a.st_size = 0
        else:
            a.st_mode = stat.S_IFREG | 0o600
            a.st_nlink = 1
            a.st_size = self.target.size
        a.st_blocks = (a.st_size + 511) // 512
        return a

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext = None
    ) -> pyfuse3.EntryAttributes:
        if inode not in (ROOT, FILE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        if parent_inode != ROOT or name != self.name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(FILE)

    async def setattr(self, inode, attr, fields, fh, ctx):  # type: ignore[no-untyped-def]
        if fields.update_size and attr.st_size != self.target.size:
            raise pyfuse3.FUSEError(errno.EPERM)  # the volume's size is the resource's
        return self._attrs(inode)

    async def opendir(self, inode: int, ctx) -> int:  # type: ignore[no-untyped-def]
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return ROOT

    async def readdir(self, fh: int, start_id: int, token) -> None:  # type: ignore[no-untyped-def]
        if start_id == 0:
            pyfuse3.readdir_reply(token, self.name, self._attrs(FILE), 1)

    async def statfs(self, ctx) -> pyfuse3.StatvfsData:  # type: ignore[no-untyped-def]
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = self.target.size // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = 1
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # ---- data -----------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:  # type: ignore[no-untyped-def]
        if inode != FILE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        # no page cache on our side: every read and write reaches us, so a fenced node can
        # refuse it and a read sees exactly what was completed
        return pyfuse3.FileInfo(fh=FILE, direct_io=True, keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        end = min(off + size, self.target.size)
        if off >= end:
            return b""
        try:
            if end - off > 256 << 10:  # a large read must not stall every other request
                return await trio.to_thread.run_sync(self.target.read, off, end - off)
            return self.target.read(off, end - off)
        except Exception as exc:
            log.error("device read of %d bytes at %d failed: %s", end - off, off, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if off + len(buf) > self.target.size:
            raise pyfuse3.FUSEError(errno.ENOSPC)
        err = await self._wait(lambda done: self.target.submit_write(off, buf, done))
        if err is not None:
            log.error("device write of %d bytes at %d failed: %s", len(buf), off, err)
            raise pyfuse3.FUSEError(errno.EIO)
        return len(buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.target.flushed():
            return  # every write answered is durable: nothing to wait for
        err = await self._wait(self.target.submit_flush)
        if err is not None:
            log.error("device flush failed: %s", err)
            raise pyfuse3.FUSEError(errno.EIO)

    async def flush(self, fh: int) -> None:
        """close(2): nothing to do; every completed write is already durable."""

    async def release(self, fh: int) -> None:
        pass

    async def _wait(self, submit) -> str | None:  # type: ignore[no-untyped-def]
        """Hand a request to the node and sleep until the node's loop answers it.

        The loop answers a queue's worth of requests in one turn (one group commit); each
        answer crossing into trio on its own was a write to trio's wake-up socket and a
        pass of its run loop per request. The answers are queued, and only the first since
        trio last looked schedules a wake-up, which sets them all."""
        token = self.token
        assert token is not None
        event = trio.Event()
        box: list[str | None] = []

        def done(err: str | None) -> None:
            box.append(err)
            self._answered.append(event)
            if self._waking:
                return  # trio has yet to run the wake-up scheduled before: it sees this one
            self._waking = True
            try:
                token.run_sync_soon(self._wake_answered)
            except trio.RunFinishedError:
                pass  # the server is gone; nobody waits any more

        submit(done)
        await event.wait()
        return box[0]

    def _wake_answered(self) -> None:
        """In trio: wake every request answered so far. The flag is lowered before the
        queue is read, so an answer queued after the read schedules a wake-up of its own."""
        self._waking = False
        answered = self._answered
        while answered:
            answered.popleft().set()


class FuseServer:
    """One pyfuse3 mount served by a trio loop in its own thread.

    pyfuse3 keeps one mount per process, which is all a daemon needs: one resource, one
    device."""

    def __init__(
        self,
        fs: VolumeFS,
        mountpoint: Path,
        fsname: str,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.fs = fs
        self.on_lost = on_lost
        self._stopping = False
        self.mountpoint = mountpoint
        self.fsname = fsname
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.ended = threading.Event()
        self.failure = ""

    def start(self, timeout: float = 10.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._thread = threading.Thread(target=self._run, name="fuse", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise DeviceError(f"FUSE mount at {self.mountpoint} did not come up in {timeout}s")
        if self._error is not None:
            raise DeviceError(f"FUSE mount at {self.mountpoint} failed: {self._error}")

    def _run(self) -> None:
        options = set(pyfuse3.default_options)
        options.add(f"fsname={self.fsname}")
        options.add("subtype=replengine")
        try:
            pyfuse3.init(self.fs, str(self.mountpoint), options)
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            self.ended.set()
            return
        try:
            trio.run(self._main)
            if not self._stopping:
                # the kernel ended the connection: its request timeout fired while this
                # process was not running, or someone wrote .../connections/N/abort
                self.failure = "the kernel ended the FUSE connection"
        except BaseException as exc:
            self.failure = str(exc) or type(exc).__name__
        finally:
            if self.failure:
                log.error("FUSE server of %s stopped: %s", self.mountpoint, self.failure)
                if self.on_lost is not None:
                    self.on_lost(self.failure)
            try:
                pyfuse3.close(unmount=True)
            except Exception as exc:
                log.warning("unmounting %s: %s", self.mountpoint, exc)
            self.ended.set()

    async def _main(self) -> None:
        self.fs.token = trio.lowlevel.current_trio_token()
        self._ready.set()
        await pyfuse3.main(min_tasks=4, max_tasks=128)

    def stop(self, timeout: float = 10.0) -> None:
        token = self.fs.token
        self._stopping = True
        if self._thread is None or self.ended.is_set():
            return
        if token is not None:
            try:
                token.run_sync_soon(pyfuse3.terminate)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise DeviceError(f"FUSE server of {self.mountpoint} did not stop in {timeout}s")

    @property
    def file(self) -> Path:
        return self.mountpoint / self.fs.name.decode()


FUSECTL = Path("/sys/fs/fuse/connections")
#: requests the kernel keeps in flight to the daemon at once (FUSE's default is 12): the loop
#: device's queue depth reaches the pipeline, and group commit, only up to this
MAX_BACKGROUND = 128


def raise_queue_depth(mountpoint: Path) -> str:
    """Let the kernel send up to MAX_BACKGROUND requests at once on this mount's connection
    (through fusectl, mounted if nothing did); a line saying what holds."""
    try:
        if not any(FUSECTL.iterdir()):
            subprocess.run(
                ["mount", "-t", "fusectl", "fusectl", str(FUSECTL)],
                capture_output=True,
                check=False,
            )
        dev = os.stat(mountpoint).st_dev
        conn = FUSECTL / str(os.minor(dev) if os.major(dev) == 0 else dev)
        (conn / "max_background").write_text(f"{MAX_BACKGROUND}\n")
        (conn / "congestion_threshold").write_text(f"{MAX_BACKGROUND * 3 // 4}\n")
    except OSError as exc:
        return f"FUSE queue depth left at the kernel's default of 12 ({exc})"
    return f"FUSE queue depth {MAX_BACKGROUND}"


def is_mountpoint(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return True  # a dead FUSE mount: stat fails with ENOTCONN


__all__ = ["FuseServer", "VolumeFS", "is_mountpoint", "raise_queue_depth"]
