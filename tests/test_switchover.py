"""A planned switchover over a congested link: `demote`, then `promote` elsewhere at once.

Found by the fault campaign (seed 12602, `switchover` with a `delay` on the demoted node's
link): the promotion took the first HELLO it heard from the old primary after it began as
its answer, and that HELLO had left before the demote, queued behind the link's backlog. It
still named the old primary primary, and the promotion refused: "alpha is primary and
reachable: demote it first", just after `demote` of alpha had answered. The probe now waits
for the peer's answer (flagged ANSWERED), sent once it had the probe.

The first test: real daemons, each in its own network namespace; alpha's link a token
bucket (1 Mbit/s, a queue of up to 1.5 s) kept full by its stream to the async node. The
others: a real daemon answering a probe played by the test over raw sockets.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from replengine import config as configmod
from replengine.demo.localcluster import LocalResource
from replengine.wire import protocol as proto
from tests.conftest import KiB, Ledger, control_op, smallest_srl, write_chunks
from tests.faults.netns import NetnsResource, Network, running_trio
from tests.wire_peer import Listener, Peer

pytestmark = pytest.mark.slow

netns = pytest.mark.skipif(
    not (shutil.which("ip") and shutil.which("tc") and shutil.which("nsenter")),
    reason="needs ip, tc and nsenter (network namespaces, as root)",
)


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[NetnsResource]:
    with running_trio(
        tmp_path / "res", heartbeat_ms=1000, volume_size=16 << 20, srl_size=32 << 20
    ) as r:
        yield r


@contextmanager
def gamma_cut_off(tmp_path: Path) -> Iterator[tuple[NetnsResource, Network, Ledger]]:
    """alpha, beta sync and gamma async in their namespaces at 300 ms heartbeats, the first
    full sync to gamma done, then gamma's link cut; a Ledger for the 16 MiB volume."""
    with running_trio(
        tmp_path / "res", heartbeat_ms=300, volume_size=16 << 20, srl_size=32 << 20
    ) as r:
        assert r.net is not None
        r.wait_synced(["alpha", "beta", "gamma"])
        r.net.cut("gamma")
        yield r, r.net, Ledger(16 << 20)


@netns
def test_a_promotion_just_after_a_demote_is_not_refused_by_a_hello_from_before_it(trio) -> None:
    switchover_over_a_congested_link(trio)


@netns
def test_an_answer_queued_longer_than_the_liveness_window_is_waited_for(
    tmp_path: Path,
) -> None:
    """gamma, cut off for a moment while alpha wrote 3 MiB, gets it all back at once when
    the link returns: alpha's connection to it had not timed out, and what alpha had sent
    (records, and HELLOs naming itself primary) waits in it. alpha is demoted, its link
    slowed to 4 Mbit/s, and gamma promoted: the answer to gamma's probe queues behind
    seconds of that backlog, longer than the liveness window (0.9 s). The probe took the
    last HELLO heard when the window ended, one from before the demote, and refused:
    "alpha is primary and reachable: demote it first" (seen writing the test above). It now
    waits for the answer while alpha is heard, asking again every 3 heartbeats (the
    connection, timed out behind its backlog, is made again, and the answer owed goes with
    its first HELLO), up to ANSWER_WAIT_S."""
    with gamma_cut_off(tmp_path) as (r, net, ledger):
        write_numbered(r, ledger, range(48))
        assert "error" not in control_op(r, "alpha", "demote")
        net.slow("alpha", 50, 0, 4)
        net.uncut("gamma")
        r.wait_for(
            lambda: all(r.status("gamma")["peers"][n]["connected"] for n in ("alpha", "beta")),
            30,
            "gamma hearing alpha (its backlog) and beta",
        )
        out = control_op(r, "gamma", "promote")
        assert "error" not in out, out
        assert out["role"] == "primary", out
        assert "not answering the probe" in r.log("gamma")
        net.unslow("alpha")
        r.wait_synced(["alpha", "beta", "gamma"])
        # every write alpha acknowledged is on every node, and nothing else
        for n in ("alpha", "beta", "gamma"):
            ledger.check_file(r.volume_path(n), n)


def write_numbered(r: LocalResource, ledger: Ledger, numbers: range) -> None:
    """Write i (64 KiB of the byte i + 1) at i x 64 KiB on alpha, for each i, recorded."""
    with r.connect("alpha") as v:
        for i in numbers:
            data = bytes([i + 1]) * (64 * KiB)
            ledger.add(v.write(i * 64 * KiB, data), i * 64 * KiB, data)


def switchover_over_a_congested_link(r: NetnsResource) -> None:
    net = r.net
    assert net is not None
    ledger = Ledger(16 << 20)
    write_numbered(r, ledger, range(8))
    r.wait_synced(["alpha", "beta", "gamma"])
    net.slow("alpha", 1500, 0, 1)
    # what alpha writes now reaches beta slowly and gamma, async, more slowly still: the
    # stream to gamma keeps alpha's outgoing queue full, so every HELLO alpha sends waits
    # in it behind up to 1.5 s of records
    write_numbered(r, ledger, range(8, 14))
    demoted = control_op(r, "alpha", "demote")
    assert "error" not in demoted, demoted
    out = control_op(r, "beta", "promote")
    assert "error" not in out, f"promote beta just after demote of alpha: {out['error']}"
    assert out["role"] == "primary"
    net.unslow("alpha")
    r.wait_for(
        lambda: all(r.status(n)["following"] == "beta" for n in ("alpha", "gamma")),
        60,
        "alpha and gamma following beta",
    )
    r.wait_synced(["alpha", "beta", "gamma"])
    # every write alpha acknowledged is on every node, and nothing else
    for n in ("alpha", "beta", "gamma"):
        ledger.check_file(r.volume_path(n), n)


class Prober:
    """beta, promoting, played by the test: its probe's HELLO (flagged ANSWER) to alpha, a
    real daemon, and a ROUTER at beta's address for what alpha sends back."""

    def __init__(self, r: LocalResource) -> None:
        self.r = r
        self.cfg = configmod.load(r.config, node="beta", check_local=False)
        self.size = self.cfg.node("beta").volume.stat().st_size
        self.out = Peer(self.cfg.node("alpha").address, "beta")
        self.inbox: Listener | None = None

    def listen(self) -> None:
        self.inbox = Listener(self.cfg.node("beta").address, self.cfg.uuid)

    def probe(self) -> None:
        h = proto.Hello(
            role="secondary",
            session="fake-beta",
            history=[],
            start_lsn=1,
            end_lsn=1,
            applied_end=1,
            digest=self.cfg.digest,
            volume_size=self.size,
        )
        frames = proto.encode(self.cfg.uuid, 0, "beta", h, proto.Flag.ANSWER)
        self.out.send([bytes(f) for f in frames])

    def hellos(self, timeout: float) -> Iterator[int]:
        """The flags of each HELLO alpha sends beta, as they come, for ``timeout`` s."""
        assert self.inbox is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.inbox.sock.poll(50):
                continue
            msg = proto.decode(self.inbox.sock.recv_multipart()[2:], self.cfg.uuid)
            if isinstance(msg.body, proto.Hello):
                yield msg.header.flags

    def close(self) -> None:
        self.out.close()
        if self.inbox is not None:
            self.inbox.close()


@pytest.fixture
def alpha_alone(resource: Callable[..., LocalResource]) -> Iterator[Prober]:
    r = resource({"alpha": "sync", "beta": "sync"}, heartbeat_ms=300)
    r.up("alpha")
    beta = Prober(r)
    try:
        yield beta
    finally:
        beta.close()


def test_a_probe_is_answered_with_a_hello_flagged_as_its_answer(alpha_alone) -> None:
    beta = alpha_alone
    beta.listen()
    # alpha's heartbeats (not answers) until its connection to beta is up and has spoken
    next(beta.hellos(10))
    beta.probe()
    flags = [f for f in beta.hellos(0.6)]
    assert any(f & proto.Flag.ANSWERED for f in flags), f"no answer among {flags}"
    assert not flags[-1] & proto.Flag.ANSWERED, "later heartbeats are not answers"


def test_an_answer_that_found_no_connection_goes_with_the_first_hello_once_there_is_one(
    alpha_alone,
) -> None:
    """alpha's answer to a probe is dropped when its connection to the prober is not up
    yet (after a restart, a cut): the HELLO it sends once the connection is made holds its
    state after the probe arrived, and is flagged as the answer, so the probe does not
    wait out its window for it."""
    beta = alpha_alone
    beta.probe()  # nothing listens at beta's address: alpha cannot answer yet
    r = beta.r
    r.wait_for(lambda: r.status("alpha")["peers"]["beta"]["connected"], 10, "alpha hearing beta")
    beta.listen()
    first = next(beta.hellos(10))
    assert first & proto.Flag.ANSWERED, f"alpha's first HELLO to beta has flags {first}"


def test_a_switchover_to_an_async_node_behind_makes_room_in_its_full_log(
    resource: Callable[..., LocalResource],
) -> None:
    """A planned switchover to the async node while it is behind (the DR site): its log,
    the smallest an SRL may be, cannot take what it must pull from the demoted primary, and
    nothing clears it any more (a primary sends the clears). Every other node answered the
    promotion holding every record, so none needs its log for a catch-up: it clears the
    records it has applied and is promoted. It was refused before, "promote alpha instead",
    which is not the switchover the operator asked for (the fault campaign's `switchover`:
    5 to 10 times in 100 schedules)."""
    r = resource(
        {"alpha": "sync", "beta": "sync", "gamma": "async"}, srl_full="stall", heartbeat_ms=300
    )
    smallest_srl(r, "gamma")
    r.up()
    r.promote("alpha")
    ledger = Ledger(r.volume_size)
    vol = r.connect("alpha")
    rng = random.Random(13)
    write_chunks(vol, ledger, rng, 4)
    r.wait_synced()
    r.freeze("gamma")
    write_chunks(vol, ledger, rng, 40)  # 2.5 MiB of records, more than gamma's whole log
    vol.close()
    r.replctl("alpha", "demote")
    end = r.status("alpha")["end_lsn"]
    r.signal("gamma", signal.SIGCONT)
    out = r.promote("gamma")
    assert "cleared applied LSNs [" in out, out
    log = r.log("gamma")
    assert "every other node (alpha, beta) holds them" in log, log
    st = r.status("gamma")
    assert st["role"] == "primary" and st["last_promotion"]["pulled_records"] > 16, st
    assert st["last_promotion"]["made_room"] is not None, st
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    for n in ("alpha", "beta"):  # nobody lacked what gamma cleared: no block was copied
        assert r.status("gamma")["peers"][n]["blocks_sent_bytes"] == 0, r.status("gamma")
    assert r.status("beta")["end_lsn"] >= end
    r.down()
    for n in r.nodes:
        ledger.check_file(r.volume_path(n), n)


@netns
def test_a_pull_whose_records_went_with_a_lost_connection_is_asked_for_again(
    tmp_path: Path,
) -> None:
    """gamma, the async node, was cut off while alpha wrote 3 MiB; alpha is demoted and
    gamma promoted: it pulls what it lacks over a slow link (4 Mbit/s), and the link is cut
    mid-pull until the connection is given up. The records on their way went with it, and
    nothing told the source: the pull sat until its deadline and the promotion was refused
    ("could not pull LSNs ... in time", the fault campaign, seed 13501 round 7, over a link
    losing 30 % of its packets). Now the pull is asked for again after 3 heartbeats without
    a record (and again, while the link is still cut), and the promotion completes with
    every write."""
    with gamma_cut_off(tmp_path) as (r, net, ledger):
        # alpha sends gamma nothing more once it has given it up: no backlog of records
        # (and of HELLOs from before the demote) is left to reach gamma after the cut
        r.wait_for(
            lambda: not r.status("alpha")["peers"]["gamma"]["streaming"], 30, "gamma given up"
        )
        write_numbered(r, ledger, range(48))
        r.wait_synced(["alpha", "beta"])
        assert "error" not in control_op(r, "alpha", "demote")
        before = r.status("gamma")["end_lsn"]
        net.uncut("gamma")
        r.wait_for(
            lambda: all(r.status("gamma")["peers"][n]["connected"] for n in ("alpha", "beta")),
            30,
            "gamma hearing alpha and beta again",
        )
        net.slow("alpha", 50, 0, 4)
        net.slow("beta", 50, 0, 4)
        out: dict = {}
        promoting = threading.Thread(target=lambda: out.update(control_op(r, "gamma", "promote")))
        promoting.start()

        def pulling() -> re.Match | None:
            assert "error" not in out, out  # refused before it pulled
            return re.search(r"promotion: (\w+) is ahead; pulling", r.log("gamma"))

        source = r.wait_for(pulling, 30, "gamma pulling").group(1)
        r.wait_for(lambda: r.status("gamma")["end_lsn"] > before, 30, "the first records in")
        net.cut(source)
        # cut until gamma has asked twice: 1.8 s without a record, past the ZMTP heartbeat
        # timeout of both ends (1.2 s at most), so the connection and what it held are gone
        r.wait_for(
            lambda: r.log("gamma").count("asking again for LSNs") >= 2,
            30,
            "gamma asking again for its pull, twice",
        )
        net.uncut(source)
        promoting.join(90)
        assert "error" not in out, out
        assert out["role"] == "primary" and out["pulled_from"] == source, out
        net.unslow("alpha")
        net.unslow("beta")
        r.wait_synced(["alpha", "beta", "gamma"])
        # every write alpha acknowledged is on every node, and nothing else
        for n in ("alpha", "beta", "gamma"):
            ledger.check_file(r.volume_path(n), n)
