"""srl_full = "dcm" under hostile schedules, with real daemons: only a laggard that really
holds the log's space is switched to dcm, and a node whose missing records no reachable log
still holds is never promoted over one that has them."""

from __future__ import annotations

import random
import signal
import time

from failover_helpers import crash, promote_cli, stop, wait_consistent

from replengine.demo.localcluster import LocalResource

KiB, MiB = 1024, 1 << 20
REC = 64 * KiB


def dcm_resource(resource) -> LocalResource:
    r = resource(
        {"alpha": "sync", "beta": "sync", "gamma": "async"},
        srl_size=2 * MiB,
        srl_full="dcm",
        on_sync_loss="degrade",
        extra={"dcm_region_size": 256 * KiB},
    )
    r.up()
    r.promote("alpha")
    with r.connect("alpha") as v:
        v.write(0, b"f" * 4096)
    wait_consistent(r, list(r.nodes))
    return r


def burst(r: LocalResource, count: int, depth: int, seed: int) -> None:
    """`count` 64 KiB writes on alpha, `depth` in flight at a time (4 MiB into a 2 MiB log)."""
    rng = random.Random(seed)
    with r.connect("alpha") as v:
        inflight: list[int] = []
        for _ in range(count):
            off = rng.randrange(0, 8 * MiB // REC) * REC
            inflight.append(v.submit(off, rng.randbytes(REC)))
            if len(inflight) >= depth:
                v.wait(inflight.pop(0))
        for req in inflight:
            v.wait(req)


def test_only_the_frozen_laggard_is_switched_to_dcm(resource) -> None:
    """Several writes in flight while the async laggard is frozen: the laggard goes to dcm,
    the healthy sync secondary beta -- only its in-flight window behind -- never does, and
    keeps acknowledging every write."""
    r = dcm_resource(resource)
    stop(r, "gamma")
    burst(r, 64, depth=8, seed=5)
    log = r.log("alpha")
    assert "secondary gamma" in log and "switched to dcm" in log, log[-2000:]
    assert "secondary beta (acked" not in log, "beta, a healthy sync secondary, was switched to dcm"
    st = r.status("alpha")
    assert st["peers"]["beta"]["state"] not in ("dcm", "dcm-resync"), st["peers"]["beta"]
    assert st["peers"]["gamma"]["state"] == "dcm", st["peers"]["gamma"]
    r.signal("gamma", signal.SIGCONT)
    wait_consistent(r, list(r.nodes), timeout=60)


def test_laggard_whose_records_were_released_is_not_promoted(resource) -> None:
    """dcm on the async peer, frozen past the SRL's capacity, primary killed: promoting the
    laggard would discard acknowledged writes, so it is refused, naming beta; beta can be."""
    r = dcm_resource(resource)
    stop(r, "gamma")
    burst(r, 64, depth=1, seed=6)
    crash(r, "alpha")
    r.signal("gamma", signal.SIGCONT)
    r.wait_for(lambda: r.status("gamma")["following"] is None, 10, "gamma to see alpha gone")
    end_before = r.status("gamma")["end_lsn"]
    rc, out, err = promote_cli(r, "gamma")
    assert rc != 0, f"the laggard was promoted: {out}"
    assert "promote beta instead" in err and "lacks LSNs" in err, err
    st = r.status("gamma")
    assert st["role"] == "secondary" and st["end_lsn"] == end_before, st
    rc, out, err = promote_cli(r, "beta")
    assert rc == 0, err
    assert r.status("beta")["role"] == "primary"
    # no log holds what gamma lacks: it gets a full sync from beta on its own, after which
    # both survivors are identical
    r.wait_synced(["beta", "gamma"], timeout=120)
    sums = r.checksums(["beta", "gamma"])
    assert sums["beta"] == sums["gamma"], sums
    assert "resyncing it from blocks" in r.log("beta")


def test_a_node_whose_resync_source_dies_before_the_first_block_ends_consistent(
    resource,
) -> None:
    """alpha starts a full sync of gamma (``replctl sync --full``): gamma answers its
    digests request and becomes inconsistent; alpha dies before sending a block and beta is
    promoted. gamma's log already holds everything beta has, so beta streams it records and
    starts no resync of its own: gamma must fetch its blocks from beta (the copy it was
    promised never came) and end consistent and identical, not stay inconsistent (and
    unpromotable) for ever. Found by the fault campaign, seed 608 round 3."""
    size = 64 * MiB
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "async"}, volume_size=size)
    # identical data everywhere (not holes, which hash at once): gamma's digests take long
    # enough to stop alpha before it has them
    image = random.Random(9).randbytes(size)
    for n in r.nodes:
        r.volume_path(n).write_bytes(image)
    r.up()
    r.promote("alpha")
    with r.connect("alpha") as v:
        v.write(0, b"w" * 4096)
    wait_consistent(r, list(r.nodes))
    mark = len(r.log("gamma"))
    r.replctl("alpha", "sync", "--full", "gamma")
    deadline = time.monotonic() + 30
    while r.status("gamma")["consistent"]:  # polled without a pause: the window is short
        assert time.monotonic() < deadline, "gamma never took alpha's digests request"
    r.signal("alpha", signal.SIGSTOP)  # before gamma's digests arrive: no block is sent
    crash(r, "alpha")
    assert "dcm resync from alpha started" not in r.log("gamma")[mark:], "a block came first"
    rc, out, err = promote_cli(r, "beta")
    assert rc == 0, err
    with r.connect("beta") as v:
        v.write(4096, b"x" * 4096)
    wait_consistent(r, ["beta", "gamma"], timeout=60)
    sums = r.checksums(["beta", "gamma"])
    assert sums["beta"] == sums["gamma"], sums
