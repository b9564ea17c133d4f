"""The block copier (rewind and dcm resync share it) and the dcm receiver's check, on fakes:
a bounded window, no chunk skipped when the transport refuses one, and a copy that lost bytes
is never taken for complete."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from replengine.node import copier as copier_mod
from replengine.node.copier import BlockCopier
from replengine.node.dcm_receiver import DcmReceiver
from replengine.node.rewind import load_marker
from replengine.storage.chunksums import digest
from replengine.wire.protocol import Block, BlockDone

MiB = 1 << 20


def make(refuse: set[int] | None = None):
    sent: list = []
    refuse = refuse if refuse is not None else set()

    def send(peer, body):
        if isinstance(body, Block) and body.offset in refuse:
            refuse.discard(body.offset)  # refused once (transport full), taken next time
            return False
        sent.append(body)
        return True

    c = BlockCopier(read=lambda off, n: b"x" * n, end=lambda: 42, send=send, volume_size=256 * MiB)
    return c, sent


def test_window_bounds_unacknowledged_bytes_and_acks_open_it() -> None:
    c, sent = make()
    total = copier_mod.WINDOW + 4 * MiB
    assert c.start("b", "t1", [(0, total)])
    assert sum(len(b.data) for b in sent if isinstance(b, Block)) == copier_mod.WINDOW
    c.on_ack("b", copier_mod.WINDOW)
    c.pump()
    blocks = [b for b in sent if isinstance(b, Block)]
    assert sum(len(b.data) for b in blocks) == total
    done = [b for b in sent if isinstance(b, BlockDone)]
    assert done == [BlockDone("t1", 42, 0, total)]
    # kept until every byte is acknowledged: the last acks are a resync's progress too
    assert "b" in c.jobs
    c.on_ack("b", total)
    c.pump()
    assert "b" not in c.jobs


def scanned(c: BlockCopier, peer: str = "b") -> None:
    """Pump until the scan thread of a checksummed copy has read every chunk."""
    deadline = time.monotonic() + 10
    job = c.jobs[peer]
    while job.ranges and time.monotonic() < deadline:
        c.pump()
        time.sleep(0.001)
    c.pump()
    assert not job.ranges, "the scan did not finish"


def test_progress_reports_acknowledged_and_equal_chunks_only() -> None:
    """A resync resumes after the chunks reported here, so only chunks the receiver holds
    durably count: acknowledged ones, and ones whose digest equals ours."""
    c, sent = make()
    held = []
    same = {(MiB, MiB): digest(b"x" * MiB)}
    c.start("b", "t", [(0, 4 * MiB)], skip=same, on_chunk=lambda o, n: held.append(o))
    scanned(c)
    assert held == [MiB]  # equal: reported at once, never sent
    c.on_ack("b", MiB)
    assert held == [MiB, 0]  # the first chunk sent is in
    c.on_ack("b", 3 * MiB - 1)
    assert held == [MiB, 0, 2 * MiB]  # the third is not wholly acknowledged yet
    c.on_ack("b", 3 * MiB)
    assert held == [MiB, 0, 2 * MiB, 3 * MiB]


def test_a_refused_chunk_is_sent_again_not_skipped() -> None:
    c, sent = make(refuse={MiB})
    c.start("b", "t", [(0, 3 * MiB)])
    c.pump()
    offsets = [b.offset for b in sent if isinstance(b, Block)]
    assert offsets == [0, MiB, 2 * MiB]
    assert sent[-1].total == 3 * MiB


def test_ranges_outside_the_volume_are_refused() -> None:
    c, sent = make()
    assert not c.start("b", "t", [(255 * MiB, 2 * MiB)]) and not sent


@dataclass
class FakeApplier:
    applied_end: int = 10
    cleared_to: int = 0

    def restart_at(self, lsn):
        self.applied_end = lsn

    def barrier(self, clear_to=0):
        self.cleared_to = clear_to
        ev = threading.Event()
        ev.set()
        return ev


@dataclass
class FakeVolume:
    writes: list = field(default_factory=list)
    size: int = 1 << 20

    def write(self, off, data):
        self.writes.append((off, len(data)))

    def flush(self):
        pass


@dataclass
class FakeNode:
    rewind_marker: Path = Path("/nonexistent")
    consistent: bool = True
    sent: list = field(default_factory=list)
    applier: FakeApplier = field(default_factory=FakeApplier)
    volume: FakeVolume = field(default_factory=FakeVolume)
    watcher: SimpleNamespace = field(
        default_factory=lambda: SimpleNamespace(idle=True, durable_end=10)
    )
    restarted: list = field(default_factory=list)
    rewinder: object = None

    def restart_log_at(self, lsn, source):
        self.restarted.append(lsn)
        self.applier.restart_at(lsn)

    def send(self, peer, body):
        self.sent.append(body)
        return True

    def hello(self):
        return "HELLO"

    def copy_ended(self, source):
        self.sent.append(("copy-ended", source))


def test_dcm_receiver_does_not_take_a_short_copy_for_complete(tmp_path) -> None:
    node = FakeNode(rewind_marker=tmp_path / "srl.rewind")
    rx = DcmReceiver(node, "alpha")
    # durable before the first block: a restart mid-copy knows the volume is mixed
    assert load_marker(node.rewind_marker) == [(0, node.volume.size)]
    rx.on_block(Block(0, b"y" * 4096))
    rx.on_done(BlockDone("dcm-1", 50, 40, 8192))  # 4096 bytes never arrived
    assert not rx.done and node.consistent is False and rx.received == 0


def test_dcm_blocks_wait_for_the_applier_and_never_block_the_loop(tmp_path) -> None:
    """Records logged before the copy are still being applied: blocks are held (an older
    record written after them would undo them), then written in order; the end of the copy
    waits too, and the node is consistent once it has applied up to the primary's end."""
    node = FakeNode(rewind_marker=tmp_path / "srl.rewind")
    node.applier.applied_end = 7  # 7, 8, 9 still to apply
    rx = DcmReceiver(node, "alpha")
    rx.on_block(Block(0, b"a" * 4096))
    rx.on_block(Block(8192, b"b" * 4096))
    assert node.volume.writes == []
    rx.on_done(BlockDone("dcm-1", 60, 50, 8192))
    assert not rx.done and node.restarted == []
    node.applier.applied_end = 10  # the applier caught up
    assert rx.progress() is False
    # the log was cleared first: a restart must not replay old records over the blocks
    assert node.applier.cleared_to == 10
    assert node.volume.writes == [(0, 4096), (8192, 4096)] and node.restarted == [50]
    node.applier.applied_end = 60
    assert rx.progress() is True and node.consistent and not node.rewind_marker.exists()


def test_chunks_the_receiver_already_holds_are_not_sent() -> None:
    from replengine.storage.chunksums import chunks, digest

    c, sent = make()
    ranges = [(0, 5 * MiB)]
    theirs = {p: digest(bytes(p[1])) for p in chunks(ranges, copier_mod.CHUNK)}
    same = (2 * MiB, MiB)
    theirs[same] = digest(c.read(*same))  # this one chunk they hold already
    assert c.start("b", "t", ranges, skip=theirs)
    scanned(c)
    # (a block without data says the source is alive while it reads equal chunks)
    offsets = [b.offset for b in sent if isinstance(b, Block) and len(b.data)]
    assert offsets == [0, MiB, 3 * MiB, 4 * MiB]
    done = sent[-1]
    assert isinstance(done, BlockDone) and done.total == 4 * MiB
