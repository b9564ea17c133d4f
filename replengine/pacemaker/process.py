"""Finding and stopping a replengined by its process, without its control socket.

Stop must not fail while a daemon of ours still runs (a failed stop gets the node fenced), and
it must work when the config is unusable; so the daemon is found by pid file and by command
line, and made to go by signal, rather than through the config and replctl.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import psutil

from replengine.pacemaker.ocf import OCF_ERR_GENERIC, OCFError
from replengine.runtime import RuntimePaths

#: after SIGKILL, how long a daemon may take to be gone before stop gives up
KILL_WAIT_S = 10.0

log = logging.getLogger("replengine.agent")


def _arg(cmd: list[str], flag: str) -> str | None:
    try:
        return cmd[cmd.index(flag) + 1]
    except (ValueError, IndexError):
        return None


def find_daemons(paths: list[RuntimePaths], config: Path | None, node: str) -> list[psutil.Process]:
    """Live replengined processes of this resource on `node`: the pid files under `paths`
    (checked to be a replengined of this node), and every process running
    `replengine.daemon --config <config>` for this node."""
    found: dict[int, psutil.Process] = {}
    for p in paths:
        pid = p.daemon_pid()
        if pid is not None:
            try:
                found[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                pass
    want = os.path.realpath(config) if config is not None else None
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info.get("cmdline") or []
        if proc.pid == os.getpid() or proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if "replengine.daemon" not in cmd and not any(c.endswith("replengined") for c in cmd):
            continue
        proc_node = _arg(cmd, "--node")
        arg = _arg(cmd, "--config")
        if want is None or arg is None or proc_node not in (None, node):
            continue
        if not os.path.isabs(arg):
            try:
                arg = os.path.join(proc.cwd(), arg)
            except psutil.Error:
                continue
        if os.path.realpath(arg) == want:
            found[proc.pid] = proc
    return list(found.values())


def terminate(procs: list[psutil.Process], deadline: float, resource: str, node: str) -> None:
    """SIGTERM (the daemon drains and applies its log), then SIGKILL when it is not gone
    in time; OCFError when a process survives both."""
    for proc in procs:
        log.warning("stopping replengined pid %d with SIGTERM", proc.pid)
        _signal(proc, signal.SIGTERM)
    term_wait = max(1.0, deadline - time.monotonic() - KILL_WAIT_S)
    alive = _wait_gone(procs, term_wait)
    if not alive:
        return
    for proc in alive:
        log.error("replengined pid %d still running after SIGTERM: SIGKILL", proc.pid)
        _signal(proc, signal.SIGKILL)
    alive = _wait_gone(alive, KILL_WAIT_S)
    if alive:
        pids = ", ".join(str(p.pid) for p in alive)
        raise OCFError(
            OCF_ERR_GENERIC,
            f"replengined of {resource or '?'} on {node} (pid {pids}) is still "
            f"running after SIGTERM and SIGKILL (stuck in the kernel? see "
            f"'ps -o pid,stat,wchan -p {pids}'); the node must be fenced to recover",
        )


def _signal(proc: psutil.Process, sig: int) -> None:
    """Send `sig` unless the process is gone (psutil refuses a pid reused since we found it)."""
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait for the processes to be gone; those still alive after `timeout`. A zombie counts
    as gone: the daemon is not our child, whoever reaps it is not up to us."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not _gone(p)]
    return alive
