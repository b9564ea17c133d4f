"""The faults of the faultfs disk (tests/faults/faultfs.py): one node's volume and SRL on a
disk that fails with EIO, hangs, or loses power (with ``--disk-all`` every node's files on
one of their own, whose power a blackout cuts).

Mixed into the schedule's Harness (tests/faults/schedule.py), whose state and small tools
(the resource, the seeded rng, notes, violations, kills, observations, failover) these use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

from replengine.errors import ReplError
from replengine.log.srl import SRL

from . import faultfs
from .checks import Freeze, Observation
from .layout import NODES


class DiskFaults:
    def mount_faultfs(self, work: Path, node: str) -> None:
        """The node's directory (volume, SRL, their marker files) becomes a FUSE mount of
        <node>.disk that fails reads or writes with EIO on command (faultfs)."""
        mnt, backing = work / node, work / f"{node}.disk"
        mnt.mkdir(parents=True, exist_ok=True)
        backing.mkdir(parents=True, exist_ok=True)
        fuse = self.fuse_mount.enter_context(faultfs.mounted(backing, mnt))
        self.disks[node] = mnt
        if node == self.disk_node:
            self.fuse = fuse

    def set_disk_fault(self, spec: str, node: str | None = None) -> str:
        """Tell a faultfs disk (disk_node's unless ``node``) what to do; its state after."""
        return faultfs.command(self.disks[node or self.disk_node or ""], spec)

    def disk_error(self) -> str:
        """The disk node's reads, writes or both fail with EIO for 0.2-1.5 s: on its SRL,
        its volume or both; its daemon may stop (it must come back on restart once the
        disk is repaired) or go on."""
        n = self.disk_node
        assert n is not None
        what = self.rng.choice(["r", "w", "rw"])
        files = self.rng.choice(["srl.img*", "volume.img", "*"])
        self.disk_hit.add(n)
        self.set_disk_fault(f"eio {what} {files}")
        role = "primary" if n == self.primary else "secondary"
        self.faults[
            f"disk_error({'srl' if files.startswith('srl') else 'volume' if files == 'volume.img' else 'both'},{what})"
        ] += 1
        self.note(f"disk of {n} ({role}) fails {what} of {files} with EIO")
        self.wait_observing(self.rng.uniform(0.2, 1.5))
        self.set_disk_fault("none")
        self.note(f"disk of {n} repaired")
        self.observe()
        if n not in self.dead:
            self.notes["disk error: daemon kept running"] += 1
        return f"disk_error({n},{what},{files})"

    def disk_hang(self, replace: bool) -> str:
        """The disk node's disk stops answering for a while (a SAN path failing over, a
        stuck controller): every I/O of its volume and SRL waits in the kernel, then
        completes; nothing fails, so the daemon must come through it as it was. A primary's
        loop waits on its disk as on a SIGSTOP while its ZeroMQ threads and connections live
        on: with ``replace``, another node is promoted meanwhile (as Pacemaker would once its
        monitor times out) and the application on the old primary may send it more writes;
        it must not acknowledge alone once its disk answers (checked as a freeze:
        check_zombie_acks)."""
        n, p, rng = self.disk_node, self.primary, self.rng
        assert n is not None and self.fuse is not None
        role = "primary" if n == p else "secondary"
        self.faults[f"disk_hang({role}{', replaced' if replace else ''})"] += 1
        self.note(f"disk of {n} ({role}) hangs")
        self.fuse.send_signal(signal.SIGSTOP)
        hang = Freeze(n, self.epoch if n == p else 0, n == p, self.now())
        self.freezes.append(hang)
        late = 0
        try:
            self.wait_observing(rng.uniform(0.3, 1.5))
            if replace:
                others = [c for c in NODES if c != n and self.reachable(c)]
                self.failover(candidates=rng.sample(others, len(others)))
                if self.primary not in (None, n) and rng.random() < 0.7:
                    late = self.late_writes(n, hang.epoch)
            self.wait_observing(rng.uniform(0.0, 1.5))
        finally:
            self.fuse.send_signal(signal.SIGCONT)
            hang.t_cont = self.now()
        replaced = f" (replaced by {self.primary}; {late} late writes sent to it)"
        self.note(f"disk of {n} answers again{replaced if replace else ''}")
        self.observe()
        return f"disk_hang{'_failover' if replace else ''}({n}{f'->{self.primary}' if replace else ''})"

    def slow_syncs(self, nodes: list[str]) -> None:
        """Every fsync of these nodes' faultfs disks 5-40 ms slower, for 0.3-1 s under the
        writes (until set back to 0 by the caller)."""
        ms = self.rng.choice([5, 10, 20, 40])
        for n in nodes:
            self.set_disk_fault(f"slowsync {ms}", n)
        self.note(f"disks of {','.join(nodes)}: every fsync {ms} ms slower")
        self.wait_observing(self.rng.uniform(0.3, 1.0))

    def power_cut(self) -> str:
        """The disk node loses power: its daemon killed, and with it what its disk held in a
        volatile cache (faultfs ``powercut``): every write it had not fsynced is lost, in
        whole or in 4 KiB pieces. A SIGKILL alone leaves the page cache to the next start,
        so only this finds a write acknowledged, or a record reported held, before it was
        synced. A primary is replaced at once (as fencing would); the node starts again
        now or later (restart) and must recover its log and converge like any other."""
        n, p, rng = self.disk_node, self.primary, self.rng
        assert n is not None
        role = "primary" if n == p else f"{self.modes[n]} secondary"
        slow = rng.random() < 0.5
        if slow:
            # its syncs slowed first (a busy disk): SRL batches and volume writes pile up
            # unsynced behind them, and the cut lands on a batch written and not yet synced
            self.slow_syncs([n])
        self.faults[f"power_cut({role.split()[0]}{', slow syncs' if slow else ''})"] += 1
        self.note(f"power cut of {n} ({role})")
        self.lose_power(n)
        if slow:
            self.set_disk_fault("slowsync 0", n)
        if n == p:
            self.wait_observing(rng.uniform(0, 0.8))
            self.failover()
        now = rng.random() < 0.5
        if now:
            self.wait_observing(rng.uniform(0, 1.0))
            self.restart(n)
        return f"power_cut({n}{f'->{self.primary}' if n == p else ''}{', up' if now else ''})"

    def lose_power(self, n: str) -> None:
        """The disk node's power cut at one instant: its daemon's threads all stopped
        (SIGSTOP), its disk's unsynced writes lost, any call still under way failed, the
        daemon killed, the power back. A daemon killed before loses what it left unsynced
        in the page cache."""
        assert self.r is not None
        pid = self.r.pid(n) if n not in self.dead else None
        seen = len(self.observations)
        self.observe()  # (the evidence up to the cut: the node does not answer after it)
        obs = self.observations[-1] if len(self.observations) > seen else None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)  # (not waited for: a thread in a slowed
                # fsync stops only once it returns, which the cut makes it do, with EIO)
        said = self.set_disk_fault(f"powercut {self.rng.randrange(1 << 30)}", n)
        kept = said.split("cut=")[1].strip()
        if n not in self.dead:
            self.kill(n, observe=False)
        self.set_disk_fault("poweron", n)
        self.note(f"power cut of {n}'s disk: unsynced writes kept {kept}")
        if obs is not None and n in obs.acked:
            self.check_acked_kept(n, obs)

    def check_acked_kept(self, n: str, obs: Observation) -> None:
        """Every LSN the primary saw ``n`` acknowledge just before its power cut must be in
        its SRL after it: an acknowledgement says durable. Read from a copy of the SRL
        file (recovering it in place would change what the daemon's own start does). The
        ledger alone misses an acknowledgement made before the sync whenever another node
        kept the write, which is nearly always."""
        assert self.r is not None
        acked = obs.acked[n]
        path = self.r.workdir / f"{n}.disk" / self.r.srl_path(n).name
        copy = self.r.workdir / f"{n}.srl-after-cut"
        try:
            shutil.copyfile(path, copy)
            with SRL.open(copy) as srl:
                end = srl.end_lsn
        except (OSError, ReplError) as exc:
            self.note(f"{n}'s SRL after the cut could not be read: {exc}")
            return  # (its start says so too: restart-failed)
        finally:
            copy.unlink(missing_ok=True)
        if end <= acked:
            self.violate(
                "ack-not-durable",
                f"{obs.node} (epoch {obs.epoch}) had {n}'s acknowledgement up to LSN {acked} "
                f"just before {n}'s power cut; its SRL recovers to end {end}",
                [n, obs.node],
            )
        else:
            self.notes["power cut: every acknowledged LSN still in the SRL"] += 1
