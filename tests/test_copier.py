"""The block copier (rewind and dcm resync share it) and the dcm receiver's check, on fakes:
a bounded window, no chunk skipped when the transport refuses one, and a copy that lost bytes
is never taken for complete."""

from __future__ import annotations

import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from replengine.node import copier as copier_mod
from replengine.node.copier import BlockCopier
from replengine.node.dcm_receiver import DcmReceiver
from replengine.node.rewind import load_marker
from replengine.storage.chunksums import ChunkDigests, chunks, digest
from replengine.wire.protocol import Block, BlockAck, BlockDone

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
    job = c.jobs.get(peer)
    if job is None:
        return  # done already: every chunk equal, scanned before start() returned (its pump)
    while job.ranges and time.monotonic() < deadline:
        c.pump()
        time.sleep(0.001)
    c.pump()
    assert not job.ranges, "the scan did not finish"


def offered(theirs: dict[tuple[int, int], bytes]) -> ChunkDigests:
    """A receiver's digests as the copier gets them, from a dict keyed by (offset, length)."""
    keys = list(theirs)
    return ChunkDigests(keys, b"".join(theirs[k] for k in keys), copier_mod.CHUNK)


def test_progress_reports_acknowledged_and_equal_chunks_only() -> None:
    """A resync resumes after the chunks reported here, so only chunks the receiver holds
    durably count: acknowledged ones, and ones whose digest equals ours."""
    c, sent = make()
    held = []
    same = {(MiB, MiB): digest(b"x" * MiB)}
    c.start("b", "t", [(0, 4 * MiB)], skip=offered(same), on_chunk=lambda o, n: held.append(o))
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

    def write_copied(self, off, data):
        self.write(off, data)

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
    assert not rx.done and node.consistent is False and node.restarted == []
    # which bytes are missing is not known: the whole volume is fetched again from alpha, as
    # a rewind offering our digests, and this receive is over (tests/test_short_copy.py)
    rw = node.rewinder
    assert rw is not None and rw.source == "alpha" and rw.owed == [(0, node.volume.size)]
    assert rx.progress() and node.consistent is False
    assert not any(isinstance(m, BlockAck) for m in node.sent)  # a short copy is not acked


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
    assert c.start("b", "t", ranges, skip=offered(theirs))
    scanned(c)
    # (a block without data says the source is alive while it reads equal chunks)
    offsets = [b.offset for b in sent if isinstance(b, Block) and len(b.data)]
    assert offsets == [0, MiB, 3 * MiB, 4 * MiB]
    done = sent[-1]
    assert isinstance(done, BlockDone) and done.total == 4 * MiB


def test_digests_taken_ahead_skip_equal_chunks_unread_and_send_the_rest() -> None:
    """The source hashes its chunks while the receiver hashes its own (PreHash): a chunk
    equal then is not read again, a chunk that differed then is sent as it is now, and a
    chunk not hashed ahead is read and compared as before."""
    from replengine.storage.chunksums import chunks

    volume = {o: bytes([o // MiB + 1]) * MiB for o in range(0, 4 * MiB, MiB)}
    reads: list[int] = []

    def read(off: int, n: int) -> bytes:
        reads.append(off)
        return volume[off][:n]

    sent: list = []
    c = BlockCopier(
        read=read, end=lambda: 42, send=lambda p, b: sent.append(b) or True, volume_size=256 * MiB
    )
    ranges = [(0, 4 * MiB)]
    c.prehash("b", "t", ranges)
    pre = c.prehashes["b"]
    pre.join(10)
    assert pre.count == 4 and reads == [0, MiB, 2 * MiB, 3 * MiB]
    reads.clear()
    volume[MiB] = b"\xff" * MiB  # written after it was hashed (the log brings it there too)
    theirs = {p: digest(volume[p[0]]) for p in chunks(ranges, copier_mod.CHUNK)}
    theirs[MiB, MiB] = digest(bytes([2]) * MiB)  # what chunk 1 held when we hashed it
    theirs[2 * MiB, MiB] = digest(b"old")  # differs from ours
    assert c.start("b", "t", ranges, skip=offered(theirs))
    assert "b" not in c.prehashes and pre.stopped.is_set()
    scanned(c)
    assert reads == [2 * MiB]  # only the chunk that differed is read again
    assert [b.offset for b in sent if isinstance(b, Block) and len(b.data)] == [2 * MiB]
    assert sent[-1] == BlockDone("t", 42, 0, MiB)


def test_digests_taken_for_another_copy_or_other_ranges_are_not_used() -> None:
    """Only the copy they were taken for may use them: another copy to the same peer (a
    rewind) has its receiver replay the log from another point."""
    for tag, ranges in (("rewind-1", [(0, 2 * MiB)]), ("t", [(MiB, 2 * MiB)])):
        c, sent = make()
        c.prehash("b", "t", [(0, 2 * MiB)])
        c.prehashes["b"].join(10)
        c.prehashes["b"].digests[:] = bytes(32)  # digests no chunk has: must not be used
        theirs = {(MiB, MiB): digest(b"x" * MiB), (0, MiB): digest(b"x" * MiB)}
        theirs[2 * MiB, MiB] = digest(b"y")
        assert c.start("b", tag, ranges, skip=offered(theirs))
        scanned(c)
        sent_offsets = [b.offset for b in sent if isinstance(b, Block) and len(b.data)]
        assert sent_offsets == ([] if tag != "t" else [2 * MiB]), (tag, sent_offsets)


def test_cancel_stops_hashing_ahead() -> None:
    entered, release = threading.Event(), threading.Event()

    def read(off: int, n: int) -> bytes:
        entered.set()
        release.wait(10)  # the first read is under way when the copy is cancelled
        return b"x" * n

    c = BlockCopier(read=read, end=lambda: 42, send=lambda p, b: True, volume_size=256 * MiB)
    c.prehash("b", "t", [(0, 200 * MiB)])
    pre = c.prehashes["b"]
    assert entered.wait(10)
    c.cancel("b")
    release.set()
    pre.join(10)
    assert not pre.is_alive() and pre.count == 1 and "b" not in c.prehashes


def test_a_receivers_digests_are_found_by_their_exact_chunk_and_nothing_else() -> None:
    """What the copier skips rests on this lookup: a digest only for the very chunk the
    receiver hashed (any other offset or length is copied), whatever order the ranges
    came in."""
    ranges = [(10 * MiB, MiB), (0, 2 * MiB + MiB // 2)]
    pieces = list(chunks(ranges, MiB))
    packed = b"".join(i.to_bytes(16, "big") for i in range(len(pieces)))
    d = ChunkDigests(ranges, packed, MiB)
    assert len(d) == 4
    for i, (off, n) in enumerate(pieces):
        assert d.get(off, n) == i.to_bytes(16, "big")
    for off, n in ((0, 2 * MiB), (4096, MiB), (2 * MiB, MiB), (5 * MiB, MiB), (11 * MiB, MiB)):
        assert d.get(off, n) is None, (off, n)
    try:
        ChunkDigests(ranges, packed[:-16], MiB)
    except ValueError as e:
        assert "48 bytes of digests for 4 chunks" in str(e)
    else:
        raise AssertionError("digests that do not fit the ranges were taken")


def test_a_full_sync_of_a_large_volume_holds_its_digests_packed() -> None:
    """The source of a checksummed sync of a 1 TiB volume keeps the receiver's 1 Mi
    digests (16 MiB as they arrive) in about that, not in a dict of 1 Mi entries
    (~216 MiB here, and the scan copied it): the daemon stays within its memory."""
    ranges = [(0, 1 << 40)]
    packed = bytes(16 << 20)
    tracemalloc.start()
    try:
        d = ChunkDigests(ranges, packed, MiB)
        chunk = bytes(MiB)  # every read returns it: the scan's reads allocate nothing
        c = BlockCopier(
            read=lambda off, n: chunk, end=lambda: 1, send=lambda p, b: True, volume_size=1 << 40
        )
        c.start("b", "t", ranges, skip=d)
        c.cancel("b")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, f"{peak >> 20} MiB"


def test_digests_of_larger_chunks_are_compared_whole_and_sent_in_pieces() -> None:
    """A volume whose 1 MiB digests would not fit one SUMS message is compared in larger
    chunks (dcm.sum_chunk): a chunk that differs goes as 1 MiB blocks, one that is equal
    costs nothing and counts as held whole."""
    volume = bytes(range(256)) * (6 * MiB // 256)
    sent: list = []
    held: list = []
    c = BlockCopier(
        read=lambda off, n: volume[off : off + n],
        end=lambda: 7,
        send=lambda p, b: sent.append(b) or True,
        volume_size=6 * MiB,
    )
    ranges = [(0, 6 * MiB)]
    theirs = {p: digest(volume[p[0] : p[0] + p[1]]) for p in chunks(ranges, 2 * MiB)}
    theirs[2 * MiB, 2 * MiB] = digest(b"older")  # the middle 2 MiB differ there
    keys = list(theirs)
    skip = ChunkDigests(keys, b"".join(theirs[k] for k in keys), 2 * MiB)
    assert c.start(
        "b", "t", ranges, skip=skip, on_chunk=lambda o, n: held.append((o, n)), chunk=2 * MiB
    )
    scanned(c)
    blocks = [(b.offset, len(b.data)) for b in sent if isinstance(b, Block) and len(b.data)]
    assert blocks == [(2 * MiB, MiB), (3 * MiB, MiB)]
    assert all(
        bytes(b.data) == volume[b.offset : b.offset + MiB]
        for b in sent
        if isinstance(b, Block) and len(b.data)
    )
    assert held == [(0, 2 * MiB), (4 * MiB, 2 * MiB)]
    c.on_ack("b", 2 * MiB)
    assert held[2:] == [(2 * MiB, MiB), (3 * MiB, MiB)]
    assert sent[-1] == BlockDone("t", 7, 0, 2 * MiB)


def test_digests_taken_ahead_by_several_threads_are_the_same_in_the_same_order(
    monkeypatch,
) -> None:
    """A node with cores to spare hashes ahead of a copy in several threads: each chunk's
    digest must land at its own index, or a chunk would be skipped on another's digest."""
    volume = {o: bytes([o // MiB + 1]) * MiB for o in range(0, 16 * MiB, MiB)}
    c = BlockCopier(
        read=lambda off, n: volume[off][:n],
        end=lambda: 1,
        send=lambda p, b: True,
        volume_size=16 * MiB,
    )
    ranges = [(0, 16 * MiB)]
    monkeypatch.setattr(copier_mod, "hash_workers", lambda: 3)
    c.prehash("b", "t", ranges)
    pre = c.prehashes["b"]
    pre.join(10)
    assert pre.count == 16
    for i in range(16):
        assert pre.get(i) == digest(volume[i * MiB]), i


def test_a_receivers_digests_taken_by_several_threads_are_in_chunk_order(
    tmp_path: Path, monkeypatch
) -> None:
    """The receiver's answer lists one digest per chunk in the order SUM_REQ cut them:
    taken by several threads, each must still land in its place."""
    import os

    from replengine.node.sums import ChunkSummer, SumJob
    from replengine.storage import hashpool
    from replengine.storage.volume import Volume
    from replengine.wire.protocol import SumReq

    data = os.urandom(6 * MiB) + bytes(2 * MiB)  # the last two chunks blank
    path = tmp_path / "v"
    path.write_bytes(data)
    monkeypatch.setattr(hashpool, "hash_workers", lambda: 3)
    ranges = [(MiB // 2, 7 * MiB), (0, MiB // 2)]
    with Volume(path) as v:
        summer = ChunkSummer(
            SimpleNamespace(volume=v, transport=SimpleNamespace(wake=lambda: None))
        )
        job = SumJob("alpha", SumReq("t", ranges, MiB))
        ready = threading.Event()
        ready.set()
        summer._work(job, ready)
    want = b"".join(digest(data[o : o + n]) for o, n in chunks(ranges, MiB))
    assert job.digests == want and not job.error


def test_digests_cancelled_by_invalidate_are_never_sent(tmp_path: Path) -> None:
    """`replctl invalidate` on a node taking digests for a resync its primary announced:
    the node's volume is damaged, so those digests (taken of the damaged volume, or about to
    be) must not reach the primary, which would skip the chunks they call equal. Cancelled
    before the work starts (it waits for the applier's barrier) and after it has finished
    (the loop has not sent it yet): nothing is sent either way."""
    import os

    from replengine.node.sums import ChunkSummer
    from replengine.storage.volume import Volume
    from replengine.wire.protocol import SumReq

    path = tmp_path / "v"
    path.write_bytes(os.urandom(4 * MiB))
    sent: list[tuple[str, object]] = []
    barriers: list[threading.Event] = []

    def barrier() -> threading.Event:
        barriers.append(threading.Event())
        return barriers[-1]

    with Volume(path) as v:
        node = SimpleNamespace(
            volume=v,
            transport=SimpleNamespace(wake=lambda: None),
            applier=SimpleNamespace(barrier=barrier),
            send=lambda peer, body: sent.append((peer, body)),
        )
        summer = ChunkSummer(node)

        def start(tag: str) -> threading.Thread:
            """The primary's request taken: the work starts, and waits for the applier."""
            assert summer.ask("alpha", SumReq(tag, [(0, 4 * MiB)], MiB))
            summer.pump()
            return next(t for t in threading.enumerate() if t.name == "chunk-sums")

        def let_go(t: threading.Thread) -> None:
            barriers[-1].set()
            t.join(10)

        t = start("resync-1")
        summer.cancel()
        let_go(t)
        summer.pump()
        assert sent == [] and summer.running is None and summer.finished == []

        let_go(start("resync-2"))
        assert summer.finished and summer.finished[0].digests  # done, not yet sent
        summer.cancel()
        summer.pump()
        assert sent == []

        let_go(start("resync-3"))  # uncancelled
        summer.pump()
        assert [(p, type(b).__name__, b.tag) for p, b in sent] == [("alpha", "Sums", "resync-3")]


class Refusing:
    """A pacer over its rate: no chunk of the copy may be read now."""

    def start(self) -> None:
        pass

    def take(self, n: int, now: float | None = None) -> bool:
        return False


def copy_part_read(c: BlockCopier, left: tuple[int, int]):
    """A copy of the first 8 MiB whose pacer lets nothing more be read, as if all but the
    range ``left`` had been read and sent already."""
    c.pacer = Refusing()  # type: ignore[assignment]
    c.start("b", "t", [(0, 8 * MiB)])
    job = c.jobs["b"]
    job.ranges.clear()
    job.ranges.append(left)
    return job


def test_the_applications_writes_folded_in_go_first_and_unpaced() -> None:
    """A fold (node.resync_fold) sends again the bytes written over what the copy had read:
    those bytes only, before the rest, and even while the pacer holds the rest back (they
    are the application's own writes; a copy slowed under them never ends)."""
    c, sent = make()
    job = copy_part_read(c, (6 * MiB, 2 * MiB))
    added = job.extend([(4096, 4096), (0, 8192), (MiB, 512), (7 * MiB, 4096)])
    assert added == 8192 + 512  # 7 MiB is read later anyway: not added
    c.pump()
    blocks = [(b.offset, len(b.data)) for b in sent if isinstance(b, Block)]
    assert blocks == [(0, 8192), (MiB, 512)]  # the 2 MiB left wait for the pacer
    assert not any(isinstance(b, BlockDone) for b in sent)
    assert c.resent_total["b"] == 8192 + 512
    c.pacer = None
    c.pump()
    assert isinstance(sent[-1], BlockDone) and sent[-1].total == 2 * MiB + 8192 + 512


def test_many_small_writes_folded_in_are_read_in_few_turns_of_bounded_size() -> None:
    """4 KiB writes all over the volume: those close together are read as one (the bytes
    between as of now, which is as good), and a turn of the loop reads at most HOT_PER_TURN
    of them, so the application's writes waiting behind the turn are not held long."""
    c, sent = make()
    job = copy_part_read(c, (7 * MiB, MiB))
    spaced = [(i * 128 * 1024, 4096) for i in range(40)]  # 128 KiB apart: one read each
    close = [(200 * MiB + i * 128 * 1024, 4096) for i in range(300)]
    close += [(250 * MiB, 4096), (250 * MiB + 16 * 1024, 4096)]  # 16 KiB apart: one read
    assert job.extend(spaced + close) == 342 * 4096
    counts = []
    while job.hot:
        before = len(sent)
        c.pump()
        counts.append(len(sent) - before)
    assert max(counts) == copier_mod.HOT_PER_TURN and len(counts) == -(-341 // max(counts))
    blocks = [(b.offset, len(b.data)) for b in sent if isinstance(b, Block)]
    assert len(blocks) == 341 and blocks[-1] == (250 * MiB, 20 * 1024)
    assert not any(isinstance(b, BlockDone) for b in sent)  # the paced MiB is still left


def test_writes_folded_into_a_checksummed_copy_wait_for_its_scan() -> None:
    """A chunk the scan read before the write may still be queued for sending: the bytes
    written go after it, or the receiver would write the older chunk over them."""
    c, sent = make()
    gate = threading.Event()
    read = c.read
    c.read = lambda off, n: (gate.wait(5), read(off, n))[1]
    c.start("b", "t", [(0, 4 * MiB)], skip=offered({}))
    job = c.jobs["b"]
    assert job.scan is not None
    deadline = time.monotonic() + 5
    while job.scan.reading_end == 0 and time.monotonic() < deadline:
        time.sleep(0.001)  # the scan is at its first chunk (waiting on the gate)
    assert job.extend([(0, 4096)]) == 4096
    c.pump()
    assert not [b for b in sent if isinstance(b, Block) and len(b.data) == 4096]
    gate.set()
    scanned(c)
    blocks = [(b.offset, len(b.data)) for b in sent if isinstance(b, Block) and len(b.data)]
    assert blocks[-1] == (0, 4096) and len(blocks) == 5
    assert isinstance(sent[-1], BlockDone) and sent[-1].total == 4 * MiB + 4096


def test_ranges_a_fold_adds_are_joined_and_those_read_later_anyway_left_out() -> None:
    assert copier_mod.joined([(5, 10), (0, 5), (20, 1), (21, 4), (40, 2)]) == [
        (0, 15),
        (20, 5),
        (40, 2),
    ]
    assert copier_mod.joined([(0, 4), (10, 4)], gap=6) == [(0, 14)]
    assert copier_mod.joined([(0, 4), (11, 4)], gap=6) == [(0, 4), (11, 4)]
    # spans (start, end) held whole, joined where they touch
    spans = [(0, 12), (12, 18), (32, 40)]
    assert copier_mod.outside([(0, 10), (5, 10), (20, 5), (30, 10)], spans) == [
        (20, 5),
        (30, 10),
    ]
    assert copier_mod.outside([(5, 1)], [(0, 5), (6, 9)]) == [(5, 1)]
    assert copier_mod.outside([(0, 4)], []) == [(0, 4)]
