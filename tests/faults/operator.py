"""What the operator does while the faults go on: the README's rollouts of a mode change and
of a node's removal and return, `replctl sync --full` of a secondary, `replctl invalidate`
of a damaged one, and a planned switchover (demote, then promote another node).

Mixed into the schedule's Harness (tests/faults/schedule.py), whose state and small tools
(the resource, the seeded rng, notes, violations, kills, observations) these use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from replengine.errors import ReplError
from replengine.runtime import wait_gone

from .checks import Observation
from .layout import MAX_AWAY, NODES, VOLUME_SIZE

#: the nodes whose mode the schedule switches (one of them async at a time, so every primary
#: keeps a sync secondary); delta stays async: the SRL-filling fault cuts an async node
SWITCHABLE = ("alpha", "beta", "gamma")


class OperatorActions:
    def switch_mode(self) -> str:
        """The operator's rollout of a mode change (README, "Changing the nodes of a running
        resource"): the new file in place, then `replctl adjust` on every running node, one
        at a time, while the application writes. A node that is down reads the file when it
        comes back. Switches a node to async, or the one that is async back to sync."""
        assert self.r is not None
        self.check_alive()  # a daemon stopped by its disk error takes the file at its restart
        back = [n for n in SWITCHABLE if self.modes[n] == "async"]
        n = back[0] if back else self.rng.choice(SWITCHABLE)
        old = self.modes[n]
        new = self.modes[n] = "sync" if old == "async" else "async"
        self.ever_sync.add(n)
        self.r.nodes[n] = new
        self.r.write_config()
        self.adjust_all(f"{n} {old} -> {new}")
        self.note(f"{n} switched {old} -> {new}: the file on every node, adjust on the running")
        self.observe()
        return f"mode_switch({n},{old}->{new})"

    def adjust_all(self, what: str, skip: str = "") -> None:
        """`replctl adjust` on every running node but ``skip``, one at a time (the README's
        rollout): a refusal or a failure is a violation."""
        assert self.r is not None
        for m in NODES:
            if m in self.dead or m == skip:
                continue
            proc = self.r.replctl(m, "adjust", check=False, timeout=60)
            if proc.returncode != 0:
                self.violate(
                    "adjust-failed",
                    f"replctl adjust on {m} ({what}): {(proc.stderr or proc.stdout).strip()}",
                    [m],
                )

    def write_members(self, members: list[str]) -> None:
        """The config file with these nodes, in the layout's order (a node's place in the
        list is part of which epochs it owns: a node added back takes its old place)."""
        assert self.r is not None
        self.r.nodes = {m: self.modes[m] for m in NODES if m in members}
        self.r.write_config()

    def remove_readd(self) -> str:
        """A secondary removed from the running resource (README, "Changing the nodes of a
        running resource": the file without it and `adjust` on every node that stays, then
        it is stopped) while the application writes; meanwhile, at random, the primary is
        killed and another node promoted; then the node added back (the file with it,
        `adjust` everywhere, `up`). On new disks as the README asks, or on its old ones (an
        operator who skipped the wipe): its log's history, now stale, decides what it is
        sent. Every volume must end identical, no acknowledged write lost."""
        assert self.r is not None and self.primary is not None
        rng = self.rng
        p = self.primary
        pool = sorted(n for n in NODES if n != p and self.reachable(n) and n not in self.disk_hit)
        n = rng.choice(pool)
        self.write_members([m for m in NODES if m != n])
        self.adjust_all(f"{n} removed", skip=n)
        pid = self.r.pid(n)
        self.observe()
        self.r.signal(n, signal.SIGTERM)  # its stop, with the file it started with
        if pid is not None:
            try:
                wait_gone(pid, 30)
            except ReplError:
                self.violate("stop-hung", f"{n}, removed, still runs 30 s after SIGTERM", [n])
                self.r.kill(n)
        self.dead.add(n)
        self.note(f"{n} ({self.modes[n]}) removed: adjust on the others, then stopped")
        self.wait_observing(rng.uniform(0.1, 1.0))
        how = ""
        q = self.primary
        others = [m for m in NODES if m not in (n, q) and self.reachable(m)]
        if q is not None and self.reachable(q) and others and rng.random() < 0.4:
            self.kill(q)
            self.wait_observing(rng.uniform(0, 0.5))
            self.failover()
            how = f", {q}->{self.primary} meanwhile"
        wipe = rng.random() < 0.5
        self.write_members(list(NODES))
        self.adjust_all(f"{n} added back", skip=n)
        if wipe:
            self.r.replace_disks(n)
            self.replaced.add(n)
        self.note(f"{n} added back on {'new' if wipe else 'its old'} disks")
        self.restart(n)
        self.notes["nodes removed and added back" + (" on new disks" if wipe else "")] += 1
        return f"remove_readd({n}{how}{', wiped' if wipe else ''})"

    def sync_full(self) -> str:
        """The operator rebuilds a secondary from the primary (`replctl sync --full`, as after
        a disk repair) while the application writes and the faults go on: the node is
        inconsistent, so unpromotable, until its copy ends, and a copy cut short by a kill, a
        freeze, a partition or a failover must still end with every volume identical. Asked
        of a node that is down, the copy waits for it. A refusal (a copy already running, a
        primary that was replaced meanwhile) is noted; no answer is a violation."""
        assert self.r is not None and self.primary is not None
        p = self.primary
        n = self.rng.choice(sorted(m for m in NODES if m != p))
        try:
            proc = self.r.replctl(p, "sync", "--full", n, check=False, timeout=60)
        except subprocess.TimeoutExpired:
            self.violate("sync-hung", f"replctl sync --full {n} on {p}: no answer in 60 s", [p])
            return f"sync_full({p}->{n} hung)"
        if proc.returncode == 0:
            self.notes["full syncs asked for"] += 1
            self.note(f"sync --full {n} on {p}: {proc.stdout.strip()}")
            self.observe()
            return f"sync_full({p}->{n})"
        self.notes["full syncs refused"] += 1
        self.note(f"sync --full {n} on {p} refused: {(proc.stderr or proc.stdout).strip()}")
        self.observe()
        return f"sync_full({p}->{n} refused)"

    def invalidate(self, n: str) -> str:
        """n's volume damaged (a few 4 KiB blocks of garbage: a failing disk, a restore from
        an old backup) and `replctl invalidate` run on it. Down, it stays down for now, so a
        failover may come before it returns; running, the primary it follows rebuilds it
        while the faults go on. Either way the final comparison finds any block left. A
        running node may refuse (a resync to it is running): asked again for a few seconds,
        then stopped and invalidated offline, which it cannot refuse."""
        assert self.r is not None
        rng = self.rng
        online = n not in self.dead
        blocks = sorted(rng.sample(range(VOLUME_SIZE // 4096), rng.randint(1, 4)))
        self.damage_noted(n, blocks)
        with open(self.r.volume_path(n), "r+b") as f:
            for b in blocks:
                f.seek(b * 4096)
                f.write(rng.randbytes(4096))
            f.flush()
            os.fsync(f.fileno())
        self.note(f"volume of {n} damaged (4 KiB blocks {blocks}){'' if online else ' while down'}")
        deadline = time.monotonic() + 5
        while True:
            try:
                proc = self.r.replctl(n, "invalidate", check=False, timeout=60)
            except subprocess.TimeoutExpired:
                self.violate(
                    "invalidate-hung", f"replctl invalidate on {n}: no answer in 60 s", [n]
                )
                return f"invalidate({n} hung)"
            why = (proc.stderr or proc.stdout).strip()
            if proc.returncode == 0 or n in self.dead:
                break
            self.note(f"invalidate {n} refused: {why}")
            if time.monotonic() > deadline or not self.r.pid(n):
                self.kill(n)  # offline, where nothing refuses it
            self.wait_observing(0.3)
        if proc.returncode != 0:
            self.violate("invalidate-failed", f"replctl invalidate on {n} (down): {why}", [n])
        self.notes["volumes damaged and invalidated" + (" online" if online else "")] += 1
        self.note(f"{n} invalidated: {proc.stdout.strip()}")
        return f"{'invalidate_online' if online else 'invalidate'}({n})"

    def switchover(self) -> str:
        """The planned switchover (`pcs resource move`: demote the primary, then promote
        another node), whatever faults are on: the application stopped first or, at random,
        still writing while the demote drains. Once `replctl demote` has answered, the old
        primary's log holds every write it completed, in either mode: while it stays
        reachable, every later promotion must find them (recorded here as evidence for
        checks.protection), an async node promoted pulling them first. At random it is
        killed before the promotion (then nothing protects what only it held)."""
        assert self.r is not None and self.primary is not None
        rng, p, epoch = self.rng, self.primary, self.epoch
        before = self.status(p, 5.0)
        quiet = rng.random() < 0.5
        net = self.network
        # an async node, stopped while the writes go on and let go just before it is
        # promoted: behind the demoted primary, it pulls the difference first
        lagging = None
        asyncs = [
            n
            for n in NODES
            if n != p
            and self.reachable(n)
            and self.modes[n] == "async"
            and (net is None or n not in net.isolated())
        ]
        if asyncs and not quiet and len(self.away()) < MAX_AWAY and rng.random() < 0.5:
            lagging = rng.choice(asyncs)
            self.freeze(lagging)
            self.wait_observing(rng.uniform(0.1, 0.6))
        if quiet and not self.writer.pause(10.0):
            self.note(f"switchover of {p}: writes still in flight after 10 s")
        try:
            proc = self.r.replctl(p, "demote", check=False, timeout=90)
        except subprocess.TimeoutExpired:
            self.violate("demote-hung", f"replctl demote on {p}: no answer in 90 s", [p])
            if lagging is not None:
                self.thaw(lagging)
            self.writer.resume()
            return f"switchover({p}: demote hung)"
        if lagging is not None:
            self.thaw(lagging)
        if proc.returncode != 0:
            self.writer.resume()
            self.note(f"demote {p} failed: {(proc.stderr or proc.stdout).strip()}")
            self.check_alive()  # stopped by its disk error: a failover is due
            return f"switchover({p}: demote failed)"
        after = self.status(p, 5.0)
        self.writer.set_target(None)
        self.primary = None
        self.ex_primaries.add(p)
        was = before is not None and before["role"] == "primary" and before["epoch"] == epoch
        clean = after is not None and not after["following"] and after["epoch"] == epoch
        if was and clean:
            assert after is not None
            ob = Observation(self.now(), p, epoch, {p: after["end_lsn"] - 1}, demoted=True)
            self.observations.append(ob)
        self.note(
            f"demoted {p}{' (writer stopped first)' if quiet else ''}: "
            + (f"end LSN {after['end_lsn']}" if after else "no status")
            + ("" if was and clean else " (not a clean demote of the primary: no evidence)")
        )
        killed = rng.random() < 0.2
        if killed:
            self.kill(p, observe=False)
        candidates = self.promotable({p, lagging})
        if lagging is not None and self.reachable(lagging):
            candidates.insert(0, lagging)
        self.failover(candidates=candidates)
        self.writer.resume()
        how = ",quiet" if quiet else (f",{lagging} lagging" if lagging else "")
        return f"switchover({p}{how}{',killed' if killed else ''}->{self.primary})"


__all__ = ["SWITCHABLE", "OperatorActions"]
