"""The fuse-loop frontend alone, over a fake target (a file), on a real FUSE mount and a real
loop device: what the kernel sees, without a daemon. The daemon-level behaviour is in
tests/test_device.py."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from replengine.frontend import fuseloop, udevlink
from replengine.frontend.fuseloop import FuseLoop
from tests.device_helpers import needs_device
from tests.faults import faultfs

pytestmark = needs_device

SIZE = 16 << 20


class FileTarget:
    """A BlockTarget over a plain file that completes writes from another thread, as the
    node's loop does."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, SIZE)
        self.fenced = False
        self.writes: list[tuple[int, int]] = []
        self.flushes = 0

    @property
    def size(self) -> int:
        return SIZE

    def submit_write(self, offset, data, done) -> None:  # type: ignore[no-untyped-def]
        if self.fenced:
            done("fenced")
            return
        os.pwrite(self.fd, data, offset)
        self.writes.append((offset, len(data)))
        threading.Thread(target=done, args=(None,)).start()

    def flushed(self) -> bool:
        return False  # every flush reaches submit_flush, to be counted

    def submit_flush(self, done) -> None:  # type: ignore[no-untyped-def]
        self.flushes += 1
        done("fenced" if self.fenced else None)

    def read(self, offset: int, length: int) -> bytes:
        if self.fenced:
            raise OSError(errno.EIO, "fenced")
        return os.pread(self.fd, length, offset)


@pytest.fixture
def exposed(tmp_path: Path) -> Iterator[tuple[FuseLoop, FileTarget]]:
    target = FileTarget(tmp_path / "backing")
    fl = FuseLoop("fetest", tmp_path / "run", target)
    box: list = []
    ev = threading.Event()
    fl.expose(lambda path, err: (box.append((path, err)), ev.set()))
    assert ev.wait(30)
    assert box[0][1] is None, box
    yield fl, target
    fl.withdraw()


def _aligned(data: bytes) -> mmap.mmap:
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    return buf


def test_writes_reads_and_flushes_reach_the_target(exposed: tuple[FuseLoop, FileTarget]) -> None:
    fl, target = exposed
    fd = os.open(fl.kernel_device, os.O_RDWR | os.O_DIRECT)
    try:
        os.pwrite(fd, _aligned(b"a" * 8192), 4096)
        assert (4096, 8192) in target.writes  # one request, as the kernel issued it
        os.fsync(fd)
        assert target.flushes >= 1
        assert os.pread(target.fd, 8192, 4096) == b"a" * 8192
        buf = mmap.mmap(-1, 8192)
        assert os.preadv(fd, [buf], 4096) == 8192 and bytes(buf) == b"a" * 8192
        target.fenced = True
        with pytest.raises(OSError) as ei:
            os.pwrite(fd, _aligned(b"b" * 4096), 0)
        assert ei.value.errno == errno.EIO
    finally:
        os.close(fd)


def test_holders_name_the_open_process(exposed: tuple[FuseLoop, FileTarget]) -> None:
    fl, _ = exposed
    assert fl.holders() == []
    fd = os.open(fl.kernel_device, os.O_RDONLY)
    try:
        assert any(f"open by process {os.getpid()}" in h for h in fl.holders())
    finally:
        os.close(fd)
    assert fl.holders() == []


def test_holders_do_not_hang_on_a_hung_file_system_elsewhere(
    exposed: tuple[FuseLoop, FileTarget], tmp_path: Path
) -> None:
    """A file open on a mount whose server hangs (a stopped FUSE daemon, an NFS server gone)
    must not hang the question of who holds our device: a node stepping down asks it. Found
    by the fault campaign: a fenced primary's step-down hung while another node's disk
    hung, its holders() stat()ing every process's open files."""
    fl, _ = exposed
    mnt, backing = tmp_path / "hung", tmp_path / "hung.backing"
    mnt.mkdir()
    backing.mkdir()
    (backing / "file").write_bytes(b"x")
    with faultfs.mounted(backing, mnt) as fuse:
        fd = os.open(mnt / "file", os.O_RDONLY)
        try:
            os.kill(fuse.pid, signal.SIGSTOP)
            box: list = []
            t = threading.Thread(target=lambda: box.append(fl.holders()), daemon=True)
            t.start()
            t.join(10)
            hung = t.is_alive()
            os.kill(fuse.pid, signal.SIGCONT)
            t.join(10)
        finally:
            os.close(fd)
    assert not hung, "holders() waited on a file system that does not answer"
    assert box == [[]]


def test_without_udevd_the_kernel_name_is_used_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fuseloop, "udevd_running", lambda: False)
    monkeypatch.setattr(udevlink, "udevd_running", lambda: False)
    target = FileTarget(tmp_path / "backing")
    fl = FuseLoop("noudev", tmp_path / "run", target)
    ev = threading.Event()
    fl.expose(lambda path, err: ev.set())
    assert ev.wait(30)
    try:
        assert fl.path == fl.kernel_device and fl.path.startswith("/dev/loop")
        assert (
            fl.error
            == f"udevd is not running: no stable name /dev/replengine/noudev; use {fl.path}"
        )
    finally:
        fl.withdraw()
    assert fl.path is None and not fuseloop.loopdev.loops_under(tmp_path / "run")


def test_withdraw_with_the_device_open_detaches_lazily_and_fails_its_io(
    exposed: tuple[FuseLoop, FileTarget],
) -> None:
    fl, _ = exposed
    fd = os.open(fl.kernel_device, os.O_RDWR | os.O_DIRECT)
    try:
        fl.withdraw()
        with pytest.raises(OSError) as ei:
            os.pwrite(fd, _aligned(b"c" * 4096), 0)
        assert ei.value.errno in (errno.EIO, errno.ENOTCONN)
    finally:
        os.close(fd)
