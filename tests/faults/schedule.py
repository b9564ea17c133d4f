"""The seeded fault schedule: one long-lived 4-node resource, rounds of random faults.

A round, on the resource as the previous round left it (converged, a primary):

1. a writer thread writes tagged data to the primary (queue depth 1-4, paced, with bursts
   that fill the small SRLs) and keeps the ledger;
2. 2-5 faults drawn from the round's seeded RNG, with random delays between them (during
   which the primary's status is polled: which LSNs each sync secondary acknowledged):
   SIGSTOP or SIGKILL of a secondary; SIGKILL of the primary and a promotion of a random
   reachable node; the primary frozen (SIGSTOP) and replaced, later continued (a zombie) or
   killed; two failovers in a row (the first new primary possibly killed before it wrote
   anything); a restart of a killed node, possibly killed again while it rejoins or rewinds;
   every node killed at once, some started again and one of them promoted (a blackout);
   a SIGCONT of a frozen node; a write burst; a killed secondary's disks replaced (blank
   volume, new SRL) and the node started again, so that it is synced in full while the
   next faults strike (possibly killed again during its full sync);
3. heal: continue every frozen node, restart every killed one, make sure there is one
   primary (promote one if needed), let the writer go on a moment beside the rejoining
   nodes, stop it;
4. wait (bounded) until every node has converged, then check the README's rules
   (`checks`): every node converged, one history, identical volumes, each volume equal to
   the ledger replayed for the history that won, LSNs assigned in order, acknowledged writes
   that must survive present, no zombie acknowledgement.

At most two nodes are unavailable (killed or frozen) at any time, so a promotion always has
a candidate; `promote_min_peers` is 1 so that a promotion can go ahead with a node away
(whether the writes that node held must survive is decided from the evidence, see
`checks`). After a round with a violation the resource is rebuilt (the next round does not
inherit the defect); it is also rebuilt every `rebuild_every` rounds, since an SRL's epoch
history holds a bounded number of promotions.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import shutil
import signal
import subprocess
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from replengine.cli.progress import poll_status
from replengine.demo.localcluster import LocalResource
from replengine.errors import ReplError
from replengine.runtime import is_alive, wait_gone
from replengine.wire.control import ControlClient, DaemonGone

from . import checks, cpuslow, deposed, faultfs
from .checks import Freeze, Isolation, Observation, Promotion, Violation
from .diskfaults import DiskFaults
from .layout import MAX_AWAY, NODES, SRL_SIZE, VOLUME_SIZE
from .ledger import Ledger, Stream, Writer
from .netns import NetnsResource, Network
from .operator import OperatorActions
from .verifying import VerifyRuns


class RoundStop(Exception):
    """The round cannot go on (its violation is already recorded)."""


#: the pid in a daemon's "node failed" log line (FILE_FORMAT of replengine.daemon)
FAILED_PID = re.compile(r"\[(\d+)\] ERROR node failed")

#: fault kinds and their weights
KINDS = {
    "freeze_secondary": 2,
    "kill_secondary": 2,
    "kill_primary_failover": 2,
    "freeze_primary_failover": 2,
    "double_failover": 1,
    "restart": 3,
    "kill_while_rejoining": 2,
    "replace_disks": 1,
    "thaw": 2,
    "burst": 1,
    "mode_switch": 1,
    "sync_full": 1,
    "invalidate": 1,
    "invalidate_online": 1,
    "blackout": 1,
    "slow_secondary": 1,
    "slow_primary_failover": 2,
    "remove_readd": 1,
    "switchover": 2,
    "verify": 2,
}

#: the faults of --net netns (nodes in their own network namespaces), and their weights
NET_KINDS = {
    "partition_primary": 4,
    "partition_secondary": 3,
    "split": 3,
    "oneway_primary": 3,
    "oneway_secondary": 2,
    "loss": 2,
    "delay": 2,
    "srl_fill": 2,
    "heal_net": 3,
    "disk_error": 2,
    "disk_hang": 2,
    "disk_hang_failover": 2,
    "long_split": 1,
    "power_cut": 2,
}

#: a long split's secondary must be back with its primary this soon after the heal: past
#: every retry's backoff (the transport's RETRY_CONNECT_S, 2 s) with room for a loaded
#: machine; the kernel's SYN backoff it replaced left 15-35 s (docs/reliability.md)
REJOIN_BOUND_S = 8.0

#: a slowed node's share of one CPU, in percent, and the period it gets it in, in ms
#: (cpuslow): from running a millisecond in every 100 to a burst every half second, each
#: gap under the 2 heartbeats its own stall rule would notice
SLOW = ((1.0, 100), (3.0, 100), (10.0, 100), (2.0, 500), (5.0, 500))


@dataclass
class RoundResult:
    seed: int
    round: int
    mode: str
    srl_full: str
    seconds: float
    steps: list[str]
    faults: Counter
    failovers: int
    refusals: Counter
    counts: dict[str, int]
    violations: list[Violation]
    trace: list[str]
    logs: dict[str, list[str]]
    workdir: str = ""
    net: str = "loopback"
    bytes_verified: int = 0
    notes: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self) -> str:
        c = self.counts
        head = (
            f"seed {self.seed} round {self.round:3d} {self.net[:4]} {self.mode:7s} "
            f"srl_full={self.srl_full:5s} "
            f"{self.seconds:5.1f}s writes {c.get('completed', 0)}/{c.get('writes', 0)} "
            f"failovers {self.failovers}: {', '.join(self.steps)}"
        )
        if self.ok:
            return head + " -> ok"
        return (
            head
            + f" -> {len(self.violations)} VIOLATIONS: "
            + "; ".join(v.kind for v in self.violations)
        )

    def report(self) -> str:
        """Everything needed to fix it: the rule broken, the schedule, the daemons' logs."""
        out = [
            f"=== seed {self.seed}, round {self.round}, net {self.net}, mode {self.mode}, srl_full "
            f"{self.srl_full} (workdir {self.workdir or 'removed'})"
        ]
        for v in self.violations:
            out.append(f"VIOLATION {v}")
        out.append("schedule:")
        out += [f"  {t}" for t in self.trace]
        for n, lines in self.logs.items():
            out.append(f"log of {n} (warnings and errors of this round, last {len(lines)}):")
            out += [f"  {ln}" for ln in lines]
        return "\n".join(out)


class Harness(OperatorActions, DiskFaults, VerifyRuns):
    """One resource, one seed, one on_sync_loss mode: rounds of faults and checks."""

    def __init__(
        self,
        workroot: Path,
        seed: int,
        mode: str = "degrade",
        srl_full: str | None = None,
        heartbeat_ms: int = 300,
        converge_s: float = 30.0,
        rebuild_every: int = 20,
        keep_failed: bool = True,
        verbose: bool = False,
        net: str = "loopback",
        disk: bool = True,
        device: str = "none",
        script: list[list[str]] | None = None,
        keys: bool = False,
        resync_rate: float = 0,
        disk_all: bool = False,
        cpu_slow: bool = True,
    ) -> None:
        #: per round, fault kinds played first (when allowed), before the random ones
        self.script = [list(x) for x in script or []]
        self.net = net
        self.disk = disk and net == "netns"
        #: every node's files on a faultfs disk, not only disk_node's: a blackout then cuts
        #: the power of all of them (disk errors and hangs stay on disk_node's)
        self.disk_all = disk_all and self.disk
        #: the mount point of each node's faultfs disk
        self.disks: dict[str, Path] = {}
        self.device = device
        #: CURVE between the nodes (LocalResource.keys)
        self.keys = keys
        self.network: Network | None = None
        self.fuse: subprocess.Popen | None = None
        self.fuse_mount = contextlib.ExitStack()
        self.disk_node: str | None = None
        self.workroot = Path(workroot)
        self.seed = seed
        self.mode = mode
        self.rng = random.Random(f"{seed}:{mode}")
        self.srl_full = srl_full or ["stall", "fail", "dcm"][seed % 3]
        self.heartbeat_ms = heartbeat_ms
        #: MiB/s cap on block copies (0: none): copies slower than bursts fill the SRL
        self.resync_rate = resync_rate
        self.converge_s = converge_s
        self.rebuild_every = rebuild_every
        self.keep_failed = keep_failed
        self.verbose = verbose
        self.r: LocalResource | None = None
        self.builds = 0
        self.rounds_on_build = 0
        self.next_wid = 1
        self.round = 0
        self.base = bytes(VOLUME_SIZE)
        self.primary: str | None = None
        self.epoch = 0
        self.dead: set[str] = set()
        self.frozen: dict[str, Freeze] = {}
        #: nodes can be starved of CPU here (cpuslow): the slow_* faults are drawn
        self.cpu_slow = cpu_slow and cpuslow.unavailable() is None
        #: this harness's cgroups are named after it (two campaigns run side by side)
        self.cgroup_tag = f"{os.getpid()}-{id(self) % 100000}-"
        self.ex_primaries: set[str] = set()
        #: each node's mode in the config file now (mode_switch changes them)
        self.modes = dict(NODES)
        self.ever_sync: set[str] = set()

    # ---- resource lifecycle ------------------------------------------------------------------

    def build(self) -> None:
        self.builds += 1
        work = self.workroot / f"s{self.seed}-{self.mode}-b{self.builds}"
        if work.exists():
            shutil.rmtree(work)
        kw = dict(
            nodes=dict(NODES),
            volume_size=VOLUME_SIZE,
            srl_size=SRL_SIZE,
            srl_full=self.srl_full,
            on_sync_loss=self.mode,
            heartbeat_ms=self.heartbeat_ms,
            extra={"sync_timeout": 2, "promote_min_peers": 1, "resync_rate": self.resync_rate},
            device=self.device,
            keys=self.keys,
        )
        if self.cpu_slow:
            cpuslow.sweep_stale()
        if self.net == "netns":
            faultfs.sweep_stale()
            self.network = Network(list(NODES))
            self.network.up()
            self.r = NetnsResource(work, net=self.network, **kw)
        else:
            self.r = LocalResource(work, **kw)
        if self.disk:
            # one node's volume and SRL on a disk that fails on command
            self.disk_node = list(NODES)[(self.seed + self.builds) % len(NODES)]
            for n in list(NODES) if self.disk_all else [self.disk_node]:
                self.mount_faultfs(work, n)
        self.r.create()
        self.r.up()
        first = list(NODES)[0]
        doc = self._promote(first)
        assert doc is not None and "epoch" in doc, f"initial promotion failed: {doc}"
        self.primary, self.epoch = first, int(doc["epoch"])
        self.dead, self.frozen, self.ex_primaries = set(), {}, set()
        self.modes = dict(NODES)
        self.base = bytes(VOLUME_SIZE)
        self.rounds_on_build = 0
        problems: list[str] = []

        def converged(sts: dict) -> bool:
            problems[:] = checks.convergence_problems(sts)
            return not problems

        self.wait_statuses(converged, 30, "a new resource to converge")
        assert not problems, f"a new resource did not converge: {problems}"
        security = {n: (self.status(n) or {}).get("security") for n in NODES}
        want = "curve" if self.keys else "plain"
        assert set(security.values()) == {want}, f"security {security}, wanted {want}"

    def teardown(self, remove: bool) -> None:
        r = self.r
        if r is None:
            return
        r.stop_all()
        needle = str(r.config)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(needle in part for part in proc.info["cmdline"] or []):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
                    wait_gone(proc.info["pid"], 10)
            except (psutil.Error, ReplError):
                continue
        if self.fuse is not None:
            self.fuse_mount.close()  # unmounted, its server killed
            self.fuse = None
            self.disks = {}
        cpuslow.cleanup(self.cgroup_tag)
        if self.network is not None:
            self.network.down()
            self.network = None
        if remove:
            shutil.rmtree(r.workdir, ignore_errors=True)
        self.r = None

    # ---- small tools -------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str) -> None:
        line = f"{self.now():6.2f}s {text}"
        self.trace.append(line)
        if self.verbose:
            print("   ", line, flush=True)

    def reachable(self, n: str) -> bool:
        return n not in self.dead and n not in self.frozen

    def linked(self, a: str, b: str) -> bool:
        """a and b can talk over the network (always, on loopback)."""
        return self.network is None or self.network.connected(a, b)

    def serving_beside(self, n: str) -> bool:
        """A running primary is on n's side of a partition (promoting n would be refused,
        and is not the fault being played)."""
        p = self.primary
        return (
            self.network is not None
            and p is not None
            and p != n
            and self.reachable(p)
            and self.network.connected(n, p)
        )

    def sync_peers(self, p: str) -> tuple[str, ...]:
        """p's sync secondaries, as the schedule's modes say now."""
        return tuple(sorted(n for n in NODES if n != p and self.modes[n] == "sync"))

    def isolate(self, p: str, how: str) -> None:
        """Primary p is cut off from every sync secondary from now on; which ones they are
        is noted (check_isolated_acks)."""
        self.isolations.append(
            Isolation(p, self.epoch, self.now(), how, sync_peers=self.sync_peers(p))
        )

    def away(self) -> set[str]:
        """Nodes killed, frozen or cut off."""
        cut = self.network.isolated() if self.network is not None else set()
        return self.dead | set(self.frozen) | cut

    def status(self, n: str, timeout: float = 2.0) -> dict | None:
        if not self.reachable(n):
            return None
        assert self.r is not None
        return poll_status(self.r.paths(n).socket, timeout)

    def _promote(self, n: str) -> dict | None:
        """Promote over the control socket (what `replctl promote` sends): the reply, or
        {'error': ...}; None if it did not answer within 60 s."""
        assert self.r is not None
        try:
            ctl = ControlClient(self.r.paths(n).socket, 60)
        except ReplError as exc:
            return {"error": str(exc)}
        try:
            doc, _ = ctl.wait(ctl.send("promote"), 60)
        except DaemonGone as exc:  # it stopped meanwhile (on its disk error): a refusal
            return {"error": str(exc)}
        except ReplError:
            return None
        finally:
            ctl.close()
        return doc if doc.get("ok") else {"error": doc.get("error", "refused")}

    def violate(self, kind: str, msg: str, nodes: list[str] | None = None) -> None:
        v = Violation(kind, f"[seed {self.seed} round {self.round} {self.mode}] {msg}", nodes or [])
        self.violations.append(v)
        self.note(f"VIOLATION {kind}: {msg}")

    def check_alive(self) -> None:
        """A daemon we did not kill must not die (libzmq aborts, uncaught exceptions)."""
        assert self.r is not None
        for n in NODES:
            if n in self.dead:
                continue
            pid = self.r.pid(n)
            if (pid is None or not is_alive(pid)) and n in self.disk_hit:
                # README promises nothing of a node whose disk fails; stopping is fair, a
                # restart after the repair must bring it back (heal)
                self.note(f"{n} (pid {pid}) stopped after its disk error")
                self.notes["stopped on a disk error"] += 1
                self.frozen.pop(n, None)
                self.dead.add(n)
                if n == self.primary:
                    self.primary = None
                    self.writer.set_target(None)
                continue
            if pid is None or not is_alive(pid):
                self.violate(
                    "daemon-died",
                    f"{n} (pid {pid}) is gone although the schedule did not kill it",
                    [n],
                )
                self.frozen.pop(n, None)
                self.dead.add(n)
                if n == self.primary:
                    self.primary = None

    def observe(self) -> None:
        """Poll the primary: evidence of which LSNs each sync secondary holds (a slowed one
        too: it answers, late)."""
        self.check_alive()
        p = self.primary
        slowed = p in self.frozen and bool(self.frozen[p].slow)
        if p is None or (not self.reachable(p) and not slowed):
            return
        assert self.r is not None
        s = poll_status(self.r.paths(p).socket, 1.0) if slowed else self.status(p, 1.0)
        if s is None:
            return
        if s["role"] != "primary":
            self.note(f"{p} is no longer primary: {s['role']} following {s['following']}")
            self.primary = None
            return
        acked = {
            peer: ps["acked_lsn"]
            for peer, ps in s["peers"].items()
            if self.modes.get(peer) == "sync"
        }
        self.observations.append(Observation(self.now(), p, s["epoch"], acked))

    def wait_observing(self, seconds: float) -> None:
        """The schedule's random delay between faults, spent polling the primary."""
        deadline = time.monotonic() + seconds
        while True:
            self.observe()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    # ---- faults ------------------------------------------------------------------------------

    def freeze(self, n: str, slow: tuple[float, int] | None = None) -> None:
        """SIGSTOP n, or with ``slow`` throttle it to that percent of a CPU in each period
        of that many ms (cpuslow): away either way, until thaw()."""
        assert self.r is not None
        self.observe()
        pid = self.r.pid(n)
        if n in self.dead or pid is None:
            self.note(f"not freezing {n}: its daemon is gone")
            return
        if slow:
            cpuslow.throttle(pid, f"{self.cgroup_tag}{n}", *slow)
        else:
            self.r.freeze(n)
        was_primary = n == self.primary
        share = slow[0] if slow else 0.0
        f = Freeze(n, self.epoch if was_primary else 0, was_primary, self.now(), slow=share)
        if was_primary:
            f.sync_peers = self.sync_peers(n)
        self.frozen[n] = f
        self.freezes.append(f)
        what = f"slowed to {slow[0]:g} % of a CPU per {slow[1]} ms" if slow else "SIGSTOP"
        self.note(f"{what} {n}" + (f" (primary, epoch {self.epoch})" if was_primary else ""))

    def thaw(self, n: str) -> None:
        assert self.r is not None
        f = self.frozen[n]
        replaced = f.was_primary and any(p.epoch > f.epoch for p in self.promotions)
        # an application on the old primary goes on writing: sent while it is frozen
        late = self.late_writes(n, f.epoch) if replaced and self.rng.random() < 0.7 else 0
        if f.slow:
            pid = self.r.pid(n)
            if pid is not None:
                cpuslow.release(pid)
        else:
            self.r.signal(n, signal.SIGCONT)
        del self.frozen[n]
        f.t_cont = self.now()
        self.note(
            ("unthrottled " if f.slow else "SIGCONT ")
            + n
            + (f" (replaced primary: a zombie; {late} late writes sent to it)" if replaced else "")
        )

    def kill(self, n: str, observe: bool = True) -> None:
        assert self.r is not None
        if observe:
            self.observe()
        self.r.kill(n)
        was = self.frozen.pop(n, None)
        self.dead.add(n)
        what = " (primary)" if n == self.primary else (" (while frozen)" if was else "")
        if n == self.primary or (was and was.was_primary):
            self.ex_primaries.add(n)
        self.note(f"SIGKILL {n}{what}")

    def restart(self, n: str) -> bool:
        assert self.r is not None
        proc = self.r.replctl(n, "up", check=False, timeout=60)
        if proc.returncode != 0:
            self.violate("restart-failed", f"replctl up {n}: {proc.stderr.strip()}", [n])
            return False
        self.dead.discard(n)
        s = self.status(n)
        self.note(
            f"up {n}"
            + (f": end {s['end_lsn']} history {s['history']}" if s else " (no status yet)")
        )
        return True

    def failover(self, write: bool = True, candidates: list[str] | None = None) -> bool:
        """Promote a random reachable node (trying others if refused); the writer follows
        it unless `write` is False (a new primary that must not write anything)."""
        if candidates is None:
            candidates = self.promotable({self.primary})
        sts = {n: self.status(n) for n in NODES if self.reachable(n)}
        sound = {n for n, s in sts.items() if s and s["consistent"] and not s["rewinding"]}
        # a node being rebuilt from blocks (invalidated, in a full sync, rewinding) keeps its
        # log, and a promotion pulls from it what no consistent node holds: its
        # acknowledgements are evidence too. Not a node whose disks were replaced this
        # round (its log is new) until it is consistent again
        reach = {n for n, s in sts.items() if s and (n not in self.replaced or n in sound)}
        ends = {
            n: f"{s['end_lsn']}{'' if n in sound else ' (inconsistent/rewinding)'}"
            for n, s in sts.items()
            if s
        }
        everyone = reach
        for c in candidates:
            reach = {n for n in everyone if self.linked(c, n)}
            t = self.now()
            doc = self._promote(c)
            if doc is None:
                self.violate(
                    "promote-hung",
                    f"promote {c} did not answer within 60 s; ends {ends}",
                    [c],
                )
                continue
            if "error" in doc:
                self.refusals[reason_key(doc["error"])] += 1
                self.note(f"promote {c} refused: {doc['error']}")
                continue
            if doc.get("already"):
                # it was primary already (its status did not answer in time: a slow disk)
                s = self.status(c, 10.0)
                self.note(f"promote {c}: already primary in epoch {doc['epoch']}")
                self.primary, self.epoch = c, int(doc["epoch"])
                if write:
                    base = s["end_lsn"] if s else 0
                    self.writer.set_target(
                        self.ledger.new_conn(c, self.epoch, base, self.rng.randint(1, 4))
                    )
                return True
            if self.primary is not None and self.primary != c:
                self.ex_primaries.add(self.primary)
            self.primary, self.epoch = c, int(doc["epoch"])
            self.promotions.append(Promotion(t, c, self.epoch, int(doc["first_lsn"]), reach, ends))
            self.failovers += 1
            room = doc.get("made_room")
            if room:
                self.faults["promotion-made-room"] += 1
            self.note(
                f"promoted {c}: epoch {self.epoch} from LSN {doc['first_lsn']}, pulled "
                f"{doc['pulled_records']} from {doc['pulled_from'] or '-'} (ends {ends})"
                + (f", made room: cleared [{room['first_lsn']}, {room['end_lsn']})" if room else "")
            )
            if write:
                self.writer.set_target(
                    self.ledger.new_conn(
                        c, self.epoch, int(doc["first_lsn"]), self.rng.randint(1, 4)
                    )
                )
            return True
        self.primary = None
        self.writer.set_target(None)
        self.note("no node could be promoted")
        return False

    def promotable(self, exclude: set[str | None]) -> list[str]:
        """The nodes a promotion may be tried on, in a random order: running, not cut off,
        no running primary on their side, none of ``exclude``."""
        out = [
            n
            for n in NODES
            if self.reachable(n)
            and n not in exclude
            and (self.network is None or n not in self.network.isolated())
            and not self.serving_beside(n)
        ]
        self.rng.shuffle(out)
        return out

    def kill_while_rejoining(self, n: str) -> None:
        """Restart n, then SIGKILL it while it rejoins: when it is seen rewinding, or
        following with less than the primary's end, or after a short random delay."""
        if not self.restart(n):
            return
        self.kill_when_rejoining(n)

    def replace_disks(self, n: str) -> None:
        """n's failed disks replaced (a blank volume, a new SRL, `replctl init --force`) and
        n started: with no history in common it gets a full sync from the primary, which
        the next faults may cut (n killed during it here at random, the primary killed
        next). Its acknowledgements from before count as evidence only while it is
        reachable at every later promotion: inconsistent until the sync ends, it is not."""
        assert self.r is not None
        self.r.replace_disks(n)
        self.replaced.add(n)
        self.note(f"disks of {n} replaced: blank volume, new SRL")
        if not self.restart(n):
            return
        if self.rng.random() < 0.3:
            self.kill_when_rejoining(n)

    def kill_when_rejoining(self, n: str) -> None:
        """SIGKILL n (just restarted or continued) when it is seen rewinding, or following
        (by chance), or after a random delay of up to 0.6 s."""
        assert self.r is not None
        limit = time.monotonic() + self.rng.uniform(0.0, 0.6)
        seen = "before its first status"
        while time.monotonic() < limit:
            s = self.status(n, 1.0)
            if s is None:
                break
            seen = (
                f"rewinding (end {s['end_lsn']})"
                if s["rewinding"]
                else f"{s['role']} following {s['following']} at end {s['end_lsn']}"
            )
            if s["rewinding"] or (s["following"] and self.rng.random() < 0.3):
                break
            time.sleep(0.02)
        self.observe()
        self.r.kill(n)
        self.dead.add(n)
        self.note(f"SIGKILL {n} while rejoining: it was {seen}")

    def blackout(self) -> str:
        """Every node killed within a moment, in a random order (a power cut of the whole
        cluster, a bad rollout); then two to four of them started again in a random order
        and one promoted among those, the rest left for the heal. A cold start: no primary
        to follow, every node recovering its own SRL, and a promotion that must take the
        newest history the nodes up hold, or refuse (a node still down may hold records no
        other has: whether they had to survive is decided from the evidence, as for any
        node away at a promotion). The faultfs node's disk loses what it never synced."""
        order = [n for n in NODES if n not in self.dead]
        self.rng.shuffle(order)
        # the faultfs disks are those here whose cache can be lost (a node killed before
        # too: what it wrote and never synced was still in the page cache)
        cut = set(self.disks) if self.disk else set()
        slow = [n for n in sorted(cut) if n in order] if self.rng.random() < 0.5 else []
        if slow:
            # their syncs slowed first (busy disks), so the cut lands on records written
            # and not yet synced: acknowledged only if something acked before a sync
            self.slow_syncs(slow)
        for n in sorted(cut - set(order)):
            self.lose_power(n)
        for n in order:
            if n in cut:
                self.lose_power(n)
            else:
                self.kill(n)
            self.wait_observing(self.rng.uniform(0, 0.05))
        for n in slow:
            self.set_disk_fault("slowsync 0", n)
        self.primary = None
        self.writer.set_target(None)
        back = self.rng.sample(sorted(NODES), self.rng.randint(len(NODES) - MAX_AWAY, len(NODES)))
        for n in back:
            self.restart(n)
        self.failover()
        return (
            f"blackout({','.join(order)}; up {','.join(back)}"
            f"{' -> ' + self.primary if self.primary else ', none promoted'})"
        )

    # ---- one round ---------------------------------------------------------------------------

    def allowed(self) -> list[str]:
        away = len(self.away())
        up = [n for n in NODES if self.reachable(n)]
        secs = [n for n in up if n != self.primary]
        ks = []
        if self.primary is None:
            return ["failover"] if up else []
        net = self.network
        if net is not None and net.sides is not None:
            # split: the two sides as they are, until heal_net (no kills or freezes on top)
            ks += ["heal_net", "burst", "loss", "delay"]
            dn = self.disk_node
            if self.disk and dn is not None and self.reachable(dn) and dn not in self.disk_hit:
                ks.append("disk_error")
            if self.disk and dn is not None and self.reachable(dn):
                ks.append("disk_hang")
            if self.dead:
                ks.append("restart")
            if self.frozen:
                ks.append("thaw")
            return ks
        if away < MAX_AWAY and secs:
            ks += ["freeze_secondary", "kill_secondary"]
        if away < MAX_AWAY and self.reachable(self.primary) and secs:
            ks += ["kill_primary_failover", "freeze_primary_failover"]
        if self.cpu_slow and away < MAX_AWAY and secs:
            ks.append("slow_secondary")
            if self.reachable(self.primary):
                ks.append("slow_primary_failover")
        if away == 0:
            ks.append("double_failover")
        if self.dead:
            ks += ["restart", "kill_while_rejoining"]
            if self.dead - {self.disk_node}:
                ks += ["replace_disks", "invalidate"]
        if self.frozen:
            ks.append("thaw")
        else:
            ks.append("mode_switch")  # a frozen daemon could not take the new file
            if [n for n in secs if n not in self.disk_hit]:
                ks.append("remove_readd")
        if self.reachable(self.primary):
            ks.append("sync_full")
            if all(v.done.is_set() for v in self.verifies):
                ks.append("verify")  # one at a time: the primary refuses a second
            if secs:
                ks.append("switchover")
        if not self.disk_hit:
            ks.append("blackout")  # (a failing disk would stop its node's restart)
        if [n for n in secs if n != self.disk_node]:
            ks.append("invalidate_online")
        ks.append("burst")
        if net is not None:
            p = self.primary
            cut_secs = [n for n in secs if n not in net.isolated()]
            if away < MAX_AWAY and self.reachable(p) and p not in net.isolated() and cut_secs:
                ks += ["partition_primary", "oneway_primary"]
            if away < MAX_AWAY and cut_secs:
                ks += ["partition_secondary", "oneway_secondary"]
            if away == 0:
                ks.append("split")
            if len(net.loss) + len(net.shaped) < 2:
                ks += ["loss", "delay"]
            asyncs = [n for n in cut_secs if self.modes[n] == "async"]
            if away < MAX_AWAY and asyncs:
                ks.append("srl_fill")
            if net.faults():
                ks.append("heal_net")
            elif away == 0 and not self.disk_hit and cut_secs:
                ks.append("long_split")  # a clean network: its rejoin is timed
        dn = self.disk_node
        if self.disk and dn is not None and self.reachable(dn) and dn not in self.disk_hit:
            ks.append("disk_error")
            if away < MAX_AWAY and (dn != self.primary or secs):
                ks.append("power_cut")
        if self.disk and dn is not None and self.reachable(dn):
            ks.append("disk_hang")
            if dn == self.primary and away < MAX_AWAY and secs:
                ks.append("disk_hang_failover")
        return ks

    def step(self, forced: str | None = None) -> str:
        ks = self.allowed()
        if not ks:
            return "none"
        kind = self.rng.choices(ks, [KINDS.get(k) or NET_KINDS.get(k, 3) for k in ks])[0]
        if forced in ks:
            kind = forced
        if kind in NET_KINDS:
            return self.net_step(kind)
        self.faults[kind] += 1
        rng = self.rng
        p = self.primary
        secs = sorted(n for n in NODES if self.reachable(n) and n != p)
        if kind == "failover":
            self.failover()
            return kind
        if kind == "freeze_secondary":
            n = rng.choice(secs)
            self.freeze(n)
            return f"{kind}({n})"
        if kind == "kill_secondary":
            pool = secs + [n for n in self.frozen if n != p]
            n = rng.choice(sorted(pool))
            self.kill(n)
            return f"{kind}({n})"
        if kind == "kill_primary_failover":
            assert p is not None
            self.kill(p)
            self.wait_observing(rng.uniform(0, 0.8))
            self.failover()
            return f"{kind}({p}->{self.primary})"
        if kind == "freeze_primary_failover":
            assert p is not None
            self.freeze(p)
            self.wait_observing(rng.uniform(0, 0.8))
            self.failover()
            return f"{kind}({p}->{self.primary})"
        if kind == "slow_secondary":
            n = rng.choice(secs)
            self.freeze(n, slow=rng.choice(SLOW))
            return f"{kind}({n})"
        if kind == "slow_primary_failover":
            assert p is not None
            self.freeze(p, slow=rng.choice(SLOW))
            # observed while slow (its sync acks are evidence), the writes sent to it
            # meanwhile taking their time: check_slow_acks judges those it completes later
            self.wait_observing(rng.uniform(0, 1.0))
            net, how = self.network, ""
            if net is not None and net.sides is None and p not in net.isolated():
                if rng.random() < 0.5:
                    # nobody hears it any more, so a promotion goes ahead, while it still
                    # hears the others (and the new primary's epoch), late
                    net.one_way(p, "mute", set(NODES) - {p})
                    self.isolate(p, "mute, slowed")
                    how = ",mute"
                    self.wait_observing(rng.uniform(0, 0.8))
            self.failover()
            return f"{kind}({p}{how}->{self.primary})"
        if kind == "double_failover":
            assert p is not None
            self.kill(p)
            quiet = rng.random() < 0.5  # the first new primary writes nothing
            self.failover(write=not quiet)
            q = self.primary
            if q is not None:
                if not quiet:
                    self.wait_observing(rng.uniform(0, 0.5))
                self.kill(q)
                self.failover()
            return f"{kind}({p}->{q}{' silent' if quiet else ''}->{self.primary})"
        if kind == "restart":
            pool = sorted(self.dead)
            n = rng.choice(pool)
            self.restart(n)
            return f"{kind}({n})"
        if kind == "kill_while_rejoining":
            pool = sorted(self.dead & self.ex_primaries) or sorted(self.dead)
            n = rng.choice(pool)
            self.kill_while_rejoining(n)
            return f"{kind}({n})"
        if kind == "replace_disks":
            n = rng.choice(sorted(self.dead - {self.disk_node}))
            self.replace_disks(n)
            return f"{kind}({n})"
        if kind == "invalidate":
            n = rng.choice(sorted(self.dead - {self.disk_node}))
            return self.invalidate(n)
        if kind == "invalidate_online":
            n = rng.choice([m for m in secs if m != self.disk_node])
            return self.invalidate(n)
        if kind == "thaw":
            pool = sorted(self.frozen)
            n = rng.choice(pool)
            zombie = self.frozen[n].was_primary and n != self.primary
            self.thaw(n)
            if zombie and rng.random() < 0.4:
                # the old primary killed while it steps down and rewinds its divergent tail
                self.kill_when_rejoining(n)
                self.faults["kill_while_rewinding"] += 1
                return f"{kind}+kill_while_rewinding({n})"
            return f"{kind}({n})"
        if kind == "mode_switch":
            return self.switch_mode()
        if kind == "remove_readd":
            return self.remove_readd()
        if kind == "switchover":
            return self.switchover()
        if kind == "verify":
            return self.verify()
        if kind == "blackout":
            return self.blackout()
        if kind == "sync_full":
            return self.sync_full()
        if kind == "burst":
            self.writer.burst = not self.writer.burst
            self.note(f"writer burst {'on' if self.writer.burst else 'off'}")
            return f"burst({'on' if self.writer.burst else 'off'})"
        raise AssertionError(kind)

    def late_writes(self, n: str, epoch: int) -> int:
        """An application on a replaced primary goes on writing: these must fail (fenced,
        or timed out under block) unless they end up in the history that won (or, under
        degrade, be discarded with its divergent tail)."""
        late = self.rng.randint(1, 3)
        try:
            st = Stream(self.r, self.ledger.new_conn(n, epoch, 0, late))
            for _ in range(late):
                st.submit(self.ledger.new_write(st.conn, self.rng, VOLUME_SIZE, False))
            self.writer.adopt(st)
        except ReplError as exc:
            self.note(f"could not send late writes to {n}: {exc}")
            return 0
        self.note(f"{late} late writes sent to {n} (epoch {epoch}, replaced meanwhile)")
        return late

    def net_step(self, kind: str) -> str:
        """The faults of --net netns: partitions, loss, delay, a filling SRL, a failing disk."""
        net = self.network
        rng = self.rng
        p = self.primary
        assert net is not None and p is not None
        secs = sorted(n for n in NODES if self.reachable(n) and n != p and n not in net.isolated())
        self.observe()
        if kind == "partition_primary":
            net.cut(p)
            self.isolate(p, "its link down")
            self.faults[kind] += 1
            self.note(f"link of {p} down (primary, epoch {self.epoch}); faults {net.faults()}")
            self.replace_cut_off(p, 0.8)
            return f"{kind}({p}->{self.primary})"
        if kind == "oneway_primary":
            # one direction of every link of the primary: deaf, it still sends its records
            # (until TCP gives up without ACKs) to nodes that may promote one of themselves;
            # mute, it hears the new primary's epoch but nobody hears its answers
            direction = rng.choice(["deaf", "mute"])
            net.one_way(p, direction, set(NODES) - {p})
            self.isolate(p, "one-way")
            self.faults[f"{kind}({direction})"] += 1
            self.note(f"{p} (primary, epoch {self.epoch}) {direction} on every link")
            self.replace_cut_off(p, 0.8)
            return f"{kind}({p},{direction}->{self.primary})"
        if kind == "oneway_secondary":
            n = rng.choice(secs)
            direction = rng.choice(["deaf", "mute"])
            others = {p} if rng.random() < 0.7 else set(NODES) - {n}
            net.one_way(n, direction, others)
            self.faults[f"{kind}({self.modes[n]},{direction})"] += 1
            self.note(f"{n} ({self.modes[n]} secondary) {direction} to {sorted(others)}")
            return f"{kind}({n},{direction})"
        if kind == "partition_secondary":
            n = rng.choice(secs)
            net.cut(n)
            self.faults[f"{kind}({self.modes[n]})"] += 1
            self.note(f"link of {n} down ({self.modes[n]} secondary); faults {net.faults()}")
            return f"{kind}({n})"
        if kind == "split":
            side = {p} | {n for n in NODES if self.modes[n] == "async" and n != p}
            if side == {p}:  # the primary is the async node: one sync node stays with it
                side.add(rng.choice(sorted(n for n in NODES if n != p)))
            rest = set(NODES) - side
            net.split(side, rest)
            if not any(self.modes[n] == "sync" for n in side - {p}):
                self.isolate(p, "split")
            self.faults[kind] += 1
            self.note(f"split {sorted(side)} | {sorted(rest)} (primary {p} epoch {self.epoch})")
            self.replace_cut_off(p, 0.85)
            return f"{kind}({','.join(sorted(side))}|{','.join(sorted(rest))}->{self.primary})"
        if kind == "loss":
            n = rng.choice(sorted(NODES))
            pct = rng.choice([5, 10, 20, 30])
            net.lossy(n, pct)
            self.faults[kind] += 1
            self.note(f"{pct}% packet loss on {n}")
            return f"loss({n},{pct}%)"
        if kind == "delay":
            n = rng.choice(sorted(NODES))
            what = net.slow(
                n, rng.choice([50, 150, 400]), rng.choice([10, 40]), rng.choice([1, 2, 4])
            )
            self.faults[kind] += 1
            self.note(f"{n}'s link slowed: {what}")
            return f"delay({n})"
        if kind == "srl_fill":
            n = rng.choice([x for x in secs if self.modes[x] == "async"])
            net.cut(n)
            self.writer.burst = True
            self.faults[f"srl_fill({self.srl_full})"] += 1
            self.note(
                f"link of {n} (async) down and a write burst: the SRLs fill ({self.srl_full})"
            )
            self.wait_observing(rng.uniform(1.0, 3.0))
            s = self.status(self.primary) if self.primary else None
            if s is not None:
                self.note(
                    f"{self.primary}: SRL [{s['start_lsn']},{s['end_lsn']}) "
                    f"stalled {s['writes_stalled']} pending {s['writes_pending']}, {n} "
                    f"{s['peers'][n]['state']}"
                )
                # evidence that the SRL did fill, by policy
                failed = sum(1 for w in self.ledger.all() if "SRL full" in (w.error or ""))
                if s["writes_stalled"]:
                    self.notes["SRL full seen: writes stalled (stall)"] += 1
                elif s["peers"][n]["state"] in ("dcm", "dcm-resync"):
                    self.notes["SRL full seen: async switched to dcm (dcm)"] += 1
                elif failed:
                    self.notes["SRL full seen: writes failed (fail)"] += 1
                else:
                    self.notes["SRL not full after the burst"] += 1
            return f"srl_fill({n},{self.srl_full})"
        if kind == "heal_net":
            faults = net.faults()
            f = rng.choice(faults)
            name = f.split("(")[0]
            arg = f[f.index("(") + 1 : -1].split(",")[0]
            if name == "cut":
                net.uncut(arg)
                self.healed(arg, "its link down")
            elif name == "split":
                net.unsplit()
                self.healed(None, "split")
            elif name == "oneway":
                net.two_way(arg)
                self.healed(arg, "one-way")
            elif name == "loss":
                net.lossy(arg, 0)
            else:
                net.unslow(arg)
            self.faults[kind] += 1
            self.note(f"healed {f}")
            return f"heal_net({f})"
        if kind == "disk_error":
            return self.disk_error()
        if kind in ("disk_hang", "disk_hang_failover"):
            return self.disk_hang(kind == "disk_hang_failover")
        if kind == "long_split":
            return self.long_split(rng.choice(secs))
        if kind == "power_cut":
            return self.power_cut()
        raise AssertionError(kind)

    def long_split(self, n: str) -> str:
        """A secondary split off from every other node for 12-25 s (nftables: packets
        dropped, so a connection attempt gets no answer at all, where a link taken down
        fails at once), then healed: its primary must see it again within REJOIN_BOUND_S.
        The rounds' short faults heal before the kernel's SYN retries drift apart, and the
        convergence deadline (30 s) hid the 15-35 s this took before the transport retried
        stuck attempts; this is the fault that times it."""
        net, p = self.network, self.primary
        assert net is not None and p is not None
        secs = self.rng.uniform(12, 25)
        net.split({n}, set(NODES) - {n})
        self.faults[f"long_split({self.modes[n]})"] += 1
        self.note(f"{n} ({self.modes[n]} secondary) split off from every node for {secs:.0f}s")
        self.wait_observing(secs)

        def peer() -> dict | None:
            s = self.status(p) if self.primary == p and self.reachable(p) else None
            return s["peers"].get(n) if s is not None else None

        before = peer()
        net.unsplit()
        t = time.monotonic()
        while True:
            now = peer()
            took = time.monotonic() - t
            if now is not None and now["connected"]:
                break
            if now is None or took > REJOIN_BOUND_S:
                if now is not None:
                    self.violate(
                        "slow-rejoin",
                        f"{n} ({self.modes[n]}) split off for {secs:.0f}s, then healed: "
                        f"{p} has not heard from it {took:.1f}s after the heal "
                        f"(state {now['state']})",
                        [n, p],
                    )
                return f"long_split({n},{secs:.0f}s,not back)"
            self.observe()
            time.sleep(0.05)
        was = "?" if before is None else ("connected" if before["connected"] else "gone")
        self.note(
            f"split of {n} healed: {p} had it {was} ({before and before['state']}), "
            f"heard from it again {took:.2f}s after ({now['state']})"
        )
        if was == "connected":  # heard from through the split: the fault did not bite
            self.notes["long split: the primary still heard from it at the heal"] += 1
        else:
            self.notes[f"long split: back with the primary within {math.ceil(took)} s"] += 1
        return f"long_split({n},{secs:.0f}s,back {took:.1f}s)"

    def replace_cut_off(self, p: str, chance: float) -> None:
        """After a fault that cut the primary off: a moment observed, then (with ``chance``)
        a node on the other side promoted, and the application on the old primary sends it
        a few late writes."""
        self.wait_observing(self.rng.uniform(0.2, 1.5))
        if self.rng.random() < chance:
            old = self.epoch
            if self.failover() and self.primary != p:
                self.late_writes(p, old)

    def healed(self, node: str | None, how: str) -> None:
        for iso in self.isolations:
            if iso.t_heal is None and iso.how == how and (node is None or iso.node == node):
                iso.t_heal = self.now()

    def run_round(self) -> RoundResult:
        if self.r is None or self.rounds_on_build >= self.rebuild_every:
            self.teardown(remove=True)
            self.build()
        self.round += 1
        self.rounds_on_build += 1
        tail = "" if self.net == "loopback" else f":{self.net}"
        self.rng = random.Random(f"{self.seed}:{self.mode}:{self.round}{tail}")
        self.t0 = time.monotonic()
        self.trace: list[str] = []
        self.violations: list[Violation] = []
        self.faults: Counter = Counter()
        self.refusals: Counter = Counter()
        self.failovers = 0
        self.promotions: list[Promotion] = []
        self.observations: list[Observation] = []
        self.freezes: list[Freeze] = []
        self.isolations: list[Isolation] = []
        self.replaced: set[str] = set()  # nodes whose disks were replaced this round
        self.verifies: list = []  # replctl verify runs (tests/faults/verifying.py)
        self.damaged: dict[str, set[int]] = {}  # 4 KiB blocks written behind our back
        self.disk_hit: set[str] = set()
        self.notes: Counter = Counter()
        if self.keys:
            self.notes["rounds with CURVE between the nodes"] += 1
        self.bytes_verified = 0
        assert self.r is not None
        self.log_offsets = {n: len(self.r.log(n)) for n in NODES}
        self.ledger = Ledger(self.round, self.next_wid, self.t0)
        #: the nodes in sync mode at any time of the round (check_srl_policy)
        self.ever_sync = {n for n, m in self.modes.items() if m == "sync"}
        self.writer = Writer(self.r, self.ledger, self.rng.randrange(1 << 30))
        steps: list[str] = []
        try:
            s = self.status(self.primary) if self.primary else None
            assert s is not None and s["role"] == "primary", f"no primary at round start: {s}"
            self.epoch = s["epoch"]
            self.note(
                f"round {self.round}: primary {self.primary} epoch {self.epoch} end {s['end_lsn']}"
            )
            self.writer.set_target(
                self.ledger.new_conn(self.primary, self.epoch, s["end_lsn"], self.rng.randint(1, 4))
            )
            self.writer.start()
            self.wait_observing(self.rng.uniform(0.2, 0.8))
            forced = self.script.pop(0) if self.script else []
            for kind in forced:
                steps.append(self.step(kind))
                self.wait_observing(self.rng.uniform(0.1, 1.2))
            for _ in range(self.rng.randint(2, 5) - len(forced)):
                steps.append(self.step())
                self.wait_observing(self.rng.uniform(0.1, 1.2))
            self.heal()
        except RoundStop:
            self.writer.stop(0)
        except Exception as exc:  # the round could not go on: report it as such
            tb = traceback.format_exc().strip().splitlines()
            self.violate("round-aborted", f"{exc!r} ({' | '.join(tb[-4:])})")
            self.writer.stop(0)
        finally:
            self.next_wid = self.ledger.next_wid
        if self.writer.crash is not None:
            self.violate("harness-error", f"writer thread crashed: {self.writer.crash!r}")
        seconds = self.now()
        logs = self.log_excerpts()
        workdir = ""
        if self.violations:
            assert self.r is not None
            workdir = str(self.r.workdir)
            self.teardown(remove=not self.keep_failed)
        if self.verbose:
            print(f"   round done in {seconds:.1f}s", flush=True)
        return RoundResult(
            self.seed,
            self.round,
            self.mode,
            self.srl_full,
            seconds,
            steps,
            self.faults,
            self.failovers,
            self.refusals,
            self.ledger.counts(),
            self.violations,
            self.trace,
            logs,
            workdir if self.keep_failed else "",
            self.net,
            self.bytes_verified,
            self.notes,
        )

    # ---- heal, quiesce, check ------------------------------------------------------------------

    def heal(self) -> None:
        if self.network is not None and self.network.faults():
            self.note(f"network healed: {self.network.faults()}")
            self.network.clear()
            for iso in self.isolations:
                if iso.t_heal is None:
                    iso.t_heal = self.now()
        if self.disk_hit:
            self.set_disk_fault("none")
        for n in sorted(self.frozen):
            self.thaw(n)
        self.wait_failed_daemons()
        for n in sorted(self.dead):
            self.restart(n)
        self.writer.burst = False
        # a continued zombie, or a primary cut off and replaced, must step down: at most one
        # primary, and none in an epoch older than one a node knows (rule 4: it learns of
        # the newer epoch and steps down; the newest primary itself may be gone, killed or
        # stopped on its disk error, leaving no primary: promoted below)
        sts = self.wait_statuses(
            lambda sts: len(primaries(sts)) <= 1 and not stale_primaries(sts),
            15,
            "at most one primary, in the newest epoch",
        )
        ps = primaries(sts)
        if len(ps) > 1:
            self.violate(
                "two-primaries",
                ", ".join(f"{n} (epoch {sts[n]['epoch']})" for n in ps) + " are all primary "
                "15 s after every node was back",
                ps,
            )
            raise RoundStop("two primaries")
        stale = stale_primaries(sts)
        if stale:
            top = max(s["epoch"] for s in sts.values() if s)
            self.violate(
                "stale-primary",
                f"{stale[0]} is still primary in epoch {sts[stale[0]]['epoch']} 15 s after "
                f"every node was back, though a node knows epoch {top}: "
                + "; ".join(describe(n, s) for n, s in sts.items()),
                stale,
            )
            raise RoundStop("stale primary")
        if ps:
            p = ps[0]
            if p != self.primary or sts[p]["epoch"] != self.epoch:
                self.note(f"primary is {p} epoch {sts[p]['epoch']}")
                self.primary, self.epoch = p, sts[p]["epoch"]
                self.writer.set_target(
                    self.ledger.new_conn(p, self.epoch, sts[p]["end_lsn"], self.rng.randint(1, 4))
                )
        else:
            self.primary = None
            deadline = time.monotonic() + 20
            while not self.failover() and time.monotonic() < deadline:
                self.wait_observing(0.5)
            if self.primary is None:
                self.violate(
                    "no-primary",
                    "no node accepts promotion 20 s after every node was back: "
                    + "; ".join(describe(n, s) for n, s in self.statuses().items()),
                    list(NODES),
                )
                raise RoundStop("no primary")
        # a daemon that stopped on its disk error only meanwhile (seed 3702 round 4) is
        # restarted too
        self.check_alive()
        for n in sorted(self.dead):
            self.restart(n)
        self.wait_observing(self.rng.uniform(0.2, 1.0))  # writes beside the rejoining nodes
        self.writer.stop(3)
        self.observe()
        self.note(f"writer stopped: {self.ledger.counts()}")
        self.count_log_lines()
        self.quiesce_and_check()

    def count_log_lines(self) -> None:
        """Notes for what the daemons did this round that no status shows: a copy longer
        than the SRL folding its records in (node.resync_fold), a promotion waiting for
        peers (each 3 heartbeats of it logged)."""
        assert self.r is not None
        for n in NODES:
            text = self.r.log(n)[self.log_offsets.get(n, 0) :]
            self.notes["resync folds logged"] += text.count("are read and sent again instead")
            # a promotion's probe listening past its window (failover.promotion, QUORUM_WAIT_S)
            self.notes["promotion wait lines (one per 3 heartbeats): short of peers"] += text.count(
                "peers it needs heard"
            )
            self.notes["promotion wait lines: an epoch no reachable log follows"] += text.count(
                "no reachable log follows epoch"
            )

    def wait_failed_daemons(self, timeout: float = 30.0) -> None:
        """A daemon whose disk failed under it says "node failed" and stops, which takes a
        moment (its threads end, its files close): wait for that before restarting the nodes
        that are down, or one still stopping is missed and the round never converges."""
        assert self.r is not None
        for n in sorted(self.disk_hit - self.dead):
            # the daemon that failed, not one restarted since (its pid is in the line)
            failed = FAILED_PID.findall(self.r.log(n)[self.log_offsets.get(n, 0) :])
            pid = self.r.pid(n)
            if pid is not None and str(pid) in failed:
                try:
                    wait_gone(pid, timeout)
                except ReplError:
                    self.violate(
                        "stop-hung", f"{n} said node failed but runs {timeout:.0f} s on", [n]
                    )
        self.check_alive()

    def statuses(self) -> dict[str, dict | None]:
        return {n: self.status(n) for n in NODES}

    def wait_statuses(self, pred, timeout: float, what: str) -> dict[str, dict | None]:
        deadline = time.monotonic() + timeout
        while True:
            sts = self.statuses()
            if pred(sts) or time.monotonic() > deadline:
                return sts
            time.sleep(0.1)

    def quiesce_and_check(self) -> None:
        assert self.r is not None
        t = self.now()
        problems: list[str] = []

        def converged(sts: dict) -> bool:
            problems[:] = checks.convergence_problems(sts)
            return not problems

        sts = self.wait_statuses(converged, self.converge_s, "convergence")
        self.check_alive()
        if problems:
            self.violate(
                "not-converged",
                f"{self.converge_s:.0f} s after the writer stopped: "
                + "; ".join(problems)
                + " || "
                + " ; ".join(describe(n, s) for n, s in sts.items()),
                [n for n in NODES if any(n in p for p in problems)],
            )
            return
        self.note(f"converged in {self.now() - t:.1f}s")
        p = primaries(sts)[0]
        history = [tuple(h) for h in sts[p]["history"]]
        end = sts[p]["end_lsn"]
        sums = self.r.checksums(list(NODES))
        self.violations += checks.check_volumes_identical(sums, end)
        images = {n: self.r.volume_path(n).read_bytes() for n in NODES}
        seen: dict[bytes, str] = {}
        for n, img in images.items():
            if img in seen:
                continue  # same bytes as a node already checked
            seen[img] = n
            self.violations += checks.check_volume_content(
                n, img, self.base, self.ledger, history, end
            )
        self.violations += checks.check_lsn_assignment(self.ledger)
        self.violations += checks.check_acknowledged_survive(
            self.ledger, history, end, self.promotions, self.observations, (p, sts[p]["epoch"])
        )
        self.violations += deposed.check_zombie_acks(
            self.ledger, history, end, self.freezes, self.promotions, isolations=self.isolations
        )
        iso_v, discarded = deposed.check_isolated_acks(
            self.ledger, history, end, self.isolations, self.promotions, self.mode
        )
        self.violations += iso_v
        slow_v, slow_discarded, slow_judged = deposed.check_slow_acks(
            self.ledger,
            history,
            end,
            self.freezes,
            self.promotions,
            self.mode,
            isolations=self.isolations,
        )
        self.violations += slow_v
        if slow_judged:
            self.notes["writes a slowed primary completed after its replacement began"] += (
                slow_judged
            )
        if slow_discarded:
            self.notes["acks of a slowed primary discarded (degrade allows it)"] += slow_discarded
            self.note(
                f"{slow_discarded} writes acknowledged by a slowed, replaced primary were "
                "discarded with its divergent tail (on_sync_loss=degrade allows it)"
            )
        self.violations += checks.check_srl_policy(
            self.ledger, self.srl_full, self.mode, sync_nodes=frozenset(self.ever_sync)
        )
        self.judge_verifies(p)
        if discarded:
            self.notes["acks of a cut-off primary discarded (degrade allows it)"] += discarded
            self.note(
                f"{discarded} writes acknowledged by a cut-off primary were discarded with "
                "its divergent tail (on_sync_loss=degrade allows it)"
            )
        self.bytes_verified = len(images) * VOLUME_SIZE
        for v in self.violations:
            if not v.message.startswith("[seed"):
                v.message = f"[seed {self.seed} round {self.round} {self.mode}] {v.message}"
        done = self.ledger.completed()
        lost = [w for w in done if not checks.in_history(w, history, end)]
        fp = (p, sts[p]["epoch"])
        must = sum(
            1
            for w in done
            if checks.protection(w, self.promotions, self.observations, fp) is not None
        )
        self.note(
            f"checked at end {end}, history {[list(h) for h in history]}: {len(done)} "
            f"completed writes, {must} of them required to survive, {len(lost)} discarded "
            "as divergent tails without being required"
        )
        for f in self.freezes:
            if not f.was_primary or f.t_cont is None:
                continue
            after = [
                w
                for c in self.ledger.conns
                if c.node == f.node and c.epoch == f.epoch
                for w in c.writes
                if w.t_done is not None and w.t_done >= f.t_cont
            ]
            if after:
                outcomes = Counter(
                    f"completed, {'kept' if checks.in_history(w, history, end) else 'DISCARDED'}"
                    if w.completed
                    else re.sub(r"\d+", "N", (w.error or "")[:60])
                    for w in after
                )
                self.note(f"{f.node}'s writes answered after its SIGCONT: {dict(outcomes)}")
        if not self.violations:
            self.base = images[p]

    def log_excerpts(self, keep: int = 18) -> dict[str, list[str]]:
        """Warnings, errors and foreign lines (aborts, tracebacks) each node logged this
        round, for the nodes the violations name (all nodes if none is named)."""
        if not self.violations or self.r is None:
            return {}
        names = sorted({n for v in self.violations for n in v.nodes}) or list(NODES)
        out = {}
        for n in names:
            text = self.r.log(n)[self.log_offsets.get(n, 0) :]
            lines = [ln for ln in text.splitlines() if not re.search(r" INFO ", ln) and ln.strip()]
            out[n] = lines[-keep:]
        return out


# ---- helpers -----------------------------------------------------------------------------------


def primaries(sts: dict[str, dict | None]) -> list[str]:
    return [n for n, s in sts.items() if s and s["role"] == "primary"]


def stale_primaries(sts: dict[str, dict | None]) -> list[str]:
    """Primaries in an epoch older than the newest any node knows (about to be fenced)."""
    top = max((s["epoch"] for s in sts.values() if s), default=0)
    return [n for n in primaries(sts) if (sts[n] or {}).get("epoch", 0) < top]


def describe(n: str, s: dict | None) -> str:
    if s is None:
        return f"{n}: no status"
    peers = ", ".join(
        f"{p}:{ps['state']}{'/deg' if ps['degraded'] else ''}"
        f"{'' if ps['connected'] else '/disc'} acked {ps['acked_lsn']}"
        + (
            f" stream {'on' if ps.get('streaming') else 'off'} next {ps.get('next_lsn')}"
            f" shipped {ps.get('shipped_records')} its end {ps.get('end_lsn')}"
            f"{'' if ps.get('consistent') else ' inconsistent'}"
            if s["role"] == "primary"
            else ""
        )
        for p, ps in s["peers"].items()
    )
    return (
        f"{n}: {s['role']} e{s['epoch']} [{s['start_lsn']},{s['end_lsn']}) applied "
        f"{s['applied_end']} consistent {s['consistent']} rewinding {s['rewinding']} "
        f"following {s['following']} history {s['history']} pending {s['writes_pending']} "
        f"stalled {s['writes_stalled']} peers {{{peers}}}"
    )


def signature(v: Violation) -> str:
    """A violation without its numbers, names and per-node dumps: to group alike ones."""
    msg = re.sub(r"^\[seed [^\]]*\] ", "", v.message).split(" || ")[0]
    msg = re.sub(r"\d+(\.\d+)?", "N", msg)
    msg = re.sub(r"\b(alpha|beta|gamma|delta)\b", "X", msg)
    if v.kind == "not-converged":  # the set of problems, without the ends dump
        parts = msg.split(": ", 1)[-1].split("; ")
        msg = "; ".join(sorted({p for p in parts if not p.startswith("end LSNs differ")}))
    return f"{v.kind}: {msg[:200]}"


def reason_key(err: str) -> str:
    """A promotion refusal without its numbers and names, to count refusals by kind."""
    key = re.sub(r"\d+", "N", err)
    key = re.sub(r"\b(alpha|beta|gamma|delta)\b", "X", key)
    return key[:70]


@dataclass
class Summary:
    rounds: int = 0
    ok: int = 0
    seconds: float = 0.0
    faults: Counter = field(default_factory=Counter)
    failovers: int = 0
    refusals: Counter = field(default_factory=Counter)
    violations: Counter = field(default_factory=Counter)
    signatures: dict[str, list[str]] = field(default_factory=dict)
    writes: Counter = field(default_factory=Counter)
    failed: list[RoundResult] = field(default_factory=list)
    bytes_verified: int = 0
    notes: Counter = field(default_factory=Counter)
    by_setting: Counter = field(default_factory=Counter)

    def add(self, res: RoundResult) -> None:
        self.rounds += 1
        self.ok += res.ok
        self.seconds += res.seconds
        self.faults.update(res.faults)
        self.failovers += res.failovers
        self.refusals.update(res.refusals)
        self.violations.update(v.kind for v in res.violations)
        for v in res.violations:
            self.signatures.setdefault(signature(v), []).append(
                f"seed {res.seed} round {res.round} {res.mode}"
            )
        self.writes.update(res.counts)
        self.bytes_verified += res.bytes_verified
        self.notes.update(res.notes)
        self.by_setting[f"{res.net} on_sync_loss={res.mode} srl_full={res.srl_full}"] += 1
        if not res.ok:
            self.failed.append(res)

    def doc(self) -> dict:
        """The summary as JSON, each failed round's full report included."""
        return {
            "rounds": self.rounds,
            "clean": self.ok,
            "seconds_in_rounds": round(self.seconds, 1),
            "faults": dict(self.faults),
            "failovers": self.failovers,
            "refusals": dict(self.refusals),
            "rounds_by_setting": dict(self.by_setting),
            "writes": dict(self.writes),
            "bytes_verified": self.bytes_verified,
            "notes": dict(self.notes),
            "violations": dict(self.violations),
            "violation_signatures": {k: v for k, v in self.signatures.items()},
            "failed": [
                {
                    "seed": r.seed,
                    "round": r.round,
                    "net": r.net,
                    "mode": r.mode,
                    "srl_full": r.srl_full,
                    "workdir": r.workdir,
                    "steps": r.steps,
                    "violations": [str(v) for v in r.violations],
                    "report": r.report(),
                }
                for r in self.failed
            ],
        }

    def text(self) -> str:
        lines = [
            f"rounds: {self.rounds} ({self.ok} clean, {self.rounds - self.ok} with violations) "
            f"in {self.seconds:.0f}s",
            f"faults by kind: {dict(sorted(self.faults.items()))}",
            f"failovers (successful promotions): {self.failovers}",
            f"promotions refused: {sum(self.refusals.values())} "
            f"{dict(self.refusals.most_common())}",
            f"rounds by setting: {dict(sorted(self.by_setting.items()))}",
            f"writes: {dict(self.writes)}",
            f"bytes verified (volumes compared with the ledger's model): {self.bytes_verified}"
            f" ({self.bytes_verified / (1 << 20):.0f} MiB)",
            f"notes: {dict(self.notes)}",
            f"violations: {sum(self.violations.values())} {dict(self.violations.most_common())}",
        ]
        if self.signatures:
            lines.append("violations by signature (numbers and node names elided):")
        for sig, where in sorted(self.signatures.items(), key=lambda x: -len(x[1])):
            lines.append(f"  {len(where):3d}x {sig}")
            lines.append(f"       e.g. {', '.join(where[:6])}")
        for res in self.failed:
            lines.append(
                f"  seed {res.seed} round {res.round} {res.mode} srl_full={res.srl_full}: "
                + "; ".join(v.kind for v in res.violations)
            )
        return "\n".join(lines)
