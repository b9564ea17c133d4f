"""Each node of the fault schedule in its own network namespace, on one bridge.

    hub namespace  <prefix>-hub:   bridge br0, ports v0 v1 v2 v3 (one veth end per node)
    node namespace <prefix>-<node>: eth0 = 10.77.0.<i+1>/24 (the other veth end), lo

The root namespace gets no interface: the nodes' traffic never leaves the namespaces made
here. Their control sockets are ipc:// (files), so the harness, in the root namespace,
still talks to every daemon; a daemon is started by `replctl up` run under
``nsenter --net=/run/netns/<prefix>-<node>`` and inherits the namespace (only the network
namespace: mounts are shared, so FUSE layers made by the harness are seen by the daemons).

The faults, each undone by `heal` (and all of them by `clear`):

- ``cut(node)``: the node's bridge port goes down — a partition of that node from all;
- ``split(side_a, side_b)``: nftables rules in every node drop what comes from, or goes to,
  the other side's addresses — a partition of the cluster in two, each side connected;
- ``one_way(node, direction, others)``: the link between a node and ``others`` works in one
  direction only, as with a firewall rule or a duplex fault on one side: ``deaf`` drops at
  the node what comes from them (the node's messages still arrive, for as long as TCP keeps
  sending without its ACKs), ``mute`` drops at them what comes from the node;
- ``lossy(node, pct)``: nftables drops pct % of the packets leaving and entering eth0
  (``numgen random``);
- ``slow(node, ...)``: netem delay on eth0 where the kernel has it; otherwise (this kernel
  has no CONFIG_NET_SCH_NETEM) a token bucket (tbf) of a few Mbit/s with a deep queue: the
  delay is the queueing delay of a congested link, up to ``latency`` ms, beyond which it
  drops.

Namespaces are named ``rf<pid>h<n>-...`` by the process that made them: `sweep_stale()`
removes those of processes that no longer exist (a killed run), at start.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from replengine.demo.localcluster import LocalResource

SUBNET = "10.77.0"
PORT = 7790
_counter = itertools.count(1)
_STALE = re.compile(r"^rf(\d+)h\d+-")
_netem: bool | None = None


class NetError(Exception):
    pass


def run(*cmd: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=60)
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def list_netns() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.strip()]


def _kill_netns(ns: str) -> None:
    for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, ValueError):
                break
    run("ip", "netns", "del", ns, check=False)


def sweep_stale() -> list[str]:
    """Delete the namespaces (and the processes in them) a killed run left behind."""
    removed = []
    for ns in list_netns():
        m = _STALE.match(ns)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and os.path.exists(f"/proc/{pid}"):
            continue  # a live run's
        _kill_netns(ns)
        removed.append(ns)
    return removed


def have_netem() -> bool:
    """Whether this kernel has the netem qdisc (checked once, in a scratch namespace)."""
    global _netem
    if _netem is None:
        ns = f"rf{os.getpid()}h0-probe"
        run("ip", "netns", "add", ns, check=False)
        try:
            run("ip", "-n", ns, "link", "set", "lo", "up", check=False)
            p = run("tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
            _netem = True
            del p
        except NetError:
            _netem = False
        finally:
            run("ip", "netns", "del", ns, check=False)
    return _netem


class Network:
    """The hub and one namespace per node (see the module's docstring)."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = list(nodes)
        self.prefix = f"rf{os.getpid()}h{next(_counter)}"
        self.hub = f"{self.prefix}-hub"
        self.made: list[str] = []
        self.cuts: set[str] = set()
        self.sides: tuple[frozenset[str], frozenset[str]] | None = None
        self.loss: dict[str, int] = {}
        self.shaped: dict[str, str] = {}
        #: node -> ("deaf" | "mute", the nodes on the other end of its one-way links)
        self.oneway: dict[str, tuple[str, frozenset[str]]] = {}

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def addr(self, node: str) -> str:
        return f"{SUBNET}.{self.nodes.index(node) + 1}"

    def port(self, node: str) -> str:
        return f"v{self.nodes.index(node)}"

    def prefix_cmd(self, node: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns(node)}"]

    def up(self) -> None:
        sweep_stale()
        run("ip", "netns", "add", self.hub)
        self.made.append(self.hub)
        run("ip", "-n", self.hub, "link", "set", "lo", "up")
        run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for n in self.nodes:
            ns = self.ns(n)
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run(
                "ip", "-n", ns, "link", "add", "eth0", "type", "veth",
                "peer", "name", self.port(n), "netns", self.hub,
            )  # fmt: skip
            run("ip", "-n", self.hub, "link", "set", self.port(n), "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{self.addr(n)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")

    def down(self) -> None:
        """Delete every namespace made here (their processes killed first)."""
        for ns in reversed(self.made):
            _kill_netns(ns)
        self.made = []

    # ---- faults -------------------------------------------------------------------------------

    def connected(self, a: str, b: str) -> bool:
        """Whether a and b can talk (loss and delay do not cut them)."""
        if a == b:
            return True
        if a in self.cuts or b in self.cuts:
            return False
        for n, (_, others) in self.oneway.items():
            if (a == n and b in others) or (b == n and a in others):
                return False  # one way only: no request gets its answer
        if self.sides is not None:
            return any(a in s and b in s for s in self.sides)
        return True

    def cut(self, node: str) -> None:
        run("ip", "-n", self.hub, "link", "set", self.port(node), "down")
        self.cuts.add(node)

    def uncut(self, node: str) -> None:
        run("ip", "-n", self.hub, "link", "set", self.port(node), "up")
        self.cuts.discard(node)

    def split(self, a: set[str], b: set[str]) -> None:
        self.sides = (frozenset(a), frozenset(b))
        self._filters()

    def unsplit(self) -> None:
        self.sides = None
        self._filters()

    def isolated(self) -> set[str]:
        """Nodes cut off, or on one-way links: none can take part in a promotion."""
        return self.cuts | set(self.oneway)

    def one_way(self, node: str, direction: str, others: set[str]) -> None:
        assert direction in ("deaf", "mute") and node not in others
        self.oneway[node] = (direction, frozenset(others))
        self._filters()

    def two_way(self, node: str) -> None:
        self.oneway.pop(node, None)
        self._filters()

    def _split_from(self, n: str) -> set[str]:
        """The nodes on the other side of the split from n (none if no split)."""
        if self.sides is None:
            return set()
        return {m for m in self.nodes if not any(n in s and m in s for s in self.sides)}

    def _deaf_to(self, n: str) -> list[str]:
        """The nodes whose packets n drops (split and one-way links, not cut nodes)."""
        out = self._split_from(n)
        for m, (direction, others) in self.oneway.items():
            if direction == "deaf" and m == n:
                out |= others
            if direction == "mute" and n in others:
                out.add(m)
        return [m for m in self.nodes if m in out and m not in self.cuts]

    def lossy(self, node: str, pct: int) -> None:
        if pct:
            self.loss[node] = pct
        else:
            self.loss.pop(node, None)
        self._filters([node])

    def _filters(self, nodes: list[str] | None = None) -> None:
        """Write each node's nftables table from the split and loss state."""
        for n in nodes or self.nodes:
            rules_in, rules_out = [], []
            other = [m for m in self.nodes if m in self._split_from(n) and m not in self.cuts]
            if other:
                addrs = ", ".join(self.addr(m) for m in other)
                rules_out.append(f'oifname "eth0" ip daddr {{ {addrs} }} drop')
            deaf = self._deaf_to(n)
            if deaf:
                addrs = ", ".join(self.addr(m) for m in deaf)
                rules_in.append(f'iifname "eth0" ip saddr {{ {addrs} }} drop')
            pct = self.loss.get(n, 0)
            if pct:
                rules_in.append(f'iifname "eth0" numgen random mod 100 < {pct} drop')
                rules_out.append(f'oifname "eth0" numgen random mod 100 < {pct} drop')
            text = "table inet rflt\ndelete table inet rflt\n"
            if rules_in or rules_out:
                text += (
                    "table inet rflt {\n"
                    "  chain input { type filter hook input priority 0; policy accept;\n"
                    + "".join(f"    {r}\n" for r in rules_in)
                    + "  }\n"
                    "  chain output { type filter hook output priority 0; policy accept;\n"
                    + "".join(f"    {r}\n" for r in rules_out)
                    + "  }\n}\n"
                )
            run("ip", "netns", "exec", self.ns(n), "nft", "-f", "-", stdin=text)

    def slow(self, node: str, delay_ms: int, jitter_ms: int, rate_mbit: int) -> str:
        """Delay on the node's eth0 (both ways its traffic leaves it); what was set."""
        ns = self.ns(node)
        if have_netem():
            args = ["netem", "delay", f"{delay_ms}ms", f"{jitter_ms}ms"]
        else:
            args = ["tbf", "rate", f"{rate_mbit}mbit", "burst", "16kb", "latency", f"{delay_ms}ms"]
        run("tc", "-n", ns, "qdisc", "replace", "dev", "eth0", "root", *args)
        self.shaped[node] = " ".join(args)
        return self.shaped[node]

    def unslow(self, node: str) -> None:
        run("tc", "-n", self.ns(node), "qdisc", "del", "dev", "eth0", "root", check=False)
        self.shaped.pop(node, None)

    def faults(self) -> list[str]:
        """The network faults in force, as words for the trace."""
        out = [f"cut({n})" for n in sorted(self.cuts)]
        if self.sides is not None:
            out.append("split(" + " | ".join(",".join(sorted(s)) for s in self.sides) + ")")
        out += [f"oneway({n},{d})" for n, (d, _) in sorted(self.oneway.items())]
        out += [f"loss({n},{p}%)" for n, p in sorted(self.loss.items())]
        out += [f"slow({n})" for n in sorted(self.shaped)]
        return out

    def clear(self) -> None:
        for n in sorted(self.cuts):
            self.uncut(n)
        for n in sorted(self.shaped):
            self.unslow(n)
        if self.sides is not None or self.loss or self.oneway:
            self.sides = None
            self.loss = {}
            self.oneway = {}
            self._filters()


@dataclass
class NetnsResource(LocalResource):
    """A LocalResource whose nodes listen on their namespaces' addresses; every `replctl`
    of a node (so its daemon) runs in the node's namespace."""

    net: Network | None = None

    def address(self, name: str) -> str:
        assert self.net is not None
        return f"{self.net.addr(name)}:{PORT}"

    def command_prefix(self, node: str) -> list[str]:
        assert self.net is not None
        return self.net.prefix_cmd(node)


@contextlib.contextmanager
def running_trio(work: Path, **kw) -> Iterator[NetnsResource]:
    """alpha, beta sync and gamma async, each in its namespace, alpha promoted; every daemon
    stopped and the namespaces removed after (a test's resource, outside the schedule)."""
    net = Network(["alpha", "beta", "gamma"])
    net.up()
    nodes = {"alpha": "sync", "beta": "sync", "gamma": "async"}
    r = NetnsResource(work, nodes=nodes, net=net, **kw)
    try:
        r.create()
        r.up()
        r.promote("alpha")
        yield r
    finally:
        r.stop_all()
        net.down()
