"""The divergent-tail rewind against a fake node: it must survive lost messages, a source that
goes away, and a restart, and never let a late block land after records flow again."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from replengine.log.record import Record
from replengine.node.rewind import Phase, Rewinder, load_marker, subtract
from replengine.storage.chunksums import DIGEST_SIZE, digest
from replengine.wire.protocol import Block, BlockDone, BlockReq, Sums

VOL = 1 << 20


@dataclass
class FakeApplier:
    applied_end: int = 0

    def barrier(self) -> threading.Event:
        ev = threading.Event()
        ev.set()
        return ev


@dataclass
class FakeWatcher:
    durable_end: int = 0
    idle: bool = True


@dataclass
class FakeSRL:
    records: list[Record]
    start_lsn: int = 1

    def read(self, first, end):
        return [r for r in self.records if first <= r.lsn < end]


@dataclass
class FakeVolume:
    size: int = VOL
    data: bytearray = field(default_factory=lambda: bytearray(VOL))
    flushed: int = 0

    def write_copied(self, off, data):
        self.write(off, data)

    def write(self, off, data):
        self.data[off : off + len(data)] = data

    def read(self, off, n, once=False):
        return bytes(self.data[off : off + n])

    def digest_of(self, off, n):
        return digest(self.read(off, n))

    def flush(self):
        self.flushed += 1


@dataclass
class FakeNode:
    srl: FakeSRL
    heartbeat_s: float = 0.01
    following: str = ""
    consistent: bool = True
    rewinder: object = None
    last_divergent: dict = field(default_factory=dict)
    sent: list = field(default_factory=list)
    volume: FakeVolume = field(default_factory=FakeVolume)
    applier: FakeApplier = field(default_factory=FakeApplier)
    watcher: FakeWatcher = field(default_factory=FakeWatcher)

    def drop_log_from(self, lsn):
        self.srl.records = [r for r in self.srl.records if r.lsn < lsn]
        self.watcher.durable_end = min(self.watcher.durable_end, lsn)
        self.applier.applied_end = min(self.applier.applied_end, lsn)

    def send(self, peer, body):
        self.sent.append((peer, body))
        return True

    def hello(self):
        return "HELLO"

    def copy_ended(self, source):
        self.sent.append((source, "copy-ended"))


def node_with_tail(tmp_path):
    recs = [Record(lsn, 1, (lsn - 1) * 4096, b"t" * 4096) for lsn in range(1, 11)]
    n = FakeNode(FakeSRL(recs))
    n.watcher.durable_end = n.applier.applied_end = 11
    n.following = "beta"
    rw = Rewinder(n, "beta", 8, tmp_path / "srl.rewind")
    n.rewinder = rw
    rw.retarget("beta", 8)
    return n, rw


def requests(node):
    return [b for _, b in node.sent if isinstance(b, BlockReq)]


def test_marker_is_durable_before_the_tail_is_dropped_and_restart_resumes(tmp_path) -> None:
    node, rw = node_with_tail(tmp_path)
    rw.progress()
    assert load_marker(rw.marker) == [(7 * 4096, 3 * 4096)]
    assert node.watcher.durable_end == 8 and not node.consistent
    assert requests(node)[-1].ranges == [(7 * 4096, 3 * 4096)]
    # a restart now: the volume still holds the dropped writes, so it must stay inconsistent
    again = Rewinder.resume(node, rw.marker, load_marker(rw.marker))
    assert again.owed == [(7 * 4096, 3 * 4096)] and node.consistent is False


def test_the_tail_is_not_cut_while_records_are_on_their_way_to_the_srl(tmp_path) -> None:
    """Records queued for the SRL settle at the end of the loop's turn and would land past
    a cut made now (the durable end then jumping back over it): the cut waits for them."""
    node, rw = node_with_tail(tmp_path)
    node.watcher.idle = False
    rw.progress()
    assert node.watcher.durable_end == 11 and len(node.srl.records) == 10
    assert not requests(node)
    node.watcher.idle = True
    rw.progress()
    assert node.watcher.durable_end == 8 and requests(node)


def test_an_unanswered_request_is_asked_again_for_what_is_missing(tmp_path) -> None:
    node, rw = node_with_tail(tmp_path)
    rw.progress()
    rw.on_message("beta", Block(7 * 4096, b"n" * 4096))
    rw.last_progress -= 1.0  # many heartbeats without a block
    rw.progress()
    assert requests(node)[-1].ranges == [(8 * 4096, 2 * 4096)]


def test_block_done_with_bytes_missing_is_not_believed(tmp_path) -> None:
    node, rw = node_with_tail(tmp_path)
    rw.progress()
    tag = requests(node)[-1].tag
    rw.on_message("beta", Block(7 * 4096, b"n" * 4096))
    rw.on_message("beta", BlockDone(tag, 20))
    assert rw.phase is Phase.BLOCKS and not node.consistent
    assert requests(node)[-1].ranges == [(8 * 4096, 2 * 4096)]
    tag = requests(node)[-1].tag
    rw.on_message("beta", Block(8 * 4096, b"n" * 8192))
    rw.on_message("beta", BlockDone(tag, 21))
    assert rw.phase is Phase.CATCHUP and rw.as_of == 21 and rw.streaming
    node.applier.applied_end = 21
    rw.progress()
    assert node.consistent and node.rewinder is None and not rw.marker.exists()


def test_a_new_source_starts_the_copy_over_and_late_blocks_are_ignored(tmp_path) -> None:
    node, rw = node_with_tail(tmp_path)
    rw.progress()
    rw.on_message("beta", Block(7 * 4096, b"b" * 4096))
    node.following = "gamma"  # beta stepped down; gamma is the primary now
    rw.retarget("gamma", 8)
    rw.progress()
    assert requests(node)[-1].ranges == [(7 * 4096, 3 * 4096)]
    rw.on_message("beta", Block(7 * 4096, b"L" * 4096))  # late, from the old source
    assert node.volume.data[7 * 4096] != ord("L")


def test_a_rewind_retargeted_after_its_copy_catches_up_to_the_new_sources_end(tmp_path) -> None:
    """beta, a deposed primary cut off for long, sent its copy as of LSN 2449 (its own
    tail's end); beta stepped down and delta, primary of the newer epoch, sent its copy as of
    962. The rewind waited to apply LSN 2449, which delta's line had not reached: alpha
    stayed inconsistent once the application stopped writing (seed 11003 round 1)."""
    node, rw = node_with_tail(tmp_path)
    rw.progress()
    tag = requests(node)[-1].tag
    rw.on_message("beta", Block(7 * 4096, b"b" * 3 * 4096))
    rw.on_message("beta", BlockDone(tag, 2449))
    assert rw.phase is Phase.CATCHUP and rw.as_of == 2449
    node.following = "delta"
    rw.retarget("delta", 8)
    rw.progress()
    tag = requests(node)[-1].tag
    rw.on_message("delta", Block(7 * 4096, b"d" * 3 * 4096))
    rw.on_message("delta", BlockDone(tag, 962))
    assert rw.phase is Phase.CATCHUP and rw.as_of == 962
    node.applier.applied_end = 962
    rw.progress()
    assert node.consistent and node.rewinder is None


def test_subtract_ranges() -> None:
    assert subtract([(0, 100)], 10, 20) == [(0, 10), (30, 70)]
    assert subtract([(0, 10), (20, 10)], 0, 25) == [(25, 5)]


def test_a_divergence_below_the_logs_start_owes_every_block(tmp_path) -> None:
    """The records that diverge were already cleared here, so which blocks they touched is
    unknown: once an exception that left the node 'rewinding' for ever, now every block is
    owed and the log restarts at the divergence point."""
    node, rw = node_with_tail(tmp_path)
    node.srl.start_lsn = 9
    rw.divergence = 5
    rw.progress()
    assert rw.owed == [(0, VOL)] and load_marker(rw.marker) == [(0, VOL)]
    # the whole volume is owed: the digests of our chunks go first, then the request
    assert rw.phase is Phase.SUMS and rw._sums.done.wait(10)
    rw.progress()
    offered = [b for _, b in node.sent if isinstance(b, Sums)]
    assert len(offered) == 1 and len(offered[0].digests) == DIGEST_SIZE
    assert offered[0].tag == requests(node)[-1].tag and rw.offered
    assert node.watcher.durable_end == 5 and requests(node)[-1].ranges == [(0, VOL)]


def test_with_digests_offered_the_copy_is_believed_when_every_sent_byte_arrived(tmp_path) -> None:
    """A request sent with our digests: the source skips chunks equal to ours, so the ranges
    never fill up; its BLOCK_DONE is believed when the bytes it says it sent all arrived, and
    asked again (with fresh digests) when some did not."""
    node, rw = node_with_tail(tmp_path)
    node.srl.start_lsn = 9
    rw.divergence = 5
    rw.progress()
    assert rw._sums.done.wait(10)
    rw.progress()
    tag = requests(node)[-1].tag
    rw.on_message("beta", Block(0, b""))  # a sign of life while it reads equal chunks
    assert rw.received == 0 and rw.phase is Phase.BLOCKS
    rw.on_message("beta", BlockDone(tag, 5, 0, 4096))  # it sent 4096 bytes: none arrived
    assert rw.phase is Phase.SUMS and rw.tag != tag  # asked again, digests first
    assert rw._sums.done.wait(10)
    rw.progress()
    tag = requests(node)[-1].tag
    rw.on_message("beta", Block(0, b"x" * 4096))
    rw.on_message("beta", BlockDone(tag, 5, 0, 4096))
    assert rw.phase is Phase.CATCHUP and bytes(node.volume.data[:4096]) == b"x" * 4096
