"""Full sync without being asked: a new resource over a volume that already holds data, a
node whose disks were replaced, a node whose SRL was re-initialised -- and a full sync that
is cut short by kill -9 resumes instead of starting again."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from replengine.demo.localcluster import LocalResource
from tests.conftest import THREE_NODES, Ledger, Writer

MiB = 1 << 20


def fill(path: os.PathLike[str], data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sent(r: LocalResource, node: str) -> int:
    """Bytes of blocks the primary alpha copied to ``node``, every copy counted: less the
    application's writes sent again once a copy had sent them (the log folded into the copy,
    node.resync_fold), which the replication stream would have carried anyway."""
    peer = r.status("alpha")["peers"][node]
    return peer["blocks_sent_bytes"] - peer["blocks_resent_bytes"]


def resent(r: LocalResource, node: str) -> int:
    return r.status("alpha")["peers"][node]["blocks_resent_bytes"]


def reinit(r: LocalResource, node: str, volume: bytes | None = None) -> None:
    """New disks for a stopped node: a blank SRL (and a blank volume unless given one)."""
    with open(r.srl_path(node), "wb") as f:
        f.truncate(r.srl_size)
    if volume is None:
        with open(r.volume_path(node), "wb") as f:
            f.truncate(r.volume_size)
    else:
        fill(r.volume_path(node), volume)
    r.replctl(node, "init", "--force")


def wait_in_sync(r: LocalResource, ledger: Ledger, writer: Writer, writes: int) -> None:
    """Let the writer go on until every secondary is consistent and up to date with writes
    made after that, then stop it and wait for the same end everywhere."""
    r.wait_for(
        lambda: all(r.status(n)["consistent"] for n in r.nodes),
        120,
        "every node consistent (full syncs ended)",
    )
    goal = len(ledger) + writes
    r.wait_for(lambda: len(ledger) >= goal, 60, "writes after the full syncs")
    writer.stop()
    assert not writer.errors, writer.errors
    r.wait_synced(timeout=60)


def test_a_new_resource_over_data_copies_the_first_primarys_volume(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    """alpha's volume already holds 64 MiB of data, beta's and gamma's are blank: the first
    promotion makes alpha's volume the source; writes go on meanwhile; at the end every
    volume is alpha's data plus every completed write, and each secondary got the volume
    once (not twice, not nothing)."""
    r = resource(THREE_NODES, volume_size=64 * MiB)
    base = random.Random(1).randbytes(r.volume_size)
    fill(r.volume_path("alpha"), base)
    r.up()
    r.promote("alpha")
    ledger = Ledger(r.volume_size, base=base)
    w = Writer(r, "alpha", ledger, seed=2)
    writers.append(w)
    w.start()
    wait_in_sync(r, ledger, w, 100)
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    for n in ("beta", "gamma"):
        # dense random data against a blank volume: every chunk differs, each sent once
        # (plus chunks the writes changed while they were being sent)
        assert r.volume_size <= sent(r, n) <= 1.1 * r.volume_size, (n, sent(r, n))
        # and what the application wrote over chunks already sent, at most once more
        assert resent(r, n) <= sum(len(d) for _, _, d in ledger.sorted_entries()), n
    assert "has no history in common with this primary" in r.log("alpha")
    r.down()
    for n in r.nodes:
        ledger.check_file(r.volume_path(n), n)


def test_blank_volumes_cost_a_checksum_pass_not_a_copy(
    resource: Callable[..., LocalResource],
) -> None:
    """The same first promotion over blank volumes: nothing differs, nothing is sent."""
    r = resource(THREE_NODES, volume_size=64 * MiB)
    r.up()
    r.promote("alpha")
    r.wait_synced()
    assert sent(r, "beta") == 0 and sent(r, "gamma") == 0
    st = r.status("alpha")
    assert all(p["state"] == "up-to-date" for p in st["peers"].values()), st["peers"]


def test_a_node_with_new_blank_disks_is_synced_back_while_writes_go_on(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    r = resource(THREE_NODES, volume_size=32 * MiB)
    r.up()
    r.promote("alpha")
    ledger = Ledger(r.volume_size)
    w = Writer(r, "alpha", ledger, seed=3, limit=400)
    w.run()  # 400 writes of up to 256 KiB: most chunks hold data
    r.wait_synced()
    r.down("beta")
    reinit(r, "beta")  # a replaced server: new volume, new SRL
    w2 = Writer(r, "alpha", ledger, seed=4)
    writers.append(w2)
    w2.start()
    r.up("beta")
    wait_in_sync(r, ledger, w2, 100)
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    st = r.status("beta")
    assert st["consistent"] and st["following"] == "alpha" and st["history"], st
    r.down()
    for n in r.nodes:
        ledger.check_file(r.volume_path(n), n)


def test_a_reinitialised_srl_over_a_volume_one_percent_off_ships_one_percent(
    resource: Callable[..., LocalResource],
) -> None:
    """beta's SRL is replaced (its volume kept, one 1 MiB chunk in 100 damaged): nothing says
    the volume matches, so it gets a full sync -- of that one chunk."""
    r = resource(THREE_NODES, volume_size=100 * MiB)
    r.up()
    r.promote("alpha")
    with r.connect("alpha") as v:
        rng = random.Random(5)
        for i in range(100):
            v.write(i * MiB, rng.randbytes(MiB))
    r.wait_synced()
    r.down("beta")
    with open(r.volume_path("beta"), "rb") as f:
        kept = bytearray(f.read())
    kept[37 * MiB + 8192 : 37 * MiB + 12288] = b"\xee" * 4096
    before = sent(r, "beta")
    reinit(r, "beta", bytes(kept))
    r.up("beta")
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    assert sent(r, "beta") - before == MiB, sent(r, "beta") - before  # 1 % of the volume


def half_synced(r: LocalResource, node: str) -> bool:
    """Whether the primary alpha's full sync of ``node`` is at least half done."""
    rs = r.status("alpha")["peers"][node]["resync"]
    return rs is not None and rs["bytes_done"] >= r.volume_size // 2


def half_way_through_a_full_sync(
    resource: Callable[..., LocalResource], seed: int
) -> LocalResource:
    """alpha's 64 MiB of random data being synced to blank beta and gamma (capped at
    16 MiB/s so that it can be caught), returned once beta's sync is half done."""
    r = resource(THREE_NODES, volume_size=64 * MiB, extra={"resync_rate": 16})
    fill(r.volume_path("alpha"), random.Random(seed).randbytes(r.volume_size))
    r.up()
    r.promote("alpha")
    r.wait_for(lambda: half_synced(r, "beta"), 60, "beta's full sync half way")
    return r


def test_a_full_sync_cut_by_kill_9_of_the_target_resumes(
    resource: Callable[..., LocalResource],
) -> None:
    """A 64 MiB full sync (capped at 16 MiB/s so it can be caught half way) loses its target
    to kill -9 at about 50 %: restarted, it offers the digests of what it already holds and
    the primary sends the rest -- in all at most 1.1x the bytes that differed."""
    r = half_way_through_a_full_sync(resource, seed=7)
    r.kill("beta")
    cut_at = sent(r, "beta")
    assert cut_at < 0.8 * r.volume_size, cut_at
    r.up("beta")
    r.wait_synced(timeout=120)
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    total = sent(r, "beta")
    print(f"64 MiB full sync, target killed at {cut_at} bytes sent: {total} bytes sent in all")
    assert r.volume_size <= total <= 1.1 * r.volume_size, (cut_at, total)
    assert "with the digests of our" in r.log("beta")


def test_a_full_sync_cut_by_kill_9_of_the_source_resumes(
    resource: Callable[..., LocalResource],
) -> None:
    """The primary alpha dies (kill -9) half way through beta's full sync; restarted and
    promoted again, it sends beta only what beta still lacks, not the volume again."""
    r = half_way_through_a_full_sync(resource, seed=8)
    r.kill("alpha")
    assert not r.status("beta")["consistent"]  # half a volume: not promotable
    r.up("alpha")
    r.promote("alpha")
    r.wait_synced(timeout=120)
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    again = sent(r, "beta")  # since alpha restarted
    print(f"64 MiB full sync, source killed half way: {again} bytes sent after its restart")
    assert again <= 0.6 * r.volume_size, again


def test_a_full_sync_whose_source_dies_resumes_from_the_new_primary(
    resource: Callable[..., LocalResource],
) -> None:
    """gamma, a new node, is half way through its full sync from alpha when alpha dies
    (kill -9). gamma holds half a volume: it must not be promotable; beta, consistent, is
    promoted and takes writes. gamma must end identical to beta, and beta sends it only what
    it still lacks (its digests say which half it holds), not the volume again."""
    r = resource(THREE_NODES, volume_size=64 * MiB, extra={"resync_rate": 16})
    fill(r.volume_path("alpha"), random.Random(11).randbytes(r.volume_size))
    r.up("alpha", "beta")
    r.promote("alpha")
    r.wait_for(lambda: r.status("beta")["consistent"], 60, "beta's first full sync")
    r.up("gamma")
    r.wait_for(lambda: half_synced(r, "gamma"), 60, "gamma's full sync half way")
    r.kill("alpha")
    assert not r.status("gamma")["consistent"]
    refused = r.replctl("gamma", "promote", check=False, timeout=120)
    assert refused.returncode != 0, refused.stdout
    assert r.status("gamma")["role"] == "secondary"
    r.promote("beta")
    with r.connect("beta") as v:
        v.write(0, b"n" * 4096)  # a write of the new epoch, into the half gamma has
        v.write(r.volume_size - 4096, b"m" * 4096)  # and into the half it lacks
    r.wait_synced(["beta", "gamma"], timeout=120)
    assert r.status("gamma")["consistent"]
    sums = r.checksums(["beta", "gamma"])
    assert sums["beta"] == sums["gamma"], sums
    again = r.status("beta")["peers"]["gamma"]["blocks_sent_bytes"]
    print(f"64 MiB full sync, source killed half way, new primary sent {again} bytes")
    assert again <= 0.6 * r.volume_size, again


def test_a_new_node_that_heard_of_an_epoch_the_promoted_node_missed_does_not_vouch_for_it(
    resource: Callable[..., LocalResource],
) -> None:
    """Fault campaign, seed 11704: beta was away while delta was promoted and took writes;
    gamma, on new disks and half way through its full sync from delta (its log still
    empty), had heard of delta's epoch. Both delta and alpha are gone when beta comes back:
    gamma is the only peer beta reaches, and its empty log once met promote_min_peers, so
    beta was promoted from its own end and delta's acknowledged writes were discarded.
    Now beta refuses, naming gamma; once delta is back it is promoted and every
    acknowledged write is there."""
    nodes = {"alpha": "sync", "beta": "sync", "gamma": "sync", "delta": "sync"}
    r = resource(nodes, volume_size=64 * MiB, extra={"resync_rate": 4, "promote_min_peers": 1})
    r.up()
    r.promote("alpha")
    ledger = Ledger(r.volume_size)
    rng = random.Random(17)

    def write(node: str, n: int) -> None:
        with r.connect(node) as vol:
            for _ in range(n):
                off = rng.randrange(0, r.volume_size // 4096) * 4096
                data = rng.randbytes(4096)
                ledger.add(vol.write(off, data), off, data)

    write("alpha", 20)
    r.wait_synced()
    r.down("beta")  # away from here on: it never hears of delta's epoch from delta
    r.kill("alpha")
    r.promote("delta")
    write("delta", 30)  # acknowledged with gamma; beta lacks them
    r.down("gamma")
    reinit(r, "gamma")  # new disks
    r.up("gamma")
    r.wait_for(
        lambda: (r.status("delta")["peers"]["gamma"].get("resync") or {}).get("bytes_done", 0) > 0,
        60,
        "gamma's full sync from delta under way",
    )
    assert not r.status("gamma")["consistent"]
    r.kill("delta")
    r.up("beta")
    refused = r.replctl("beta", "promote", check=False, timeout=120)
    assert refused.returncode != 0, refused.stdout
    assert "gamma reachable but with an empty log" in refused.stderr, refused.stderr
    assert r.status("beta")["role"] == "secondary"
    r.up("delta")
    r.promote("delta")
    r.wait_synced(["beta", "delta"], timeout=120)
    r.down("beta", "delta")
    for n in ("beta", "delta"):
        ledger.check_file(r.volume_path(n), n)
