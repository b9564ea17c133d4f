"""`replctl invalidate` on a secondary whose volume was damaged behind the log's back
(drbdadm invalidate): it owes itself the whole volume, durably, and fetches every chunk that
differs from whichever primary it follows. Unlike `sync --full` on the primary, a failover
before the copy starts forgets nothing."""

from __future__ import annotations

import random
import signal
from collections.abc import Callable

import pytest

from replengine.demo.localcluster import LocalResource
from replengine.log.srl_format import SB_SIZE
from tests.conftest import FOUR_NODES, THREE_NODES, Ledger, Writer, smallest_srl, write_chunks
from tests.test_full_sync import damage, wait_cleared
from tests.test_status_cli import documented, schema_problems

KiB = 1 << 10
MiB = 1 << 20


def damaged_beta(r: LocalResource, ledger: Ledger) -> None:
    """alpha primary, 300 writes everywhere, then beta's volume damaged while it is down."""
    r.up()
    r.promote("alpha")
    Writer(r, "alpha", ledger, seed=3, limit=300).run()
    r.wait_synced()
    wait_cleared(r, "beta")
    r.down("beta")
    damage(r.volume_path("beta"), random.Random(5), r.volume_size)


def test_an_invalidated_node_is_rebuilt_by_the_next_primary_after_a_failover(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    r = resource(THREE_NODES, volume_size=64 * MiB)
    ledger = Ledger(r.volume_size)
    damaged_beta(r, ledger)
    out = r.replctl("beta", "invalidate")  # offline: the daemon is down
    assert f"invalidated (offline): {r.volume_size} bytes owed" in out.stdout, out.stdout

    # the primary is replaced before beta is back: only beta's own marker remembers
    r.replctl("alpha", "demote")
    r.promote("gamma")
    w = Writer(r, "gamma", ledger, seed=4, span=4 * MiB)  # beta lacks these too
    writers.append(w)
    w.start()
    r.wait_for(lambda: len(ledger) > 350, 60, "writes on gamma")
    sent0 = r.status("gamma")["peers"]["beta"]["blocks_sent_bytes"]
    r.up("beta")
    r.wait_for(lambda: len(ledger) > 450, 60, "writes while beta is rebuilt")
    w.stop_ev.set()
    w.join(30)
    assert not w.errors, w.errors
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    st = r.status("beta")
    assert st["consistent"] and st["following"] == "gamma" and not st["rewinding"]
    # the chunks that differ: 8 damaged stretches of 64 KiB (16 chunks of 1 MiB at most)
    # and the first 4 MiB, written while beta was away; not the volume's 64 MiB
    sent = r.status("gamma")["peers"]["beta"]["blocks_sent_bytes"] - sent0
    assert 0 < sent <= 20 * MiB, sent
    r.down()
    for n in r.nodes:
        ledger.check_file(r.volume_path(n), n)


def test_an_online_invalidate_waits_for_its_primary_and_refuses_promotion_until_then(
    resource: Callable[..., LocalResource],
) -> None:
    r = resource(THREE_NODES)
    ledger = Ledger(r.volume_size)
    damaged_beta(r, ledger)
    r.up("beta")
    r.wait_synced()
    sums = r.checksums(["alpha", "beta"])
    assert sums["beta"] != sums["alpha"]  # the log knows nothing of the damage

    r.freeze("alpha")  # the source cannot answer: beta stays owing
    try:
        out = r.replctl("beta", "invalidate")
        assert f"invalidated: {r.volume_size} bytes owed" in out.stdout, out.stdout
        st = r.status("beta")
        assert not st["consistent"] and st["rewinding"], st
        assert st["rewind"]["source"] == "alpha" and st["rewind"]["owed_bytes"] == r.volume_size
        doc = {k: v for k, v in st.items() if k not in ("id", "ok")}  # the reply's envelope
        assert not schema_problems(doc, documented())  # the status schema's rewind object
        refused = r.replctl("beta", "promote", check=False)
        assert refused.returncode != 0 and "inconsistent" in refused.stderr, refused
    finally:
        r.signal("alpha", signal.SIGCONT)
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    assert "INVALIDATED" in r.log("beta") and "event: invalidated" in r.log("beta")


@pytest.mark.parametrize("where", ["primary", "uninitialised"])
def test_invalidate_refusals_change_nothing(
    resource: Callable[..., LocalResource], where: str
) -> None:
    r = resource(THREE_NODES)
    if where == "primary":
        r.up()
        r.promote("alpha")
        res = r.replctl("alpha", "invalidate", check=False)
        assert res.returncode != 0
        assert "alpha is the primary" in res.stderr and "demote it" in res.stderr, res.stderr
        st = r.status("alpha")
        assert st["role"] == "primary" and st["consistent"] and not st["rewinding"]
        return
    with open(r.srl_path("beta"), "r+b") as f:  # both superblocks wiped: no SRL there
        f.write(bytes(2 * SB_SIZE))
    res = r.replctl("beta", "invalidate", check=False)
    assert res.returncode != 0 and "is not initialised" in res.stderr, res.stderr
    assert not list(r.srl_path("beta").parent.glob("*.rewind"))


def test_a_promotion_pulls_acknowledged_records_from_an_invalidated_nodes_log(
    resource: Callable[..., LocalResource],
) -> None:
    """gamma was down, so alpha's last writes were acknowledged by alpha and beta alone; beta
    is then invalidated (its copy cannot start: alpha is frozen) and alpha dies. Promoted,
    gamma must pull those records from beta: beta's volume is being rebuilt, its log is
    sound. Before, a promotion ignored an inconsistent node's log and they were lost."""
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    ledger = Ledger(r.volume_size)
    Writer(r, "alpha", ledger, seed=3, limit=50, hi=64 * 1024).run()
    r.wait_synced()
    r.down("gamma")
    before = r.status("alpha")["end_lsn"]
    Writer(r, "alpha", ledger, seed=4, limit=50, hi=64 * 1024).run()  # acked by alpha, beta
    r.wait_synced(["alpha", "beta"])
    end = r.status("beta")["end_lsn"]
    assert end > before
    r.freeze("alpha")
    r.replctl("beta", "invalidate")
    r.kill("alpha")
    r.up("gamma")
    assert r.status("gamma")["end_lsn"] < end  # only beta's log holds them
    r.promote("gamma")
    assert f"inconsistent, holds LSNs up to {end} that no consistent node has" in r.log("gamma")
    r.wait_synced(["beta", "gamma"])
    sums = r.checksums(["beta", "gamma"])
    assert sums["beta"] == sums["gamma"], sums
    r.down("beta", "gamma")
    for n in ("beta", "gamma"):  # every acknowledged write, alpha's last ones too
        ledger.check_file(r.volume_path(n), n)


def test_a_promotion_makes_room_in_its_full_log_for_what_only_an_invalidated_node_holds(
    resource: Callable[..., LocalResource],
) -> None:
    """As above, with gamma's log (1 MiB) full of records the dead primary never let it clear
    (delta was away when they were written): the 10 records only beta holds do not fit. beta
    cannot be promoted instead (it is inconsistent) and alpha is dead, so refusing left no
    node promotable (the fault campaign, seed 10300 round 9). gamma clears the records it
    has applied from its own log, pulls, and is promoted; delta, which lacked what gamma
    cleared, is resynced from blocks instead of from the log."""
    r = resource(FOUR_NODES)
    smallest_srl(r, "gamma")
    r.up()
    r.promote("alpha")
    ledger = Ledger(r.volume_size)
    vol = r.connect("alpha")
    rng = random.Random(6)

    def write(n: int) -> None:
        write_chunks(vol, ledger, rng, n)

    write(5)
    r.wait_synced()
    r.down("delta")
    write(10)  # beta and gamma log them, and may not clear them: delta lacks them
    r.wait_synced(["alpha", "beta", "gamma"])
    r.down("gamma")
    write(10)  # acknowledged by alpha and beta alone
    r.wait_synced(["alpha", "beta"])
    end = r.status("beta")["end_lsn"]
    vol.close()
    r.freeze("alpha")
    r.replctl("beta", "invalidate")
    r.kill("alpha")
    r.up("gamma", "delta")
    st = r.status("gamma")
    assert st["end_lsn"] < end and st["end_lsn"] - st["start_lsn"] >= 10, st
    assert r.status("delta")["end_lsn"] <= st["start_lsn"] + 1
    out = r.promote("gamma")
    assert f"cleared applied LSNs [{st['start_lsn']}, " in out, out
    log = r.log("gamma")
    assert f"inconsistent, holds LSNs up to {end} that no consistent node has" in log
    assert "to make room" in log, log
    # the promotion event says what the log gave up
    assert f"made-room first_lsn={st['start_lsn']}," in log, log
    r.wait_synced(["beta", "gamma", "delta"])
    sums = r.checksums(["beta", "gamma", "delta"])
    assert len(set(sums.values())) == 1, sums
    assert r.status("gamma")["peers"]["delta"]["blocks_sent_bytes"] > 0  # not from the log
    r.down("beta", "gamma", "delta")
    for n in ("beta", "gamma", "delta"):  # every acknowledged write, the 10 only beta held too
        ledger.check_file(r.volume_path(n), n)
