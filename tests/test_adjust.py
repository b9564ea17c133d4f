"""`replctl adjust`: membership and mode changes on a running resource, one node at a time,
with writes going on and no completed write lost (the ledger is checked on every node)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from replengine.demo.localcluster import LocalResource
from tests.conftest import Ledger, Writer

MiB = 1 << 20


def no_refusals(r: LocalResource, node: str) -> None:
    st = r.status(node)
    refused = {n: p["rejected"] for n, p in st["peers"].items() if p["rejected"]}
    assert not refused, f"{node} refuses peers during the rollout: {refused}"


def finish(r: LocalResource, ledger: Ledger, w: Writer, nodes: list[str]) -> None:
    goal = len(ledger) + 100
    r.wait_for(lambda: len(ledger) >= goal, 60, "writes after the change")
    w.stop()
    assert not w.errors, w.errors
    r.wait_synced(nodes, timeout=120)
    sums = r.checksums(nodes)
    assert len(set(sums.values())) == 1, sums
    r.down(*nodes)
    for n in nodes:
        ledger.check_file(r.volume_path(n), n)


def test_add_a_node_to_a_running_resource_under_writes(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    """delta joins alpha/beta/gamma: the config gains its table on every node, `adjust` runs
    on each running node in turn (replication between old-file and new-file nodes goes on),
    then delta starts, gets a full sync by itself, and ends identical."""
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "async"}, volume_size=32 * MiB)
    r.up()
    r.promote("alpha")
    ledger = Ledger(r.volume_size)
    w = Writer(r, "alpha", ledger, seed=11)
    writers.append(w)
    w.start()
    r.wait_for(lambda: len(ledger) > 50, 60, "writes before the change")
    r.add_node("delta", "async")
    for n in ("beta", "alpha", "gamma"):  # the primary in the middle of the rollout
        out = r.adjust(n)
        assert "added delta" in out, out
        for m in ("alpha", "beta", "gamma"):
            no_refusals(r, m)
    r.up("delta")
    r.wait_for(
        lambda: r.status("delta")["consistent"] and r.status("delta")["following"] == "alpha",
        120,
        "delta fully synced and following alpha",
    )
    assert "ADJUSTED r0: added delta" in r.log("alpha")
    finish(r, ledger, w, ["alpha", "beta", "gamma", "delta"])


def test_remove_a_node_and_switch_a_node_between_sync_and_async(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "sync"}, volume_size=32 * MiB)
    r.up()
    r.promote("alpha")
    ledger = Ledger(r.volume_size)
    w = Writer(r, "alpha", ledger, seed=12, hi=16 * 1024)  # a frozen peer fills no SRL
    writers.append(w)
    w.start()
    r.wait_for(lambda: len(ledger) > 50, 60, "writes before the change")

    # gamma leaves: out of the file on the nodes that stay, adjust them, then stop gamma
    # (which still has the old file)
    old_file = r.workdir / "r0-old.toml"
    old_file.write_text(r.config.read_text())
    del r.nodes["gamma"]
    r.write_config()
    for n in ("alpha", "beta"):
        assert "removed gamma" in r.adjust(n)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "replengine.cli",
            "down",
            "--config",
            str(old_file),
            "--node",
            "gamma",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    st = r.status("alpha")
    assert "gamma" not in st["peers"], st["peers"]

    # beta sync -> async: a frozen beta no longer holds writes up
    r.nodes["beta"] = "async"
    r.write_config()
    assert "beta sync -> async" in r.adjust("alpha")
    r.adjust("beta")
    assert r.status("alpha")["peers"]["beta"]["mode"] == "async"
    r.signal("beta", signal.SIGSTOP)
    try:
        goal = len(ledger) + 30
        r.wait_for(lambda: len(ledger) >= goal, 30, "writes with the async beta frozen")
    finally:
        r.signal("beta", signal.SIGCONT)

    # and back to sync: once caught up, writes wait for it again
    r.nodes["beta"] = "sync"
    r.write_config()
    assert "beta async -> sync" in r.adjust("alpha")
    r.adjust("beta")
    r.wait_for(
        lambda: (p := r.status("alpha")["peers"]["beta"])["mode"] == "sync" and not p["degraded"],
        60,
        "beta synchronous again",
    )
    finish(r, ledger, w, ["alpha", "beta"])


@pytest.mark.parametrize(
    "change, why",
    [
        ("volume", "this node's volume changed"),
        ("uuid", "the resource uuid changed"),
    ],
)
def test_adjust_refuses_what_a_live_daemon_cannot_change(
    resource: Callable[..., LocalResource], change: str, why: str
) -> None:
    r = resource({"alpha": "sync", "beta": "sync"})
    r.up()
    r.promote("alpha")
    before = r.status("alpha")
    text = r.config.read_text()
    if change == "volume":
        other = r.workdir / "alpha" / "other.img"
        other.write_bytes(b"\0" * r.volume_size)
        text = text.replace(str(r.volume_path("alpha")), str(other))
    else:
        text = text.replace(r.uuid, "6f1c2a9e-3d4b-4c5d-8e6f-7a8b9c0d1e2f")
    r.config.write_text(text)
    proc = r.replctl("alpha", "adjust", check=False)
    assert proc.returncode != 0
    assert "nothing changed" in proc.stderr and why in proc.stderr, proc.stderr
    after = r.status("alpha")
    assert after["peers"].keys() == before["peers"].keys() and after["role"] == "primary"
