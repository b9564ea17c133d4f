"""Rejoining after hostile schedules, with real daemons: nodes that were promoted and lost,
old primaries with divergent tails whose rewind is interrupted, laggards that the log cannot
save. Each test states a schedule that once left a node locked out or silently divergent."""

from __future__ import annotations

import random

from failover_helpers import (
    crash,
    describe_logs,
    diff_summary,
    promote_cli,
    random_write,
    volume_bytes,
    wait_consistent,
    wait_role,
)

from replengine.demo.localcluster import LocalResource

VOL = 16 << 20


def assert_identical(r: LocalResource, nodes: list[str]) -> None:
    images = {n: volume_bytes(r, n) for n in nodes}
    first = images[nodes[0]]
    bad = [n for n in nodes if images[n] != first]
    assert not bad, f"volumes of {bad} differ from {nodes[0]}'s\n{describe_logs(r, nodes)}"


def test_node_promoted_and_lost_before_writing_rejoins(resource) -> None:
    """All secondaries killed, 4 writes on alpha, alpha killed; beta promoted (epoch 2, no
    write) then killed; alpha up, gamma promoted (pulls the 4 records from alpha); beta up.
    Beta's empty epoch 2 must not make it refuse the older-epoch records for ever: it
    catches up, and later writes reach it as a sync peer."""
    rng = random.Random(7)
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "sync"})
    r.up()
    r.promote("alpha")
    with r.connect("alpha") as v:
        off, data = random_write(rng, VOL)
        v.write(off, data)  # every node's history now names epoch 1
    wait_consistent(r, list(r.nodes))
    crash(r, "beta")
    crash(r, "gamma")
    with r.connect("alpha") as v:
        for _ in range(4):
            off, data = random_write(rng, VOL)
            v.write(off, data)
    crash(r, "alpha")
    r.up("beta")
    rc, out, err = promote_cli(r, "beta", "--force")
    assert rc == 0, err
    crash(r, "beta")
    r.up("alpha", "gamma")
    rc, out, err = promote_cli(r, "gamma")
    assert rc == 0, err
    r.up("beta")
    wait_role(r, "beta", "secondary", following="gamma")
    with r.connect("gamma") as v:
        for _ in range(4):
            off, data = random_write(rng, VOL)
            v.write(off, data)
    end = wait_consistent(r, list(r.nodes), timeout=30)
    assert end == 10, describe_logs(r)
    assert_identical(r, list(r.nodes))
    assert r.status("beta")["history"][-1][0] == r.status("gamma")["epoch"]


def test_two_promotions_at_once_end_with_one_primary_and_one_history(resource) -> None:
    """The primary dies and two operators promote beta and gamma at the same moment: both
    may pass their probe, but they raise different epochs, so the lower steps down, rewinds
    what it wrote alone, and every node ends on one history with identical volumes."""
    import concurrent.futures as cf

    rng = random.Random(11)
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "sync"})
    r.up()
    r.promote("alpha")
    with r.connect("alpha") as v:
        for _ in range(5):
            off, data = random_write(rng, VOL)
            v.write(off, data)
    wait_consistent(r, list(r.nodes))
    crash(r, "alpha")
    with cf.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: promote_cli(r, n, "--force"), ["beta", "gamma"]))
    assert any(rc == 0 for rc, _, _ in results), results

    r.up("alpha")
    # if both promoted, gamma's epoch 3 beats beta's 2 and beta steps down; if one was
    # refused (the other was already primary when it probed) that one stays primary
    winner = (
        "gamma"
        if all(rc == 0 for rc, _, _ in results)
        else "beta"
        if results[0][0] == 0
        else "gamma"
    )
    wait_role(r, winner, "primary", timeout=30)
    for n in r.nodes:
        if n != winner:
            wait_role(r, n, "secondary", following=winner, timeout=30)
    with r.connect(winner) as v:
        off, data = random_write(rng, VOL)
        v.write(off, data)
    wait_consistent(r, list(r.nodes), timeout=60)
    histories = {n: tuple(map(tuple, r.status(n)["history"])) for n in r.nodes}
    assert len(set(histories.values())) == 1, histories
    assert_identical(r, list(r.nodes))


def test_newer_epoch_held_only_by_unreachable_nodes_blocks_promotion_until_they_return(
    resource,
) -> None:
    """The fault campaign's seed 707 (docs/reliability.md), with processes instead of a
    network: gamma (primary) and delta go away; alpha is promoted with beta and acknowledges
    writes beta holds. gamma and delta come back while alpha is stopped, so they hear of
    the new epoch from beta without receiving its records; then beta and alpha are lost.
    Promoting gamma with delta as its only peer would discard alpha's acknowledged writes:
    it is refused, naming beta, and once beta is back the promotion pulls them instead."""
    rng = random.Random(707)
    r = resource()  # alpha, beta, gamma sync, delta async; on_sync_loss = degrade
    r.up()
    r.promote("gamma")
    model = bytearray(VOL)  # the volume every acknowledged write leaves

    def write(node: str, n: int) -> None:
        with r.connect(node) as v:
            for _ in range(n):
                off, data = random_write(rng, VOL)
                v.write(off, data)
                model[off : off + len(data)] = data

    write("gamma", 5)
    wait_consistent(r, list(r.nodes))
    crash(r, "gamma")
    crash(r, "delta")
    rc, out, err = promote_cli(r, "alpha", "--min-peers", "1")
    assert rc == 0, err
    epoch = r.status("alpha")["epoch"]
    write("alpha", 10)  # beta, a sync secondary, acknowledged every one of them
    beta_end = r.status("alpha")["end_lsn"]
    r.wait_for(lambda: r.status("beta")["end_lsn"] == beta_end, 30, "beta holding alpha's writes")

    r.freeze("alpha")
    r.up("gamma", "delta")
    r.wait_for(
        lambda: r.status("gamma")["known_epoch"] == epoch, 30, "gamma hearing of alpha's epoch"
    )
    crash(r, "beta")
    crash(r, "alpha")
    rc, out, err = promote_cli(r, "gamma", "--min-peers", "1")
    assert rc != 0, f"gamma was promoted over alpha's epoch {epoch}: {out}"
    assert "beta (secondary" in err and f"up to epoch {epoch}" in err, err
    assert "--force" in err, err
    assert r.status("gamma")["role"] == "secondary"

    r.up("alpha", "beta")
    rc, out, err = promote_cli(r, "gamma")
    assert rc == 0, err
    write("gamma", 3)
    wait_consistent(r, list(r.nodes), timeout=60)
    assert_identical(r, list(r.nodes))
    image = volume_bytes(r, "gamma")
    assert image == model, f"{diff_summary(image, bytes(model))}\n{describe_logs(r)}"
