"""What the operator does while the faults go on: the README's rollout of a mode change,
`replctl sync --full` of a secondary, and `replctl invalidate` of a damaged one.

Mixed into the schedule's Harness (tests/faults/schedule.py), whose state and small tools
(the resource, the seeded rng, notes, violations, kills, observations) these use.
"""

from __future__ import annotations

import os
import subprocess
import time

from .layout import NODES, VOLUME_SIZE

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
        self.r.nodes[n] = new
        self.r.write_config()
        for m in NODES:
            if m in self.dead:
                continue
            proc = self.r.replctl(m, "adjust", check=False, timeout=60)
            if proc.returncode != 0:
                self.violate(
                    "adjust-failed",
                    f"replctl adjust on {m} ({n} {old} -> {new}): "
                    f"{(proc.stderr or proc.stdout).strip()}",
                    [m],
                )
        self.note(f"{n} switched {old} -> {new}: the file on every node, adjust on the running")
        self.observe()
        return f"mode_switch({n},{old}->{new})"

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


__all__ = ["SWITCHABLE", "OperatorActions"]
