"""Where a node's daemon keeps its runtime files, and whether a pid is really that daemon.

One place spells the names: every tool (replctl, the agent, the client API, the tests) finds
the control socket, the pid file and the log through here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from replengine.errors import ReplError

CONTROL_SOCKET = "control.sock"
PID_FILE = "replengined.pid"
LOG_FILE = "replengined.log"


def _psutil() -> ModuleType:
    """psutil, imported when a pid is to be looked at: every config load imports this
    module (RuntimePaths), and `replctl up` of a stopped node, which every rejoin waits
    for, looks at no pid (its pid file is gone)."""
    import psutil

    return psutil


@dataclass(frozen=True)
class RuntimePaths:
    """The runtime files of one node's daemon, under ``run_dir/<resource>/<node>``."""

    dir: Path

    @property
    def socket(self) -> Path:
        return self.dir / CONTROL_SOCKET

    @property
    def pid(self) -> Path:
        return self.dir / PID_FILE

    @property
    def log(self) -> Path:
        return self.dir / LOG_FILE

    @property
    def node(self) -> str:
        return self.dir.name

    def daemon_pid(self) -> int | None:
        """The pid in the pid file if it names a live replengined of this node, else None."""
        try:
            pid = int(self.pid.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if is_daemon(pid, self.node) else None

    def running_pid(self) -> int | None:
        """The daemon's pid when it is alive and listening on its control socket."""
        pid = self.daemon_pid()
        return pid if pid is not None and self.socket.exists() else None


def wait_gone(pid: int, timeout: float = 30) -> None:
    """Wait for a process (not necessarily our child) to be gone; a zombie counts as gone,
    since whoever reaps it (init, or nobody in a container) is not up to us."""
    deadline = time.monotonic() + timeout
    while is_alive(pid):
        if time.monotonic() > deadline:
            raise ReplError(f"process {pid} still alive after {timeout}s")
        time.sleep(0.02)


def is_daemon(pid: int, node: str) -> bool:
    """True only if `pid` is a live replengined of `node`: after a crash or a reboot a pid
    file may name a recycled pid, and acting on it (status, or a kill in the agent's stop)
    would hit an unrelated process."""
    ps = _psutil()
    try:
        proc = ps.Process(pid)
        if proc.status() == ps.STATUS_ZOMBIE:
            return False
        cmd = proc.cmdline()
    except (ps.NoSuchProcess, ps.AccessDenied):
        return False
    if "replengine.daemon" not in cmd and not any(c.endswith("replengined") for c in cmd):
        return False
    return "--node" not in cmd or cmd[cmd.index("--node") + 1 :][:1] == [node]


def is_alive(pid: int) -> bool:
    ps = _psutil()
    try:
        return ps.Process(pid).status() != ps.STATUS_ZOMBIE
    except ps.NoSuchProcess:
        return False
