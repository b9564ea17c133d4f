"""The cluster harness itself, checked with Pacemaker's own promotable test agent
ocf:pacemaker:Stateful: bring-up, crash of the promoted node with real fencing, switchover,
network partition.  The tests run in file order on one session-scoped cluster; each one
first waits until the clone is healthy again.  Timings are printed (run with -s)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from .harness import Cluster, cleanup_stale, run_cmd

pytestmark = pytest.mark.cluster

RSC = "st"
CLONE = f"{RSC}-clone"
TIMINGS: dict[str, float] = {}


def _report(key: str, seconds: float) -> None:
    TIMINGS[key] = seconds
    print(f"\nTIMING {key}: {seconds:.2f}s", flush=True)


def _healthy(cluster: Cluster):
    return cluster.healthy(RSC, promoted=1)


@pytest.fixture(scope="module")
def stateful(cluster: Cluster):
    """A promotable ocf:pacemaker:Stateful clone, created for this module, deleted after."""
    t0 = time.monotonic()
    cluster.pcs("resource", "create", RSC, "ocf:pacemaker:Stateful", "promotable", "notify=true")
    yield t0
    cluster.pcs("resource", "delete", RSC, check=False)
    cluster.wait_for(
        lambda: set(cluster.resource_roles(RSC).values()) == {"Stopped"}, 60, f"{RSC} removed"
    )
    print("\nTIMINGS " + ", ".join(f"{k}={v:.2f}s" for k, v in TIMINGS.items()), flush=True)


def test_nodes_namespaces_and_network(cluster: Cluster):
    _report("setup (namespaces -> all online + stonith started)", cluster.timings["setup"])
    assert cluster.online_nodes() == set(cluster.names)
    for i in cluster.nodes:
        assert cluster.run(i, "uname", "-n").stdout.strip() == cluster.name(i)
        addrs = cluster.run(i, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert f"{cluster.addr(i)}/24" in addrs
    # no interface of the root namespace carries cluster traffic
    assert cluster.subnet not in run_cmd(["ip", "-o", "-4", "addr"]).stdout
    # /run is private per node, the node dir is shared with the host
    cluster.run(1, "sh", "-c", "echo one > /run/rpe-probe")
    assert cluster.run(2, "test", "-e", "/run/rpe-probe", check=False).returncode == 1
    assert not os.path.exists("/run/rpe-probe")
    probe = cluster.node_dir(2) / "probe"
    cluster.run(2, "sh", "-c", f"echo two > {probe}")
    assert probe.read_text() == "two\n"
    # every node sees all three members in corosync
    for i in cluster.nodes:
        out = cluster.run(i, "corosync-quorumtool", "-s").stdout
        assert "Quorate:          Yes" in out and "Total votes:      3" in out, out
    # start_node on a running node is a no-op
    boots = len(cluster.boots[1])
    cluster.start_node(1)
    assert len(cluster.boots[1]) == boots


def test_install_agent_visible_in_nodes(cluster: Cluster, tmp_path):
    src = tmp_path / "probe-agent"
    src.write_text(open("/usr/lib/ocf/resource.d/pacemaker/Stateful").read())
    spec = cluster.install_agent(src, "rpe-test", "probe")
    assert spec == "ocf:rpe-test:probe"
    assert os.access("/usr/lib/ocf/resource.d/rpe-test/probe", os.X_OK)
    out = cluster.run(3, "crm_resource", "--list-agents", "ocf:rpe-test").stdout
    assert "probe" in out.split()


def test_promotable_clone_one_promoted(cluster: Cluster, stateful: float):
    cluster.wait_for(lambda: _healthy(cluster), 45, "1 Promoted + 2 Unpromoted")
    _report("create Stateful clone -> 1 Promoted + 2 Unpromoted", time.monotonic() - stateful)
    roles = cluster.resource_roles(CLONE)
    assert sorted(roles.values()) == ["Promoted", "Unpromoted", "Unpromoted"]
    assert cluster.resource_roles(RSC) == roles


def test_crash_promoted_is_fenced_and_fails_over(cluster: Cluster, stateful: float):
    cluster.wait_for(lambda: _healthy(cluster), 60, "healthy clone before crash")
    [victim_name] = cluster.promoted(RSC)
    victim = cluster.index(victim_name)
    marker = cluster.node_dir(victim) / "disk-marker"
    cluster.run(victim, "sh", "-c", f"echo persisted > {marker}")
    boots_before = len(cluster.boots[victim])
    calls_before = len(cluster.fence_agent_calls())

    t0 = cluster.crash(victim)
    new = cluster.wait_for(
        lambda: [n for n in cluster.promoted(RSC) if n != victim_name],
        60,
        f"another node promoted after crashing {victim_name}",
    )
    t_promoted = time.monotonic()
    assert len(new) == 1

    # fenced by the cluster through fence_replengine_ns, which asked the harness to cut power
    offs = [
        e for e in cluster.fence_events if e.node == victim_name and e.action == "off" and e.t > t0
    ]
    assert offs, f"{victim_name} was not fenced: {cluster.fence_events}"
    assert offs[0].t < t_promoted
    calls = cluster.fence_agent_calls()[calls_before:]
    reboots = [c for c in calls if c["action"] == "reboot" and c["plug"] == victim_name]
    assert reboots and all(c["host"] != victim_name for c in reboots), calls

    # the fence "reboot" powers it on again: it boots, rejoins and comes back Unpromoted
    cluster.wait_for(
        lambda: len(cluster.boots[victim]) > boots_before, 60, f"{victim_name} rebooted by fencing"
    )
    t_boot = cluster.boots[victim][-1]
    cluster.wait_for(
        lambda: _healthy(cluster) and cluster.resource_roles(RSC)[victim_name] == "Unpromoted",
        90,
        f"{victim_name} rejoined as Unpromoted",
    )
    t_rejoined = time.monotonic()
    assert cluster.promoted(RSC) == new
    assert cluster.run(victim, "cat", str(marker)).stdout == "persisted\n"
    history = cluster.run(
        cluster.index(new[0]), "stonith_admin", "--history", victim_name, check=False
    ).stdout
    assert "reboot" in history, history

    _report("kill promoted -> fence off", offs[0].t - t0)
    _report("kill promoted -> promoted elsewhere (crm_mon)", t_promoted - t0)
    _report("kill promoted -> fenced node booted again", t_boot - t0)
    _report("kill promoted -> rejoined as Unpromoted", t_rejoined - t0)


def test_switchover_move_promoted(cluster: Cluster, stateful: float):
    cluster.wait_for(lambda: _healthy(cluster), 60, "healthy clone before switchover")
    [old] = cluster.promoted(RSC)
    target = next(n for n, r in sorted(cluster.resource_roles(RSC).items()) if r == "Unpromoted")
    t0 = time.monotonic()
    # pcs 0.11: `move` = old `move --autodelete`; --promoted needs the clone id
    cluster.pcs("resource", "move", CLONE, target, "--promoted", timeout=180)
    cluster.wait_for(lambda: cluster.promoted(RSC) == [target], 60, f"{CLONE} promoted on {target}")
    _report(f"pcs resource move {CLONE} --promoted -> promoted on target", time.monotonic() - t0)
    cluster.wait_for(lambda: _healthy(cluster), 60, "healthy clone after switchover")
    assert cluster.resource_roles(RSC)[old] == "Unpromoted"
    # the temporary constraints pcs made for the move are gone again
    constraints = cluster.pcs("constraint", "location", "config", "--full").stdout
    assert "cli-" not in constraints, constraints


def test_partition_isolated_node_is_fenced_and_rejoins(cluster: Cluster, stateful: float):
    cluster.wait_for(lambda: _healthy(cluster), 60, "healthy clone before partition")
    [promoted] = cluster.promoted(RSC)
    name = next(n for n, r in sorted(cluster.resource_roles(RSC).items()) if r == "Unpromoted")
    i = cluster.index(name)
    boots_before = len(cluster.boots[i])
    t0 = time.monotonic()
    cluster.partition(i)
    try:
        # the quorate majority fences the isolated node; the Promoted stays where it was
        cluster.wait_for(
            lambda: [
                e for e in cluster.fence_events if e.node == name and e.action == "off" and e.t > t0
            ],
            60,
            f"{name} fenced by the majority",
        )
        t_fenced = time.monotonic()
        cluster.wait_for(lambda: len(cluster.boots[i]) > boots_before, 60, f"{name} rebooted")
        assert name not in cluster.online_nodes()
        assert cluster.promoted(RSC) == [promoted]
        # the rebooted node is still cut off: alone and without quorum, it runs nothing
        out = cluster.wait_for(
            lambda: cluster.run(i, "corosync-quorumtool", "-s", check=False).stdout,
            30,
            f"corosync up on isolated {name}",
        )
        assert "Quorate:          No" in out or "Activity blocked" in out, out
    finally:
        cluster.heal(i)
    cluster.wait_for(lambda: _healthy(cluster), 90, f"{name} rejoined after heal")
    assert cluster.promoted(RSC) == [promoted]
    _report("partition -> isolated node fenced", t_fenced - t0)
    _report("partition -> healed and rejoined", time.monotonic() - t0)


def test_clean_stop_and_start_node(cluster: Cluster, stateful: float):
    cluster.wait_for(lambda: _healthy(cluster), 60, "healthy clone before clean stop")
    [promoted] = cluster.promoted(RSC)
    name = next(n for n, r in sorted(cluster.resource_roles(RSC).items()) if r == "Unpromoted")
    i = cluster.index(name)
    events_before = len(cluster.fence_events)
    t0 = time.monotonic()
    cluster.stop_node(i)
    t_stopped = time.monotonic()
    assert not cluster.is_alive(i)
    cluster.wait_for(lambda: name not in cluster.online_nodes(), 30, f"{name} offline")
    assert cluster.resource_roles(RSC)[name] == "Stopped"
    assert cluster.promoted(RSC) == [promoted]
    cluster.start_node(i)
    cluster.wait_for(lambda: _healthy(cluster), 60, f"{name} back after start_node")
    assert cluster.promoted(RSC) == [promoted]
    # a clean shutdown is not a failure: nobody fenced it
    assert not [e for e in cluster.fence_events[events_before:] if e.node == name]
    _report("stop_node (clean shutdown)", t_stopped - t0)
    _report("stop_node + start_node -> rejoined as Unpromoted", time.monotonic() - t0)


def test_cleanup_stale_removes_leftovers():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    prefix = "rpz"
    base = f"/var/tmp/{prefix}"
    subprocess.run(["ip", "netns", "add", f"{prefix}-n1"], check=True)
    subprocess.run(["ip", "netns", "add", f"{prefix}-hub"], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", f"{prefix}-n1", "sleep", "600"])
    os.makedirs(f"{base}/n1", exist_ok=True)
    try:
        removed = cleanup_stale(prefix)
        assert sleeper.wait(10) == -9
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{prefix}-" not in netns
        assert not os.path.exists(base)
        assert any("netns" in r for r in removed)
    finally:
        sleeper.kill()
        sleeper.wait()
        cleanup_stale(prefix)
