"""A daemon starved of CPU: the gray failure between running and frozen.

A SIGSTOP (the campaign's freeze) stops every thread at once, and the daemon sees the gap
when it is continued: a loop turn that took seconds (node.liveness's stall rule). A node
whose CPU is throttled (a noisy neighbour, a VM's stolen time, a cgroup quota) never
stops: it runs a few milliseconds in every 100, its loop turns late but never seems to
stall, its heartbeats go out late, messages wait in its sockets, and it may judge peers by
what it has not yet read. The kernel's CFS bandwidth control gives exactly that: a cgroup
with a CPU quota per period, which the daemon's process is moved into and out of.

cgroup v1 (a ``cpu`` hierarchy with ``cpu.cfs_quota_us``) and v2 (``cpu.max``, the
``cpu`` controller enabled at the root) are both used where present; ``unavailable()``
says why not otherwise, and the campaign then leaves the fault out.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")
PREFIX = "replengine-slow-"


def _root() -> tuple[Path, int] | None:
    """The cpu hierarchy's root and its cgroup version, or None."""
    if (V1 / "cpu.cfs_quota_us").exists():
        return V1, 1
    controllers = V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return V2, 2
    return None


def unavailable() -> str | None:
    """Why a daemon cannot be slowed here, or None."""
    if os.geteuid() != 0:
        return "throttling a daemon's CPU needs root"
    if _root() is None:
        return "no cgroup cpu controller (v1 cpu.cfs_quota_us or v2 cpu.max)"
    return None


def throttle(pid: int, name: str, percent: float, period_ms: int = 100) -> None:
    """Move process ``pid`` (every thread of it) into cgroup ``name``, which may use
    ``percent`` of one CPU in each ``period_ms``: it runs that share, then waits out the
    rest of the period (at most 1 s: the daemon's own stall rule is 2 heartbeats)."""
    found = _root()
    if found is None:
        raise RuntimeError(unavailable())
    root, version = found
    group = root / f"{PREFIX}{name}"
    group.mkdir(exist_ok=True)
    period = period_ms * 1000
    quota = max(1000, int(period * percent / 100))
    if version == 1:
        # lowered first: a quota larger than the new period is refused
        (group / "cpu.cfs_quota_us").write_text("-1")
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    else:
        with contextlib.suppress(OSError):  # already enabled, or enabled by someone else
            (root / "cgroup.subtree_control").write_text("+cpu")
        (group / "cpu.max").write_text(f"{quota} {period}")
    (group / "cgroup.procs").write_text(str(pid))


def release(pid: int) -> None:
    """Back into the root group, unthrottled (gone already: nothing to do)."""
    found = _root()
    if found is None:
        return
    with contextlib.suppress(ProcessLookupError, OSError):
        (found[0] / "cgroup.procs").write_text(str(pid))


def groups(tag: str = "") -> list[Path]:
    """The groups this module made whose name starts with ``tag``."""
    found = _root()
    return sorted(found[0].glob(f"{PREFIX}{tag}*")) if found else []


def cleanup(tag: str = "") -> None:
    """Every group this module made whose name starts with ``tag``, emptied (its processes
    back in the root) and removed."""
    for group in groups(tag):
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                release(int(pid))
        with contextlib.suppress(OSError):
            group.rmdir()


def sweep_stale() -> list[str]:
    """Remove the groups of runs that no longer exist (a killed campaign): their tag starts
    with the pid of the process that made them (the harness's ``cgroup_tag``)."""
    removed = []
    for group in groups():
        owner = group.name.removeprefix(PREFIX).split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            cleanup(group.name.removeprefix(PREFIX))
            removed.append(group.name)
    return removed


def throttled(pid: int) -> bool:
    """Whether ``pid`` is in one of this module's groups (a test's own check)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return PREFIX in text
