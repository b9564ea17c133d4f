"""Loop devices over the FUSE file, and who holds them.

losetup (util-linux) does the attaching: it knows every kernel's loop ioctls and flags. The
device is attached with direct I/O, so nothing is cached twice and every write reaches the
daemon when the kernel issues it, and with 4096-byte sectors, the SRL's unit.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from replengine.errors import DeviceError

log = logging.getLogger(__name__)

SECTOR_SIZE = 4096
_SYS_BLOCK = Path("/sys/block")
#: processes that open a new block device for a moment to probe it
_PROBERS = ("systemd-udevd", "(udev-worker)", "udevadm", "blkid")


def _run(argv: list[str], what: str, timeout: float = 30.0) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise DeviceError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{what}: {' '.join(argv)} did not finish in {timeout}s") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise DeviceError(f"{what}: {msg[-1] if msg else f'exit code {proc.returncode}'}")
    return proc.stdout.strip()


def attach(file: Path) -> str:
    """A new loop device over ``file``; its path (/dev/loopN)."""
    return _run(
        [
            "losetup",
            "--find",
            "--show",
            "--direct-io=on",
            "--sector-size",
            str(SECTOR_SIZE),
            str(file),
        ],
        f"attaching a loop device to {file}",
    )


def detach(dev: str) -> None:
    """Detach ``dev``; a device still open (a forced stop) goes when its last user closes it."""
    _run(["losetup", "--detach", dev], f"detaching {dev}")


def backing_file(dev: str) -> str | None:
    name = os.path.basename(dev)
    try:
        return (_SYS_BLOCK / name / "loop" / "backing_file").read_text().strip()
    except OSError:
        return None


def diskseq(dev: str) -> str | None:
    """The kernel's sequence number of this attachment: a loop device name is reused, its
    diskseq never is."""
    try:
        return (_SYS_BLOCK / os.path.basename(dev) / "diskseq").read_text().strip()
    except OSError:
        return None


def loops_under(directory: Path) -> list[str]:
    """Loop devices whose backing file lies under ``directory`` (ours, alive or stale)."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    for entry in sorted(_SYS_BLOCK.glob("loop*")):
        try:
            back = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if back.startswith(prefix):
            found.append(f"/dev/{entry.name}")
    return found


@dataclass(frozen=True)
class Mount:
    devno: str  # "major:minor"
    mountpoint: str
    fstype: str
    source: str


def mounts() -> list[Mount]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        mp = fields[4].encode().decode("unicode_escape")
        out.append(Mount(fields[2], mp, fields[sep + 1], fields[sep + 2]))
    return out


def is_mounted(path: Path) -> bool:
    """A mount at ``path``, alive or a dead FUSE one (whose stat fails)."""
    p = str(path).rstrip("/")
    return any(m.mountpoint == p for m in mounts())


def unmount_lazy(path: Path) -> None:
    """Detach a mount now; whoever still uses it gets errors, not a hang."""
    _run(["umount", "--lazy", str(path)], f"unmounting {path}")


def holders(dev: str) -> list[str]:
    """Who has ``dev`` mounted or open, one phrase each ("mounted on /srv/pg"); [] if free."""
    try:
        st = os.stat(dev)
    except FileNotFoundError:
        return []
    if not stat.S_ISBLK(st.st_mode):
        return []
    rdev = st.st_rdev
    devno = f"{os.major(rdev)}:{os.minor(rdev)}"
    found = [f"mounted on {m.mountpoint}" for m in mounts() if m.devno == devno]
    node = os.path.realpath(dev)  # /dev/loopN: what an open descriptor of it reads as
    name = os.path.basename(node)
    try:
        found += [f"held by {h}" for h in sorted(os.listdir(_SYS_BLOCK / name / "holders"))]
    except OSError:
        pass
    for proc in psutil.process_iter(["pid", "name"]):
        pid = proc.info["pid"]
        if (proc.info["name"] or "") in _PROBERS:
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            # the link's text, never a stat through it: that would ask the file's own file
            # system, and one hung file system anywhere on the host (a stopped FUSE daemon,
            # an NFS server gone) would hang this node's step-down with it
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target == node:
                found.append(f"open by process {pid} ({proc.info['name']})")
                break
    return found


__all__ = [
    "SECTOR_SIZE",
    "Mount",
    "attach",
    "backing_file",
    "detach",
    "diskseq",
    "holders",
    "is_mounted",
    "loops_under",
    "mounts",
    "unmount_lazy",
]
