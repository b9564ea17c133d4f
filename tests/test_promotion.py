"""The promotion state machine against a fake node (no sockets, no disks): each decision a
`replctl promote` can end in, as the operator sees it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from replengine.failover.planner import NodeLog
from replengine.failover.promotion import (
    ANSWER_WAIT_S,
    QUORUM_WAIT_S,
    PeerView,
    Promotion,
    PromotionRefused,
    next_epoch,
)

H = ((1, 1),)


@dataclass
class FakeNode:
    me: str = "gamma"
    slot: tuple[int, int] = (1, 4)  # second of four in the config: owns epochs 2, 6, 10...
    heartbeat_s: float = 0.1
    end: int = 10
    start: int = 1
    history: tuple = H
    consistent: bool = True
    peers: list[PeerView] = field(default_factory=list)
    total_peers: int = 3
    full: str | None = None
    #: what make_room() answers in turn: the LSNs cleared, or None (nothing more yet)
    room: list = field(default_factory=list)
    pulls: list[tuple[str, int, int]] = field(default_factory=list)
    promoted: list[int] = field(default_factory=list)
    refused: dict[str, float] = field(default_factory=dict)

    def peer_views(self):
        return self.peers

    def peer_count(self):
        return self.total_peers

    def refused_since(self):
        return self.refused

    def local_log(self):
        return NodeLog(self.me, self.history, self.start, self.end)

    def local_consistent(self):
        return self.consistent

    def highest_epoch(self):
        return max([p.epoch for p in self.peers] + [h[0] for h in self.history[-1:]] + [0])

    def node_slot(self):
        return self.slot

    def srl_full(self):
        return self.full

    def make_room(self):
        return self.room.pop(0) if self.room else None

    def start_pull(self, source, first, end):
        self.pulls.append((source, first, end))

    def stop_pull(self):
        pass

    def pulled_bytes(self):
        return 0

    def become_primary(self, epoch):
        self.promoted.append(epoch)
        return self.end

    def announce(self):
        pass


def peer(
    name, end, start=1, role="secondary", history=H, consistent=True, seen=1e12, answered=None
):
    """A peer's latest HELLO, heard at ``seen``; by default the answer to the probe."""
    return PeerView(
        name,
        seen,
        False,
        role,
        history,
        start,
        end,
        consistent,
        history[-1][0],
        answered_at=seen if answered is None else answered,
    )


def run(p: Promotion):
    return p.step(now=1e13)  # past the probe window


def test_up_to_date_node_is_promoted_with_the_next_epoch() -> None:
    node = FakeNode(peers=[peer("alpha", 10), peer("beta", 8)])
    out = run(Promotion(node, force=False, min_peers=1))
    assert out["epoch"] == 2 and node.promoted == [2] and not node.pulls


def test_a_reachable_primary_refuses() -> None:
    node = FakeNode(peers=[peer("alpha", 10, role="primary")])
    with pytest.raises(PromotionRefused, match="alpha is primary and reachable"):
        run(Promotion(node, force=False, min_peers=1))
    assert not node.promoted


def test_too_few_peers_refuses_unless_forced() -> None:
    node = FakeNode(peers=[])
    with pytest.raises(PromotionRefused, match="only 0 of 3 peers reachable"):
        run(Promotion(node, force=False, min_peers=1))
    assert run(Promotion(node, force=True, min_peers=1))["epoch"] == 2


def blank(name, heard=0):
    """A node added, or back on new disks: its log is empty; ``heard``, the epoch its HELLO
    passes on (the newest it heard of)."""
    return PeerView(name, 1e12, False, "secondary", (), 1, 1, True, heard, answered_at=1e12)


def test_a_peer_with_an_empty_log_does_not_count_once_a_newer_epoch_is_known() -> None:
    """Fault campaign, seed 11704: gamma, just added back on new disks, was the only peer
    beta reached, and beta had heard of an epoch its log never followed (a primary promoted
    while it was cut off); its promotion went ahead and discarded what alpha and delta held
    of that epoch."""
    node = FakeNode(peers=[blank("delta", heard=5)])  # alpha and beta unreachable
    with pytest.raises(
        PromotionRefused,
        match=r"only 0 of 3 peers reachable \(none; delta reachable but with an empty log",
    ):
        run(Promotion(node, force=False, min_peers=1))
    assert not node.promoted
    node.peers.append(peer("alpha", 10, history=((1, 1), (5, 10))))  # one that followed it
    assert run(Promotion(node, force=False, min_peers=1))["role"] == "primary"


def test_a_peer_with_an_empty_log_still_counts_without_a_newer_epoch() -> None:
    """A new node being synced when its primary dies does not keep an up-to-date secondary
    from taking over (tests/test_full_sync_auto.py, for real); nor does it on a new
    resource, where every log is empty."""
    node = FakeNode(peers=[blank("delta")])
    assert run(Promotion(node, force=False, min_peers=1))["epoch"] == 2
    node = FakeNode(history=(), end=1, peers=[blank("alpha"), blank("beta")], total_peers=3)
    assert run(Promotion(node, force=False, min_peers=2))["role"] == "primary"


def test_min_peers_asks_for_no_more_than_the_peers_that_may_hold_data() -> None:
    """Two nodes, the secondary replaced by a new one: the primary is the only node with
    data, and the new one cannot be ahead of it, whatever epochs it heard of."""
    node = FakeNode(peers=[blank("delta", heard=5)], total_peers=1)
    assert run(Promotion(node, force=False, min_peers=1))["role"] == "primary"


def test_a_node_behind_pulls_first_then_promotes() -> None:
    node = FakeNode(end=6, peers=[peer("beta", 10)])
    p = Promotion(node, force=False, min_peers=1)
    assert run(p) is None and node.pulls == [("beta", 6, 10)]
    node.end = 10
    assert run(p)["pulled_records"] == 4 and node.promoted == [2]


def test_a_full_srl_during_the_pull_refuses_at_once_naming_the_source() -> None:
    node = FakeNode(end=6, peers=[peer("beta", 10)])
    p = Promotion(node, force=False, min_peers=1)
    assert run(p) is None
    node.full = "the SRL of gamma is full"
    with pytest.raises(PromotionRefused, match="SRL of gamma is full.*promote beta instead"):
        p.step(now=p.t0)  # long before the pull deadline
    assert not node.promoted


def test_a_full_srl_clears_its_applied_records_when_every_other_node_holds_them(
    caplog,
) -> None:
    """A planned switchover to an async node that was behind: the demoted primary no
    longer sends the clears that would have emptied its log, and the pull of what it lacks
    finds it full. Every other node answered, consistent and ahead of it, so no log-diff
    catch-up can need its applied records: it clears them and is promoted, as asked,
    instead of refusing with "promote beta instead" (the fault campaign's `switchover`)."""
    node = FakeNode(end=6, start=2, peers=[peer("alpha", 10), peer("beta", 10), peer("delta", 8)])
    p = Promotion(node, force=False, min_peers=1)
    assert run(p) is None and node.pulls == [("alpha", 6, 10)]
    node.full = "the SRL of gamma is full"
    node.room = [(2, 6)]
    assert p.step(now=p.t0) is None
    assert "records [2, 6), applied here, are cleared" in caplog.text
    assert "every other node (alpha, beta, delta) holds them" in caplog.text
    node.full, node.end = None, 10
    out = p.step(now=p.t0)
    assert out["pulled_records"] == 4 and node.promoted
    assert out["made_room"] == {"first_lsn": 2, "end_lsn": 6}


@pytest.mark.parametrize(
    "others",
    [
        # delta lacks records this node holds: its catch-up would need this node's log
        [peer("beta", 10), peer("delta", 5)],
        # delta did not answer: what it lacks is unknown
        [peer("beta", 10)],
        # delta is being rebuilt from blocks: it resumes from the log where its copy began
        [peer("beta", 10), peer("delta", 9, consistent=False)],
    ],
    ids=["a-node-behind", "a-node-unreachable", "a-node-inconsistent"],
)
def test_a_full_srl_still_refuses_naming_the_source_when_a_node_may_need_its_log(
    others,
) -> None:
    node = FakeNode(end=6, start=2, peers=[peer("alpha", 10), *others])
    p = Promotion(node, force=False, min_peers=1)
    assert run(p) is None and node.pulls[0][0] == "alpha"
    node.full = "the SRL of gamma is full"
    node.room = [(2, 6)]
    with pytest.raises(PromotionRefused, match="SRL of gamma is full.*promote alpha instead"):
        p.step(now=p.t0)
    assert node.room == [(2, 6)] and not node.promoted  # nothing cleared


def test_a_full_srl_pulling_from_an_inconsistent_node_clears_its_applied_records(
    caplog,
) -> None:
    """beta, being rebuilt from blocks, cannot be promoted instead: refusing would leave no
    node promotable (the primary is gone). gamma gives up the applied records its log still
    holds, waits while there are none (its volume takes what is logged), and the pull goes
    on; the promotion event says what it gave up (tests/test_invalidate.py, for real)."""
    node = FakeNode(end=6, start=2, peers=[peer("alpha", 6), peer("beta", 10, consistent=False)])
    p = Promotion(node, force=False, min_peers=1)
    assert run(p) is None and node.pulls == [("beta", 6, 10)]
    node.full = "the SRL of gamma is full"
    node.room = [(2, 5), None, (5, 6)]
    for _ in range(3):
        assert p.step(now=p.t0) is None  # long before the pull deadline
    assert "records [2, 5), applied here, are cleared" in caplog.text
    node.full, node.end = None, 10
    out = p.step(now=p.t0)
    assert out["pulled_records"] == 4 and node.promoted
    assert p.decision["made_room"] == {"first_lsn": 2, "end_lsn": 6}


def test_a_pull_that_brings_nothing_is_asked_for_again_from_where_the_log_ends() -> None:
    """The request, or the records on their way, went with a connection the transport gave
    up on (a lossy link): asked for again after 3 heartbeats without a record, from where
    this node's log has got to, and not while records come."""
    node = FakeNode(end=6, peers=[peer("beta", 10)])
    p = Promotion(node, force=False, min_peers=1)
    assert run(p) is None and node.pulls == [("beta", 6, 10)]
    t = p.progress[1]
    assert p.step(now=t + 0.2) is None and len(node.pulls) == 1  # within 3 heartbeats
    assert p.step(now=t + 0.31) is None and node.pulls[-1] == ("beta", 6, 10)
    node.end = 8  # records come: no retry while they do
    assert p.step(now=t + 0.5) is None and p.step(now=t + 0.75) is None
    assert len(node.pulls) == 2
    assert p.step(now=t + 0.85) is None and node.pulls[-1] == ("beta", 8, 10)
    assert p.pull_retries == 2
    node.end = 10
    assert p.step(now=t + 0.9)["pulled_records"] == 4 and node.promoted


def test_a_full_srl_that_cannot_be_cleared_is_refused_at_the_pulls_deadline() -> None:
    """Its volume hangs: nothing it logged is applied, so nothing can be cleared."""
    node = FakeNode(end=6, peers=[peer("alpha", 6), peer("beta", 10, consistent=False)])
    p = Promotion(node, force=False, min_peers=1)
    assert run(p) is None
    node.full = "the SRL of gamma is full"
    assert p.step(now=p.t0) is None
    with pytest.raises(PromotionRefused, match=r"could not pull LSNs \[6, 10\) from beta"):
        p.step(now=p.deadline + 1)
    assert not node.promoted and p.decision["made_room"] is None


def test_a_node_lacking_records_no_log_holds_is_refused_naming_the_best() -> None:
    """Its gap [3, 40) was cleared from every reachable SRL (beta starts at 30)."""
    node = FakeNode(end=3, peers=[peer("beta", 40, start=30)])
    with pytest.raises(PromotionRefused, match=r"lacks LSNs \[3, 40\).*promote beta instead"):
        run(Promotion(node, force=False, min_peers=1))
    assert not node.promoted and not node.pulls
    assert run(Promotion(node, force=True, min_peers=1))["epoch"] == 2


def test_a_divergent_tail_is_refused_naming_the_best() -> None:
    node = FakeNode(end=12, history=((1, 1),), peers=[peer("beta", 15, history=((1, 1), (2, 10)))])
    with pytest.raises(PromotionRefused, match=r"divergent tail \(LSNs \[10, 12\).*promote beta"):
        run(Promotion(node, force=False, min_peers=1))


def test_records_only_an_inconsistent_peer_logged_are_pulled_from_it() -> None:
    """beta is being rebuilt from blocks (invalidated, sync --full): not promotable, but its
    log may hold acknowledged records no consistent node has (tests/test_invalidate.py)."""
    node = FakeNode(end=6, peers=[peer("alpha", 6), peer("beta", 10, consistent=False)])
    p = Promotion(node, force=False, min_peers=1)
    assert run(p) is None and node.pulls == [("beta", 6, 10)]
    assert p.decision["best"] == "beta" and p.decision["ends"]["beta"] == 10


@pytest.mark.parametrize(
    "beta",
    [
        peer("beta", 40, start=30, consistent=False),  # our gap no longer in its log
        peer("beta", 15, history=((1, 1), (6, 5)), consistent=False),  # our tail diverges
    ],
)
def test_an_inconsistent_peers_log_that_would_refuse_the_promotion_is_left_out(
    beta, caplog
) -> None:
    """As before it was used: the promotion goes on with the consistent nodes' logs, but
    not silently: the records only beta holds may have been acknowledged writes, so the
    log's error and the promotion event name them."""
    node = FakeNode(end=6, peers=[peer("alpha", 6), beta])
    p = Promotion(node, force=False, min_peers=1)
    assert run(p) is not None
    assert node.promoted and not node.pulls
    gone = {"node": "beta", "first_lsn": 6, "end_lsn": beta.end_lsn}
    assert {k: p.decision["left_behind"][k] for k in gone} == gone
    assert f"beta, inconsistent, holds LSNs [6, {beta.end_lsn}) that no consistent" in caplog.text
    assert "promoted without them" in caplog.text


def test_nothing_is_left_behind_when_no_inconsistent_log_reaches_further() -> None:
    node = FakeNode(end=10, peers=[peer("alpha", 10), peer("beta", 8, consistent=False)])
    p = Promotion(node, force=False, min_peers=1)
    assert run(p) is not None and p.decision["left_behind"] is None


def test_an_inconsistent_node_is_refused_up_front() -> None:
    node = FakeNode(consistent=False, peers=[peer("beta", 10)])
    with pytest.raises(PromotionRefused, match="inconsistent"):
        Promotion(node, force=False, min_peers=1)


def test_the_probe_waits_for_every_peer_within_its_window() -> None:
    node = FakeNode(peers=[peer("beta", 10)])
    p = Promotion(node, force=False, min_peers=1)
    assert p.step(now=p.t0) is None  # beta only; alpha might still answer
    assert p.step(now=p.probe_until + 1)["epoch"] == 2


def test_the_probe_takes_a_peers_answer_not_a_hello_that_left_before_it_began() -> None:
    """Seed 12602: the demoted node's link congested (a queue of 400 ms), `replctl demote`
    of it answered, then another node's promotion heard its HELLO from before the demote,
    still naming it primary, and refused ("gamma is primary and reachable: demote it
    first"). A HELLO heard after the probe began is not its answer; the answer (flagged) is
    waited for. Here delta is the demoted node, gamma the one promoted."""
    node = FakeNode(total_peers=2)
    p = Promotion(node, force=False, min_peers=1)
    stale = peer("delta", 12, role="primary", seen=p.t0 + 0.01, answered=0.0)
    node.peers = [peer("alpha", 10, seen=p.t0 + 0.01), stale]
    assert p.step(now=p.probe_until + 0.01) is None  # past the first window: still waits
    node.peers[1] = peer("delta", 12, seen=p.t0 + 0.2)  # its answer: demoted, at LSN 12
    out = p.step(now=p.t0 + 0.21)
    assert out is None and node.pulls == [("delta", 10, 12)]  # pulls what delta logged
    node.end = 12
    assert p.step(now=p.t0 + 0.22)["epoch"] == 2


def test_a_peer_heard_but_not_answering_is_asked_again_and_waited_for() -> None:
    """Its answer queues behind seconds of a congested link's backlog (the HELLOs in front
    of it still name it primary, from before its demote): the probe waits past the liveness
    window, asking again every 3 heartbeats in case the question went with a lost
    connection, and decides on the answer once it comes."""
    node = FakeNode(total_peers=1, end=12)
    asked = []
    node.announce = lambda: asked.append(1)
    p = Promotion(node, force=False, min_peers=1)
    node.peers = [peer("delta", 12, role="primary", seen=p.t0 + 0.01, answered=0.0)]
    hb = node.heartbeat_s
    for k in (2.9, 3.1, 5.9, 6.1, 40.0):
        assert p.step(now=p.t0 + k * hb) is None  # 4 s: well within the answer's wait
    assert len(asked) == 4  # the probe, then again at 3.1, 6.1 and 40 heartbeats
    node.peers = [peer("delta", 12, seen=p.t0 + 4.1)]  # its answer: a secondary now
    assert p.step(now=p.t0 + 4.2)["epoch"] == 2


def test_a_peer_that_never_answers_is_taken_as_heard_when_the_wait_ends() -> None:
    """A release that does not flag its answers: its latest HELLO decides, as before, once
    the wait for an answer is over (here it still says primary: refused)."""
    node = FakeNode(total_peers=1)
    p = Promotion(node, force=False, min_peers=1)
    node.peers = [peer("delta", 12, role="primary", seen=p.t0 + 0.01, answered=0.0)]
    assert p.step(now=p.t0 + ANSWER_WAIT_S - 0.1) is None
    with pytest.raises(PromotionRefused, match="delta is primary and reachable"):
        p.step(now=p.t0 + ANSWER_WAIT_S + 0.1)


def test_the_probe_does_not_wait_for_peers_whose_connection_was_refused_since_it_began() -> None:
    """alpha (the old primary, killed) and delta refuse our connections: nothing listens
    there, no answer can come, and the failover goes on without waiting out the window. A
    refusal from before the probe began says nothing about now: that one is waited for."""
    node = FakeNode(peers=[peer("beta", 10)])
    p = Promotion(node, force=False, min_peers=1)
    node.refused = {"alpha": p.t0 + 0.01, "delta": p.t0 - 0.5}
    assert p.step(now=p.t0 + 0.02) is None  # delta's refusal is older than the probe
    node.refused["delta"] = p.t0 + 0.03
    out = p.step(now=p.t0 + 0.04)
    assert out is not None and out["epoch"] == 2 and node.promoted == [2]
    assert p.decision["refused"] == ["alpha", "delta"]


class Announcing(FakeNode):
    asked: int = 0

    def announce(self):
        self.asked += 1


def test_a_promotion_short_of_peers_waits_for_a_link_just_back() -> None:
    """gamma is promoted at the moment its links come back: its peers are reached at the
    transport's next connection attempt, up to 2 s later. It keeps listening, asking again
    every 3 heartbeats, and is promoted once beta answers (it was refused "only 0 of 3
    peers reachable" at 3 heartbeats)."""
    node = Announcing(peers=[])
    p = Promotion(node, force=False, min_peers=1)
    assert node.asked == 1
    assert p.step(now=p.t0 + 0.5) is None and node.asked == 2  # past the 3-heartbeat window
    assert p.step(now=p.t0 + 0.6) is None and node.asked == 2
    assert p.step(now=p.t0 + 2.0) is None and node.asked == 3
    node.peers = [peer("beta", 10, seen=p.t0 + 2.1)]
    out = p.step(now=p.t0 + 2.2)
    assert out is not None and out["epoch"] == 2 and node.promoted == [2]


def test_a_promotion_short_of_peers_refuses_once_the_wait_is_over() -> None:
    node = FakeNode(peers=[])
    p = Promotion(node, force=False, min_peers=1)
    assert p.step(now=p.t0 + QUORUM_WAIT_S - 0.1) is None
    with pytest.raises(PromotionRefused, match="only 0 of 3 peers reachable"):
        p.step(now=p.t0 + QUORUM_WAIT_S + 0.1)
    assert not node.promoted


def test_no_wait_for_peers_that_refused_the_connection_or_when_forced() -> None:
    """Nothing listens at a node whose connection was refused: a quorum it would complete
    cannot come in the wait, so the refusal is at once, as before; --force does not wait."""
    node = FakeNode(peers=[], total_peers=2)
    p = Promotion(node, force=False, min_peers=1)
    node.refused = {"alpha": p.t0 + 0.01, "delta": p.t0 + 0.02}
    with pytest.raises(PromotionRefused, match="only 0 of 2 peers reachable"):
        p.step(now=p.t0 + 0.05)
    node = FakeNode(peers=[])
    p = Promotion(node, force=True, min_peers=1)
    out = p.step(now=p.t0 + 0.5)
    assert out is not None and out["epoch"] == 2


def test_an_epoch_no_reachable_log_follows_makes_the_probe_wait_for_the_others() -> None:
    """gamma was cut off while beta was promoted (epoch 6) and wrote; its link is back and
    it is promoted at once. Only delta, which missed epoch 6 too, is heard yet, though
    gamma knows the epoch (from delta's HELLO): it waits for the peers not heard, and
    pulls epoch 6's records from beta once beta answers (the fault campaign, seed 14101
    round 7: promoted with delta alone, it discarded 3 acknowledged records)."""
    node = Announcing(peers=[], total_peers=3)
    p = Promotion(node, force=False, min_peers=1)
    node.peers = [replace(peer("delta", 10, seen=p.t0 + 0.01), epoch=6)]
    assert p.step(now=p.t0 + 0.5) is None and node.asked == 2
    newer = ((1, 1), (6, 10))
    node.peers.append(peer("beta", 13, history=newer, seen=p.t0 + 1.0))
    assert p.step(now=p.t0 + 1.1) is None  # pulling
    assert node.pulls == [("beta", 10, 13)]


def test_an_epoch_no_reachable_log_follows_is_waited_on_only_so_long() -> None:
    """With promote_min_peers met, a promotion that hears nobody follow the newest epoch
    goes on after QUORUM_WAIT_S, as documented for a low promote_min_peers; when every
    peer was heard or refused the connection, and when forced, it does not wait at all."""
    node = FakeNode(peers=[])
    p = Promotion(node, force=False, min_peers=1)
    node.peers = [replace(peer("delta", 10, seen=p.t0 + 0.01), epoch=6)]
    assert p.step(now=p.t0 + QUORUM_WAIT_S - 0.1) is None
    out = p.step(now=p.t0 + QUORUM_WAIT_S + 0.1)
    assert out is not None and node.promoted == [10]  # gamma's next epoch above 6
    node = FakeNode(peers=[], total_peers=2)
    p = Promotion(node, force=False, min_peers=1)
    node.peers = [replace(peer("delta", 10, seen=p.t0 + 0.01), epoch=6)]
    node.refused = {"beta": p.t0 + 0.02}
    assert p.step(now=p.t0 + 0.5) is not None
    node = FakeNode(peers=[])
    p = Promotion(node, force=True, min_peers=1)
    node.peers = [replace(peer("delta", 10, seen=p.t0 + 0.01), epoch=6)]
    assert p.step(now=p.t0 + 0.5) is not None


SPLIT = ((7, 1),)  # gamma's side of a split: its own epoch 7
NEWER = ((7, 1), (9, 60))  # the other side promoted alpha in epoch 9 at LSN 60


def test_newer_epoch_records_held_only_by_unreachable_peers_refuse_naming_them() -> None:
    """The other side of a healed split promoted alpha (epoch 9) and beta acknowledged its
    writes; both are unreachable now. gamma's log and delta's end in epoch 7: promoting
    gamma would discard epoch 9's writes, so it is refused unless forced."""
    stale = 1.0  # heard before the probe began: not an answer to it
    node = FakeNode(
        history=SPLIT,
        end=100,
        peers=[
            peer("delta", 100, history=SPLIT),
            peer("alpha", 90, role="primary", history=NEWER, seen=stale),
            peer("beta", 80, history=NEWER, seen=stale),
        ],
    )
    with pytest.raises(PromotionRefused) as err:
        run(Promotion(node, force=False, min_peers=1))
    msg = str(err.value)
    assert "alpha (primary" in msg and "held LSNs [60, 90) up to epoch 9" in msg, msg
    assert "beta (secondary" in msg and "[60, 80)" in msg and "--force" in msg, msg
    assert not node.promoted and not node.pulls
    p = Promotion(node, force=True, min_peers=1)
    assert run(p)["epoch"] == 10 and p.decision["newer_elsewhere"]


def test_a_newer_primary_lost_before_its_first_write_does_not_block() -> None:
    """beta was promoted (epoch 9 at LSN 100) and died before writing: no record of epoch
    9 exists, so the others go on (tests/test_rejoin.py runs it with real daemons)."""
    node = FakeNode(
        history=SPLIT,
        end=100,
        peers=[
            peer("delta", 100, history=SPLIT),
            peer("beta", 100, role="primary", history=((7, 1), (9, 100)), seen=1.0),
        ],
    )
    assert run(Promotion(node, force=False, min_peers=1))["epoch"] == 10


def test_an_older_tail_on_an_unreachable_peer_does_not_block() -> None:
    """A primary cut off in epoch 7 wrote on alone; the reachable side holds epoch 9: the
    cut-off tail is the one a partition discards, as under on_sync_loss = degrade."""
    node = FakeNode(
        history=NEWER,
        end=80,
        peers=[
            peer("delta", 80, history=NEWER),
            peer("alpha", 150, role="primary", history=SPLIT, seen=1.0),
            peer("beta", 90, history=NEWER, consistent=False, seen=1.0),
        ],
    )
    assert run(Promotion(node, force=False, min_peers=1))["epoch"] == 10


def test_concurrent_promotions_never_raise_the_same_epoch() -> None:
    """Two nodes promoted at once from the same knowledge get different epochs, so the one
    with the lower epoch steps down and its writes are told apart as a divergent tail."""
    for highest in range(0, 40):
        got = [next_epoch(highest, i, 4) for i in range(4)]
        assert len(set(got)) == 4 and all(e > highest for e in got)
        assert all((e - 1) % 4 == i and e - highest <= 4 for i, e in enumerate(got))
    assert [next_epoch(0, 0, 3), next_epoch(1, 1, 3), next_epoch(2, 2, 3)] == [1, 2, 3]
