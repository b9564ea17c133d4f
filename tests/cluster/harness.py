"""replengine's cluster test harness: a real N-node Pacemaker/Corosync cluster on one host.

Every node is

* a named network namespace ``<prefix>-n<i>`` with ``eth0`` = ``<subnet>.<i>/24``, whose veth
  peer ``veth<i>`` is enslaved to bridge ``br0`` in a hub namespace ``<prefix>-hub``.  The root
  namespace gets no interface: cluster traffic never leaves the namespaces made here;
* plus private mount, PID, UTS and IPC namespaces (``unshare``), whose PID 1 is this very file
  run as ``harness.py node-init CONFIG I``.  It sets the hostname (the cluster node name), mounts
  tmpfs over /run, /dev/shm, /var/lib/pacemaker, /var/lib/corosync and /etc/corosync, seeds the
  CIB and corosync.conf, starts ``corosync -f`` and then ``pacemakerd -f`` and reaps orphans.

Killing that PID 1 with SIGKILL kills every process of the node at once: a power cut.  Booting
the node again starts a fresh PID 1 in the same network namespace.  Everything else of the
host's filesystem is shared, so each node gets a private directory ``/var/tmp/<prefix>/n<i>``
that survives crashes and reboots like a disk.

Fencing is real: ``fence_replengine_ns`` (next to this file, installed as
/usr/sbin/fence_replengine_ns while a cluster exists) runs inside the nodes.  It cannot reach
other PID namespaces, so it writes ``<plug>.req`` ("off"/"on") into a request directory that a
helper thread of the harness (root namespace) serves: "off" kills the node, "on" boots it, and
``<plug>.power`` tells the agent the outcome.

Run as a script: ``python3 harness.py cleanup [PREFIX]`` removes the leftovers of a crashed run.
Only the standard library is used, so that the file can run as a node's PID 1.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FENCE_AGENT_SRC = HERE / "fence_replengine_ns"
FENCE_AGENT_NAME = "fence_replengine_ns"
FENCE_AGENT_DST = Path("/usr/sbin") / FENCE_AGENT_NAME
OCF_ROOT = Path("/usr/lib/ocf/resource.d")
#: seconds from a fence device's power-on to the node booting (see _serve_fence_requests)
BOOT_DELAY_S = 5.0
BASE_ROOT = Path("/var/tmp")
MARKER = "harness.json"  # <base>/run/harness.json exists while a cluster is set up

# environment for everything run inside nodes: no pyenv/venv variables leak in
NODE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
}

REQUIRED_TOOLS = (
    "ip",
    "unshare",
    "nsenter",
    "setpriv",
    "mount",
    "corosync",
    "corosync-cmapctl",
    "pacemakerd",
    "crm_mon",
    "cibadmin",
    "crm_attribute",
    "pcs",
)


class ClusterError(RuntimeError):
    """Something in the cluster harness failed."""


class ClusterUnavailable(ClusterError):
    """This machine cannot run a cluster (not root, packages missing)."""


class ClusterTimeout(ClusterError):
    """A wait_for() deadline passed."""


class CommandError(ClusterError):
    """A command run by the harness failed; the message carries its output."""

    def __init__(
        self, argv: list[str], returncode: int | None, stdout: str, stderr: str, why: str = ""
    ):
        self.argv, self.returncode, self.stdout, self.stderr = argv, returncode, stdout, stderr
        what = why or f"exit status {returncode}"
        super().__init__(
            f"command {' '.join(argv)!r} failed ({what})\n"
            f"--- stdout ---\n{stdout.strip()}\n--- stderr ---\n{stderr.strip()}"
        )


@dataclasses.dataclass(frozen=True)
class FenceEvent:
    """One request served by the fencing helper (monotonic time ``t``)."""

    t: float
    node: str
    action: str


def _log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_cmd(
    argv: Iterable[Any],
    *,
    check: bool = True,
    timeout: float = 60,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess:
    """Run argv with captured text output; on timeout kill its whole process group."""
    argv = [str(a) for a in argv]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise CommandError(argv, None, out, err, why=f"timed out after {timeout}s") from None
    res = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, out, err)
    return res


def missing_tools() -> list[str]:
    """Tools (and files) a cluster needs that this machine lacks."""
    miss = [t for t in REQUIRED_TOOLS if shutil.which(t, path=NODE_ENV["PATH"]) is None]
    for f in ("/usr/share/fence/fencing.py", "/usr/lib/ocf/resource.d/pacemaker/Stateful"):
        if not os.path.exists(f):
            miss.append(f)
    return miss


# ----------------------------------------------------------------------- process helpers


def _pids_in_netns(ns: str) -> list[int]:
    res = run_cmd(["ip", "netns", "pids", ns], check=False, timeout=30)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _pids_with_arg(fragment: str) -> list[int]:
    """PIDs whose command line contains fragment (our node-init and unshare processes)."""
    found = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline and "node-init" in cmdline:
            found.append(int(d.name))
    return found


def _kill_and_wait(pids: Iterable[int], timeout: float = 10) -> None:
    pids = list(pids)
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for p in pids:
        while time.monotonic() < deadline and _pid_alive(p):
            time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _list_netns() -> list[str]:
    res = run_cmd(["ip", "netns", "list"], check=False, timeout=30)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _other_clusters_active(own_base: Path | None) -> bool:
    for marker in BASE_ROOT.glob(f"*/run/{MARKER}"):
        base = marker.parent.parent
        if own_base is None or base.resolve() != own_base.resolve():
            return True
    return False


def cleanup_stale(prefix: str = "rpe") -> list[str]:
    """Remove what a crashed run with this prefix left behind; returns what was removed."""
    removed: list[str] = []
    base = BASE_ROOT / prefix
    ours = [
        ns
        for ns in _list_netns()
        if ns == f"{prefix}-hub"
        or (ns.startswith(f"{prefix}-n") and ns[len(prefix) + 2 :].isdigit())
    ]
    pids = set(_pids_with_arg(f"{base}/"))
    for ns in ours:
        pids.update(_pids_in_netns(ns))
    pids.discard(os.getpid())
    if pids:
        _kill_and_wait(pids)
        removed.append(f"processes {sorted(pids)}")
    for ns in ours:
        res = run_cmd(["ip", "netns", "del", ns], check=False, timeout=30)
        if res.returncode == 0:
            removed.append(f"netns {ns}")
    state = base / "run" / MARKER
    saved: dict = {}
    if state.exists():
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(state.read_text())
    for f in saved.get("installed_agents", []):
        with contextlib.suppress(OSError):
            os.unlink(f)
            removed.append(f)
    for d in reversed(saved.get("created_dirs", [])):
        with contextlib.suppress(OSError):
            os.rmdir(d)
            removed.append(d)
    if base.exists():
        shutil.rmtree(base, ignore_errors=True)
        removed.append(str(base))
    if FENCE_AGENT_DST.exists() and not _other_clusters_active(None):
        FENCE_AGENT_DST.unlink()
        removed.append(str(FENCE_AGENT_DST))
    return removed


# ----------------------------------------------------------------------- the cluster


class Cluster:
    """A real Pacemaker cluster of n nodes in namespaces (see the module docstring)."""

    def __init__(
        self,
        n: int = 3,
        prefix: str = "rpe",
        subnet: str = "10.98.0",
        fencing: bool = True,
        token_ms: int = 1000,
        dc_deadtime: str = "2s",
        cluster_name: str | None = None,
        log: Callable[[str], None] = _log,
    ):
        if not 1 <= n <= 9:
            raise ValueError("n must be 1..9")
        self.n = n
        self.prefix = prefix
        self.subnet = subnet
        self.fencing = fencing
        self.token_ms = token_ms
        self.dc_deadtime = dc_deadtime
        self.cluster_name = cluster_name or f"{prefix}cluster"
        self.log = log
        self.base = BASE_ROOT / prefix
        self.run_dir = self.base / "run"
        self.fence_dir = self.run_dir / "fence"
        self.hub = f"{prefix}-hub"
        self.stonith_id = f"fence-{prefix}"
        self.timings: dict[str, float] = {}
        self.fence_events: list[FenceEvent] = []
        self.boots: dict[int, list[float]] = {i: [] for i in self.nodes}
        #: node -> when it boots after a fence device powered it on
        self._boots_due: dict[int, float] = {}
        self.partitioned: set[int] = set()
        self.last_crm_mon = ""
        self._procs: dict[int, subprocess.Popen] = {}
        self._init_pid: dict[int, int] = {}
        self._node_locks = {i: threading.RLock() for i in self.nodes}
        self._installed: list[Path] = []
        self._created_dirs: list[Path] = []
        self._helper: threading.Thread | None = None
        self._helper_stop = threading.Event()
        self._is_setup = False

    # ------------------------------------------------------------------ naming
    @property
    def nodes(self) -> range:
        return range(1, self.n + 1)

    def name(self, i: int) -> str:
        """Cluster node name of node i (= its netns name and `uname -n` inside it)."""
        return f"{self.prefix}-n{i}"

    @property
    def names(self) -> list[str]:
        return [self.name(i) for i in self.nodes]

    def index(self, name: str) -> int:
        """Node index of a cluster node name."""
        for i in self.nodes:
            if self.name(i) == name:
                return i
        raise KeyError(name)

    def addr(self, i: int) -> str:
        return f"{self.subnet}.{i}"

    def node_dir(self, i: int) -> Path:
        """Private writable dir of node i on the host fs: survives crashes and reboots."""
        return self.base / f"n{i}"

    def log_dir(self, i: int) -> Path:
        return self.run_dir / f"n{i}"

    # ------------------------------------------------------------------ setup
    def setup(self) -> Cluster:
        t0 = time.monotonic()
        if os.geteuid() != 0:
            raise ClusterUnavailable("the cluster harness needs root")
        miss = missing_tools()
        if miss:
            raise ClusterUnavailable(
                "missing: " + ", ".join(miss) + " (run scripts/install-cluster-deps.sh)"
            )
        stale = cleanup_stale(self.prefix)
        if stale:
            self.log(f"removed leftovers of an earlier run: {', '.join(stale)}")
        atexit.register(self.teardown)
        try:
            self._write_files()
            self._net_up()
            if self.fencing:
                self._install_fence_agent()
                self._start_helper()
            for i in self.nodes:
                self.start_node(i)
            self.wait_for(
                lambda: self.online_nodes() == set(self.names), 120, f"all {self.n} nodes online"
            )
            self.timings["nodes_online"] = time.monotonic() - t0
            if self.fencing:
                self.pcs(
                    "stonith",
                    "create",
                    self.stonith_id,
                    FENCE_AGENT_NAME,
                    f"request_dir={self.fence_dir}",
                    f"pcmk_host_list={' '.join(self.names)}",
                    "pcmk_reboot_timeout=60s",
                    "op",
                    "monitor",
                    "interval=30s",
                )
                self.pcs("property", "set", "stonith-enabled=true")
                self.wait_for(
                    lambda: self._resource_started(self.stonith_id),
                    60,
                    f"stonith resource {self.stonith_id} started",
                )
        except BaseException:
            self.log("setup failed: " + self._diagnostics())
            raise
        self._is_setup = True
        self.timings["setup"] = time.monotonic() - t0
        self.log(
            f"cluster of {self.n} up in {self.timings['setup']:.2f}s "
            f"(all online after {self.timings['nodes_online']:.2f}s, fencing="
            f"{'on' if self.fencing else 'off'})"
        )
        return self

    def _write_files(self) -> None:
        for d in (
            self.run_dir,
            self.fence_dir,
            *(self.node_dir(i) for i in self.nodes),
            *(self.log_dir(i) for i in self.nodes),
        ):
            d.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "corosync.conf").write_text(self._corosync_conf())
        cib = self.run_dir / "cib.xml"
        cib.write_text(run_cmd(["cibadmin", "--empty"], env=NODE_ENV).stdout)
        env = dict(NODE_ENV, CIB_file=str(cib))
        for prop, value in (("dc-deadtime", self.dc_deadtime), ("stonith-enabled", "false")):
            run_cmd(
                ["crm_attribute", "--type", "crm_config", "--name", prop, "--update", value],
                env=env,
            )
        config = {
            "cluster_name": self.cluster_name,
            "names": self.names,
            "run_dir": str(self.run_dir),
            "cib": str(cib),
            "corosync_conf": str(self.run_dir / "corosync.conf"),
        }
        (self.run_dir / "node-config.json").write_text(json.dumps(config, indent=1))
        self._save_state()

    def _save_state(self) -> None:
        state = {
            "prefix": self.prefix,
            "pid": os.getpid(),
            "installed_agents": [str(p) for p in self._installed if p != FENCE_AGENT_DST],
            "created_dirs": [str(d) for d in self._created_dirs],
        }
        (self.run_dir / MARKER).write_text(json.dumps(state))

    def _corosync_conf(self) -> str:
        nodes = "".join(
            f"    node {{\n        name: {self.name(i)}\n        nodeid: {i}\n"
            f"        ring0_addr: {self.addr(i)}\n    }}\n"
            for i in self.nodes
        )
        return (
            "# written by replengine tests/cluster/harness.py\n"
            "totem {\n    version: 2\n"
            f"    cluster_name: {self.cluster_name}\n"
            "    transport: knet\n    crypto_cipher: none\n    crypto_hash: none\n"
            f"    token: {self.token_ms}\n}}\n"
            "logging {\n    to_stderr: no\n    to_syslog: no\n    to_logfile: yes\n"
            "    logfile: /var/log/corosync/corosync.log\n    timestamp: hires\n}\n"
            "quorum {\n    provider: corosync_votequorum\n"
            + ("    two_node: 1\n" if self.n == 2 else "")
            + "}\n"
            f"nodelist {{\n{nodes}}}\n"
        )

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cmd(["ip", *args], check=check, timeout=30)

    def _net_up(self) -> None:
        hub = self.hub
        self._ip("netns", "add", hub)
        self._ip("-n", hub, "link", "set", "lo", "up")
        self._ip("-n", hub, "link", "add", "br0", "type", "bridge")
        self._ip("-n", hub, "link", "set", "br0", "up")
        for i in self.nodes:
            ns = self.name(i)
            self._ip("netns", "add", ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip(
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                f"veth{i}",
                "netns",
                hub,
            )
            self._ip("-n", hub, "link", "set", f"veth{i}", "master", "br0", "up")
            self._ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")

    def _install_fence_agent(self) -> None:
        shutil.copyfile(FENCE_AGENT_SRC, FENCE_AGENT_DST)
        os.chmod(FENCE_AGENT_DST, 0o755)
        self._installed.append(FENCE_AGENT_DST)

    def install_agent(self, src_path: str | os.PathLike, provider: str, name: str) -> str:
        """Install an OCF agent as ocf:<provider>:<name> (removed again by teardown)."""
        pdir = OCF_ROOT / provider
        if not pdir.exists():
            pdir.mkdir(parents=True)
            self._created_dirs.append(pdir)
        dst = pdir / name
        shutil.copyfile(src_path, dst)
        os.chmod(dst, 0o755)
        if dst not in self._installed:
            self._installed.append(dst)
        if self.run_dir.exists():
            self._save_state()
        return f"ocf:{provider}:{name}"

    # ------------------------------------------------------------------ nodes
    def is_alive(self, i: int) -> bool:
        proc = self._procs.get(i)
        return proc is not None and proc.poll() is None and _pid_alive(self._init_pid.get(i, -1))

    def init_pid(self, i: int) -> int:
        """Host PID of node i's PID 1 (raises if the node is down)."""
        if not self.is_alive(i):
            raise ClusterError(f"node {self.name(i)} is not running")
        return self._init_pid[i]

    def start_node(self, i: int) -> None:
        """Boot node i (no-op if it runs).  Returns once its PID 1 exists, not when online."""
        with self._node_locks[i]:
            if self.is_alive(i):
                return
            self._reap(i)
            console = open(self.log_dir(i) / "console.log", "a")  # noqa: SIM115
            argv = [
                "setpriv",
                "--pdeathsig",
                "KILL",  # nodes die with the harness process
                "ip",
                "netns",
                "exec",
                self.name(i),
                "unshare",
                "--mount",
                "--pid",
                "--uts",
                "--ipc",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                sys.executable,
                str(Path(__file__).resolve()),
                "node-init",
                str(self.run_dir / "node-config.json"),
                str(i),
            ]
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    env=NODE_ENV,
                    cwd="/",
                    start_new_session=True,
                )
            finally:
                console.close()
            deadline = time.monotonic() + 10
            init = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                except OSError:
                    kids = []
                # the PID before exec is setpriv/ip itself; once it is unshare it has one child
                if kids and Path(f"/proc/{proc.pid}/comm").read_text().strip() == "unshare":
                    init = int(kids[0])
                    break
                time.sleep(0.01)
            if init is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise ClusterError(
                    f"node {self.name(i)} did not start; see {self.log_dir(i) / 'console.log'}"
                )
            self._procs[i] = proc
            self._init_pid[i] = init
            self.boots[i].append(time.monotonic())
            self._set_power(i, "on")
            self.log(f"{self.name(i)} booted (boot #{len(self.boots[i])}, host pid {init})")

    def crash(self, i: int) -> float:
        """SIGKILL node i's PID 1: every process of the node dies at once.  Returns the
        monotonic time of the kill.  The fence device still reports power "on", like a
        crashed machine's."""
        with self._node_locks[i]:
            t = time.monotonic()
            self._kill_node(i)
        self.log(f"{self.name(i)} crashed")
        return t

    def stop_node(self, i: int, timeout: float = 90) -> None:
        """Clean shutdown of node i (SIGTERM to its PID 1: pacemakerd, then corosync stop),
        SIGKILL after timeout.  The fence device then reports power "off"."""
        with self._node_locks[i]:
            if self.is_alive(i):
                os.kill(self._init_pid[i], signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._procs[i].wait(timeout)
            self._kill_node(i)
            self._set_power(i, "off")
        self.log(f"{self.name(i)} stopped")

    def _kill_node(self, i: int) -> None:
        with self._node_locks[i]:
            pid = self._init_pid.get(i)
            if pid is not None and self.is_alive(i):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._reap(i)

    def _reap(self, i: int) -> None:
        proc = self._procs.pop(i, None)
        if proc is not None:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._init_pid.pop(i, None)

    def _set_power(self, i: int, state: str) -> None:
        if self.fencing and self.fence_dir.exists():
            tmp = self.fence_dir / f".{self.name(i)}.power.tmp"
            tmp.write_text(state + "\n")
            os.replace(tmp, self.fence_dir / f"{self.name(i)}.power")

    # ------------------------------------------------------------------ network
    def partition(self, i: int) -> None:
        """Cut node i off the network (its bridge port goes down): a real partition."""
        self._ip("-n", self.hub, "link", "set", f"veth{i}", "down")
        self.partitioned.add(i)
        self.log(f"{self.name(i)} partitioned")

    def heal(self, i: int) -> None:
        """Reconnect node i."""
        self._ip("-n", self.hub, "link", "set", f"veth{i}", "up")
        self.partitioned.discard(i)
        self.log(f"{self.name(i)} healed")

    # ------------------------------------------------------------------ fencing helper
    def _start_helper(self) -> None:
        self._helper_stop.clear()
        self._helper = threading.Thread(
            target=self._serve_fence_requests, name=f"{self.prefix}-fence-helper", daemon=True
        )
        self._helper.start()

    def _serve_fence_requests(self) -> None:
        helper_log = self.run_dir / "fence-helper.log"
        while not self._helper_stop.is_set():
            try:
                reqs = sorted(self.fence_dir.glob("*.req"))
            except OSError:
                reqs = []
            for req in reqs:
                try:
                    action = req.read_text().strip()
                    req.unlink()
                except OSError:
                    continue
                node = req.name[: -len(".req")]
                ev = FenceEvent(time.monotonic(), node, action)
                self.fence_events.append(ev)
                try:
                    i = self.index(node)
                    if action == "off":
                        self._boots_due.pop(i, None)
                        self._kill_node(i)
                        self._set_power(i, "off")
                    elif action == "on":
                        # the switch reports power at once; the machine takes a while to
                        # boot (a real one: a minute or more). Booting in the same instant
                        # raced the survivors' promotion after fencing: with equal scores
                        # Pacemaker could promote the node that had just crashed
                        self._set_power(i, "on")
                        # booted by this thread (below), which lives as long as the cluster:
                        # the node's processes get SIGKILL when the thread that started
                        # them ends (setpriv --pdeathsig)
                        self._boots_due[i] = time.monotonic() + BOOT_DELAY_S
                    result = "done"
                except Exception as e:  # noqa: BLE001 - keep serving requests
                    result = f"failed: {e!r}"
                line = f"{time.strftime('%H:%M:%S')} {action} {node}: {result}"
                self.log(f"fence request {action} {node}: {result}")
                with contextlib.suppress(OSError), open(helper_log, "a") as f:
                    f.write(line + "\n")
            self._boot_powered_on()
            self._helper_stop.wait(0.05)

    def _boot_powered_on(self) -> None:
        """Boot the nodes whose power came on BOOT_DELAY_S ago (fence "on")."""
        now = time.monotonic()
        for i, due in list(self._boots_due.items()):
            if due > now:
                continue
            del self._boots_due[i]
            try:
                self.start_node(i)
            except Exception as e:  # noqa: BLE001 - logged; the test waiting for it times out
                self.log(f"{self.name(i)} did not boot after power on: {e!r}")

    def fence_agent_calls(self) -> list[dict]:
        """Calls of fence_replengine_ns logged by the agent itself (JSON lines)."""
        path = self.fence_dir / "agent.log"
        if not path.exists():
            return []
        calls = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                calls.append(json.loads(line))
        return calls

    # ------------------------------------------------------------------ commands
    def run(
        self,
        i: int,
        *cmd: Any,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run cmd inside node i (all of its namespaces) with captured text output."""
        argv = ["nsenter", "-t", str(self.init_pid(i)), "-a", "--", *cmd]
        return run_cmd(
            argv,
            check=check,
            timeout=timeout,
            input=input,
            env=dict(NODE_ENV, **(env or {})),
            cwd="/",
        )

    def reachable_nodes(self) -> list[int]:
        """Running nodes that are not partitioned, in index order."""
        return [i for i in self.nodes if self.is_alive(i) and i not in self.partitioned]

    def _candidates(self, node: int | None) -> list[int]:
        if node is not None:
            return [node]
        cands = self.reachable_nodes() or [i for i in self.nodes if self.is_alive(i)]
        if not cands:
            raise ClusterError("no node is running")
        return cands

    def pcs(
        self, *args: Any, node: int | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run pcs on node (default: the first running, connected node)."""
        return self.run(self._candidates(node)[0], "pcs", *args, check=check, timeout=timeout)

    def crm_mon_xml(self, node: int | None = None) -> ET.Element:
        """`crm_mon -1 --output-as=xml` from node (default: the first connected node that
        answers), parsed."""
        err: Exception | None = None
        for i in self._candidates(node):
            try:
                res = self.run(i, "crm_mon", "-1", "--output-as=xml", timeout=20)
                root = ET.fromstring(res.stdout)
            except (ClusterError, ET.ParseError) as e:
                err = e
                continue
            self.last_crm_mon = f"(from {self.name(i)})\n{res.stdout}"
            return root
        raise ClusterError(f"crm_mon failed on every node: {err}")

    def online_nodes(self, node: int | None = None, root: ET.Element | None = None) -> set[str]:
        """Names of the online member nodes (from node's view, or from a parsed crm_mon)."""
        root = self.crm_mon_xml(node) if root is None else root
        return {
            n.get("name")
            for n in root.iterfind("nodes/node")
            if n.get("online") == "true" and n.get("type", "member") == "member"
        }

    def dc(self, node: int | None = None) -> str | None:
        cur = self.crm_mon_xml(node).find("summary/current_dc")
        return cur.get("name") if cur is not None and cur.get("present") == "true" else None

    def resource_roles(
        self, rsc: str, node: int | None = None, root: ET.Element | None = None
    ) -> dict[str, str]:
        """{node name: "Promoted"|"Unpromoted"|"Started"|"Stopped"|...} for every cluster
        node; rsc is the primitive id or its clone id."""
        root = self.crm_mon_xml(node) if root is None else root
        roles = dict.fromkeys(self.names, "Stopped")
        resources = root.find("resources")
        if resources is None:
            return roles
        for el in resources.iter():
            if el.tag == "clone" and el.get("id") == rsc:
                prims = list(el.iter("resource"))
                break
        else:
            prims = [el for el in resources.iter("resource") if el.get("id") == rsc]
        for prim in prims:
            for n in prim.iter("node"):
                if n.get("name") in roles and prim.get("role"):
                    roles[n.get("name")] = prim.get("role")
        return roles

    def promoted(self, rsc: str) -> list[str]:
        return sorted(n for n, r in self.resource_roles(rsc).items() if r == "Promoted")

    def _resource_started(self, rsc: str) -> bool:
        return any(r == "Started" for r in self.resource_roles(rsc).values())

    def healthy(self, rsc: str, promoted: int = 1) -> bool:
        """All nodes online; rsc has `promoted` Promoted and the rest Unpromoted."""
        root = self.crm_mon_xml()
        if self.online_nodes(root=root) != set(self.names):
            return False
        roles = self.resource_roles(rsc, root=root)
        vals = list(roles.values())
        return vals.count("Promoted") == promoted and vals.count("Unpromoted") == self.n - promoted

    # ------------------------------------------------------------------ waiting
    def wait_for(
        self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25
    ) -> Any:
        """Poll predicate until it returns something truthy (returned); exceptions count as
        "not yet".  On timeout raise ClusterTimeout naming `what`, with the last crm_mon."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while True:
            try:
                val = predicate()
                if val:
                    return val
            except Exception as e:  # noqa: BLE001 - a node may be down right now
                last_exc = e
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        extra = f"\nlast exception: {last_exc!r}" if last_exc else ""
        raise ClusterTimeout(
            f"timed out after {timeout}s waiting for {what}{extra}\n{self._diagnostics()}"
        )

    def crm_mon_text(self) -> str:
        for i in self._candidates(None):
            res = self.run(i, "crm_mon", "-1", "-r", "-f", check=False, timeout=20)
            if res.returncode == 0:
                return f"(crm_mon from {self.name(i)})\n{res.stdout}"
        return "(no node answered crm_mon)"

    def _diagnostics(self) -> str:
        parts = []
        try:
            parts.append(self.crm_mon_text())
        except Exception as e:  # noqa: BLE001
            parts.append(f"(crm_mon unavailable: {e!r})")
        if self.last_crm_mon:
            parts.append("last crm_mon XML " + self.last_crm_mon[:6000])
        parts.append(
            f"alive={[i for i in self.nodes if self.is_alive(i)]} "
            f"partitioned={sorted(self.partitioned)} fence_events={self.fence_events}"
        )
        return "\n".join(parts)

    def collect_logs(self, dest: str | os.PathLike) -> Path:
        """Copy the nodes' logs (pacemaker, corosync, console, fencing) to dest."""
        dest = Path(dest)
        if self.run_dir.exists():
            shutil.copytree(
                self.run_dir, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock")
            )
        return dest

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> None:
        """Kill everything and remove namespaces, installed agents and dirs (idempotent)."""
        errors = []
        self._helper_stop.set()
        if self._helper is not None:
            self._helper.join(10)
            self._helper = None
        for i in self.nodes:
            try:
                self._kill_node(i)
            except Exception as e:  # noqa: BLE001
                errors.append(f"kill {self.name(i)}: {e!r}")
        self.partitioned.clear()
        # any process still in our namespaces (e.g. left by a crashed earlier harness)
        for ns in [self.name(i) for i in self.nodes] + [self.hub]:
            try:
                pids = _pids_in_netns(ns)
                if pids:
                    _kill_and_wait(pids)
                if ns in _list_netns():
                    run_cmd(["ip", "netns", "del", ns], timeout=30)
            except Exception as e:  # noqa: BLE001
                errors.append(f"netns {ns}: {e!r}")
        for path in reversed(self._installed):
            if path == FENCE_AGENT_DST and _other_clusters_active(self.base):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._installed.clear()
        for d in reversed(self._created_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        self._created_dirs.clear()
        shutil.rmtree(self.base, ignore_errors=True)
        self._is_setup = False
        if errors:
            self.log("teardown problems: " + "; ".join(errors))

    def __enter__(self) -> Cluster:
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.teardown()


# ----------------------------------------------------------------------- node PID 1


class _Shutdown(Exception):
    pass


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def _mkdir(path: str, mode: int, owner: tuple[int, int] = (0, 0)) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, *owner)


def node_init(config_file: str, i: int) -> int:
    """PID 1 of node i: private mounts, hostname, corosync + pacemakerd, reaping."""
    cfg = json.loads(Path(config_file).read_text())
    name = cfg["names"][i - 1]
    logdir = Path(cfg["run_dir"]) / f"n{i}"
    hacluster = (pwd.getpwnam("hacluster").pw_uid, grp.getgrnam("haclient").gr_gid)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {name} init: {msg}", flush=True)

    socket.sethostname(name)
    for path, mode in (
        ("/run", "0755"),
        ("/dev/shm", "1777"),
        ("/var/lib/pacemaker", "0755"),
        ("/var/lib/corosync", "0755"),
        ("/etc/corosync", "0755"),
    ):
        _sh("mount", "-t", "tmpfs", "-o", f"mode={mode},size=256m", f"{name}-tmpfs", path)
    _mkdir("/run/lock", 0o1777)
    _mkdir("/run/crm", 0o750, hacluster)
    _mkdir("/run/resource-agents", 0o1755)
    _mkdir("/run/fence-agents", 0o1755)
    os.chown("/var/lib/pacemaker", *hacluster)
    for sub in ("cib", "pengine", "blackbox", "cores"):
        _mkdir(f"/var/lib/pacemaker/{sub}", 0o750, hacluster)
    shutil.copyfile(cfg["cib"], "/var/lib/pacemaker/cib/cib.xml")
    os.chmod("/var/lib/pacemaker/cib/cib.xml", 0o600)
    os.chown("/var/lib/pacemaker/cib/cib.xml", *hacluster)
    _mkdir("/etc/corosync/uidgid.d", 0o755)
    shutil.copyfile(cfg["corosync_conf"], "/etc/corosync/corosync.conf")
    for sub, mode, owner in (("pacemaker", 0o770, hacluster), ("corosync", 0o755, (0, 0))):
        src = logdir / sub
        _mkdir(str(src), mode, owner)
        _sh("mount", "--bind", str(src), f"/var/log/{sub}")
    _mkdir("/var/log/pacemaker/bundles", 0o770, hacluster)

    def on_term(signum: int, frame: Any) -> None:
        raise _Shutdown()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    out = open(logdir / "daemons.out", "a")  # noqa: SIM115 - kept for the node's lifetime
    coro = subprocess.Popen(
        ["corosync", "-f"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    pcmk_pid = None
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(
            ["corosync-cmapctl", "-g", "totem.cluster_name"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode:
            if time.monotonic() > deadline or coro.poll() is not None:
                say("corosync did not come up")
                return 1
            time.sleep(0.05)
        pcmk_pid = subprocess.Popen(
            ["pacemakerd", "-f"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        ).pid
        say(
            f"corosync pid {coro.pid}, pacemakerd pid {pcmk_pid} "
            f"({time.monotonic() - t0:.2f}s after boot)"
        )
        while True:  # reap everything; leave when a cluster daemon dies
            pid, status = os.wait()
            if pid in (coro.pid, pcmk_pid):
                which = "corosync" if pid == coro.pid else "pacemakerd"
                say(f"{which} exited (status {status:#x}); node goes down")
                return 1
    except _Shutdown:
        say("clean shutdown requested")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for pid, grace in ((pcmk_pid, 80), (coro.pid, 10)):
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_child(pid, grace)
        say("clean shutdown done")
        return 0


def _wait_child(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if got == pid:
            return
        if got == 0:
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "node-init":
        return node_init(argv[1], int(argv[2]))
    if argv and argv[0] == "cleanup":
        for item in cleanup_stale(argv[1] if len(argv) > 1 else "rpe"):
            print("removed", item)
        return 0
    print("usage: harness.py cleanup [PREFIX] | node-init CONFIG I", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
