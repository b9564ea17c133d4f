"""`replctl up`: start this node's daemon and report what it says.

Every rejoin waits for this command (an operator's, the agent's start, a node back after a
reboot), and its time is two cold Python starts: ours and the daemon's. So the daemon is
started first, with nothing read but the arguments, and reads the config itself (it must
anyway); ours is read meanwhile, on the other core, only to word the answer. The daemon
also does what needs the config before it runs: it says when this node's daemon is up
already, and sends its own output to the node's log file (``--log-file`` without a path),
before it answers on the ready pipe.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import TYPE_CHECKING

from replengine.errors import ReplError

if TYPE_CHECKING:
    from replengine.config import ResourceConfig


def config_path(args: argparse.Namespace) -> str:
    """--config, or the default file of --resource."""
    if args.config:
        return args.config
    if args.resource:
        from replengine.config import default_path

        return str(default_path(args.resource))
    raise ReplError("give --config FILE or --resource NAME")


def cmd_up(args: argparse.Namespace) -> int:
    path = os.path.abspath(config_path(args))
    # the node is named on the daemon's command line, which is how it is told from another
    # node's daemon of the same resource on this machine (runtime.is_daemon)
    node = args.node if args.node is not None else os.uname().nodename
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "replengine.daemon", "--config", path, "--node", node]
    cmd += ["--ready-fd", str(w), "--log-file"]
    with open(os.devnull, "rb") as devnull:
        # our output is the daemon's until it has read the config and moved to its log file
        proc = subprocess.Popen(
            cmd, stdin=devnull, pass_fds=(w,), start_new_session=True, close_fds=True
        )
    os.close(w)
    from replengine import config as configmod

    try:
        cfg = configmod.load(path, node=node)
        problem: Exception | None = None
    except (ReplError, OSError) as exc:  # the daemon's answer says what to do about it
        problem = exc
    with os.fdopen(r) as ready:
        answer = ready.read().strip()
    running = answer.startswith("running ")
    if answer != "ok" and not running:
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        where = "see its output above" if problem else f"see {cfg.paths().log}"
        raise ReplError(
            answer.removeprefix("error: ") or f"replengined exited with status {rc}; {where}"
        )
    if problem is not None:  # the file changed or is unreadable here, the daemon read it
        raise problem
    name = f"{cfg.name}/{cfg.local.name}"
    if running:
        proc.wait(timeout=10)
        print(f"{name} already up (pid {answer.split()[1]})", flush=True)
    else:
        print(
            f"{name} up (pid {proc.pid}), listening on {cfg.local.address}; log {cfg.paths().log}",
            flush=True,
        )
    return wait_caught_up(cfg, args)


def wait_caught_up(cfg: ResourceConfig, args: argparse.Namespace) -> int:
    """`up --wait`: until this node has caught up with its primary (drbdadm wait-sync)."""
    if not args.wait:
        return 0
    from replengine.cli.progress import Progress
    from replengine.cli.waits import wait_caught_up as wait

    name = f"{cfg.name}/{cfg.local.name}"
    with Progress(f"{name}: catching up", unit="records") as bar:
        st = wait(cfg.paths().socket, name, args.timeout, bar)
    if st["role"] == "primary":
        print(f"{name} is primary: nothing to catch up")
    else:
        print(f"{name} caught up with {st['following']} at LSN {st['end_lsn'] - 1}")
    return 0
