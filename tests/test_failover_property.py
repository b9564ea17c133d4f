"""Randomised failover schedules on one long-lived 4-node resource of real daemons.

Each round: a random write stream (random offsets and sizes, queue depth 1-4, a ledger of
what was submitted in order and which writes completed), random partial delivery (a random
strict subset of the secondaries SIGSTOPped at random moments, always leaving a sync secondary
running), SIGKILL of the primary at a random moment (possibly with writes in flight), SIGCONT,
promotion of a random survivor, restart of the killed node (which may come back with a
divergent tail). Then:

- invariant 6: every completed write is in the new primary's history, and the volume of
  every node equals the ledger replayed up to the new primary's end;
- invariant 5: all volumes identical; the promoted node pulled exactly what it lacked, the new
  primary shipped each survivor exactly its lag, and the restarted node exactly what it needed
  after its divergence point (records and bytes);
- invariant 2: a frozen secondary's volume file equals the ledger replayed up to some prefix
  (never a mix), checked on the file while the process is stopped; and at every quiesce.

Seeded: REPLENGINE_FAILOVER_SEED=<n> replays a run, REPLENGINE_FAILOVER_ROUNDS=<n> changes its
length. The seed is printed in every failure message.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from failover_helpers import (
    Ledger,
    cont,
    crash,
    describe_logs,
    diff_summary,
    offline_srl,
    random_write,
    settled_ends,
    stop,
    volume_bytes,
    wait_consistent,
)

from replengine.demo.localcluster import LocalResource
from replengine.errors import ReplError
from replengine.failover.promotion import next_epoch

VOL = 4 << 20
NODES = {"n1": "sync", "n2": "sync", "n3": "sync", "n4": "async"}
ROUNDS = int(os.environ.get("REPLENGINE_FAILOVER_ROUNDS", "50"))
HEARTBEAT_MS = int(os.environ.get("REPLENGINE_FAILOVER_HEARTBEAT_MS", "150"))


class Schedule:
    """One long-lived resource going through `rounds` random failovers."""

    def __init__(self, r: LocalResource, seed: int) -> None:
        self.r = r
        self.seed = seed
        self.rng = random.Random(seed)
        self.primary = "n1"
        self.epoch = 1
        self.ledger = Ledger(bytearray(VOL), 1)
        self.stats = {
            "rounds": 0,
            "snapshots": 0,
            "killed_inflight": 0,
            "divergent": 0,
            "pulled": 0,
            "stopped_sync": 0,
        }
        self.round = 0
        self.trace: list[str] = []

    def fail(self, msg: str) -> None:
        pytest.fail(
            f"[seed {self.seed}, round {self.round}] {msg}\nschedule: "
            f"{'; '.join(self.trace)}\n{self.r.describe()}\n"
            f"{describe_logs(self.r, lines=15)}"
        )

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            self.fail(msg)

    # ---- one round --------------------------------------------------------------------------

    def run_round(self) -> None:
        r, rng, led = self.r, self.rng, self.ledger
        self.round += 1
        p = self.primary
        secs = [n for n in NODES if n != p]
        base = led.base_lsn
        n_writes = rng.randint(3, 24)
        qd = rng.randint(1, 4)
        # a strict subset of the secondaries to freeze, leaving a sync one running
        while True:
            frozen = [s for s in secs if rng.random() < 0.4]
            if len(frozen) < len(secs) and any(NODES[s] == "sync" for s in secs if s not in frozen):
                break
        # stopping a sync node costs ~1 s (declared gone, then degraded): keep it to a third
        if any(NODES[s] == "sync" for s in frozen) and rng.random() < 0.66:
            frozen = [s for s in frozen if NODES[s] == "async"]
        stop_at = {s: rng.randint(0, n_writes) for s in frozen}
        kill_at = rng.randint(0, n_writes)
        self.trace = [
            f"round {self.round}: primary {p} base {base} writes {n_writes} qd {qd} "
            f"freeze {stop_at} kill at {kill_at}"
        ]
        v = r.connect(p)
        inflight: list[tuple[int, int]] = []  # (index, request)
        snapshots: list[tuple[str, bytes, int]] = []

        def complete_oldest() -> None:
            idx, req = inflight.pop(0)
            lsn = v.wait(req)
            self.check(
                lsn == led.lsn_of(idx),
                f"write #{idx} got LSN {lsn}, expected {led.lsn_of(idx)} (submission order)",
            )
            led.writes[idx].lsn = lsn

        for i in range(n_writes + 1):
            for s, at in stop_at.items():
                if at == i:
                    stop(r, s)
                    # its volume can no longer change: snapshot it for invariant 2
                    snapshots.append((s, volume_bytes(r, s), len(led.writes)))
                    if NODES[s] == "sync":
                        self.stats["stopped_sync"] += 1
            if i == kill_at:
                break
            if i == n_writes:
                while inflight:
                    complete_oldest()
                break
            off, data = random_write(rng, VOL, hot=256 << 10)
            led.add(off, data)
            inflight.append((len(led.writes) - 1, v.submit(off, data)))
            if len(inflight) >= qd:
                complete_oldest()
        if inflight:
            self.stats["killed_inflight"] += 1
        crash(r, p)
        v.close()
        for s in frozen:
            cont(r, s)
        completed_end = max([w.lsn + 1 for w in led.writes if w.lsn is not None], default=base)
        self.trace.append(
            f"completed up to LSN {completed_end - 1}, submitted "
            f"{len(led.writes)}, in flight {len(inflight)}"
        )

        # invariant 2 on the frozen volumes: base + some prefix of the submitted writes
        for s, snap, submitted in snapshots:
            k = led.matching_prefix(snap, submitted)
            self.check(
                k is not None,
                f"{s}'s volume while frozen is not the primary's volume "
                f"as of any LSN in [{base}, {base + submitted}]: "
                f"{diff_summary(snap, bytes(led.image_at(base + submitted)))}",
            )
            self.stats["snapshots"] += 1

        survivors = secs
        ends = settled_ends(r, survivors)
        best = max(ends.values())
        self.trace.append(f"ends after the crash {ends}")
        self.check(
            best >= completed_end,
            f"invariant 6: writes up to LSN {completed_end - 1} "
            f"completed but the best survivor ends at {best}: {ends}",
        )
        self.check(
            best <= base + len(led.writes),
            f"a survivor ends at {best}, past the "
            f"{len(led.writes)} writes submitted from LSN {base}",
        )

        # promote a random survivor
        new = rng.choice(survivors)
        out = r.promote(new)
        self.trace.append(f"promoted {new}: {out}")
        # each node raises the next epoch it owns (see failover.promotion.next_epoch)
        self.epoch = next_epoch(self.epoch, list(NODES).index(new), len(NODES))
        st = r.status(new)
        lp = st["last_promotion"]
        lacked = best - ends[new]
        self.check(
            lp["epoch"] == self.epoch and lp["first_lsn"] == best,
            f"promotion of {new}: {lp}, expected epoch {self.epoch} first LSN {best}",
        )
        self.check(
            lp["pulled_records"] == lacked,
            f"{new} lacked {lacked} records but pulled {lp['pulled_records']}: {lp}",
        )
        self.check(
            lp["pulled_bytes"] == led.bytes_between(ends[new], best),
            f"{new} pulled {lp['pulled_bytes']} bytes, the records it lacked hold "
            f"{led.bytes_between(ends[new], best)}: {lp}",
        )
        if lacked:
            self.stats["pulled"] += 1
            self.check(
                ends[lp["pulled_from"]] == best,
                f"pulled from {lp['pulled_from']}, not a most up-to-date node: {ends}",
            )

        # a few writes on the new primary, then the killed node comes back
        led.writes = led.writes[: best - base]
        v = r.connect(new)
        for _ in range(rng.randint(0, 4)):
            off, data = random_write(rng, VOL, hot=256 << 10)
            w = led.add(off, data)
            w.lsn = v.write(off, data)
            self.check(w.lsn == led.lsn_of(len(led.writes) - 1), f"new primary LSN {w.lsn}")
        v.close()
        end_now = base + len(led.writes)
        _, k_end, _ = offline_srl(r, p)
        divergent = k_end > best
        if divergent:
            self.stats["divergent"] += 1
        self.trace.append(f"{p} comes back with end {k_end} (divergent: {divergent})")
        r.up(p)
        nodes = list(NODES)
        try:
            got_end = wait_consistent(r, nodes, timeout=60)
        except ReplError as exc:
            self.fail(f"no quiesce after the failover: {exc}")
        self.check(got_end == end_now, f"quiesced at {got_end}, expected {end_now}")

        # invariant 5: identical volumes, and the model's (invariants 2 and 6)
        sums = r.checksums(nodes)
        self.check(len(set(sums.values())) == 1, f"volumes differ after failover: {sums}")
        expect = bytes(led.image_at(end_now))
        for n in nodes:
            got = volume_bytes(r, n)
            self.check(
                got == expect,
                f"{n}'s volume is not the ledger's state at LSN "
                f"{end_now}: {diff_summary(got, expect)}",
            )
        # invariant 5: what was shipped is each node's lag, not more
        peers = r.status(new)["peers"]
        for s in survivors:
            if s == new:
                continue
            want = end_now - ends[s]
            sp = peers[s]
            self.check(
                sp["shipped_records"] == want
                and sp["shipped_bytes"] == led.bytes_between(ends[s], end_now),
                f"shipped to {s}: {sp['shipped_records']} records / "
                f"{sp['shipped_bytes']} bytes, its lag is {want} records / "
                f"{led.bytes_between(ends[s], end_now)} bytes (end {ends[s]} -> "
                f"{end_now})",
            )
        from_lsn = best if divergent else k_end
        sp = peers[p]
        self.check(
            sp["shipped_records"] == end_now - from_lsn
            and sp["shipped_bytes"] == led.bytes_between(from_lsn, end_now),
            f"shipped to the restarted {p}: {sp['shipped_records']} records / "
            f"{sp['shipped_bytes']} bytes, it needed [{from_lsn}, {end_now})",
        )
        kst = r.status(p)
        if divergent:
            dt = kst["divergent_tail"]
            self.check(
                bool(dt)
                and dt["records"] == k_end - best
                and (dt["first_lsn"], dt["end_lsn"]) == (best, k_end),
                f"{p} came back with LSNs [{best}, {k_end}) nobody else has; its "
                f"divergent_tail is {dt}",
            )
        else:
            self.check(
                not kst["divergent_tail"], f"{p}: unexpected divergent_tail {kst['divergent_tail']}"
            )
        led.rebase(end_now)
        self.primary = new
        self.stats["rounds"] += 1


def run_schedules(tmp_path, seed: int, rounds: int) -> dict:
    r = LocalResource(
        tmp_path / "res", nodes=NODES, volume_size=VOL, srl_size=32 << 20, heartbeat_ms=HEARTBEAT_MS
    )
    r.create()
    try:
        r.up()
        r.promote("n1")
        r.wait_synced()  # the first promotion's full syncs ended: every node is a replica
        sched = Schedule(r, seed)
        t0 = time.monotonic()
        for _ in range(rounds):
            sched.run_round()
        took = time.monotonic() - t0
        print(f"seed {seed}: {rounds} rounds in {took:.1f}s: {sched.stats}")
        return sched.stats
    finally:
        r.stop_all()


def _seed(k: int) -> int:
    env = os.environ.get("REPLENGINE_FAILOVER_SEED")
    return int(env) + k if env else random.SystemRandom().randrange(1 << 30)


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 1])
def test_random_failover_schedules(tmp_path, k):
    seed = _seed(k)
    try:
        stats = run_schedules(tmp_path, seed, ROUNDS)
    except ReplError as exc:  # a wait timed out: say which seed
        pytest.fail(f"[seed {seed}] {exc}")
    assert stats["rounds"] == ROUNDS
    assert stats["snapshots"] > 0, stats
