"""Which device frontends this kernel and this install can run, said in one line each.

Only fuse-loop is implemented; nbd, ublk and device-mapper are detected so that a config
asking for them gets an answer naming what is missing, never a traceback at promotion time.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from replengine.config.defaults import DEVICES
from replengine.errors import DeviceError

if TYPE_CHECKING:
    from replengine.config import ResourceConfig
    from replengine.frontend.base import BlockTarget, Frontend

#: the config's word for each frontend (config.defaults.DEVICES)
KINDS = DEVICES

_MISC = Path("/proc/misc")


def _misc_has(name: str) -> bool:
    try:
        return any(line.split()[-1] == name for line in _MISC.read_text().splitlines() if line)
    except OSError:
        return False


def _kernel_has(kind: str) -> bool:
    if kind == "nbd":
        return Path("/sys/module/nbd").exists() or Path("/dev/nbd0").exists()
    if kind == "ublk":
        return Path("/dev/ublk-control").exists() or Path("/sys/module/ublk_drv").exists()
    if kind == "dm":
        return Path("/dev/mapper/control").exists() or _misc_has("device-mapper")
    raise ValueError(kind)


_KERNEL_NEEDS = {
    "nbd": "no nbd module (/sys/module/nbd, /dev/nbd0)",
    "ublk": "no ublk driver (/dev/ublk-control)",
    "dm": "no device-mapper (/dev/mapper/control)",
}


def check_kind(kind: str, resource: str = "") -> None:
    """DeviceError, in one line, unless a frontend of ``kind`` can run here."""
    where = f"resource {resource}: " if resource else ""
    if kind == "none":
        return
    if kind == "fuse-loop":
        missing = []
        if not Path("/dev/fuse").exists():
            missing.append("/dev/fuse (modprobe fuse)")
        if not Path("/dev/loop-control").exists():
            missing.append("/dev/loop-control (modprobe loop)")
        if shutil.which("losetup") is None:
            missing.append("losetup (util-linux)")
        if importlib.util.find_spec("pyfuse3") is None:
            missing.append("the Python module pyfuse3 (Debian: python3-pyfuse3)")
        if missing:
            raise DeviceError(
                f'{where}device = "fuse-loop" needs {", ".join(missing)}; '
                'install them or set device = "none" to run without a block device'
            )
        return
    if kind in _KERNEL_NEEDS:
        if not _kernel_has(kind):
            raise DeviceError(
                f'{where}device = "{kind}" cannot run here: this kernel has '
                f'{_KERNEL_NEEDS[kind]}; use device = "fuse-loop" (FUSE and loop devices)'
            )
        raise DeviceError(
            f'{where}device = "{kind}": this kernel has it, but this version of replengine '
            'implements only the fuse-loop frontend; use device = "fuse-loop"'
        )
    raise DeviceError(f"{where}unknown device frontend {kind!r} (one of {', '.join(KINDS)})")


def make_frontend(cfg: ResourceConfig, target: BlockTarget) -> Frontend | None:
    """The frontend the config asks for on this node, or None for device = "none"."""
    kind = cfg.local.device
    check_kind(kind, cfg.name)
    if kind == "none":
        return None
    from replengine.frontend.fuseloop import FuseLoop

    return FuseLoop(cfg.name, cfg.runtime_dir(), target, sync_timeout=cfg.sync_timeout)


__all__ = ["KINDS", "check_kind", "make_frontend"]
