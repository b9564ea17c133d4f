"""A resync ends on the receiver's word about the copy, not on a HELLO sent before it.

The primary ends a resync (dirty-region map deleted, the peer counted as catching up) once
BLOCK_DONE is out and the peer's HELLO says it is consistent. The receiver turns
inconsistent at the copy's first message and consistent again only once it has applied past
the copy's end, so its HELLOs tell -- except one sent before the copy reached it: the HELLO
that started the resync, or a heartbeat on its way. A copy smaller than the window is sent
whole in one turn, BLOCK_DONE with it, and before this test the primary ended the resync on
that stale HELLO in the same turn: status said up to date, the "full-sync-finished" event
went out and the map was gone while the blocks had not even reached the peer.

alpha runs as a real replengined; beta is played by the test over raw sockets (a ROUTER at
beta's address for what alpha sends, tests/wire_peer.py for what beta says), so the order
of beta's messages is the test's.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from replengine import config as configmod
from replengine.demo.localcluster import LocalResource
from replengine.node.copier import WINDOW
from replengine.node.resync_end import LATE_HELLOS
from replengine.storage.chunksums import DIGEST_SIZE, digest
from replengine.wire import protocol as proto
from tests.wire_peer import Listener, Peer

pytestmark = pytest.mark.slow

HEARTBEAT_S = 1.0


class FakeSecondary:
    """beta, following alpha, as the test says it."""

    def __init__(self, r: LocalResource) -> None:
        self.r = r
        self.cfg = configmod.load(r.config, node="alpha", check_local=False)
        self.size = self.cfg.node("beta").volume.stat().st_size
        self.inbox = Listener(self.cfg.node("beta").address, self.cfg.uuid)
        self.out = Peer(self.cfg.node("alpha").address, "beta")
        st = r.status("alpha")
        self.epoch, self.history, self.end = st["epoch"], st["history"], st["end_lsn"]
        self.markers = 0

    def close(self) -> None:
        self.out.close()
        self.inbox.close()

    def say(self, body: object) -> None:
        self.out.send([bytes(f) for f in proto.encode(self.cfg.uuid, self.epoch, "beta", body)])

    def hello(self, consistent: bool) -> None:
        self.say(
            proto.Hello(
                role="secondary",
                session="fake-beta",
                history=self.history,
                start_lsn=self.end,
                end_lsn=self.end,
                applied_end=self.end,
                digest=self.cfg.digest,
                volume_size=self.size,
                primary="alpha",
                consistent=consistent,
                following="alpha",
            )
        )

    def handled(self) -> None:
        """Return once alpha has handled every message beta sent before, and has been
        through the rest of its loop's turn since: an empty PULL, which alpha logs a line
        for, then two status calls (the second is answered a turn after the first at the
        earliest, so the turn that took the marker has ended)."""
        self.markers += 1
        self.say(proto.Pull(1, 1))
        line = "serving pull of LSNs [1, 1) to beta"
        self.r.wait_for(
            lambda: self.r.log("alpha").count(line) >= self.markers, 30, "alpha to take it"
        )
        self.r.status("alpha")

    def state(self) -> str:
        return self.r.status("alpha")["peers"]["beta"]["state"]


@contextlib.contextmanager
def beta_up_to_date(resource: Callable[..., LocalResource], **kw) -> Iterator[FakeSecondary]:
    """alpha primary (a real daemon), beta played by the test and up to date on it."""
    r = resource({"alpha": "sync", "beta": "sync"}, heartbeat_ms=int(HEARTBEAT_S * 1000), **kw)
    r.up("alpha")
    r.promote("alpha", "--force")
    beta = FakeSecondary(r)
    try:
        beta.hello(consistent=True)
        r.wait_for(lambda: beta.state() == "up-to-date", 20, "alpha to take beta as up to date")
        yield beta
    finally:
        beta.close()


@pytest.fixture
def fake_beta(resource: Callable[..., LocalResource]):
    with beta_up_to_date(resource) as beta:
        yield beta


def start_full_sync(beta: FakeSecondary) -> tuple[proto.BlockDone, list]:
    """`replctl sync --full beta`, beta declining to send digests: alpha copies every chunk
    (the volume is smaller than the copy's window, so all of it at once) and ends with
    BLOCK_DONE. Returns it, checked against the blocks that came, and those blocks."""
    beta.r.replctl("alpha", "sync", "--full", "beta")
    req, _ = beta.inbox.expect(proto.SumReq)
    beta.say(proto.Sums(req.tag, b""))
    done, blocks = beta.inbox.expect(proto.BlockDone)
    assert sum(len(b.data) for b in blocks) == done.total == beta.size
    return done, blocks


def test_a_full_sync_ends_only_on_a_hello_sent_after_the_copy_reached_the_peer(fake_beta):
    beta = fake_beta
    done, _ = start_full_sync(beta)

    # beta's last HELLO (consistent, sent before the copy) must not end it
    beta.handled()
    assert beta.state() == "full-sync"
    assert beta.r.status("alpha")["dcm"]["peers"]["beta"]["dirty_bytes"] > 0

    # beta writing the blocks: its heartbeat says inconsistent, then it acknowledges them
    beta.hello(consistent=False)
    beta.say(proto.BlockAck(done.total))
    beta.handled()
    assert beta.state() == "full-sync"

    # consistent again, said after that: the resync is over
    beta.hello(consistent=True)
    beta.r.wait_for(lambda: beta.state() == "up-to-date", 10, "alpha to end the full sync")
    st = beta.r.status("alpha")
    assert "beta" not in st["dcm"]["peers"]
    assert st["dcm"]["last_resync"]["peer"] == "beta"
    assert st["dcm"]["last_resync"]["bytes"] == beta.size


def test_what_the_peer_acknowledged_after_the_copy_is_cleared_before_it_is_seen_to_end(
    fake_beta,
):
    """Once BLOCK_DONE is out, beta is streamed the log from the copy's resume point; what it
    acknowledges is in its own log. alpha clears it at once, as for any secondary, rather
    than hold the log until beta's HELLO says the copy ended there: a busy application filled
    a small SRL in those heartbeats, at the very end of a copy that folding had kept going."""
    beta = fake_beta
    done, _ = start_full_sync(beta)
    vol = beta.r.connect("alpha")
    try:
        ends = [vol.write(4096 * i, bytes([i]) * 4096) for i in range(1, 9)]
    finally:
        vol.close()
    got = []
    while len(got) < len(ends):
        update, _ = beta.inbox.expect(proto.Update)
        got.append(update.lsn)
    assert got == ends and got[0] == done.resume_lsn
    beta.hello(consistent=False)  # writing its blocks and records: not consistent yet
    beta.say(proto.BlockAck(done.total))
    beta.say(proto.Ack(got[-1] + 1, done.resume_lsn))

    def cleared() -> bool:
        beta.hello(consistent=False)  # alive, still applying: its heartbeats
        return beta.r.status("alpha")["start_lsn"] > got[-1]

    beta.r.wait_for(cleared, 10, "alpha to clear what beta acknowledged")
    assert beta.state() == "full-sync"


def test_a_full_sync_whose_last_ack_was_lost_ends_on_the_hellos_that_follow(fake_beta):
    """beta finished the copy but its BLOCK_ACK never arrived (a replaced connection drops
    what the old one still held): its consistent HELLOs end the resync after LATE_HELLOS
    beats, not never."""
    beta = fake_beta
    start_full_sync(beta)
    t_done = time.monotonic()
    for n in range(1, LATE_HELLOS + 1):
        # beta's heartbeats, one a beat, as its daemon sends them
        time.sleep(max(0.0, t_done + n * HEARTBEAT_S + 0.05 - time.monotonic()))
        beta.hello(consistent=True)
        if n < LATE_HELLOS:
            beta.handled()
            assert beta.state() == "full-sync", f"ended after {n} HELLOs"
    beta.r.wait_for(lambda: beta.state() == "up-to-date", 10, "alpha to end the full sync")
    assert "beta" not in beta.r.status("alpha")["dcm"]["peers"]


def test_a_full_sync_that_came_short_is_copied_again_as_the_peer_asks(fake_beta):
    """beta found a block missing at BLOCK_DONE (tests/test_short_copy.py has that side): it
    asks for the whole volume as a rewind, the digests of what it holds first. alpha, its
    resync still open, copies exactly the chunk whose digest differs, and the full sync ends
    on beta's word about that copy."""
    beta = fake_beta
    _, blocks = start_full_sync(beta)
    beta.hello(consistent=False)

    # every chunk arrived but the first
    sums = b"".join(b"\xff" * DIGEST_SIZE if b.offset == 0 else digest(b.data) for b in blocks)
    beta.say(proto.Sums("fetch-1", sums))
    beta.say(proto.BlockReq([(0, beta.size)], "fetch-1"))
    done, again = beta.inbox.expect(proto.BlockDone)
    assert done.tag == "fetch-1"
    sent = [(b.offset, bytes(b.data)) for b in again if len(b.data)]  # not signs of life
    assert sent == [(0, bytes(blocks[0].data))]
    assert done.total == len(blocks[0].data)
    assert beta.state() == "full-sync"

    beta.say(proto.BlockAck(done.total))
    beta.hello(consistent=True)
    beta.r.wait_for(lambda: beta.state() == "up-to-date", 10, "alpha to end the full sync")
    last = beta.r.status("alpha")["dcm"]["last_resync"]
    assert (last["bytes"], last["skipped_bytes"]) == (done.total, beta.size - done.total)


def test_a_copy_starts_over_when_the_primary_wakes_with_its_connections_replaced(resource):
    """alpha stopped (SIGSTOP) longer than the ZMTP heartbeat timeout in the middle of a
    copy: beta's side has dropped the connection, and alpha, waking, replaces every one of
    its own; what they held is lost. beta is not taken for gone (it did not go anywhere),
    but the copy cannot go on: its acknowledgements count bytes in order, and after a gap
    they would take lost blocks for copied. alpha starts it over, asking for digests."""
    with beta_up_to_date(resource, volume_size=2 * WINDOW) as beta:
        r = beta.r
        r.replctl("alpha", "sync", "--full", "beta")
        first, _ = beta.inbox.expect(proto.SumReq)
        beta.say(proto.Sums(first.tag, b""))  # declined: every chunk is copied
        got = 0
        while got < WINDOW:  # alpha sends a window's worth, then waits for acknowledgements
            block, _ = beta.inbox.expect(proto.Block)
            got += len(block.data)

        r.freeze("alpha")
        time.sleep(3.5 * HEARTBEAT_S)  # the fault: stopped past the heartbeat timeout
        r.signal("alpha", signal.SIGCONT)

        beta.say(proto.BlockAck(got))
        again = None
        for _ in range(5):  # beta's heartbeats; alpha starts the copy over on one of them
            beta.hello(consistent=False)
            try:
                again, _ = beta.inbox.expect(proto.SumReq, timeout=HEARTBEAT_S)
                break
            except AssertionError:
                continue
        assert again is not None and again.tag != first.tag, "the copy went on"
        assert "event: full-sync-aborted" in r.log("alpha")
        assert beta.state() == "full-sync"
