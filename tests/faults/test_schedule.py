"""The fault schedule: unit tests of its checks, and its small always-on part.

`test_fault_schedule_smoke` runs a few rounds of the seeded schedule (marked `faults_smoke`,
< 60 s) in each on_sync_loss mode; `test_fault_schedule_netns_smoke` a few with the nodes in
their own network namespaces, each round opening with a partition and a delay or loss. REPLENGINE_FAULTS_SEED / REPLENGINE_FAULTS_ROUNDS change
the seed and the number of rounds; long runs: `python -m tests.faults.run --help`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from . import checks, cpuslow, deposed
from .checks import Freeze, Isolation, Observation, Promotion
from .ledger import SECTOR, Ledger, Write, make_data, read_tag
from .netns import Network, sweep_stale
from .schedule import FAILED_PID, Harness, stale_primaries
from .verifying import VerifyRun, VerifyRuns

SIZE = 64 * SECTOR

# ---- a hand-made ledger ----------------------------------------------------------------------


def ledger_with(*conns: tuple[str, int, int, list[tuple[int, int | None, str | None]]]) -> Ledger:
    """conns: (node, epoch, base_lsn, [(sector, lsn or None, error or None)]); each write is
    one sector, done at t = its index."""
    led = Ledger(1, 1, 0.0)
    rng = random.Random(0)
    t = 0.0
    for node, epoch, base, ws in conns:
        c = led.new_conn(node, epoch, base, 1)
        for sector, lsn, err in ws:
            w = led.new_write(c, rng, SIZE, False)
            w.offset, w.data = sector * SECTOR, make_data(rng, w.wid, 1, 1)
            t += 1
            w.lsn, w.error, w.t_done = lsn, err, t
    return led


def image(base: bytes, *writes: Write) -> bytes:
    img = bytearray(base)
    for w in writes:
        img[w.offset : w.offset + len(w.data)] = w.data
    return bytes(img)


def by_lsn(led: Ledger) -> dict[int, Write]:
    return {w.lsn: w for w in led.all() if w.lsn is not None}


def test_tags_name_the_write_and_sector():
    data = make_data(random.Random(1), 77, 5, 3)
    assert len(data) == 3 * SECTOR
    assert [read_tag(data[i * SECTOR :]) for i in range(3)] == [(77, 0, 5), (77, 1, 5), (77, 2, 5)]
    assert read_tag(bytes(SECTOR)) is None


def test_history_helpers():
    h = [(1, 1), (2, 10), (3, 10), (4, 15)]
    assert checks.epoch_range(h, 20, 2) == (10, 10)  # promoted, wrote nothing
    assert checks.epoch_range(h, 20, 4) == (15, 20)
    assert checks.epoch_range(h, 20, 9) == (0, 0)
    led = ledger_with(("a", 1, 1, [(0, 5, None)]), ("b", 4, 15, [(1, 16, None)]))
    w5, w16 = by_lsn(led)[5], by_lsn(led)[16]
    assert checks.in_history(w5, h, 20) and checks.in_history(w16, h, 20)
    assert not checks.in_history(w16, h, 16)  # past the end
    assert not checks.in_history(w16, [(1, 1), (5, 15)], 20)  # another epoch holds 16


def test_volume_equal_to_the_ledger_passes_and_a_missing_write_is_named():
    base = bytes(SIZE)
    led = ledger_with(("a", 1, 1, [(0, 1, None), (1, 2, None), (0, 3, None)]))
    h = [(1, 1)]
    w = by_lsn(led)
    good = image(base, w[1], w[2], w[3])
    assert checks.check_volume_content("n", good, base, led, h, 4) == []
    # LSN 3 (overwrote sector 0) missing: sector 0 still holds LSN 1
    bad = checks.check_volume_content("n", image(base, w[1], w[2]), base, led, h, 4)
    assert len(bad) == 1 and "expected write #3" in bad[0].message
    assert "holds write #1" in bad[0].message and "LSN 1" in bad[0].message
    # a discarded record's data left behind (a rewind that did not rewrite the block)
    bad = checks.check_volume_content("n", good, base, led, h, 3)
    assert "NOT in the winning history" in bad[0].message


def test_uncertain_writes_are_allowed_only_where_the_history_can_hold_them():
    base = bytes(SIZE)
    # epoch 2 on "a": LSN 10 completed, then three writes in flight when "a" was killed;
    # the history that won kept epoch 2 up to LSN 12 (the first two in-flight writes)
    led = ledger_with(
        (
            "a",
            2,
            10,
            [
                (0, 10, None),
                (1, None, "abandoned in flight"),
                (2, None, "abandoned in flight"),
                (3, None, "abandoned in flight"),
            ],
        )
    )
    ws = sorted(led.all(), key=lambda w: w.wid)
    h = [(1, 1), (2, 5), (3, 13)]
    assert checks.lsn_bounds(ws[1], h, 20) == (11, 13)
    assert checks.lsn_bounds(ws[2], h, 20) == (12, 13)
    assert checks.lsn_bounds(ws[3], h, 20) == (13, 13)  # cannot be in the history
    ok = image(base, ws[0], ws[1], ws[2])
    assert checks.check_volume_content("n", ok, base, led, h, 20) == []
    assert checks.check_volume_content("n", image(base, ws[0]), base, led, h, 20) == []
    bad = checks.check_volume_content("n", image(base, ws[0], ws[3]), base, led, h, 20)
    assert len(bad) == 1 and f"write #{ws[3].wid}" in bad[0].message


def test_a_timed_out_write_has_a_known_lsn():
    led = ledger_with(
        ("a", 1, 1, [(0, None, "write LSN 7 timed out after 2.0s waiting for sync secondaries")])
    )
    (w,) = led.all()
    assert checks.known_lsn(w) == 7
    assert checks.lsn_bounds(w, [(1, 1)], 20) == (7, 8)


def test_lsn_order_and_reuse():
    led = ledger_with(("a", 1, 5, [(0, 6, None), (1, 6, None), (2, 4, None)]))
    kinds = [v.kind for v in checks.check_lsn_assignment(led)]
    assert kinds.count("lsn-order") == 3 and "lsn-reused" in kinds


def test_acknowledged_write_with_a_surviving_sync_secondary_must_survive():
    led = ledger_with(("alpha", 1, 1, [(0, 1, None), (1, 2, None)]))
    obs = [Observation(2.5, "alpha", 1, {"beta": 1, "gamma": 0})]  # beta holds LSN 1 only
    lost_history = [(1, 1), (2, 1)]  # the new epoch starts at 1: both lost
    prom = [Promotion(3.0, "gamma", 2, 1, {"gamma", "beta"})]
    v = checks.check_acknowledged_survive(led, lost_history, 5, prom, obs, ("gamma", 2))
    assert len(v) == 1 and "1 acknowledged writes" in v[0].message
    assert "sync secondary beta had acknowledged LSN 1" in v[0].message
    # beta frozen during the promotion: losing it is allowed
    prom = [Promotion(3.0, "gamma", 2, 1, {"gamma"})]
    assert checks.check_acknowledged_survive(led, lost_history, 5, prom, obs, ("gamma", 2)) == []
    # an observation taken after the newer epoch began is no evidence
    late = [Observation(3.5, "alpha", 1, {"beta": 2})]
    prom = [Promotion(3.0, "gamma", 2, 1, {"gamma", "beta"})]
    assert checks.check_acknowledged_survive(led, lost_history, 5, prom, late, ("gamma", 2)) == []
    # the primary that acknowledged is still primary: everything must be there
    v = checks.check_acknowledged_survive(led, [(1, 1)], 2, [], [], ("alpha", 1))
    assert len(v) == 1 and "still primary" in v[0].message


def test_a_demoted_primary_is_evidence_for_its_own_writes():
    """A planned switchover: once `replctl demote` answered, the old primary's log holds
    every write it completed, acknowledged by no secondary or not (degrade, async only)."""
    led = ledger_with(("alpha", 1, 1, [(0, 1, None), (1, 2, None)]))
    lost_history = [(1, 1), (2, 1)]
    demoted = [Observation(2.5, "alpha", 1, {"alpha": 2}, demoted=True)]
    prom = [Promotion(3.0, "delta", 2, 1, {"delta", "alpha"})]
    v = checks.check_acknowledged_survive(led, lost_history, 5, prom, demoted, ("delta", 2))
    assert len(v) == 1 and "2 acknowledged writes" in v[0].message
    assert "alpha, demoted, had logged LSN 2" in v[0].message
    # killed before the promotion: what only it held may go
    prom = [Promotion(3.0, "delta", 2, 1, {"delta"})]
    assert (
        checks.check_acknowledged_survive(led, lost_history, 5, prom, demoted, ("delta", 2)) == []
    )
    # a primary's own status is no evidence for itself (it may die with its tail)
    own = [Observation(2.5, "alpha", 1, {"alpha": 2})]
    prom = [Promotion(3.0, "delta", 2, 1, {"delta", "alpha"})]
    assert checks.check_acknowledged_survive(led, lost_history, 5, prom, own, ("delta", 2)) == []


def test_zombie_acknowledgement_after_sigcont():
    led = ledger_with(("alpha", 1, 1, [(0, 1, None), (1, 2, None), (2, 3, None)]))
    # alpha frozen at 1.5 (LSN 1 done), beta promoted at 1.8 from LSN 2, alpha continued at
    # 2.2; writes done at t=2 and t=3: the one at 3 came after SIGCONT
    f = Freeze("alpha", 1, True, 1.5, 2.2)
    prom = [Promotion(1.8, "beta", 2, 2, {"beta", "gamma"})]
    v = deposed.check_zombie_acks(led, [(1, 1), (2, 2)], 4, [f], prom)
    assert len(v) == 1 and "LSN 3" in v[0].message and "LSN 2" not in v[0].message
    # cut off from its sync secondaries before the freeze (seed 307 round 3): the writes
    # submitted after the cut are the isolated primary's, judged by check_isolated_acks
    for w in led.all():
        w.t_submit = w.t_done - 0.5
    iso = Isolation("alpha", 1, 1.0, "its link down")
    assert deposed.check_zombie_acks(led, [(1, 1), (2, 2)], 4, [f], prom, isolations=[iso]) == []
    late_cut = Isolation("alpha", 1, 2.6, "its link down")  # cut after the freeze: no excuse
    v = deposed.check_zombie_acks(led, [(1, 1), (2, 2)], 4, [f], prom, isolations=[late_cut])
    assert len(v) == 1


def test_cut_off_primary_acks_are_violations_only_under_block():
    # alpha cut off at t=1.5 (LSN 1 done before); beta promoted at 1.8 from LSN 2; alpha
    # completed LSN 2 and 3 (t=2, t=3), submitted after the cut, discarded by the history
    led = ledger_with(("alpha", 1, 1, [(0, 1, None), (1, 2, None), (2, 3, None)]))
    for w in led.all():
        w.t_submit = w.t_done - 0.1 if w.t_done is not None else 0
    iso = Isolation("alpha", 1, 1.5, "its link down", t_heal=4.0)
    prom = [Promotion(1.8, "beta", 2, 2, {"beta", "gamma"})]
    hist = [(1, 1), (2, 2)]
    v, n = deposed.check_isolated_acks(led, hist, 4, [iso], prom, "block")
    assert len(v) == 1 and v[0].kind == "isolated-ack" and n == 0
    assert "LSN 2" in v[0].message and "LSN 3" in v[0].message and "LSN 1," not in v[0].message
    v, n = deposed.check_isolated_acks(led, hist, 4, [iso], prom, "degrade")
    assert v == [] and n == 2  # degrade allows it: counted
    # no promotion while it was cut off (healed first): nothing to judge here
    late = [Promotion(4.5, "beta", 2, 2, {"beta", "gamma"})]
    assert deposed.check_isolated_acks(led, hist, 4, [iso], late, "block") == ([], 0)
    # its sync secondaries beta and gamma, gamma not on beta's side at the promotion (seed
    # 5002 round 1): gamma may follow alpha after the heal and acknowledge: allowed, counted
    iso = Isolation("alpha", 1, 1.5, "one-way", t_heal=4.0, sync_peers=("beta", "gamma"))
    lone = [Promotion(1.8, "beta", 2, 2, {"beta", "delta"})]
    assert deposed.check_isolated_acks(led, hist, 4, [iso], lone, "block") == ([], 2)
    v, n = deposed.check_isolated_acks(led, hist, 4, [iso], prom, "block")
    assert len(v) == 1 and n == 0  # both were: a violation, as before


def test_slowed_primary_acks_are_violations_only_under_block():
    # alpha slowed at t=1.5 with sync secondaries beta and gamma; beta promoted at 1.8 from
    # LSN 2; alpha completed LSN 2 (t=2) and 3 (t=3) after it, both discarded by the history
    led = ledger_with(("alpha", 1, 1, [(0, 1, None), (1, 2, None), (2, 3, None)]))
    f = Freeze("alpha", 1, True, 1.5, 4.0, slow=2.0, sync_peers=("beta", "gamma"))
    prom = [Promotion(1.8, "beta", 2, 2, {"beta", "gamma"})]
    hist = [(1, 1), (2, 2)]
    v, n, judged = deposed.check_slow_acks(led, hist, 4, [f], prom, "block")
    assert len(v) == 1 and v[0].kind == "slow-zombie-ack" and n == 0 and judged == 2
    assert "LSN 2" in v[0].message and "LSN 3" in v[0].message and "LSN 1," not in v[0].message
    # degrade: it may have judged its peers gone while too slow to read them: counted
    assert deposed.check_slow_acks(led, hist, 4, [f], prom, "degrade") == ([], 2, 2)
    # gamma away from the promotion: it may still acknowledge alpha's records (allowed)
    lone = [Promotion(1.8, "beta", 2, 2, {"beta", "delta"})]
    assert deposed.check_slow_acks(led, hist, 4, [f], lone, "block") == ([], 2, 2)
    # promoted only after alpha was let go: an ordinary failover, not this check's
    late = [Promotion(4.5, "beta", 2, 2, {"beta", "gamma"})]
    assert deposed.check_slow_acks(led, hist, 4, [f], late, "block") == ([], 0, 0)
    # cut off too (mute) before the writes were submitted: check_isolated_acks' to judge
    for w in led.all():
        w.t_submit = w.t_done - 0.1 if w.t_done is not None else 0
    iso = Isolation("alpha", 1, 1.6, "mute, slowed", t_heal=4.0)
    assert deposed.check_slow_acks(led, hist, 4, [f], prom, "block", isolations=[iso]) == ([], 0, 0)
    # kept writes are fine; and a SIGSTOP is check_zombie_acks', not this one's
    assert deposed.check_slow_acks(led, [(1, 1)], 4, [f], prom, "block") == ([], 0, 2)
    stop = Freeze("alpha", 1, True, 1.5, 4.0)
    assert deposed.check_slow_acks(led, hist, 4, [stop], prom, "block") == ([], 0, 0)
    assert deposed.check_zombie_acks(led, hist, 4, [f], prom) == []


def test_a_daemon_is_slowed_and_let_go():
    """cpuslow: a busy process throttled to 2 % of a CPU uses no more, and more than that
    once released; its cgroup is removed afterwards."""
    if cpuslow.unavailable():
        pytest.skip(cpuslow.unavailable())
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    tag = f"test-{os.getpid()}-"
    try:
        p = psutil.Process(proc.pid)

        def cpu_over(seconds: float) -> float:
            t0 = sum(p.cpu_times()[:2])
            time.sleep(seconds)
            return (sum(p.cpu_times()[:2]) - t0) / seconds

        cpuslow.throttle(proc.pid, f"{tag}x", 2.0)
        assert cpuslow.throttled(proc.pid)
        assert cpu_over(2.0) < 0.06
        cpuslow.release(proc.pid)
        assert not cpuslow.throttled(proc.pid)
        # past the cap however busy the machine is (a fair share of 2 cores among a few
        # busy processes is far above 0.02)
        assert cpu_over(1.0) > 0.15
    finally:
        proc.kill()
        proc.wait()
        cpuslow.cleanup(tag)
    assert cpuslow.groups(tag) == []
    # a killed run's group (named after a pid that no longer exists) is swept at the next
    dead = subprocess.Popen(["true"])
    dead.wait()
    cpuslow.throttle(os.getpid(), f"{dead.pid}-0-x", 50.0)
    cpuslow.release(os.getpid())
    assert f"{cpuslow.PREFIX}{dead.pid}-0-x" in cpuslow.sweep_stale()
    assert cpuslow.groups(f"{dead.pid}-") == []


def test_only_srl_full_fail_fails_writes_with_srl_full():
    led = ledger_with(("a", 1, 1, [(0, 1, None), (1, None, "SRL full: a secondary lags")]))
    assert checks.check_srl_policy(led, "fail") == []
    for policy in ("stall", "dcm"):
        (v,) = checks.check_srl_policy(led, policy)
        assert v.kind == "srl-policy" and policy in v.message
    # stall under block: a stalled write fails after sync_timeout (docs/config.md)
    msg = "write timed out: SRL full for 2.0s (srl_full=stall)"
    led = ledger_with(("a", 1, 1, [(0, 1, None), (1, None, msg)]))
    assert checks.check_srl_policy(led, "stall", "block") == []
    assert len(checks.check_srl_policy(led, "stall", "degrade")) == 1


def test_dcm_under_block_may_time_out_a_write_only_on_what_block_waits_for():
    """Under on_sync_loss = "block" every write waits for every sync secondary: one whose
    disk hangs stays connected (dcm does not switch it) and holds the log, and writes that
    did not fit time out as the logged ones do (seed 13703 round 5's 15 timeouts under
    dcm named no holder then). A log held by an async node or a node in dcm is dcm
    failing."""
    sync = frozenset({"alpha", "beta", "gamma"})

    def judged(held: str, mode: str = "block") -> int:
        msg = f"write timed out: SRL full for 2.0s (srl_full=dcm; held by {held})"
        led = ledger_with(("a", 1, 1, [(0, 1, None), (1, None, msg)]))
        return len(checks.check_srl_policy(led, "dcm", mode, sync_nodes=sync))

    a, b = "alpha (sync, connected, acknowledged up to LSN 41)", "beta (sync, connected, "
    assert judged(a) == 0
    assert judged(f"{a}, {b}acknowledged up to LSN 40)") == 0
    assert judged("this node's own volume, applied up to LSN 12") == 0
    assert judged("records not yet durable here") == 0
    assert judged(a, "degrade") == 1
    assert judged("delta (async, connected, acknowledged up to LSN 41)") == 1  # dcm releases it
    assert judged("delta (sync, connected, acknowledged up to LSN 41)") == 1  # not sync here
    assert judged("beta (sync, not connected, acknowledged up to LSN 40)") == 1  # gone: dcm
    assert judged("gamma (in dcm or a resync, covered up to LSN 7)") == 1
    assert judged(f"{a}, delta (async, connected, acknowledged up to LSN 3)") == 1
    assert judged("something new") == 1


def status(node, role, end, history, following=None, **kw):
    s = {
        "node": node,
        "role": role,
        "epoch": history[-1][0],
        "end_lsn": end,
        "applied_end": end,
        "history": history,
        "consistent": True,
        "rewinding": False,
        "following": following,
        "writes_pending": 0,
        "writes_stalled": 0,
        "peers": {},
    }
    s.update(kw)
    return s


def test_a_primary_in_an_older_epoch_is_stale():
    # alpha, cut off in epoch 13 and back, is still primary; gamma, primary in epoch 19, died
    alpha = status("alpha", "primary", 20, [[1, 1], [13, 5]])
    beta = status("beta", "secondary", 18, [[1, 1], [13, 5], [19, 10]])
    assert stale_primaries({"alpha": alpha, "beta": beta, "gamma": None}) == ["alpha"]
    beta = status("beta", "secondary", 18, [[1, 1], [13, 5]])
    assert stale_primaries({"alpha": alpha, "beta": beta}) == []


def test_convergence_problems():
    up = {"connected": True, "state": "up-to-date", "lag_records": 0, "degraded": False}
    up["rejected"] = None
    up["acked_lsn"] = 9
    p = status("a", "primary", 10, [[1, 1], [2, 5]], peers={"b": up, "c": up})
    b = status("b", "secondary", 10, [[1, 1], [2, 5]], following="a")
    c = status("c", "secondary", 10, [[1, 1], [2, 5]], following="a")
    assert checks.convergence_problems({"a": p, "b": b, "c": c}) == []
    stuck = dict(c, rewinding=True, consistent=False, end_lsn=7, applied_end=7)
    probs = checks.convergence_problems({"a": p, "b": b, "c": stuck})
    assert any("c: rewinding, inconsistent" in x for x in probs)
    assert any("end LSNs differ" in x for x in probs)
    other_line = dict(c, history=[[1, 1], [3, 5]])
    probs = checks.convergence_problems({"a": p, "b": b, "c": other_line})
    assert any("c's history" in x for x in probs)
    assert checks.convergence_problems({"a": p, "b": dict(b, role="primary"), "c": None})


class _Judge(VerifyRuns):
    """The verify checks alone: the round state they read, violations collected."""

    def __init__(self, damaged=None, replaced=()) -> None:
        self.damaged = damaged or {}
        self.replaced = set(replaced)
        self.notes: Counter = Counter()
        self.found: list[tuple[str, str]] = []

    def now(self) -> float:
        return 9.0

    def note(self, text: str) -> None:
        pass

    def violate(self, kind: str, msg: str, nodes=None) -> None:
        self.found.append((kind, msg))


def _run(regions: dict[str, list], status: str = "differs") -> VerifyRun:
    nodes = {
        n: {"status": status if r else "identical", "regions": r, "reason": None}
        for n, r in regions.items()
    }
    doc = {"nodes": nodes, "first_lsn": 5, "last_lsn": 9, "exit": 1}
    run = VerifyRun("alpha", 2, 1.0, rc=1, out=json.dumps(doc), t_end=2.0)
    run.done.set()
    return run


def test_a_verify_difference_nothing_damaged_is_a_violation() -> None:
    """beta's region [1 MiB, 2 MiB) differs, but only gamma's block 3 was damaged."""
    j = _Judge(damaged={"gamma": {3}})
    j._judge(_run({"beta": [[1 << 20, 1 << 20]], "gamma": []}), final=False)
    assert [k for k, _ in j.found] == ["verify-false-difference"]
    assert "beta reported different in [[1048576, 1048576]]" in j.found[0][1]


def test_a_verify_difference_where_the_volume_was_damaged_is_not() -> None:
    j = _Judge(damaged={"beta": {300}})  # block 300 lies in the chunk at 1 MiB
    j._judge(_run({"beta": [[1 << 20, 1 << 20]]}), final=False)
    assert j.found == [] and j.notes["verify: a damaged volume found"] == 1
    k = _Judge(replaced={"gamma"})  # new blank disks: noted, not judged
    k._judge(_run({"gamma": [[0, 1 << 20]]}), final=False)
    assert k.found == [] and k.notes["verify: differs on a node on new disks"] == 1


def test_the_final_verify_must_find_every_node_identical() -> None:
    j = _Judge()
    run = _run({"beta": []})
    doc = json.loads(run.out)
    doc["nodes"]["gamma"] = {"status": "not compared", "regions": [], "reason": "not connected"}
    run.out = json.dumps(doc)
    j._judge(run, final=True)
    assert [k for k, _ in j.found] == ["verify-final"] and "gamma not compared" in j.found[0][1]
    j.found.clear()
    j._judge(_run({"beta": []}), final=True)
    assert j.found == []


def test_the_failed_daemons_pid_is_read_from_its_log_line() -> None:
    """The heal waits for the daemon that said "node failed" to exit, by the pid in that
    line: a daemon restarted since must not be taken for it (the 30 s `stop-hung` of seeds
    4205, 4206, 4300 and 4301 was that mistake). The line as the daemon writes it."""
    import logging

    from replengine.daemon import FILE_FORMAT

    rec = logging.LogRecord("replengined", logging.ERROR, "x", 1, "node failed: %s", ("EIO",), None)
    rec.resource = "r0/beta"
    rec.process = 2520
    line = logging.Formatter(FILE_FORMAT).format(rec)
    later = line.replace("2520", "2647").replace("node failed: EIO", "listening")
    assert FAILED_PID.findall(f"{line}\n{later}\n") == ["2520"]


# ---- the small always-on part ------------------------------------------------------------------

ROUNDS = int(os.environ.get("REPLENGINE_FAULTS_ROUNDS", "2"))


@pytest.mark.faults_smoke
@pytest.mark.parametrize(
    "mode,seed",
    # srl_full follows the seed: 102 stall, 202 fail, 101 dcm
    [("degrade", 102), ("block", 202), ("degrade", 101)],
)
def test_fault_schedule_smoke(mode, seed):
    seed = int(os.environ.get("REPLENGINE_FAULTS_SEED", seed))
    work = Path(tempfile.mkdtemp(prefix="faults-", dir="/tmp"))  # short control socket paths
    h = Harness(work, seed, mode, converge_s=15.0, keep_failed=False)
    reports = []
    try:
        for _ in range(ROUNDS):
            res = h.run_round()
            print(res.line())
            if not res.ok:
                reports.append(res.report())
    finally:
        h.teardown(remove=True)
        shutil.rmtree(work, ignore_errors=True)
    assert not reports, "\n\n".join(reports)


def _netns_tools() -> str | None:
    """Why the network-namespace rounds cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tc", "nft", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2, nftables, util-linux)"
    if not Path("/dev/fuse").exists():
        return "needs /dev/fuse (the failing disk)"
    return None


@pytest.mark.faults_smoke
@pytest.mark.slow
@pytest.mark.skipif(_netns_tools() is not None, reason=str(_netns_tools()))
@pytest.mark.parametrize(
    "mode,seed,script,disk_all",
    [
        # a node's mode switched by `adjust` under writes, a node removed and added back by
        # `adjust`, the primary cut off and replaced, a slowed link; then a split with loss
        (
            "degrade",
            301,
            [
                ["mode_switch", "remove_readd", "partition_primary", "delay"],
                ["split", "loss", "disk_error"],
            ],
            False,
        ),
        # the failing disk's node losing power (what it never synced lost), a split; then
        # the operator's full sync of a secondary, the primary cut off during it
        (
            "block",
            302,
            [["power_cut", "split", "delay"], ["sync_full", "partition_primary", "srl_fill"]],
            False,
        ),
        # the primary's disk hangs (replaced meanwhile or not), the primary on one-way links
        # and replaced, a secondary on one too, and a damaged secondary invalidated while it
        # runs; then every node killed at once (the failing disk losing what it never
        # synced), some started again, one promoted
        (
            "degrade",
            303,
            [
                ["disk_hang_failover", "oneway_primary", "invalidate_online", "oneway_secondary"],
                ["blackout"],
            ],
            False,
        ),
        # every node on a faultfs disk: the whole cluster's power cut (what no node synced
        # lost on all of them), then the disk node's alone
        ("block", 304, [["blackout"], ["power_cut", "kill_primary_failover"]], True),
    ],
)
def test_fault_schedule_netns_smoke(mode, seed, script, disk_all):
    work = Path(tempfile.mkdtemp(prefix="faults-", dir="/tmp"))
    h = Harness(
        work,
        seed,
        mode,
        converge_s=20.0,
        keep_failed=False,
        net="netns",
        script=script,
        disk_all=disk_all,
    )
    reports, lines = [], []
    try:
        for _ in range(len(script)):
            res = h.run_round()
            lines.append(res.line())
            if not res.ok:
                reports.append(res.report())
    finally:
        h.teardown(remove=True)
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    assert not reports, "\n\n".join(reports)
    played = " ".join(lines)
    for kind in {k for faults in script for k in faults} - {"loss", "delay", "disk_error"}:
        assert f"{kind}(" in played, played


@pytest.mark.skipif(_netns_tools() is not None, reason=str(_netns_tools()))
def test_network_namespaces_are_made_and_removed():
    net = Network(["a", "b"])
    try:
        net.up()
        names = set(netns_list())
        assert {net.hub, net.ns("a"), net.ns("b")} <= names
        net.cut("a")
        assert not net.connected("a", "b") and net.faults() == ["cut(a)"]
        net.clear()
        assert net.connected("a", "b") and net.faults() == []
    finally:
        net.down()
    assert not {net.hub, net.ns("a"), net.ns("b")} & set(netns_list())
    sweep_stale()


UDP_RECV = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7999)); s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    print(s.recv(100).decode(), flush=True)
except socket.timeout:
    print("nothing", flush=True)
"""


def udp_arrives(net: Network, src: str, dst: str, timeout: float) -> bool:
    """Whether a datagram sent from src's namespace reaches a listener in dst's."""
    rx = subprocess.Popen(
        [*net.prefix_cmd(dst), sys.executable, "-c", UDP_RECV, str(timeout)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
    send = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hi', ('{net.addr(dst)}', 7999))"
    for _ in range(3):  # the first may wait for ARP; a send dropped on output fails (EPERM)
        subprocess.run([*net.prefix_cmd(src), sys.executable, "-c", send], capture_output=True)
    got = rx.stdout.readline().strip()
    rx.wait(timeout=timeout + 10)
    return got == "hi"


@pytest.mark.skipif(_netns_tools() is not None, reason=str(_netns_tools()))
def test_one_way_links_drop_one_direction_only():
    """A deaf node still reaches the others and hears none of them; a mute one the reverse;
    neither counts as connected (no request of theirs gets its answer); healing restores
    both directions; a split (built from the same rules) cuts both ways across it only."""
    net = Network(["a", "b", "c"])
    try:
        net.up()
        net.one_way("a", "deaf", {"b", "c"})
        assert net.faults() == ["oneway(a,deaf)"] and net.isolated() == {"a"}
        assert not net.connected("a", "b") and net.connected("b", "c")
        assert udp_arrives(net, "a", "b", 5)
        assert not udp_arrives(net, "b", "a", 1)
        net.one_way("a", "mute", {"b"})
        assert not udp_arrives(net, "a", "b", 1)
        assert udp_arrives(net, "b", "a", 5) and udp_arrives(net, "a", "c", 5)
        net.two_way("a")
        assert net.connected("a", "b") and not net.isolated()
        assert udp_arrives(net, "a", "b", 5) and udp_arrives(net, "b", "a", 5)
        net.split({"a"}, {"b", "c"})  # both directions across it, none within a side
        assert not udp_arrives(net, "a", "b", 1) and not udp_arrives(net, "c", "a", 1)
        assert udp_arrives(net, "b", "c", 5)
    finally:
        net.down()


def netns_list() -> list[str]:
    from .netns import list_netns

    return list_netns()
