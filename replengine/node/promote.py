"""The node's side of a promotion: what failover.promotion.Promotion may see and do here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from replengine.failover.planner import NodeLog
from replengine.failover.promotion import PeerView
from replengine.log.history import normalise
from replengine.wire.protocol import Flag, Pull

if TYPE_CHECKING:
    from replengine.node.core import Node


@dataclass
class NodePromotionContext:
    """Adapts the node to failover.promotion.PromotionContext."""

    node: Node

    @property
    def me(self) -> str:
        return self.node.me

    @property
    def heartbeat_s(self) -> float:
        return self.node.heartbeat_s

    def peer_views(self) -> Sequence[PeerView]:
        out = []
        for p in self.node.peers.values():
            h = p.hello
            if h is None:
                continue
            out.append(
                PeerView(
                    p.name,
                    p.last_seen,
                    bool(p.rejected),
                    h.role,
                    normalise(h.history),
                    h.start_lsn,
                    h.end_lsn,
                    h.consistent,
                    p.epoch,
                    p.alive(self.node.heartbeat_s),
                    p.answered_at,
                )
            )
        return out

    def peer_count(self) -> int:
        return len(self.node.peers)

    def local_log(self) -> NodeLog:
        srl = self.node.srl
        return NodeLog(
            self.node.me, normalise(srl.history), srl.start_lsn, self.node.watcher.durable_end
        )

    def local_consistent(self) -> bool:
        return self.node.consistent and self.node.rewinder is None

    def highest_epoch(self) -> int:
        node = self.node
        return max([node.known_epoch, node.epoch] + [p.epoch for p in node.peers.values()])

    def node_slot(self) -> tuple[int, int]:
        names = list(self.node.cfg.nodes)
        return names.index(self.node.me), len(names)

    def srl_full(self) -> str | None:
        node = self.node
        if not node.secondary.srl_full:
            return None
        srl = node.srl
        return (
            f"the SRL of {node.me} is full ({srl.used_bytes} of {srl.capacity} bytes used, "
            f"records [{srl.start_lsn}, {node.watcher.durable_end}) not yet cleared)"
        )

    def make_room(self) -> tuple[int, int] | None:
        node = self.node
        applier = node.applier
        first, applied = node.srl.start_lsn, applier.applied_end
        if applied <= max(first, applier.pending_clear):
            return None
        # the applier flushes the volume, then moves the log's start; the secondary asks
        # the pull's source to resend from where the log refused once it has (after_clear)
        applier.clear(applied)
        return first, applied

    def start_pull(self, source: str, first: int, end: int) -> None:
        self.node.ops.pull_source = source
        self.node.send(source, Pull(first, end))

    def stop_pull(self) -> None:
        self.node.ops.pull_source = ""

    def pulled_bytes(self) -> int:
        return self.node.ops.pulled_bytes

    def become_primary(self, epoch: int) -> int:
        self.node.become_primary(epoch)
        self.node.ops.pull_source = ""
        return self.node.watcher.durable_end  # where the new epoch starts

    def refused_since(self) -> dict[str, float]:
        return dict(self.node.transport.watch.refused)

    def announce(self) -> None:
        """A HELLO to every peer that asks each to answer at once: the probe then takes a
        round trip, not up to a heartbeat of waiting for the peers' next beats. A peer
        whose connection is down is first tried again at once: a dead one refuses it
        within a round trip, and the probe need not wait for it."""
        node = self.node
        for p in node.peers.values():
            if not p.alive(node.heartbeat_s):
                node.transport.reconnect(p.name)
        node.beacon(Flag.ANSWER)


__all__ = ["NodePromotionContext"]
