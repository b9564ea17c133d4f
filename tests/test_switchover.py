"""A planned switchover over a congested link: `demote`, then `promote` elsewhere at once.

Found by the fault campaign (seed 12602, `switchover` with a `delay` on the demoted node's
link): the promotion took the first HELLO it heard from the old primary after it began as
its answer, and that HELLO had left before the demote, queued behind the link's backlog. It
still named the old primary primary, and the promotion refused: "alpha is primary and
reachable: demote it first", just after `demote` of alpha had answered. The probe now waits
for the peer's answer (flagged ANSWERED), sent once it had the probe.

Real daemons, each in its own network namespace; alpha's link a token bucket (1 Mbit/s, a
queue of up to 1.5 s) kept full by its stream to the async node.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from replengine.wire.control import ControlClient
from tests.faults.netns import NetnsResource, Network

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("ip") and shutil.which("tc") and shutil.which("nsenter")),
        reason="needs ip, tc and nsenter (network namespaces, as root)",
    ),
]

KIB = 1024


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[NetnsResource]:
    net = Network(["alpha", "beta", "gamma"])
    net.up()
    r = NetnsResource(
        tmp_path / "res",
        nodes={"alpha": "sync", "beta": "sync", "gamma": "async"},
        net=net,
        heartbeat_ms=1000,
        volume_size=16 << 20,
        srl_size=32 << 20,
    )
    try:
        r.create()
        r.up()
        r.promote("alpha")
        yield r
    finally:
        r.stop_all()
        net.down()


def call(r: NetnsResource, node: str, op: str) -> dict:
    """`replctl <op>` without the CLI's start-up: the answer, or {"error": ...}."""
    ctl = ControlClient(r.paths(node).socket, 60)
    try:
        doc, _ = ctl.wait(ctl.send(op), 60)
    finally:
        ctl.close()
    return doc if doc.get("ok") else {"error": doc.get("error", "refused")}


def test_a_promotion_just_after_a_demote_is_not_refused_by_a_hello_from_before_it(trio) -> None:
    r = trio
    net = r.net
    assert net is not None
    written: dict[int, bytes] = {}
    with r.connect("alpha") as v:
        for i in range(8):
            data = bytes([i + 1]) * (64 * KIB)
            v.write(i * 64 * KIB, data)
            written[i] = data
    r.wait_synced(["alpha", "beta", "gamma"])
    net.slow("alpha", 1500, 0, 1)
    # what alpha writes now reaches beta slowly and gamma, async, more slowly still: the
    # stream to gamma keeps alpha's outgoing queue full, so every HELLO alpha sends waits
    # in it behind up to 1.5 s of records
    with r.connect("alpha") as v:
        for i in range(8, 14):
            data = bytes([i + 1]) * (64 * KIB)
            v.write(i * 64 * KIB, data)
            written[i] = data
    demoted = call(r, "alpha", "demote")
    assert "error" not in demoted, demoted
    out = call(r, "beta", "promote")
    assert "error" not in out, f"promote beta just after demote of alpha: {out['error']}"
    assert out["role"] == "primary"
    net.unslow("alpha")
    r.wait_for(
        lambda: all(r.status(n)["following"] == "beta" for n in ("alpha", "gamma")),
        60,
        "alpha and gamma following beta",
    )
    r.wait_synced(["alpha", "beta", "gamma"])
    # every write alpha acknowledged is on every node
    for n in ("alpha", "beta", "gamma"):
        with open(r.volume_path(n), "rb") as f:
            for i, data in written.items():
                f.seek(i * 64 * KIB)
                assert f.read(len(data)) == data, f"{n}: write {i} missing"
