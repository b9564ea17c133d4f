"""The secondary pipeline against a fake node (no sockets, no disks): what it logs, what it
refuses, and what it asks the primary for, for each kind of UPDATE a hostile network sends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace

from replengine.log.record import Record
from replengine.node.secondary import Secondary
from replengine.wire.protocol import Flag, Header, MsgType, Update, Updates, decode

UUID = uuid.UUID("6f1c2a9e-3d4b-4c5d-8e6f-7a8b9c0d1e2f")


@dataclass
class FakeSRL:
    history: list = field(default_factory=lambda: [(1, 1)])
    start_lsn: int = 1
    end_lsn: int = 5
    appended: list = field(default_factory=list)
    full: bool = False
    room: int | None = None  # records that fit before the SRL is full (None: no limit)

    @property
    def epoch(self):
        return self.history[-1][0] if self.history else 0

    def append_record_nowait(self, rec, kick=False):
        if self.full:
            from replengine.errors import SRLFullError

            raise SRLFullError("full")
        self.appended.append(rec)
        return object()

    def append_records_nowait(self, recs):
        from replengine.errors import SRLFullError

        n = len(recs) if self.room is None else min(self.room, len(recs))
        if self.full or not n:
            raise SRLFullError("full")
        if self.room is not None:
            self.room -= n
        self.appended += recs[:n]
        return object(), n

    def set_history(self, h):
        self.history = list(h)


@dataclass
class FakeTransport:
    sent: list = field(default_factory=list)

    def send(self, peer, frames):
        self.sent.append((peer, decode(frames, UUID).body))
        return True


@dataclass
class FakeNode:
    srl: FakeSRL = field(default_factory=FakeSRL)
    transport: FakeTransport = field(default_factory=FakeTransport)
    known_epoch: int = 1
    following: str = "alpha"
    me: str = "beta"
    heartbeat_s: float = 0.3
    rewinder: object = None
    dcm_rx: object = None
    primary_history: list = field(default_factory=lambda: [(1, 1)])
    cleared: list = field(default_factory=list)
    queued: list = field(default_factory=list)
    followed: list = field(default_factory=list)

    def __post_init__(self):
        self.cfg = SimpleNamespace(uuid=UUID)
        self.volume = SimpleNamespace(size=1 << 20)
        self.applier = SimpleNamespace(clear=self.cleared.append, applied_end=5)
        self.watcher = SimpleNamespace(
            put=lambda p, rec: self.queued.append(rec),
            put_many=lambda p, recs: self.queued.extend(recs),
            background=lambda srl: None,
            take_durable=lambda: False,
            durable_end=5,
        )
        self.ops = SimpleNamespace(pulled_bytes=0, pull_source="")
        hello = SimpleNamespace(history=self.primary_history)
        self.peers = {"alpha": SimpleNamespace(hello=hello)}

    def warn_once(self, key, msg, *args):
        pass

    def follow(self, peer, h):
        self.followed.append(h.history)


def hdr(epoch=1, sender="alpha", flags=0):
    return Header(MsgType.UPDATE, UUID, epoch, sender, flags)


def test_the_next_record_is_logged_and_queued_for_the_volume() -> None:
    node = FakeNode()
    sec = Secondary(node)
    sec.on_update(hdr(), Update(5, 1, 0, b"x" * 4096))
    assert [r.lsn for r in node.srl.appended] == [5] and sec.assigned_end == 6
    assert [r.lsn for r in node.queued] == [5]


def test_an_older_epoch_is_fenced_and_nothing_is_logged() -> None:
    node = FakeNode(known_epoch=2)
    Secondary(node).on_update(hdr(epoch=1), Update(5, 1, 0, b"x"))
    assert not node.srl.appended


def test_a_gap_asks_for_a_resend_from_our_end_once_per_beat() -> None:
    node = FakeNode()
    sec = Secondary(node)
    sec.on_update(hdr(), Update(7, 1, 0, b"x"))
    sec.on_update(hdr(), Update(8, 1, 0, b"x"))
    nacks = [b for _, b in node.transport.sent if type(b).__name__ == "Nack"]
    assert [n.expected for n in nacks] == [5] and not node.srl.appended


def test_a_duplicate_is_answered_with_an_ack_not_logged_twice() -> None:
    node = FakeNode()
    sec = Secondary(node)
    sec.on_update(hdr(), Update(4, 1, 0, b"x"))
    assert not node.srl.appended
    assert any(type(b).__name__ == "Ack" for _, b in node.transport.sent)


def test_a_record_outside_the_volume_is_refused() -> None:
    node = FakeNode()
    Secondary(node).on_update(hdr(), Update(5, 1, (1 << 20) - 10, b"x" * 4096))
    assert not node.srl.appended


def test_a_record_whose_epoch_its_primary_does_not_name_is_refused() -> None:
    node = FakeNode()
    Secondary(node).on_update(hdr(), Update(5, 2, 0, b"x"))
    assert not node.srl.appended


def test_an_empty_epoch_of_ours_gives_way_to_the_primarys_line() -> None:
    """We were promoted (epoch 2 at LSN 5) and lost before writing; the primary's line went
    1 -> 3 from LSN 9: its epoch-1 record 5 is taken and our history joined to its."""
    node = FakeNode(
        srl=FakeSRL(history=[(1, 1), (2, 5)]), known_epoch=3, primary_history=[(1, 1), (3, 9)]
    )
    Secondary(node).on_update(hdr(epoch=3), Update(5, 1, 0, b"x"))
    assert [r.lsn for r in node.srl.appended] == [5]
    assert node.srl.history == [(1, 1), (3, 9)]


def test_no_record_is_taken_while_a_rewind_waits_for_its_blocks() -> None:
    node = FakeNode(rewinder=SimpleNamespace(streaming=False))
    Secondary(node).on_update(hdr(), Update(5, 1, 0, b"x"))
    assert not node.srl.appended


def test_records_refused_during_a_dcm_resync_are_asked_for_when_it_ends() -> None:
    """The primary streams from the resync's resume LSN as soon as its last block is sent;
    what arrives before the blocks are all written is refused, and asked for again the
    moment they are, not when the primary finds us stuck two heartbeats later."""
    rx = SimpleNamespace(done=False)
    node = FakeNode(dcm_rx=rx)
    sec = Secondary(node)
    sec.on_update(hdr(), Update(5, 1, 0, b"x"))
    assert not node.srl.appended and not node.transport.sent
    rx.done = True
    sec.assigned_end = 5  # restart_log_at(resume_lsn=5)
    sec.copy_ended("alpha")
    nacks = [(p, b.expected) for p, b in node.transport.sent if type(b).__name__ == "Nack"]
    assert nacks == [("alpha", 5)]
    sec.copy_ended("alpha")  # once: nothing refused since
    assert len(node.transport.sent) == 1


def test_a_copy_that_refused_nothing_asks_for_nothing() -> None:
    node = FakeNode(rewinder=SimpleNamespace(streaming=True))
    sec = Secondary(node)
    sec.on_update(hdr(), Update(5, 1, 0, b"x"))
    sec.copy_ended("alpha")
    assert not any(type(b).__name__ == "Nack" for _, b in node.transport.sent)


def test_a_full_srl_drops_the_update_and_asks_again_after_a_clear() -> None:
    node = FakeNode(srl=FakeSRL(full=True))
    sec = Secondary(node)
    sec.on_update(hdr(), Update(5, 1, 0, b"x"))
    assert sec.srl_full and sec.assigned_end == 5
    node.srl.full = False
    sec.after_clear()
    assert any(type(b).__name__ == "Nack" for _, b in node.transport.sent)


def test_a_pull_refused_for_room_is_asked_again_once_the_log_is_cleared() -> None:
    """A promotion pulling into its full log clears what it has applied
    (failover.promotion._make_room): the peer pulled from is asked to resend at once, not
    a heartbeat later, and not before the log's start has moved."""
    node = FakeNode(following="", srl=FakeSRL(full=True))
    node.ops.pull_source = "gamma"
    sec = Secondary(node)
    sec.on_update(hdr(flags=Flag.PULLED, sender="gamma"), Update(5, 1, 0, b"x"))
    sec.after_clear()
    assert not node.transport.sent  # nothing cleared yet
    node.srl.start_lsn, node.srl.full = 4, False
    sec.after_clear()
    assert [(p, b.expected) for p, b in node.transport.sent] == [("gamma", 5)]
    sec.after_clear()
    assert len(node.transport.sent) == 1  # once per clear


def test_a_pulled_record_from_a_peer_we_do_not_follow_is_taken() -> None:
    node = FakeNode(following="")
    Secondary(node).on_update(hdr(flags=Flag.PULLED), Update(5, 1, 0, b"x" * 10))
    assert [r.lsn for r in node.srl.appended] == [5] and node.ops.pulled_bytes == 10


def batch(first: int, n: int, epoch: int = 1, clear_end: int = 0, offset: int = 0) -> Updates:
    return Updates([Record(first + i, epoch, offset, b"x" * 512) for i in range(n)], clear_end)


def test_a_batch_is_logged_in_order_queued_and_its_clear_taken() -> None:
    node = FakeNode()
    sec = Secondary(node)
    sec.on_updates(hdr(), batch(5, 4, clear_end=3))
    assert [r.lsn for r in node.srl.appended] == [5, 6, 7, 8] and sec.assigned_end == 9
    assert [r.lsn for r in node.queued] == [5, 6, 7, 8]
    assert node.cleared and set(node.cleared) == {3}


def test_a_batch_overlapping_what_is_logged_logs_only_the_new_records() -> None:
    node = FakeNode()
    sec = Secondary(node)
    sec.on_updates(hdr(), batch(3, 4))  # 3, 4 are logged already (end 5)
    assert [r.lsn for r in node.srl.appended] == [5, 6]


def test_a_batch_after_a_gap_asks_for_a_resend_and_logs_nothing() -> None:
    node = FakeNode()
    Secondary(node).on_updates(hdr(), batch(7, 3))
    nacks = [b for _, b in node.transport.sent if type(b).__name__ == "Nack"]
    assert [n.expected for n in nacks] == [5] and not node.srl.appended


def test_a_batch_stops_at_its_first_record_outside_the_volume() -> None:
    node = FakeNode()
    recs = batch(5, 4).records
    recs[2] = Record(7, 1, (1 << 20) - 10, b"x" * 512)
    sec = Secondary(node)
    sec.on_updates(hdr(), Updates(recs))
    assert [r.lsn for r in node.srl.appended] == [5, 6] and sec.assigned_end == 7


def test_a_batch_that_fills_the_srl_logs_what_fits_and_asks_again_after_a_clear() -> None:
    node = FakeNode(srl=FakeSRL(room=2))
    sec = Secondary(node)
    sec.on_updates(hdr(), batch(5, 4))
    assert [r.lsn for r in node.srl.appended] == [5, 6]
    assert sec.srl_full and sec.assigned_end == 7 and [r.lsn for r in node.queued] == [5, 6]
    node.srl.room = None
    sec.after_clear()
    nacks = [b for _, b in node.transport.sent if type(b).__name__ == "Nack"]
    assert [n.expected for n in nacks] == [7]


def test_a_batch_crossing_into_a_newer_epoch_joins_our_history_at_its_first_record() -> None:
    """Ours went 1 -> 2 at LSN 5 (promoted, lost before writing); the primary's went 1 -> 3
    at LSN 7. A batch of LSNs 5..8 (epoch 1, then 3) is logged whole, and our history joined
    to the primary's before the first record that needs it."""
    node = FakeNode(
        srl=FakeSRL(history=[(1, 1), (2, 5)]), known_epoch=3, primary_history=[(1, 1), (3, 7)]
    )
    recs = batch(5, 2, epoch=1).records + batch(7, 2, epoch=3).records
    sec = Secondary(node)
    sec.on_updates(hdr(epoch=3), Updates(recs))
    assert [(r.lsn, r.epoch) for r in node.srl.appended] == [(5, 1), (6, 1), (7, 3), (8, 3)]
    assert node.srl.history == [(1, 1), (3, 7)] and sec.assigned_end == 9


def test_a_batch_whose_record_epoch_its_primary_does_not_name_stops_there() -> None:
    node = FakeNode()
    recs = batch(5, 2).records + batch(7, 2, epoch=2).records
    sec = Secondary(node)
    sec.on_updates(hdr(), Updates(recs))
    assert [r.lsn for r in node.srl.appended] == [5, 6] and sec.assigned_end == 7


def test_a_resend_of_another_epochs_record_at_a_logged_lsn_is_not_acknowledged() -> None:
    """We logged LSNs 3 and 4 in epoch 2 (a primary since replaced); the primary we follow
    now sends LSN 4 of its epoch 3. It is not ours: acknowledging it would have the primary
    count this node as holding a write it does not hold. The handshake runs again instead
    (it finds the divergent tail and rewinds it)."""
    node = FakeNode(
        srl=FakeSRL(history=[(1, 1), (2, 3)]), known_epoch=3, primary_history=[(1, 1), (3, 3)]
    )
    sec = Secondary(node)
    sec.on_update(hdr(epoch=3), Update(4, 3, 0, b"x"))
    assert not node.srl.appended and not node.transport.sent
    assert node.followed == [[(1, 1), (3, 3)]]
    node.followed.clear()
    sec.on_updates(hdr(epoch=3), batch(3, 4, epoch=3))  # LSNs 3..6: two of them ours
    assert not node.srl.appended and not node.transport.sent and not node.queued
    assert node.followed == [[(1, 1), (3, 3)]]
    # the same LSNs of our own epoch are resends: acknowledged, not logged twice
    sec.on_updates(hdr(epoch=3), batch(3, 2, epoch=2))
    assert not node.srl.appended
    assert [type(b).__name__ for _, b in node.transport.sent] == ["Ack"]
