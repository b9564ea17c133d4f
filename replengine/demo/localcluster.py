"""A whole resource on this one machine: N nodes on loopback with file volumes.

Used by `replctl demo`, the multi-process tests and the benchmarks. Every node is a real
replengined process started through `replctl up`, talking ZeroMQ over TCP on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replengine.client import Volume, connect
from replengine.errors import ReplError
from replengine.runtime import RuntimePaths, is_alive, is_daemon, wait_gone
from replengine.storage.durable import fsync_dir
from replengine.wire.control import ControlClient
from replengine.wire.security import generate


def blank_file(path: Path, size: int) -> None:
    """A sparse file of ``size`` bytes, durably (its size and its name): it must outlive a
    power cut of the disk under it (the fault campaign's ``power_cut``) as a disk would."""
    with open(path, "wb") as f:
        f.truncate(size)
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class LocalResource:
    workdir: Path
    nodes: dict[str, str] = field(
        default_factory=lambda: {"alpha": "sync", "beta": "sync", "gamma": "sync"}
    )
    name: str = "r0"
    volume_size: int = 64 << 20
    srl_size: int = 64 << 20
    srl_full: str = "stall"
    on_sync_loss: str = "degrade"
    extra: dict[str, Any] = field(default_factory=dict)
    heartbeat_ms: int = 300
    #: the block device frontend ("fuse-loop" for a real /dev/replengine/<name>); engine
    #: tests that talk to the client API need none
    device: str = "none"
    #: CURVE between the nodes: a key pair per node (its secret in <node>/node.key)
    keys: bool = False

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.config = self.workdir / f"{self.name}.toml"
        self.run_dir = self.workdir / "run"

    def paths(self, node: str) -> RuntimePaths:
        return RuntimePaths(self.run_dir / self.name / node)

    def key_path(self, node: str) -> Path:
        return self.workdir / node / "node.key"

    def volume_path(self, node: str) -> Path:
        return self.workdir / node / "volume.img"

    def srl_path(self, node: str) -> Path:
        return self.workdir / node / "srl.img"

    def create(self) -> LocalResource:
        """Write the config, the sparse volume files and SRLs, and `replctl init` each node."""
        # an explicit uuid, as in production: nodes can be added and removed (replctl adjust)
        # without the uuid, derived from the addresses otherwise, changing under the SRLs
        self.uuid = str(uuidlib.uuid4())
        self.ports = dict(zip(self.nodes, free_ports(len(self.nodes)), strict=True))
        self.publics: dict[str, str] = {}
        for name in self.nodes:
            self._make_node(name)
        self.write_config()
        for name in self.nodes:
            self.replctl(name, "init")
        return self

    def _make_node(self, name: str) -> None:
        (self.workdir / name).mkdir(parents=True, exist_ok=True)
        blank_file(self.volume_path(name), self.volume_size)
        blank_file(self.srl_path(name), self.srl_size)
        if self.keys:
            self.publics[name] = generate(self.key_path(name), force=True)

    def write_config(self) -> None:
        """The config file every node reads, from ``nodes`` (edit it, then `adjust`)."""
        lines = [
            "[resource]",
            f'name = "{self.name}"',
            f'uuid = "{self.uuid}"',
            f'srl_full = "{self.srl_full}"',
            f'on_sync_loss = "{self.on_sync_loss}"',
            f'run_dir = "{self.run_dir}"',
            f"heartbeat_ms = {self.heartbeat_ms}",
            f'device = "{self.device}"',
        ]
        for key, val in self.extra.items():
            lines.append(f"{key} = {json.dumps(val)}")
        for name, mode in self.nodes.items():
            lines += [
                "",
                f"[nodes.{name}]",
                f'address = "{self.address(name)}"',
                f'volume = "{self.volume_path(name)}"',
                f'srl = "{self.srl_path(name)}"',
                f'mode = "{mode}"',
            ]
            if self.keys:
                lines += [
                    f'public_key = "{self.publics[name]}"',
                    f'secret_key_file = "{self.key_path(name)}"',
                ]
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.config)

    def address(self, name: str) -> str:
        """host:port node `name` listens on (loopback; the fault campaign's network
        namespaces give each node its own address)."""
        return f"127.0.0.1:{self.ports[name]}"

    def command_prefix(self, node: str) -> list[str]:
        """What `replctl` for `node` runs under: nothing here; ``nsenter --net=...`` where
        the node lives in its own network namespace (its daemon inherits it)."""
        return []

    def add_node(self, name: str, mode: str) -> None:
        """A new node in the config (its blank disks made and its SRL initialised); the
        running daemons learn of it from `replctl adjust`."""
        self.ports[name] = free_ports(1)[0]
        self._make_node(name)
        self.nodes[name] = mode
        self.write_config()
        self.replctl(name, "init")

    def replace_disks(self, name: str) -> None:
        """A stopped node's failed disks replaced: a blank volume, a new SRL, `replctl init`.
        It has no history in common with the others: started, it is synced in full. Its
        key stays: the node is the same one, on new disks."""
        blank_file(self.volume_path(name), self.volume_size)
        blank_file(self.srl_path(name), self.srl_size)
        self.replctl(name, "init", "--force")

    def adjust(self, *nodes: str) -> str:
        return "".join(self.replctl(n, "adjust").stdout for n in nodes or tuple(self.nodes))

    # ---- replctl --------------------------------------------------------------------------

    def replctl(
        self, node: str, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        cmd = [
            *self.command_prefix(node),
            sys.executable,
            "-m",
            "replengine.cli",
            args[0],
            "--config",
            str(self.config),
            "--node",
            node,
            *args[1:],
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ReplError(
                f"replctl {' '.join(args)} on {node} failed ({proc.returncode}): "
                f"{proc.stderr.strip()}"
            )
        return proc

    def up(self, *nodes: str) -> None:
        for n in nodes or tuple(self.nodes):
            self.replctl(n, "up")

    def down(self, *nodes: str) -> None:
        for n in nodes or tuple(self.nodes):
            self.replctl(n, "down")

    def promote(self, node: str, *extra: str) -> str:
        return self.replctl(node, "promote", *extra).stdout.strip()

    def control(self, node: str, timeout_s: float = 30) -> ControlClient:
        return ControlClient(self.paths(node).socket, timeout_s)

    def status(self, node: str) -> dict:
        ctl = self.control(node, 10)
        try:
            return ctl.call("status")[0]
        finally:
            ctl.close()

    def connect(self, node: str) -> Volume:
        return connect(self.config, node)

    def pid(self, node: str) -> int | None:
        try:
            return int(self.paths(node).pid.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def signal(self, node: str, sig: int) -> None:
        pid = self.pid(node)
        if pid is None:
            raise ReplError(f"{node} has no pid file")
        os.kill(pid, sig)

    def freeze(self, node: str, timeout: float = 10.0) -> None:
        """SIGSTOP the node's daemon and wait until every thread of it is stopped, so its
        files can no longer change (a VM pause, as the demo and the fault tests need it)."""
        pid = self.pid(node)
        if pid is None:
            raise ReplError(f"{node} has no pid file")
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for t in Path(f"/proc/{pid}/task").iterdir():
                try:
                    stat = (t / "stat").read_text()
                except FileNotFoundError:
                    continue
                states.append(stat[stat.rindex(")") + 2])
            if states and all(s in "tT" for s in states):
                return
            if time.monotonic() > deadline:
                raise ReplError(f"{node} (pid {pid}) not stopped after {timeout}s: {states}")
            time.sleep(0.005)

    def kill(self, node: str) -> None:
        """SIGKILL the node's daemon and wait until it is gone (a crash)."""
        pid = self.pid(node)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_gone(pid)
        self.paths(node).pid.unlink(missing_ok=True)

    def log(self, node: str) -> str:
        try:
            return self.paths(node).log.read_text()
        except FileNotFoundError:
            return ""

    def wait_for(
        self, pred: Callable[[], Any], timeout: float, what: str, every: float = 0.05
    ) -> Any:
        """Poll `pred` every `every` seconds until truthy; on timeout raise with `what` and
        the nodes' states."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                val = pred()
            except ReplError:
                val = None
            if val:
                return val
            if time.monotonic() > deadline:
                raise ReplError(f"timed out after {timeout}s waiting for {what}; {self.describe()}")
            time.sleep(every)

    def describe(self) -> str:
        out = []
        for n in self.nodes:
            try:
                s = self.status(n)
                out.append(
                    f"{n}: {s['role']} e{s['epoch']} [{s['start_lsn']},{s['end_lsn']}) "
                    f"applied {s['applied_end']} following {s['following']}"
                )
            except (ReplError, OSError) as exc:
                out.append(f"{n}: down ({exc})")
        return "; ".join(out)

    def wait_synced(self, nodes: list[str] | None = None, timeout: float = 60) -> int:
        """Wait until the given running nodes have logged and applied the same end, and
        none is still in a (full) resync."""
        names = nodes or [n for n in self.nodes if self.pid(n)]

        def same() -> int | None:
            sts = [self.status(n) for n in names]
            ends = {s["end_lsn"] for s in sts} | {s["applied_end"] for s in sts}
            if not all(s["consistent"] for s in sts):
                return None
            for s in sts:  # and the primary knows: no resync left to end, none behind
                if s["role"] == "primary" and any(
                    s["peers"][n]["state"] != "up-to-date" for n in names if n in s["peers"]
                ):
                    return None
            return ends.pop() if len(ends) == 1 else None

        return self.wait_for(same, timeout, f"{names} to reach the same end LSN")

    def checksums(self, nodes: list[str] | None = None) -> dict[str, str]:
        names = nodes or [n for n in self.nodes if self.pid(n)]
        out = {}
        for n in names:
            ctl = self.control(n, 600)
            try:
                out[n] = ctl.call("checksum", timeout_s=600)[0]["digest"]
            finally:
                ctl.close()
        return out

    def stop_all(self) -> None:
        """Kill whatever still runs (test teardown): SIGCONT first, in case one is paused."""
        for n in self.nodes:
            pid = self.pid(n)
            if pid:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        break
                wait_gone(pid)
        self.remove_devices()

    def remove_devices(self) -> list[str]:
        """Undo what killed daemons of this resource left: file systems still mounted on
        their devices (lazily unmounted), then the loop devices and dead FUSE mounts (as the
        next daemon would). What was removed, for the test's log."""
        if self.device == "none":
            return []
        from replengine.frontend import loopdev
        from replengine.frontend.fuseloop import FuseLoop

        removed = []
        for n in self.nodes:
            fl = FuseLoop(self.name, self.paths(n).dir, target=None)  # type: ignore[arg-type]
            devnos = set()
            for dev in fl.stale_devices():
                try:
                    st = os.stat(dev)
                    devnos.add(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
                except OSError:
                    pass
            for m in loopdev.mounts():
                if m.devno in devnos:
                    subprocess.run(["umount", "--lazy", m.mountpoint], check=False)
                    removed.append(m.mountpoint)
            try:
                removed += fl.cleanup_stale()
            except ReplError as exc:  # teardown goes on; the next run's daemon retries
                removed.append(f"not removed: {exc}")
        return removed


__all__ = ["LocalResource", "free_ports", "is_alive", "is_daemon", "wait_gone"]
