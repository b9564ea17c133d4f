"""Replication end to end: real daemons on 127.0.0.1, real files, the client API and replctl.

Invariants checked here (DESIGN.md): 1 (a completed write is on every sync secondary),
2 (every node's volume is the primary's as of some LSN: equal checksums after quiesce, files
equal to the writers' ledger), 3 (CLEAR only once every secondary has a record), and the
operator surface (roles, replctl verbs and their errors, status keys).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys

import pytest
from conftest import FOUR_NODES, THREE_NODES, KiB, Ledger, Writer, peer, random_write

from replengine.client import ControlClient
from replengine.errors import RoleError

pytestmark = pytest.mark.slow


def test_ledger_matches_on_every_node(resource):
    """1 primary + 2 sync + 1 async, random overlapping 4 KiB-256 KiB writes at QD1 and QD16:
    all four checksums equal, every ledger entry reads back as last written, and each node's
    volume file equals the ledger after a clean down."""
    r = resource(FOUR_NODES)
    r.up()
    r.promote("alpha")
    ledger = Ledger()
    rng = random.Random(7)
    vol = r.connect("alpha")
    # QD1, offsets confined to 4 MiB so that many writes overlap
    for _ in range(120):
        off, data = random_write(rng, span=4 << 20)
        ledger.add(vol.write(off, data), off, data)
    # QD16: overlapping writes in flight together; the LSN each returns orders them
    inflight: list[tuple[int, int, bytes]] = []
    for _ in range(160):
        off, data = random_write(rng, span=4 << 20)
        inflight.append((vol.submit(off, data), off, data))
        if len(inflight) >= 16:
            req, o, d = inflight.pop(0)
            ledger.add(vol.wait(req), o, d)
    for req, o, d in inflight:
        ledger.add(vol.wait(req), o, d)
    end = r.wait_synced()
    assert end == max(lsn for lsn, _, _ in ledger.entries) + 1, "end LSN != last write + 1"
    sums = r.checksums()
    assert len(set(sums.values())) == 1, f"volume checksums differ after quiesce: {sums}"
    ledger.check_reads(vol)
    vol.close()
    r.down()
    for n in r.nodes:
        ledger.check_file(r.volume_path(n), n)


def test_async_peer_lag_is_reported(resource):
    """SIGSTOP the async secondary: the primary shows its lag while the sync peers are up to
    date; SIGCONT: its lag goes back to 0."""
    r = resource(FOUR_NODES)
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    vol.write(0, b"a" * 4096)
    r.wait_synced()
    r.signal("delta", signal.SIGSTOP)
    for i in range(40):
        vol.write(i * 8 * KiB, bytes([i]) * 8 * KiB)  # completes: delta is async
    st = r.status("alpha")
    d = st["peers"]["delta"]
    assert d["lag_records"] > 0, f"async peer delta shows no lag while stopped: {d}"
    assert d["state"] in ("catching-up", "disconnected"), d
    for name in ("beta", "gamma"):
        p = st["peers"][name]
        assert p["lag_records"] == 0 and p["state"] == "up-to-date", (name, p)
        assert p["acked_lsn"] == st["end_lsn"] - 1, (name, p)
    # 40 records of 8 KiB behind: at least their data in bytes of log
    assert isinstance(d["lag_bytes"], int) and d["lag_bytes"] >= 40 * 8 * KiB, (
        f"lag_bytes of the stopped async peer is {d['lag_bytes']!r}, not its byte lag"
    )
    r.signal("delta", signal.SIGCONT)
    r.wait_for(
        lambda: (
            peer(r, "alpha", "delta")["lag_records"] == 0
            and peer(r, "alpha", "delta")["state"] == "up-to-date"
        ),
        20,
        "delta to catch up after SIGCONT",
    )
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    vol.close()


def test_secondary_refuses_writes(resource):
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    r.wait_for(lambda: r.status("beta")["following"] == "alpha", 10, "beta to follow alpha")
    with pytest.raises(RoleError, match="secondary"):
        r.connect("beta")
    ctl = ControlClient(r.run_dir / r.name / "beta" / "control.sock", 10)
    try:
        doc, _ = ctl.wait(ctl.send("write", b"z" * 4096, offset=0))
    finally:
        ctl.close()
    assert doc["ok"] is False, doc
    assert "secondary" in doc["error"] and "read-only" in doc["error"], doc
    st = r.status("beta")
    assert st["end_lsn"] == r.status("alpha")["end_lsn"] == 1, "the refused write was logged"


def test_replctl_up_twice_down_up_keeps_data(resource):
    r = resource(THREE_NODES)
    r.up()
    pids = {n: r.pid(n) for n in r.nodes}
    again = r.replctl("alpha", "up")
    assert again.returncode == 0 and "already up" in again.stdout, again
    assert {n: r.pid(n) for n in r.nodes} == pids, "second 'up' started another daemon"
    r.promote("alpha")
    ledger = Ledger()
    rng = random.Random(3)
    vol = r.connect("alpha")
    for _ in range(40):
        off, data = random_write(rng, hi=64 * KiB)
        ledger.add(vol.write(off, data), off, data)
    vol.close()
    end = r.wait_synced()
    r.down()
    assert all(r.pid(n) is None for n in r.nodes), "pid files left after down"
    r.up()
    for n in r.nodes:
        st = r.status(n)
        assert st["end_lsn"] == end and st["applied_end"] == end, (n, st)
    r.promote("alpha")
    vol = r.connect("alpha")
    ledger.check_reads(vol)
    vol.close()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    r.down()
    for n in r.nodes:
        ledger.check_file(r.volume_path(n), n)


def test_clean_switchover_demote_then_promote_elsewhere(resource):
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    r.wait_synced()  # the first promotion's full syncs ended: beta can take over
    ledger = Ledger()
    rng = random.Random(5)
    vol = r.connect("alpha")
    for _ in range(30):
        off, data = random_write(rng, hi=64 * KiB)
        ledger.add(vol.write(off, data), off, data)
    vol.close()
    out = r.replctl("alpha", "demote")
    assert out.returncode == 0, out
    assert r.status("alpha")["role"] == "secondary"
    end = r.wait_synced()
    assert {r.status(n)["end_lsn"] for n in r.nodes} == {end}
    r.promote("beta")
    st = r.status("beta")
    assert st["role"] == "primary" and st["epoch"] == 2, st
    r.wait_for(
        lambda: all(r.status(n)["following"] == "beta" for n in ("alpha", "gamma")),
        10,
        "alpha and gamma to follow beta",
    )
    vol = r.connect("beta")
    for _ in range(30):
        off, data = random_write(rng, hi=64 * KiB)
        ledger.add(vol.write(off, data), off, data)
    ledger.check_reads(vol)
    vol.close()
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    # a clean switchover ships nothing extra: alpha already had everything
    assert r.status("beta")["last_promotion"]["pulled_records"] == 0


DOCUMENTED_STATUS_KEYS = {"role", "epoch", "start_lsn", "end_lsn", "applied_end", "srl", "peers"}
DOCUMENTED_PEER_KEYS = {
    "connected",
    "mode",
    "acked_lsn",
    "lag_records",
    "lag_bytes",
    "state",
    "degraded",
    "shipped_records",
    "shipped_bytes",
}


def test_replctl_status_json_keys(resource):
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    # the first promotion's full syncs end first: a write racing their end is refused by a
    # secondary still taking blocks and sent again (shipped twice, rightly counted twice)
    r.wait_synced()
    vol = r.connect("alpha")
    vol.write(0, b"s" * 65536)
    vol.close()
    r.wait_synced()
    for node in ("alpha", "beta"):
        out = r.replctl(node, "status", "--json")
        doc = json.loads(out.stdout)
        assert DOCUMENTED_STATUS_KEYS <= set(doc), DOCUMENTED_STATUS_KEYS - set(doc)
        assert {"capacity", "used_bytes", "free_bytes"} <= set(doc["srl"])
        assert set(doc["peers"]) == set(r.nodes) - {node}
        for name, p in doc["peers"].items():
            assert DOCUMENTED_PEER_KEYS <= set(p), (name, DOCUMENTED_PEER_KEYS - set(p))
        assert doc["end_lsn"] == 2 and doc["applied_end"] == 2, doc
    prim = json.loads(r.replctl("alpha", "status", "--json").stdout)
    assert prim["role"] == "primary" and prim["epoch"] == 1
    assert prim["peers"]["beta"]["state"] == "up-to-date"
    assert prim["peers"]["beta"]["shipped_records"] == 1
    assert prim["peers"]["beta"]["shipped_bytes"] == 65536
    # its stream: on, and nothing left to send
    assert prim["peers"]["beta"]["streaming"] is True
    assert prim["peers"]["beta"]["next_lsn"] == prim["end_lsn"] == 2
    sec = json.loads(r.replctl("beta", "status", "--json").stdout)
    assert sec["peers"]["alpha"]["streaming"] is None and sec["peers"]["alpha"]["next_lsn"] is None


def _one_line_error(proc: subprocess.CompletedProcess, what: str) -> str:
    assert proc.returncode != 0, f"{what}: exit status 0; stdout {proc.stdout!r}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"{what}: stderr is {len(lines)} lines, not one: {proc.stderr!r}"
    return lines[0]


CLI = [sys.executable, "-m", "replengine.cli"]


@pytest.mark.parametrize(
    "argv",
    [["frobnicate", "--config", "/nonexistent.toml"], ["status", "--bogus-option"], []],
    ids=["unknown-verb", "unknown-option", "no-verb"],
)
def test_replctl_usage_errors_exit_nonzero_with_one_line(argv):
    proc = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=30)
    line = _one_line_error(proc, f"replctl {' '.join(argv)}")
    assert line.startswith("replctl"), line


def test_replctl_failed_verbs_exit_nonzero_with_one_line(resource):
    r = resource(THREE_NODES)
    r.up("alpha", "beta")
    r.promote("alpha")
    line = _one_line_error(r.replctl("gamma", "status", check=False), "status of a down node")
    assert "gamma" in line or "no daemon" in line, line
    line = _one_line_error(
        r.replctl("beta", "promote", check=False), "promote while another node is primary"
    )
    assert "alpha" in line, line
    line = _one_line_error(r.replctl("alpha", "init", check=False), "init while running")
    assert "running" in line, line
    bad = subprocess.run(
        [*CLI, "status", "--config", str(r.workdir / "nope.toml"), "--node", "alpha"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    line = _one_line_error(bad, "missing config file")
    assert "nope.toml" in line, line


def test_clear_waits_for_every_secondary(resource):
    """Records leave the SRLs once every secondary has them; with one secondary stopped no
    node's start passes what that secondary acknowledged."""
    r = resource(FOUR_NODES)
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    for i in range(30):
        vol.write(i * 4096, bytes([i + 1]) * 4096)
    end = r.wait_synced()
    r.wait_for(
        lambda: all(r.status(n)["start_lsn"] == end for n in r.nodes),
        10,
        f"every node's start_lsn to reach {end} after idle",
    )
    r.signal("gamma", signal.SIGSTOP)
    gamma_end = peer(r, "alpha", "gamma")["acked_lsn"] + 1
    assert gamma_end == end
    for i in range(30):
        vol.write(i * 4096, bytes([i + 100]) * 4096)  # sync peer gone: degraded after ~0.9 s
    new_end = r.status("alpha")["end_lsn"]
    r.wait_synced(["alpha", "beta", "delta"])
    # being declared gone takes 3 heartbeats: plenty of idle CLEAR rounds to go wrong in
    r.wait_for(lambda: not peer(r, "alpha", "gamma")["connected"], 10, "gamma declared gone")
    for n in ("alpha", "beta", "delta"):
        st = r.status(n)
        assert st["start_lsn"] <= gamma_end, (
            f"{n} cleared up to {st['start_lsn']} but gamma only has LSNs below {gamma_end}"
        )
    r.signal("gamma", signal.SIGCONT)
    r.wait_for(
        lambda: all(r.status(n)["start_lsn"] == new_end for n in r.nodes),
        20,
        f"every node's start_lsn to reach {new_end} once gamma is back",
    )
    vol.close()


def test_writer_thread_ledger_while_async_peer_restarts(resource, writers):
    """A continuous writer while the async peer is stopped cleanly and started again."""
    r = resource(FOUR_NODES)
    r.up()
    r.promote("alpha")
    ledger = Ledger()
    w = Writer(r, "alpha", ledger, seed=11, hi=64 * KiB)
    writers.append(w)
    w.start()
    r.wait_for(lambda: len(ledger) >= 20, 20, "20 writes")
    r.down("delta")
    n = len(ledger)
    r.wait_for(lambda: len(ledger) >= n + 20, 20, "20 more writes with delta down")
    r.up("delta")
    r.wait_for(lambda: peer(r, "alpha", "delta")["connected"], 10, "delta reconnected")
    n = len(ledger)
    r.wait_for(lambda: len(ledger) >= n + 20, 20, "20 more writes with delta back")
    w.stop()
    assert not w.errors, w.errors
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    vol = r.connect("alpha")
    ledger.check_reads(vol)
    vol.close()


def test_with_a_long_heartbeat_promotion_and_a_restart_do_not_wait_for_a_beat(resource):
    """With a 30 s heartbeat: a promotion's probe asks each peer to answer at once, so it
    ends within a 10 s timeout (waiting for the peers' next beats took 30 s); and a
    secondary killed and started again gets the records it lacks within seconds, because
    each side says HELLO the moment its connection to the other is up rather than at its
    next beat (a catch-up after a network cut or a stall would otherwise start as late)."""
    r = resource({"a": "sync", "b": "async"}, heartbeat_ms=30_000)
    r.up()
    r.promote("a", "--timeout", "10")
    with r.connect("a") as v:
        v.write(0, b"1" * 4096)
    r.wait_synced(timeout=10)
    r.kill("b")
    with r.connect("a") as v:
        for i in range(50):
            v.write(i * 4096, bytes([i]) * 4096)
    r.up("b")
    r.wait_synced(timeout=10)
    assert len(set(r.checksums().values())) == 1
