"""`replctl sync --full NODE`: a secondary's volume rebuilt from the primary's, block by
block, while writes go on (drbdadm invalidate-remote) — for a disk replaced or damaged behind
the log's back, which no log can repair."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from replengine.demo.localcluster import LocalResource
from tests.conftest import THREE_NODES, Ledger, Writer


def damage(path: os.PathLike[str], rng: random.Random, size: int) -> None:
    """Garbage over a few 64 KiB stretches of a stopped node's volume file."""
    with open(path, "r+b") as f:
        for _ in range(8):
            f.seek(rng.randrange(0, size - 65536, 4096))
            f.write(rng.randbytes(65536))
        f.flush()
        os.fsync(f.fileno())


def wait_cleared(r: LocalResource, node: str) -> None:
    """Until ``node``'s log holds no record: damage made to its volume behind its back is then
    still there after a restart, which replays the records its log holds over the volume."""

    def cleared() -> bool:
        st = r.status(node)
        return st["start_lsn"] == st["end_lsn"]

    r.wait_for(cleared, 30, f"{node}'s log cleared")


def test_sync_full_rebuilds_a_damaged_secondary_while_writes_go_on(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    ledger = Ledger(r.volume_size)
    w = Writer(r, "alpha", ledger, seed=3, limit=300)
    w.run()  # in this thread: 300 writes
    r.wait_synced()
    r.down("beta")
    damage(r.volume_path("beta"), random.Random(5), r.volume_size)
    r.up("beta")
    r.wait_synced()
    sums = r.checksums()
    assert sums["beta"] != sums["alpha"]  # the log knows nothing of it: only a full sync helps

    w2 = Writer(r, "alpha", ledger, seed=4)
    writers.append(w2)
    w2.start()
    r.wait_for(lambda: len(ledger) > 350, 60, "writes before the sync")
    out = r.replctl("alpha", "sync", "--full", "beta", "--wait", "--timeout", "120")
    assert f"{r.volume_size} bytes owed, copying now" in out.stdout, out.stdout
    assert "beta is up to date" in out.stdout
    r.wait_for(lambda: len(ledger) > 500, 60, "writes after the sync")
    w2.stop()
    assert not w.errors and not w2.errors, (w.errors, w2.errors)
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    st = r.status("beta")
    assert st["consistent"] and st["following"] == "alpha"
    r.down()
    for n in r.nodes:  # every completed write, on every node, as last written
        ledger.check_file(r.volume_path(n), n)
    assert "FULL SYNC of beta asked for" in r.log("alpha")


def test_sync_full_of_a_node_that_is_away_happens_when_it_returns(
    resource: Callable[..., LocalResource],
) -> None:
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    for i in range(64):
        vol.write(i * 65536, bytes([i]) * 65536)
    r.wait_synced()
    r.down("gamma")
    damage(r.volume_path("gamma"), random.Random(9), r.volume_size)
    out = r.replctl("alpha", "sync", "--full", "gamma")
    assert "copied when gamma connects" in out.stdout, out.stdout
    vol.write(0, b"z" * 4096)
    vol.close()
    r.up("gamma")
    r.wait_for(
        lambda: (
            r.status("alpha")["peers"]["gamma"]["state"] == "up-to-date"
            and not (r.status("alpha")["dcm"] or {}).get("peers", {}).get("gamma")
        ),
        120,
        "gamma to be rebuilt",
    )
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums


def test_sync_full_refusals_change_nothing(resource: Callable[..., LocalResource]) -> None:
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    cases = [
        ("alpha", ["sync", "--full", "alpha"], "alpha is the primary: its volume is the source"),
        ("alpha", ["sync", "--full", "omega"], "unknown node (nodes of r0: alpha, beta, gamma)"),
        ("beta", ["sync", "--full", "gamma"], "beta is not the primary of r0: run it there"),
        ("alpha", ["sync", "beta"], "say --full"),
    ]
    for node, args, want in cases:
        proc = r.replctl(node, *args, check=False)
        assert proc.returncode != 0, (args, proc.stdout)
        assert want in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    st = r.status("alpha")
    assert st["dcm"]["peers"] == {}
    assert all(p["state"] == "up-to-date" for p in st["peers"].values()), st["peers"]


def test_sync_full_sends_only_the_chunks_that_differ(
    resource: Callable[..., LocalResource],
) -> None:
    """The secondary's chunk digests come first: with 2 of 64 chunks damaged, 2 are sent and
    the other 62 cost a checksum each."""
    mib = 1 << 20
    r = resource(THREE_NODES, volume_size=64 * mib)
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    rng = random.Random(11)
    for i in range(64):  # a volume full of data, not holes
        vol.write(i * mib, rng.randbytes(mib))
    vol.close()
    r.wait_synced()
    wait_cleared(r, "beta")
    r.down("beta")
    with open(r.volume_path("beta"), "r+b") as f:
        for chunk in (5, 40):
            f.seek(chunk * mib + 12288)
            f.write(b"\xff" * 4096)
    r.up("beta")
    r.wait_synced()
    out = r.replctl("alpha", "sync", "--full", "beta", "--wait", "--timeout", "120")
    assert "beta is up to date" in out.stdout, out.stdout
    last = r.status("alpha")["dcm"]["last_resync"]
    assert last["peer"] == "beta"
    assert last["bytes"] == 2 * mib, last  # the two damaged chunks, nothing else
    assert last["skipped_bytes"] == 62 * mib, last
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums


def test_resync_progress_counts_skipped_chunks_as_done() -> None:
    """status' peers[N].resync: done = sent + already there, rate and ETA from them."""
    import time
    from types import SimpleNamespace

    from replengine.node.dcm import Resync
    from replengine.node.status import resync_progress

    job = Resync("beta", 10, dirty_bytes=100 << 20, started=time.monotonic() - 10.0)
    job.copying, job.sent, job.skipped = True, 20 << 20, 30 << 20
    node = SimpleNamespace(primary=object(), dcm=SimpleNamespace(resyncs={"beta": job}))
    rs = resync_progress(node, "beta")  # type: ignore[arg-type]
    assert rs is not None
    assert rs["phase"] == "copying" and rs["bytes_done"] == 50 << 20
    assert rs["bytes_total"] == 100 << 20 and rs["bytes_skipped"] == 30 << 20
    assert 4.5 * 2**20 < rs["rate_bytes_per_s"] <= 5 * 2**20  # 50 MiB in 10 s
    assert 9.5 <= rs["eta_s"] <= 10.5
    assert resync_progress(node, "gamma") is None  # type: ignore[arg-type]


def test_smaller_chunks_send_only_the_scattered_blocks_that_differ(
    resource: Callable[..., LocalResource],
) -> None:
    """`resync_chunk_size`: with the default 1 MiB chunks, 4 KiB damaged in each of 6
    places costs 6 MiB; adjusted to 16 KiB on the primary, the same damage costs 96 KiB."""
    mib, kib = 1 << 20, 1 << 10
    r = resource(THREE_NODES, volume_size=64 * mib)
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    rng = random.Random(12)
    for i in range(64):
        vol.write(i * mib, rng.randbytes(mib))
    vol.close()
    r.wait_synced()

    def damage_and_sync() -> dict:
        wait_cleared(r, "beta")
        r.down("beta")
        with open(r.volume_path("beta"), "r+b") as f:
            for chunk in (1, 9, 17, 33, 50, 63):
                f.seek(chunk * mib + 20 * kib)
                f.write(rng.randbytes(4 * kib))
        r.up("beta")
        r.wait_synced()
        out = r.replctl("alpha", "sync", "--full", "beta", "--wait", "--timeout", "120")
        assert "beta is up to date" in out.stdout, out.stdout
        r.wait_synced()
        sums = r.checksums()
        assert len(set(sums.values())) == 1, sums
        return r.status("alpha")["dcm"]["last_resync"]

    last = damage_and_sync()
    assert (last["bytes"], last["skipped_bytes"]) == (6 * mib, 58 * mib), last

    r.extra["resync_chunk_size"] = 16 * kib
    r.write_config()
    r.adjust("alpha")
    last = damage_and_sync()
    assert (last["bytes"], last["skipped_bytes"]) == (96 * kib, 64 * mib - 96 * kib), last
