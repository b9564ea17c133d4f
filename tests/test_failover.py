"""Failover with real processes: N `replengined` daemons on loopback (LocalResource).

Covers the design's invariants 4 (epoch fencing), 5 (failover ships the difference only,
divergent tail rewound by blocks) and 6 (nothing acknowledged is lost), the patent's Fig. 5B
state (three secondaries at three different ends), the zombie old primary, failback with a
divergent tail, and the promotion guards of `replctl promote`.
"""

from __future__ import annotations

import random
import re

import pytest
from failover_helpers import (
    Ledger,
    cont,
    crash,
    describe_logs,
    offline_srl,
    promote_cli,
    random_write,
    settled_ends,
    stop,
    volume_bytes,
    wait_consistent,
    wait_role,
)

from replengine.demo.localcluster import LocalResource
from replengine.errors import ReplError
from replengine.failover.promotion import next_epoch

VOL = 16 << 20


@pytest.fixture
def make_resource(tmp_path):
    made: list[LocalResource] = []

    def make(nodes: dict[str, str], **kw) -> LocalResource:
        r = LocalResource(tmp_path / f"res{len(made)}", nodes=nodes, volume_size=VOL, **kw)
        made.append(r)
        return r.create()

    yield make
    for r in made:
        r.stop_all()


def write_n(v, ledger: Ledger, rng: random.Random, n: int) -> None:
    for _ in range(n):
        off, data = random_write(rng, VOL)
        w = ledger.add(off, data)
        w.lsn = v.write(off, data)
        assert w.lsn == ledger.lsn_of(len(ledger.writes) - 1), "LSNs not in submission order"


def assert_volumes(r: LocalResource, nodes: list[str], expect: bytes) -> None:
    sums = r.checksums(nodes)
    assert len(set(sums.values())) == 1, f"volumes differ: {sums}\n{describe_logs(r, nodes)}"
    for n in nodes:
        got = volume_bytes(r, n)
        assert got == expect, f"{n}'s volume is not the model's"


# ---- Fig. 5B: three secondaries at three different ends ----------------------------------------


def build_fig5b(make_resource, seed: int):
    """alpha primary; beta (SN1) stops first, gamma (SN2) later, delta (SN3) has everything.

    The laggards are frozen with SIGSTOP at the moment wanted and then SIGKILLed while frozen:
    a frozen node's kernel socket buffers would otherwise still deliver what the dead primary
    sent it, after SIGCONT. Restarted after the primary died, each comes back with exactly what
    its SRL held at the freeze."""
    rng = random.Random(seed)
    r = make_resource({"alpha": "async", "beta": "async", "gamma": "async", "delta": "async"})
    r.up()
    r.promote("alpha")
    v = r.connect("alpha")
    ledger = Ledger(bytearray(VOL), 1)
    write_n(v, ledger, rng, 30)  # LSN 1..30 everywhere
    r.wait_synced()
    stop(r, "beta")  # SN1: E1 = 31
    write_n(v, ledger, rng, 12)  # LSN 31..42
    r.wait_for(lambda: r.status("gamma")["end_lsn"] == 43, 20, "gamma to log LSN 42")
    stop(r, "gamma")  # SN2: E2 = 43
    write_n(v, ledger, rng, 9)  # LSN 43..51
    r.wait_for(lambda: r.status("delta")["applied_end"] == 52, 20, "delta to apply LSN 51")
    crash(r, "beta")
    crash(r, "gamma")
    crash(r, "alpha")  # the primary dies
    v.close()
    r.up("beta", "gamma")
    ends = settled_ends(r, ["beta", "gamma", "delta"])
    assert ends == {"beta": 31, "gamma": 43, "delta": 52}, ends
    return r, ledger, ends


@pytest.mark.slow
@pytest.mark.parametrize("promoted", ["beta", "gamma", "delta"])
def test_fig5b_promote_any_secondary_ships_only_the_difference(make_resource, promoted):
    r, ledger, ends = build_fig5b(make_resource, seed=5)
    best = max(ends.values())
    out = r.promote(promoted)
    lp = r.status(promoted)["last_promotion"]
    lacked = best - ends[promoted]
    # after alpha's epoch 1, each node raises the next epoch it owns (beta 2, gamma 3, delta 4)
    expect = next_epoch(1, list(r.nodes).index(promoted), len(r.nodes))
    assert lp["epoch"] == expect and lp["first_lsn"] == best, (out, lp)
    assert lp["pulled_records"] == lacked, (out, lp)
    assert lp["pulled_bytes"] == ledger.bytes_between(ends[promoted], best), (out, lp)
    if lacked:
        assert lp["pulled_from"] == "delta", lp
        assert f"pulled {lacked} records from delta" in out, out

    # writes on the new primary after the failover
    rng = random.Random(55)
    v = r.connect(promoted)
    write_n(v, ledger, rng, 4)
    v.close()
    end_now = best + 4
    survivors = ["beta", "gamma", "delta"]
    assert wait_consistent(r, survivors) == end_now
    st = r.status(promoted)
    for peer in survivors:
        if peer == promoted:
            continue
        sp = st["peers"][peer]
        assert sp["shipped_records"] == end_now - ends[peer], (peer, sp, ends)
        assert sp["shipped_bytes"] == ledger.bytes_between(ends[peer], end_now), (peer, sp)
    assert_volumes(r, survivors, bytes(ledger.image_at(end_now)))

    # the old primary comes back with everything up to 51: it gets just the new records
    _, alpha_end, _ = offline_srl(r, "alpha")
    assert alpha_end == best
    r.up("alpha")
    assert wait_consistent(r, survivors + ["alpha"]) == end_now
    sp = r.status(promoted)["peers"]["alpha"]
    assert sp["shipped_records"] == end_now - best, sp
    assert sp["shipped_bytes"] == ledger.bytes_between(best, end_now), sp
    assert_volumes(r, survivors + ["alpha"], bytes(ledger.image_at(end_now)))


# ---- zombie old primary ------------------------------------------------------------------------


@pytest.mark.slow
def test_zombie_old_primary_is_fenced_by_epoch(make_resource):
    """alpha is cut off (SIGSTOP) with writes in flight, beta is promoted, alpha comes back:
    its in-flight writes fail as fenced (or never complete), a write sent to it after the cut
    fails, it steps down and follows beta, and nothing it wrote after the cut survives."""
    rng = random.Random(7)
    r = make_resource({"alpha": "sync", "beta": "sync", "gamma": "sync", "delta": "async"})
    r.up()
    r.promote("alpha")
    v = r.connect("alpha")
    ledger = Ledger(bytearray(VOL), 1)
    write_n(v, ledger, rng, 20)
    base = r.wait_synced()  # 21
    # writes in flight at the cut: the secondaries are frozen so none is acknowledged
    for s in ("beta", "gamma", "delta"):
        stop(r, s)
    region = 8 << 20
    inflight = []
    for i in range(4):
        off, data = region + i * (64 << 10), rng.randbytes(64 << 10)
        inflight.append((off, data, v.submit(off, data)))
    r.wait_for(
        lambda: r.status("alpha")["end_lsn"] == base + 4, 20, "alpha to log the in-flight writes"
    )
    stop(r, "alpha")  # the cut
    late = v.submit(region + (1 << 20), b"Z" * 4096)  # sent to alpha after the cut
    for s in ("beta", "gamma", "delta"):
        cont(r, s)
    settled_ends(r, ["beta", "gamma", "delta"])
    out = r.promote("beta")
    new = r.status("beta")
    first_lsn = new["last_promotion"]["first_lsn"]
    assert new["epoch"] == 2, out
    v2 = r.connect("beta")
    newer = []
    for i in range(3):
        off, data = region + i * (64 << 10) + 8192, bytes([0x11 + i]) * 4096
        newer.append((off, data))
        v2.write(off, data)
    v2.close()
    cont(r, "alpha")

    # In-flight writes: fail with a fencing error, never complete, or complete truthfully
    # (their record reached the secondaries before the cut and is part of epoch 2's history,
    # LSN < first_lsn). Completing a record the new primary does not hold loses an
    # acknowledged write.
    for off, _data, req in inflight:
        try:
            lsn = v.wait(req)
        except ReplError as exc:
            msg = str(exc)
            assert re.search(r"fenc|epoch|did not answer", msg), msg
        else:
            assert lsn < first_lsn, (
                f"write at {off} (LSN {lsn}), in flight at the cut, completed on the zombie "
                f"primary although beta's epoch 2 starts at LSN {first_lsn} without it\n"
                f"{describe_logs(r, ['alpha', 'beta'])}"
            )
    # the write sent to alpha after the cut must not complete
    try:
        lsn = v.wait(late)
    except ReplError:
        pass
    else:
        pytest.fail(
            f"write sent after the cut completed on the zombie primary (LSN {lsn}; "
            f"beta's epoch 2 starts at {first_lsn})\n{describe_logs(r, ['alpha'])}"
        )
    v.close()
    wait_role(r, "alpha", "secondary", following="beta")
    end = wait_consistent(r, ["alpha", "beta", "gamma", "delta"], timeout=90)
    assert end == first_lsn + len(newer)
    # nothing alpha wrote after the cut is on the others: in-flight records beta's epoch 2
    # does not include are absent, the late write is absent
    expect = ledger.image_at(base)
    for i, (off, data, _req) in enumerate(inflight):
        if base + i < first_lsn:
            expect[off : off + len(data)] = data
    for off, data in newer:
        expect[off : off + len(data)] = data
    assert_volumes(r, ["alpha", "beta", "gamma", "delta"], bytes(expect))


@pytest.mark.slow
def test_stale_epoch_update_is_refused_and_logged(make_resource):
    """An epoch-1 UPDATE reaching a secondary that knows epoch 2 (a zombie's late data) is
    refused, logged with the reason, and changes nothing (invariants 4 and 7). The zombie's
    message is injected on the wire with the old primary's identity, so that it surely
    arrives after the failover."""
    import zmq

    from replengine import config as configmod
    from replengine.wire.protocol import Update, encode

    r = make_resource({"alpha": "sync", "beta": "sync", "gamma": "sync"})
    r.up()
    r.promote("alpha")
    v = r.connect("alpha")
    for i in range(5):
        v.write(i * 4096, bytes([i]) * 4096)
    v.close()
    r.wait_synced()
    crash(r, "alpha")
    r.promote("beta")
    v2 = r.connect("beta")
    v2.write(0, b"n" * 4096)
    v2.close()
    end = wait_consistent(r, ["beta", "gamma"])
    wait_role(r, "gamma", "secondary", following="beta")
    cfg = configmod.load(r.config, node="gamma", check_local=False)
    before = r.checksums(["gamma"])["gamma"]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, b"alpha")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{cfg.nodes['gamma'].address}")
    try:
        for lsn in (end - 1, end):  # a record gamma has and the next one
            sock.send_multipart(encode(cfg.uuid, 1, "alpha", Update(lsn, 1, 8192, b"Z" * 4096, 0)))
        r.wait_for(
            lambda: (
                "epoch 1"
                in "".join(ln for ln in r.log("gamma").splitlines() if "refused" in ln.lower())
            ),
            10,
            "gamma to log that it refused alpha's epoch-1 UPDATE",
        )
    finally:
        sock.close(0)
    st = r.status("gamma")
    assert st["end_lsn"] == end and st["following"] == "beta", st
    assert r.checksums(["gamma"])["gamma"] == before


# ---- failback with a divergent tail ------------------------------------------------------------


@pytest.mark.slow
def test_failback_rewinds_only_the_divergent_tail(make_resource):
    rng = random.Random(11)
    r = make_resource({"alpha": "sync", "beta": "sync", "gamma": "sync", "delta": "async"})
    r.up()
    r.promote("alpha")
    v = r.connect("alpha")
    ledger = Ledger(bytearray(VOL), 1)
    write_n(v, ledger, rng, 40)
    base = r.wait_synced()
    # every secondary goes away (frozen, then crashed while frozen: nothing sent later reaches
    # them); alpha degrades and completes writes only it holds: the divergent tail
    for s in ("beta", "gamma", "delta"):
        stop(r, s)
        crash(r, s)
    tail = []
    for i in range(6):
        off = (4 << 20) + i * 3 * 4096 + (512 if i % 2 else 0)
        data = rng.randbytes(4096 * (1 + i % 3))
        tail.append((off, data))
        v.write(off, data)  # completes once the sync peers are degraded
    st = r.status("alpha")
    assert st["end_lsn"] == base + 6, st
    stop(r, "alpha")  # the old primary is cut off
    r.up("beta", "gamma", "delta")
    settled_ends(r, ["beta", "gamma", "delta"])
    out = r.promote("beta")
    assert f"epoch 2 starts at LSN {base}" in out, out
    v2 = r.connect("beta")
    write_n(v2, ledger, rng, 10)
    v2.close()
    cont(r, "alpha")
    v.close()
    wait_role(r, "alpha", "secondary", following="beta")
    end = wait_consistent(r, ["alpha", "beta", "gamma", "delta"], timeout=90)
    assert end == base + 10

    st = r.status("alpha")
    dt = st["divergent_tail"]
    tail_bytes = sum(len(d) for _, d in tail)
    assert dt, f"no divergent_tail in alpha's status: {st}\n{describe_logs(r, ['alpha'])}"
    assert dt["records"] == 6 and dt["bytes"] == tail_bytes, dt
    assert (dt["first_lsn"], dt["end_lsn"]) == (base, base + 6), dt
    alog = r.log("alpha")
    ranges = sorted((off, len(d)) for off, d in tail)
    merged: list[list[int]] = []
    for off, n in ranges:
        if merged and off <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], off + n - merged[-1][0])
        else:
            merged.append([off, n])
    for off, n in merged:
        assert f"{off}+{n}" in alog, f"alpha's log does not name block range {off}+{n}:\n{alog}"
    m = re.search(r"divergent blocks rewritten \((\d+) bytes\)", alog)
    assert m, alog
    rewritten = int(m.group(1))
    assert rewritten == sum(n for _, n in merged), (rewritten, merged)
    assert rewritten < VOL // 100
    # the catch-up after the rewind is the new epoch's records, not the volume
    sp = r.status("beta")["peers"]["alpha"]
    assert sp["shipped_records"] == 10, sp
    assert sp["shipped_bytes"] == ledger.bytes_between(base, base + 10), sp
    assert_volumes(r, ["alpha", "beta", "gamma", "delta"], bytes(ledger.image_at(end)))


# ---- promotion guards --------------------------------------------------------------------------


@pytest.mark.slow
def test_promote_refuses_with_too_few_peers_unless_forced(make_resource):
    r = make_resource({"alpha": "sync", "beta": "sync", "gamma": "sync", "delta": "async"})
    r.up()
    r.promote("alpha")
    v = r.connect("alpha")
    v.write(0, b"a" * 4096)
    v.close()
    r.wait_synced()
    crash(r, "alpha")
    crash(r, "gamma")  # beta reaches only delta: 1 < promote_min_peers (2)
    code, out, err = promote_cli(r, "beta")
    assert code == 1, (code, out, err)
    assert "only 1 of 3 peers reachable" in err and "--force" in err, err
    assert r.status("beta")["role"] == "secondary"
    assert "promotion refused" in r.log("beta")
    code, out, err = promote_cli(r, "beta", "--force")
    assert code == 0, (code, out, err)
    assert "promoted: epoch 2" in out, out
    assert "FORCED" in r.log("beta")
    assert r.status("beta")["role"] == "primary"


@pytest.mark.slow
def test_promote_refuses_while_a_primary_is_reachable(make_resource):
    r = make_resource({"alpha": "sync", "beta": "sync", "gamma": "async"})
    r.up()
    r.promote("alpha")
    wait_role(r, "beta", "secondary", following="alpha")
    r.wait_synced()  # beta's first full sync ended (while it runs, beta is inconsistent)
    for extra in ((), ("--force",)):
        code, out, err = promote_cli(r, "beta", *extra)
        assert code == 1, (extra, code, out, err)
        assert "alpha is primary and reachable" in err, err
        assert r.status("beta")["role"] == "secondary"
    assert r.status("alpha")["role"] == "primary"
    assert r.status("alpha")["epoch"] == 1


@pytest.mark.slow
def test_second_promotion_reports_only_its_own_pull(make_resource):
    """last_promotion describes that promotion: a node promoted twice in one process life
    (pulling the first time, nothing the second) reports pulled_bytes 0 the second time."""
    r = make_resource({"alpha": "sync", "beta": "sync", "gamma": "async"})
    r.up()
    r.promote("alpha")
    v = r.connect("alpha")
    v.write(0, b"0" * 4096)
    r.wait_synced()
    stop(r, "gamma")
    for i in range(5):
        v.write((i + 1) * 4096, bytes([i]) * 4096)
    crash(r, "gamma")
    crash(r, "alpha")
    v.close()
    r.up("gamma")
    assert settled_ends(r, ["beta", "gamma"]) == {"beta": 7, "gamma": 2}
    r.promote("gamma")
    lp = r.status("gamma")["last_promotion"]
    assert (lp["pulled_records"], lp["pulled_bytes"]) == (5, 5 * 4096), lp
    r.replctl("gamma", "demote")
    wait_role(r, "gamma", "secondary")
    settled_ends(r, ["beta", "gamma"])
    r.promote("gamma")
    lp = r.status("gamma")["last_promotion"]
    assert lp["epoch"] == 6, lp  # gamma, third of three, owns epochs 3, 6, 9...
    assert (lp["pulled_records"], lp["pulled_bytes"]) == (0, 0), lp
