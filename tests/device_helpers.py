"""Helpers for the block device tests: a real FUSE file, a real loop device, udev, ext4.

Nothing here is mocked: the device is what `mkfs.ext4` and `mount` see on this machine.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from replengine.errors import DeviceError
from replengine.frontend import check_kind

REPO = Path(__file__).resolve().parents[1]


def device_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the block device needs root (FUSE mount, losetup, mount)"
    try:
        check_kind("fuse-loop")
    except DeviceError as exc:
        return str(exc)
    return None


needs_device = pytest.mark.skipif(
    device_unavailable() is not None, reason=device_unavailable() or ""
)


@pytest.fixture(scope="session")
def udevd() -> None:
    """udevd running with our rule, so the stable name /dev/replengine/<resource> appears."""
    subprocess.run(["bash", str(REPO / "scripts" / "start-udevd.sh")], check=True)


def sh(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return proc


@contextmanager
def mounted(dev: str, where: Path) -> Iterator[Path]:
    """Mount for the test; at the end unmount, lazily if the device is gone (a crash)."""
    where.mkdir(parents=True, exist_ok=True)
    sh("mount", dev, where)
    try:
        yield where
    finally:
        if sh("umount", where, check=False).returncode != 0:
            sh("umount", "--lazy", where, check=False)


def write_tree(root: Path, rng: random.Random, count: int) -> dict[str, str]:
    """Files of 1 byte to 300 KiB in a few directories, each fsynced (and its directory)
    before it counts: the returned sha256 per path is what an application was promised."""
    sums: dict[str, str] = {}
    for i in range(count):
        d = root / f"dir{i % 5}"
        d.mkdir(exist_ok=True)
        data = rng.randbytes(rng.choice([1, 512, 4096, 5000, 65536, 300 * 1024]))
        p = d / f"file{i}"
        with open(p, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        sums[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return sums


def check_tree(root: Path, sums: dict[str, str]) -> None:
    bad = []
    for rel, want in sums.items():
        try:
            got = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        except OSError as exc:
            bad.append(f"{rel}: {exc}")
            continue
        if got != want:
            bad.append(f"{rel}: content differs")
    assert not bad, f"{len(bad)} of {len(sums)} fsynced files lost or changed: {bad[:5]}"
