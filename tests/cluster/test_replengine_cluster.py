"""replengine under a real Pacemaker cluster: the OCF agent ocf:replengine:replengine as a
promotable clone on the 3-node namespace cluster (tests/cluster/harness.py), with real
fencing.

One resource r0 (sync/sync/sync, file volumes and SRLs in each node's directory) is created
for the module exactly as the README says (plus config=).  Its run_dir is on the shared host
fs (under the harness's run dir, so collect_logs keeps the daemon logs, which survive a node's
power cut).  The tests run in file order:

1. bring-up: 1 Promoted + 2 Unpromoted, and the daemons agree (one primary, two following it);
2. a ledger of completed sync writes through the primary's client API;
3. SIGKILL of the Promoted node (power cut) while a writer is running on it: another node is
   promoted, the victim is fenced, reboots, comes back through start as Unpromoted and catches
   up; all volumes identical, every completed write present (invariant 6); the rebooted
   former primary's probe must not report a failure (no "promoted (failed)");
4. switchover with `pcs resource move r0-clone NODE --promoted`;
5. promotion scores (crm_attribute --promotion) present on running nodes, removed on stop.

Each test first waits until the clone is healthy.  Timings are printed (run with -s).  On a
failure the daemon logs and the agent's lines of pacemaker.log are printed.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from . import replengine_helpers as rh
from .harness import Cluster, ClusterError

pytestmark = pytest.mark.cluster

RSC = rh.RESOURCE
CLONE = f"{RSC}-clone"
TIMINGS: dict[str, float] = {}
#: what the crash test saw, for the test after it
CRASH: dict = {}
#: ledgers of completed writes (files on the shared fs, written from inside the nodes)
LEDGERS: list[str] = []


def _report(key: str, seconds: float) -> None:
    TIMINGS[key] = seconds
    print(f"\nTIMING {key}: {seconds:.2f}s", flush=True)


class R0:
    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.work = cluster.base / "r0-test"
        self.run_dir = cluster.run_dir / "replengine"  # kept by collect_logs; survives crashes
        self.cfg = self.work / "r0.toml"
        self.created = 0.0

    def healthy(self) -> bool:
        return self.c.healthy(RSC, promoted=1)

    def wait_healthy(self, timeout: float, what: str) -> None:
        self.c.wait_for(self.healthy, timeout, what)

    def primary(self) -> str:
        [p] = self.c.promoted(RSC)
        return p

    def statuses(self) -> dict[str, dict]:
        return {self.c.name(i): rh.status(self.c, i, self.cfg) for i in self.c.nodes}

    def agreed(self, promoted: str) -> dict[str, dict] | None:
        """The daemons agree with Pacemaker and have caught up: promoted is primary, the
        others secondaries following it, connected to everyone, all at the same end LSN."""
        sts = self.statuses()
        for name, st in sts.items():
            if name == promoted:
                if st["role"] != "primary":
                    return None
            elif st["role"] != "secondary" or st.get("following") != promoted:
                return None
            if not st["consistent"] or st.get("rewinding"):
                return None
            if not all(p["connected"] for p in st["peers"].values()):
                return None
        if len({st["end_lsn"] for st in sts.values()}) != 1:
            return None
        if any(p["lag_records"] for p in sts[promoted]["peers"].values()):
            return None
        return sts

    def wait_agreed(self, promoted: str, timeout: float = 60) -> dict[str, dict]:
        return self.c.wait_for(
            lambda: self.agreed(promoted),
            timeout,
            f"daemons agree: {promoted} primary, the others following it and caught up",
            interval=0.5,
        )

    def checksums(self) -> dict[str, dict]:
        return {self.c.name(i): rh.node_json(self.c, i, "checksum", self.cfg) for i in self.c.nodes}

    def assert_identical(self) -> dict[str, dict]:
        sums = self.checksums()
        digests = {n: s["digest"] for n, s in sums.items()}
        applied = {n: s["applied_end"] for n, s in sums.items()}
        assert len(set(digests.values())) == 1, f"volumes differ: {digests} applied {applied}"
        assert len(set(applied.values())) == 1, f"applied ends differ: {applied}"
        return sums

    def check_ledgers(self, node: str) -> dict:
        """Read every completed write back through node's client API (it must be primary)."""
        res = rh.node_json(self.c, self.c.index(node), "check", self.cfg, *LEDGERS, timeout=180)
        expected = sum(len(rh.read_ledger(p)) for p in LEDGERS)
        assert res["checked"] == expected, res
        assert res["bad_count"] == 0, f"completed writes lost or wrong on {node}: {res}"
        return res

    def failures(self, node: str) -> list[dict]:
        """Failed operations of r0 on node that Pacemaker keeps (crm_mon's failures)."""
        root = self.c.crm_mon_xml()
        return [
            dict(f.attrib)
            for f in root.iterfind("failures/failure")
            if f.get("node") == node and (f.get("op_key") or "").startswith(f"{RSC}_")
        ]

    def ledger(self, tag: str) -> str:
        path = str(self.work / f"ledger-{tag}")
        if path not in LEDGERS:
            LEDGERS.append(path)
        return path


@pytest.fixture(scope="module")
def r0(cluster: Cluster, request):
    r = R0(cluster)
    shutil.rmtree(r.work, ignore_errors=True)
    shutil.rmtree(r.run_dir, ignore_errors=True)
    r.work.mkdir(parents=True)
    r.work.chmod(0o755)
    LEDGERS.clear()
    spec = rh.install_agent(cluster, r.work)
    assert spec == "ocf:replengine:replengine"
    rh.write_config(cluster, r.cfg, r.run_dir, {1: "sync", 2: "sync", 3: "sync"})
    failed_before = request.session.testsfailed
    yield r
    if request.session.testsfailed > failed_before:
        print("\n" + rh.diagnostics(cluster, r.run_dir), flush=True)
    # leave nothing behind: every node up, the resource deleted, no daemon left
    for i in cluster.nodes:
        cluster.start_node(i)
    cluster.wait_for(lambda: cluster.online_nodes() == set(cluster.names), 90, "all online")
    cluster.pcs("resource", "delete", RSC, check=False, timeout=180)
    cluster.wait_for(
        lambda: set(cluster.resource_roles(RSC).values()) == {"Stopped"}, 120, f"{RSC} removed"
    )
    left = {
        i: cluster.run(i, "pgrep", "-af", "replengine.daemon", check=False).stdout.strip()
        for i in cluster.nodes
    }
    print("\nTIMINGS " + ", ".join(f"{k}={v:.2f}s" for k, v in TIMINGS.items()), flush=True)
    assert not any(left.values()), f"replengined left running after delete: {left}"


# --------------------------------------------------------------------------------- tests


def test_create_one_promoted_two_unpromoted(cluster: Cluster, r0: R0):
    t0 = time.monotonic()
    rh.create_clone(cluster, RSC, r0.cfg)
    r0.wait_healthy(90, "1 Promoted + 2 Unpromoted")
    _report("create r0 -> 1 Promoted + 2 Unpromoted", time.monotonic() - t0)
    roles = cluster.resource_roles(CLONE)
    assert sorted(roles.values()) == ["Promoted", "Unpromoted", "Unpromoted"], roles
    promoted = r0.primary()
    sts = r0.wait_agreed(promoted, 30)
    assert [n for n, st in sts.items() if st["role"] == "primary"] == [promoted]
    for name, st in sts.items():
        assert st["node"] == name and st["resource"] == RSC
        assert set(st["peers"]) == set(cluster.names) - {name}
    assert sts[promoted]["epoch"] >= 1
    # a secondary's durable epoch moves with the first record of the epoch; it knows it now
    assert all(st["known_epoch"] == sts[promoted]["epoch"] for st in sts.values()), sts
    # the runtime dirs are per node under the shared run_dir, with the daemon's log
    for name in cluster.names:
        assert (r0.run_dir / RSC / name / "replengined.log").exists()


def test_completed_sync_writes_ledger(cluster: Cluster, r0: R0):
    r0.wait_healthy(60, "healthy before writing")
    promoted = r0.primary()
    i = cluster.index(promoted)
    n = 500
    t0 = time.monotonic()
    # ledger A: 500 x 4 KiB, write k at block k
    out = rh.node_json(cluster, i, "write", r0.cfg, r0.ledger("A"), "A", 0, n, 0)
    assert out == {"written": n}
    _report(f"{n} sync 4 KiB writes on {promoted}", time.monotonic() - t0)
    entries = rh.read_ledger(LEDGERS[0])
    assert [e[1] for e in entries] == list(range(n))
    lsns = [e[3] for e in entries]
    assert lsns == sorted(lsns) and len(set(lsns)) == n, "LSNs not strictly increasing"
    # completed = durable on every connected sync secondary: all of them are at the end
    sts = r0.wait_agreed(promoted, 30)
    assert all(st["end_lsn"] > lsns[-1] for st in sts.values()), sts
    assert len({st["epoch"] for st in sts.values()}) == 1, sts
    r0.check_ledgers(promoted)
    r0.assert_identical()


def test_crash_promoted_failover_no_completed_write_lost(cluster: Cluster, r0: R0):
    r0.wait_healthy(60, "healthy before crash")
    victim_name = r0.primary()
    victim = cluster.index(victim_name)
    boots_before = len(cluster.boots[victim])
    calls_before = len(cluster.fence_agent_calls())
    epoch_before = rh.status(cluster, victim, r0.cfg)["epoch"]
    starts_before = rh.agent_log_count(cluster, victim, "INFO: start -> 0")

    # ledger B: a writer running on the victim when the power goes, 8 writes in flight
    # (blocks 1000 ...)
    ledger_b = r0.ledger("B")
    writer_result: dict = {}

    def writer() -> None:
        try:
            writer_result["res"] = rh.node_tool(
                cluster,
                victim,
                "write",
                r0.cfg,
                ledger_b,
                "B",
                0,
                8000,
                1000,
                8,
                timeout=120,
                check=False,
            )
        except ClusterError as e:
            writer_result["err"] = e

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    cluster.wait_for(
        lambda: len(rh.read_ledger(ledger_b)) >= 100 or not th.is_alive(), 60, "writer B under way"
    )
    assert th.is_alive(), f"writer B ended before the crash: {writer_result}"

    t0 = cluster.crash(victim)
    th.join(30)
    completed_b = len(rh.read_ledger(ledger_b))
    print(f"\nwriter B: {completed_b} writes completed before the power cut", flush=True)

    new = cluster.wait_for(
        lambda: [n for n in cluster.promoted(RSC) if n != victim_name],
        90,
        f"another node promoted after crashing {victim_name}",
        interval=0.1,
    )
    t_promoted = time.monotonic()
    assert len(new) == 1
    [new_name] = new
    new_i = cluster.index(new_name)
    _report("kill promoted -> promoted elsewhere (crm_mon)", t_promoted - t0)
    st_new = rh.status(cluster, new_i, r0.cfg)
    assert st_new["role"] == "primary" and st_new["epoch"] > epoch_before, st_new
    print(f"\nlast promotion on {new_name}: {st_new.get('last_promotion')}", flush=True)

    # fenced by the cluster (fence_replengine_ns -> harness power cut), before the promotion
    offs = [
        e for e in cluster.fence_events if e.node == victim_name and e.action == "off" and e.t > t0
    ]
    assert offs, f"{victim_name} was not fenced: {cluster.fence_events}"
    assert offs[0].t < t_promoted
    _report("kill promoted -> fence off", offs[0].t - t0)
    calls = cluster.fence_agent_calls()[calls_before:]
    assert [c for c in calls if c["action"] == "reboot" and c["plug"] == victim_name], calls

    # invariant 6 at once on the new primary: every completed write of A and B is there
    res = r0.check_ledgers(new_name)
    print(f"\nread back {res['checked']} completed writes on {new_name}: all present", flush=True)

    # the fence reboot boots the victim; it comes back through start as Unpromoted
    cluster.wait_for(
        lambda: len(cluster.boots[victim]) > boots_before, 60, f"{victim_name} rebooted by fencing"
    )
    _report("kill promoted -> fenced node booted again", cluster.boots[victim][-1] - t0)
    # Unpromoted in crm_mon *and* its daemon up again (crm_mon alone also says Unpromoted in
    # the window between a demote and the stop of a recovery)
    cluster.wait_for(
        lambda: (
            r0.healthy()
            and cluster.resource_roles(RSC)[victim_name] == "Unpromoted"
            and rh.status(cluster, victim, r0.cfg)["role"] == "secondary"
        ),
        90,
        f"{victim_name} rejoined as Unpromoted",
    )
    _report("kill promoted -> rejoined as Unpromoted", time.monotonic() - t0)
    assert cluster.promoted(RSC) == [new_name]
    # ... through the agent's start action (pacemaker.log keeps the agent's stderr)
    cluster.wait_for(
        lambda: rh.agent_log_count(cluster, victim, "INFO: start -> 0") > starts_before,
        15,
        f"a start of {RSC} on {victim_name} after its reboot",
    )
    CRASH["victim"] = victim_name
    CRASH["failures"] = r0.failures(victim_name)
    CRASH["log_copy"] = r0.work / f"pacemaker-{victim_name}-after-reboot.log"
    CRASH["log_copy"].write_text(
        rh.tail(cluster.log_dir(victim) / "pacemaker" / "pacemaker.log", 400, grep=" r0 ")
    )
    history = cluster.run(new_i, "stonith_admin", "--history", victim_name, check=False).stdout
    assert "reboot" in history, history
    sts = r0.wait_agreed(new_name, 60)
    _report("kill promoted -> all daemons caught up", time.monotonic() - t0)
    st_v = sts[victim_name]
    print(
        f"\n{victim_name} after rejoin: epoch {st_v['epoch']} end {st_v['end_lsn']} "
        f"divergent_tail {st_v.get('divergent_tail')}",
        flush=True,
    )
    assert st_v["known_epoch"] == sts[new_name]["epoch"], st_v
    r0.assert_identical()

    # and the new primary keeps serving sync writes (ledger C, blocks 10000 ...)
    out = rh.node_json(cluster, new_i, "write", r0.cfg, r0.ledger("C"), "C", 0, 200, 10000)
    assert out == {"written": 200}
    r0.wait_agreed(new_name, 30)
    r0.check_ledgers(new_name)
    r0.assert_identical()


def test_rebooted_former_primary_rejoins_without_failure(cluster: Cluster, r0: R0):
    """The fenced, rebooted former primary has no daemon: its probe must say "not running"
    (7), not "promoted (failed)" (9) - a failure Pacemaker records (fail-count, Failed
    Resource Actions) and answers with demote + stop before the start."""
    if "victim" not in CRASH:
        pytest.skip("the crash test did not get that far")
    victim = CRASH["victim"]
    failures = CRASH["failures"]
    log = CRASH["log_copy"]
    if failures:  # leave a clean slate for the next tests
        cluster.pcs("resource", "cleanup", RSC, f"node={victim}", check=False)
        r0.wait_healthy(60, "healthy after cleanup")
    assert not failures, (
        f"{victim} rebooted after its fencing, and Pacemaker recorded failed operations of "
        f"{RSC} there: {failures}\n"
        + "\n".join(
            line
            for line in rh.tail(log, 400, grep="Result of").splitlines()
            if "notify" not in line
        )[-2000:]
    )


def test_switchover_move_promoted(cluster: Cluster, r0: R0):
    r0.wait_healthy(60, "healthy before switchover")
    old = r0.primary()
    r0.wait_agreed(old, 30)
    target = next(n for n, r in sorted(cluster.resource_roles(RSC).items()) if r == "Unpromoted")
    t0 = time.monotonic()
    # pcs 0.11: `move` = the old `move --autodelete`; --promoted needs the clone id
    cluster.pcs("resource", "move", CLONE, target, "--promoted", timeout=180)
    cluster.wait_for(lambda: cluster.promoted(RSC) == [target], 60, f"{CLONE} promoted on {target}")
    _report(f"pcs resource move {CLONE} {target} --promoted -> promoted", time.monotonic() - t0)
    r0.wait_healthy(60, "healthy after switchover")
    assert cluster.resource_roles(RSC)[old] == "Unpromoted"
    assert cluster.promoted(RSC) == [target]
    sts = r0.wait_agreed(target, 60)
    assert sts[old]["role"] == "secondary" and sts[old]["following"] == target
    constraints = cluster.pcs("constraint", "location", "config", "--full").stdout
    assert "cli-" not in constraints, constraints
    # writes on the new primary, then everything is there and identical
    out = rh.node_json(
        cluster, cluster.index(target), "write", r0.cfg, r0.ledger("D"), "D", 0, 100, 12000
    )
    assert out == {"written": 100}
    r0.wait_agreed(target, 30)
    r0.check_ledgers(target)
    r0.assert_identical()
    # the promoted stays where it was moved once the constraint is gone
    time.sleep(3)
    assert cluster.promoted(RSC) == [target], cluster.resource_roles(RSC)


def test_promotion_scores_set_and_removed_on_stop(cluster: Cluster, r0: R0):
    r0.wait_healthy(60, "healthy before checking scores")
    promoted = r0.primary()
    r0.wait_agreed(promoted, 30)
    asker = cluster.index(promoted)
    scores = cluster.wait_for(
        lambda: (lambda s: s if all(v is not None for v in s.values()) else None)(
            {n: rh.promotion_score(cluster, asker, n) for n in cluster.names}
        ),
        30,
        "a promotion score on every node",
    )
    print(f"\npromotion scores: {scores}", flush=True)
    assert all(int(v) > 0 for v in scores.values()), scores
    assert int(scores[promoted]) == max(int(v) for v in scores.values()), scores

    # stop the instance on one Unpromoted node: its score goes, the others stay
    name = next(n for n, r in sorted(cluster.resource_roles(RSC).items()) if r == "Unpromoted")
    cluster.pcs("resource", "ban", CLONE, name)
    try:
        cluster.wait_for(
            lambda: cluster.resource_roles(RSC)[name] == "Stopped", 60, f"{RSC} stopped on {name}"
        )
        cluster.wait_for(
            lambda: rh.promotion_score(cluster, asker, name) is None,
            30,
            f"promotion score of {name} removed on stop",
        )
        assert cluster.promoted(RSC) == [promoted]
        for n in set(cluster.names) - {name}:
            assert rh.promotion_score(cluster, asker, n) is not None, n
        assert (
            cluster.run(
                cluster.index(name), "pgrep", "-af", "replengine.daemon", check=False
            ).stdout.strip()
            == ""
        )
    finally:
        cluster.pcs("resource", "clear", CLONE, name)
    constraints = cluster.pcs("constraint", "location", "config", "--full").stdout
    assert "cli-" not in constraints, constraints
    # back through start: Unpromoted again, with a score again
    r0.wait_healthy(60, f"{name} started again after clear")
    assert cluster.promoted(RSC) == [promoted]
    cluster.wait_for(
        lambda: rh.promotion_score(cluster, asker, name) is not None,
        30,
        f"promotion score of {name} back after start",
    )
    r0.wait_agreed(promoted, 60)
    r0.check_ledgers(promoted)
    r0.assert_identical()
