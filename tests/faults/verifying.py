"""`replctl verify` while the faults go on, and its claim checked at the round's end.

Verify says it is exact: every node hashes a chunk as of the same LSN (node.verifier), so a
region it reports different differs, whatever the application writes meanwhile. The
campaign writes a volume behind the resource's back only in `invalidate` (a few damaged
4 KiB blocks, recorded here) and gives a node new blank disks in `replace_disks` and
`remove_readd`; any other difference reported is a false one, which would send an operator
to rebuild a sound node. A verify started on the primary is left running while the next
faults come (a failover, a partition, a node killed, frozen or rewound while it compares),
so it must also end, with an answer or a clear error, once the round heals. And once every
node has converged, a verify must find them all identical.

Mixed into the schedule's Harness (tests/faults/schedule.py), as OperatorActions is.
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field

#: how long a verify may run (the CLI's own timeout): a 4 MiB volume takes well under a
#: second, but a secondary that is frozen, cut off or far behind answers when it can
VERIFY_TIMEOUT_S = 120.0
BLOCK = 4096


@dataclass
class VerifyRun:
    """One `replctl verify --json`, run in a thread while the round goes on."""

    node: str
    epoch: int
    t_start: float
    thread: threading.Thread | None = None
    rc: int | None = None  # None: no answer (the CLI killed at its deadline)
    out: str = ""
    err: str = ""
    t_end: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


class VerifyRuns:
    def verify(self) -> str:
        """Start `replctl verify` on the primary and, while it compares (a 4 MiB volume
        takes a tenth of a second), the next fault at once: a failover, a partition, a node
        killed or frozen mid-verify."""
        assert self.r is not None and self.primary is not None
        run = VerifyRun(self.primary, self.epoch, self.now())
        r = self.r
        run.thread = threading.Thread(target=self._verify_thread, args=(r, run), daemon=True)
        run.thread.start()
        self.verifies.append(run)
        self.note(f"verify started on {run.node} (epoch {run.epoch})")
        self.wait_observing(self.rng.uniform(0.0, 0.15))  # the CLI starts in ~0.1 s
        return f"verify({run.node})+{self.step()}"

    def _verify_thread(self, r, run: VerifyRun) -> None:
        try:
            proc = r.replctl(
                run.node,
                "verify",
                "--json",
                "--timeout",
                str(VERIFY_TIMEOUT_S),
                check=False,
                timeout=VERIFY_TIMEOUT_S + 30,
            )
            run.rc, run.out, run.err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired:
            run.err = f"no answer in {VERIFY_TIMEOUT_S + 30:.0f} s"
        finally:
            run.t_end = self.now()
            run.done.set()

    def damage_noted(self, node: str, blocks: list[int]) -> None:
        """4 KiB blocks of node's volume written behind the resource's back this round."""
        self.damaged.setdefault(node, set()).update(blocks)

    def judge_verifies(self, primary: str) -> None:
        """After convergence: every verify of the round ended, none reported a difference
        nothing explains, and a verify now finds every node identical."""
        if not self.verifies:
            return
        for run in self.verifies:
            left = VERIFY_TIMEOUT_S + 30 - (self.now() - run.t_start)
            if not run.done.wait(max(0.0, left)):
                self.violate(
                    "verify-hung",
                    f"replctl verify on {run.node}, started at {run.t_start:.2f}s, did not end "
                    f"by {self.now():.2f}s, though the round healed and converged",
                    [run.node],
                )
                continue
            self._judge(run, final=False)
        final = VerifyRun(primary, self.epoch, self.now())
        self._verify_thread(self.r, final)
        self._judge(final, final=True)

    def _judge(self, run: VerifyRun, final: bool) -> None:
        what = "final verify" if final else "verify"
        head = f"{what} on {run.node} ({run.t_start:.2f}s-{run.t_end:.2f}s)"
        try:
            doc = json.loads(run.out) if run.rc in (0, 1, 2) and run.out.strip() else None
        except json.JSONDecodeError:
            doc = None
        if doc is None:
            why = (run.err or run.out).strip().splitlines()
            why_line = why[-1] if why else f"exit {run.rc}, nothing printed"
            self.notes[f"{what}: no result"] += 1
            self.note(f"{head}: no result: {why_line}")
            if final:
                self.violate("verify-final", f"{head}: {why_line}", [run.node])
            elif "did not finish within" in why_line or "no answer in" in why_line:
                self.violate("verify-hung", f"{head}: {why_line}", [run.node])
            return
        lsns = f"LSNs {doc.get('first_lsn')}..{doc.get('last_lsn')}"
        self.note(
            f"{head}, {lsns}: "
            + ", ".join(
                f"{n} {r['status']}" + (f" ({r['reason']})" if r.get("reason") else "")
                for n, r in sorted(doc["nodes"].items())
            )
        )
        for name, res in sorted(doc["nodes"].items()):
            status = res["status"]
            self.notes[f"{what}: {status}"] += 1
            if final and status != "identical":
                self.violate(
                    "verify-final",
                    f"{head}: {name} {status} ({res.get('reason') or res.get('regions')}) "
                    "after every node converged",
                    [name],
                )
                continue
            regions = res.get("regions") or []
            if not regions:
                continue
            if name in self.replaced:
                self.notes["verify: differs on a node on new disks"] += 1
                self.note(f"{head}: {name} on new disks differs in {regions} ({lsns})")
                continue
            blocks = self.damaged.get(name, set())
            unexplained = [
                [off, n]
                for off, n in regions
                if not any(off <= b * BLOCK < off + n for b in blocks)
            ]
            if unexplained:
                self.violate(
                    "verify-false-difference",
                    f"{head}: {name} reported different in {unexplained} ({lsns}), where "
                    f"nothing was damaged (damaged 4 KiB blocks this round: "
                    f"{ {n: sorted(b) for n, b in self.damaged.items()} })",
                    [name],
                )
            else:
                self.notes["verify: a damaged volume found"] += 1
                self.note(f"{head}: {name} differs where it was damaged: {regions}")


__all__ = ["VERIFY_TIMEOUT_S", "VerifyRun", "VerifyRuns"]
