"""The block device on a real 3-node resource: ext4 through a failover, refusals while in
use, EIO after fencing, the udev name, and frontends this kernel lacks.

Every test runs real daemons, a real FUSE mount, a real loop device and real mkfs/mount.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from replengine.demo.localcluster import LocalResource
from replengine.errors import DeviceError
from replengine.frontend import check_kind
from replengine.frontend.detect import _kernel_has
from tests.device_helpers import check_tree, mounted, needs_device, sh, udevd, write_tree

__all__ = ["udevd"]  # the fixture, used by name

MiB = 1 << 20
NODES = {"alpha": "sync", "beta": "sync", "gamma": "async"}


def make(resource: Callable[..., LocalResource], name: str) -> LocalResource:
    r = resource(NODES, name=name, device="fuse-loop", volume_size=64 * MiB, srl_size=32 * MiB)
    r.up()
    return r


def promote(r: LocalResource, node: str) -> str:
    out = r.promote(node)
    dev = r.status(node)["device"]
    assert dev and f"device {dev}" in out, out
    if r.status(node)["epoch"] == 1:
        # the first promotion syncs every other node from this one; until that ends they
        # are not synchronous replicas (a checksum pass over these blank volumes)
        r.wait_synced()
    return dev


@needs_device
def test_ext4_keeps_every_fsynced_file_through_sigkill_of_the_primary(
    resource: Callable[..., LocalResource], tmp_path: Path, udevd: None
) -> None:
    r = make(resource, "fsdev")
    dev = promote(r, "alpha")
    # udevd runs: applications get the stable names, pointing at the kernel's loop device
    st = r.status("alpha")
    assert dev == "/dev/replengine/fsdev"
    kernel = st["device_kernel"]
    assert os.path.realpath(dev) == kernel
    assert os.path.realpath("/dev/replengine/by-res/fsdev/0") == kernel

    sh("mkfs.ext4", "-q", dev)
    rng = random.Random(7)
    with mounted(dev, tmp_path / "m-alpha") as mnt:
        sums = write_tree(mnt, rng, 120)
        # files still being written when the primary dies: no promise about them
        unsynced = mnt / "unsynced"
        unsynced.write_bytes(rng.randbytes(200_000))
        r.kill("alpha")
        with pytest.raises(OSError):  # the dead primary's device refuses, it does not hang
            with open(mnt / "after-death", "wb") as f:
                f.write(b"x" * 8192)
                os.fsync(f.fileno())

    dev_b = promote(r, "beta")
    with mounted(dev_b, tmp_path / "m-beta") as mnt:  # the journal is replayed here
        check_tree(mnt, sums)
    fsck = sh("e2fsck", "-fn", dev_b, check=False)
    assert fsck.returncode == 0, f"e2fsck -fn after the failover: {fsck.stdout}{fsck.stderr}"

    # the async node has it all too once it caught up; the crashed node rejoins and follows
    r.up("alpha")
    r.wait_synced(["alpha", "beta", "gamma"])
    sums_ok = r.checksums(["alpha", "beta", "gamma"])
    assert len(set(sums_ok.values())) == 1, sums_ok


@needs_device
def test_demote_and_stop_refuse_while_the_device_is_in_use(
    resource: Callable[..., LocalResource], tmp_path: Path
) -> None:
    r = make(resource, "busydev")
    dev = promote(r, "alpha")
    sh("mkfs.ext4", "-q", dev)
    with mounted(dev, tmp_path / "m") as mnt:
        for verb in ("demote", "down"):
            proc = r.replctl("alpha", verb, check=False)
            assert proc.returncode == 1
            assert f"device {dev} is in use (mounted on {mnt})" in proc.stderr, proc.stderr
        # nothing changed: still primary, the file system still writable and durable
        assert r.status("alpha")["role"] == "primary"
        (mnt / "still").write_bytes(b"ok")
        os.sync()
    fd = os.open(dev, os.O_RDONLY)
    try:
        proc = r.replctl("alpha", "demote", check=False)
        assert f"open by process {os.getpid()}" in proc.stderr, proc.stderr
    finally:
        os.close(fd)
    assert "demoted" in r.replctl("alpha", "demote").stdout
    st = r.status("alpha")
    assert st["role"] == "secondary" and st["device"] is None
    loops = sh("losetup", "--list", "--noheadings", "-O", "BACK-FILE").stdout
    assert "busydev/alpha/replengine-fuse" not in loops, loops


def _write_outcome(fd: int, timeout: float = 30.0) -> BaseException | None:
    """One direct 4 KiB write on ``fd``; its error, None if it succeeded. A write still
    blocked after ``timeout`` fails the test: fencing must give EIO, never a hang."""
    buf = mmap.mmap(-1, 4096)
    buf.write(b"f" * 4096)
    box: list[BaseException | None] = []

    def work() -> None:
        try:
            os.pwrite(fd, buf, 0)
            box.append(None)
        except OSError as exc:
            box.append(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"a write on the fenced device still hangs after {timeout}s"
    return box[0]


@needs_device
@pytest.mark.parametrize("how", ["lost-epoch", "sigkill", "forced-stop"])
def test_io_after_fencing_fails_at_once(resource: Callable[..., LocalResource], how: str) -> None:
    r = make(resource, f"fence{how[:4]}")
    dev = promote(r, "alpha")
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    try:
        assert _write_outcome(fd) is None  # served while primary
        if how == "lost-epoch":
            # alpha pauses (a VM freeze); the others promote beta; alpha wakes up, hears the
            # higher epoch and steps down: the writer still holding the device gets EIO
            r.wait_synced()  # beta's first full sync ended: it is promotable
            r.freeze("alpha")
            promote(r, "beta")
            r.signal("alpha", signal.SIGCONT)
            r.wait_for(lambda: r.status("alpha")["role"] == "secondary", 30, "alpha to step down")
        elif how == "sigkill":
            r.kill("alpha")
        else:
            out = r.replctl("alpha", "down", "--force")
            assert out.returncode == 0
        err = _write_outcome(fd)
        assert isinstance(err, OSError) and err.errno in (errno.EIO, errno.ENOTCONN), err
    finally:
        os.close(fd)
    if how == "lost-epoch":
        st = r.status("alpha")
        assert st["device"] is None and st["device_fenced"]
        assert "taken away while in use" in r.log("alpha")


@needs_device
def test_a_restarted_daemon_removes_what_a_killed_one_left(
    resource: Callable[..., LocalResource],
) -> None:
    r = make(resource, "staledev")
    promote(r, "alpha")
    kernel = r.status("alpha")["device_kernel"]
    r.kill("alpha")
    left = sh("losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE").stdout
    assert kernel in left  # the kernel keeps the loop device of a dead daemon
    r.up("alpha")
    left = sh("losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE").stdout
    assert "staledev/alpha/replengine-fuse" not in left, left
    assert "removed what a previous daemon" in r.log("alpha")


@pytest.mark.parametrize("kind", ["nbd", "ublk", "dm"])
def test_frontends_this_kernel_lacks_are_named_in_one_line(kind: str) -> None:
    if _kernel_has(kind):
        with pytest.raises(DeviceError, match="implements only the fuse-loop frontend"):
            check_kind(kind, "r0")
        return
    with pytest.raises(DeviceError) as ei:
        check_kind(kind, "r0")
    msg = str(ei.value)
    assert "\n" not in msg and f'device = "{kind}" cannot run here' in msg
    assert 'use device = "fuse-loop"' in msg


def test_a_daemon_asked_for_a_missing_frontend_does_not_start(
    resource: Callable[..., LocalResource],
) -> None:
    kind = next((k for k in ("nbd", "ublk", "dm") if not _kernel_has(k)), None)
    if kind is None:
        pytest.skip("this kernel has nbd, ublk and device-mapper")
    r = resource(NODES, name="nodev", device=kind)
    proc = r.replctl("alpha", "up", check=False)
    assert proc.returncode != 0
    assert f'device = "{kind}" cannot run here' in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


TIMEOUT_SYSCTL = Path("/proc/sys/fs/fuse/default_request_timeout")


@needs_device
@pytest.mark.skipif(not TIMEOUT_SYSCTL.exists(), reason="this kernel has no FUSE request timeout")
def test_a_hung_primary_cannot_hang_its_device_for_ever(
    resource: Callable[..., LocalResource],
) -> None:
    """A stopped (not dead) daemon: the kernel's FUSE request timeout, taken at mount time,
    ends the connection and the application gets an error; the daemon, resumed, reports the
    device lost, and the agent's monitor sees a failed Promoted instance."""
    r = make(resource, "hungdev")
    before = TIMEOUT_SYSCTL.read_text()
    TIMEOUT_SYSCTL.write_text("2\n")  # short, for the test; the daemon keeps a set value
    try:
        dev = promote(r, "alpha")
    finally:
        TIMEOUT_SYSCTL.write_text(before)
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    try:
        r.freeze("alpha")
        err = _write_outcome(fd, timeout=60)
        assert isinstance(err, OSError) and err.errno in (errno.EIO, errno.ENOTCONN), err
    finally:
        os.close(fd)
        r.signal("alpha", signal.SIGCONT)
    st = r.wait_for(lambda: (s := r.status("alpha"))["device_lost"] and s, 30, "device lost")
    assert st["role"] == "primary" and "lost" in st["device_error"]
    # stop still works and leaves nothing behind
    r.replctl("alpha", "down", "--force")
    loops = sh("losetup", "--list", "--noheadings", "-O", "BACK-FILE").stdout
    assert "hungdev/alpha/replengine-fuse" not in loops, loops


@needs_device
def test_stale_device_is_found_after_its_mount_namespace_died(
    resource: Callable[..., LocalResource],
) -> None:
    """A daemon in a private mount namespace (a service with PrivateMounts, a cluster node in
    its own namespaces) is killed: the namespace dies with it and the kernel reports the
    loop device's backing file as a bare "/<resource>". The next daemon still finds it, by
    the device and diskseq it recorded."""
    import subprocess
    import sys

    r = resource(NODES, name="nsdev", device="fuse-loop", volume_size=16 * MiB, srl_size=16 * MiB)
    up = [sys.executable, "-m", "replengine.cli", "up", "--config", str(r.config), "--node"]
    subprocess.run(["unshare", "--mount", "--propagation", "private", *up, "alpha"], check=True)
    r.up("beta", "gamma")
    promote(r, "alpha")
    kernel = r.status("alpha")["device_kernel"]
    r.kill("alpha")

    def backing() -> str:
        back = sh("losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE").stdout
        return next(ln.split()[1] for ln in back.splitlines() if ln.split()[0] == kernel)

    # the kernel tears the namespace down shortly after its last process is gone
    r.wait_for(lambda: backing() == "/nsdev", 30, "the backing path to lose its namespace")
    r.up("alpha")
    back = sh("losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE").stdout
    assert not any(ln.split() == [kernel, "/nsdev"] for ln in back.splitlines()), back
    assert f"left behind: {kernel}" in r.log("alpha")
