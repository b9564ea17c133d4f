"""State-change events of one node (`replctl events`, like `drbdsetup events2`).

Two sources feed the hub, because they answer different questions:

- *Decisions* (a promotion and the end LSNs that chose it, a policy firing: on_sync_loss,
  srl_full, a resync starting or ending) are emitted where they are taken, with
  ``node.events.emit(kind, **fields)``: only there is the why known.
- *States* (the role, the epoch, each peer's connection and replication state, the block
  device) are found by a cheap differ the loop runs every turn (``turn()``): it compares a
  few scalars with what it saw last, so no code path that changes a state needs a hook, and
  a state that flips back within the same turn is not reported at all.

A peer's "catching-up" is held back for CATCHING_UP_HOLD_S: on a primary every write makes
each peer briefly behind until its ACK comes back; reporting that would be two events per
write. A peer that stays behind longer is reported, and back to up-to-date at once. "unknown"
(a new primary has not heard from the peer yet, for a few milliseconds) is held the same way.

Every event is one INFO line in the log and goes to every subscriber of the control socket
(op ``events``). A subscriber holds a lease it renews (the client does every few seconds);
one that stops renewing (killed, stopped, gone) is dropped when the lease runs out, so the
daemon never keeps sending, or remembering, for nobody. ZeroMQ's send queue to a client is
bounded (its high-water mark) and never blocks the loop: a client that stops reading loses
events beyond it, which the ``seq`` numbers in every event make visible.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replengine.node.states import PeerState

if TYPE_CHECKING:
    from replengine.node.core import Node

log = logging.getLogger("replengined.events")

#: how long a peer must stay catching-up before that is an event (see the module docstring)
CATCHING_UP_HOLD_S = 1.0
#: states reported only once they last CATCHING_UP_HOLD_S: passing ones are noise
HELD = (PeerState.CATCHING_UP, PeerState.UNKNOWN)
#: a subscription's lease unless the client asks for another (seconds)
DEFAULT_LEASE_S = 10.0
MAX_LEASE_S = 300.0
MAX_SUBSCRIBERS = 64
#: emit_once: the same recurring trigger at most once per this many seconds
ONCE_S = 30.0


def now_iso() -> str:
    """ISO-8601 UTC with milliseconds: ordering events of one second matters in a failover."""
    t = datetime.datetime.now(datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def format_event(ev: dict) -> str:
    """The human line of an event: time, resource, node, then what happened."""
    head = f"{ev.get('time', '')} {ev.get('resource', '')} {ev.get('node', '')}"
    return f"{head} {describe(ev)}"


def _kv(ev: dict, skip: tuple[str, ...]) -> str:
    parts = []
    for k, v in ev.items():
        if k in skip or v is None or v == "":
            continue
        if isinstance(v, dict):
            v = ",".join(f"{a}={b}" for a, b in v.items())
        elif isinstance(v, list | tuple):
            if not v:
                continue
            v = ",".join(str(x) for x in v)
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        parts.append(f"{k.replace('_', '-')} {v}")
    return " ".join(parts)


_HEAD = ("time", "resource", "node", "kind", "seq")


def describe(ev: dict) -> str:
    """What happened, without time/resource/node (also the event's log line)."""
    kind = ev.get("kind", "")
    if kind == "exists" and "peer" in ev:
        return f"exists peer {ev['peer']} " + _kv(ev, _HEAD + ("peer",))
    if kind in ("role", "epoch"):
        rest = _kv(ev, _HEAD + ("old", "new"))
        return f"{kind} {ev.get('old')} -> {ev.get('new')}" + (f" {rest}" if rest else "")
    if kind == "peer-state":
        return f"peer {ev['peer']} state {ev.get('old')} -> {ev.get('new')}"
    if kind == "policy":
        rest = _kv(ev, _HEAD + ("policy", "action"))
        return f"policy {ev.get('policy')}={ev.get('action')}" + (f" {rest}" if rest else "")
    if kind in ("peer-connected", "peer-disconnected"):
        rest = _kv(ev, _HEAD + ("peer",))
        return f"peer {ev['peer']} {kind.removeprefix('peer-')}" + (f" {rest}" if rest else "")
    rest = _kv(ev, _HEAD)
    return kind + (f" {rest}" if rest else "")


@dataclass
class Subscriber:
    client: bytes
    req_id: Any
    lease_s: float
    expires: float


@dataclass
class _PeerSeen:
    connected: bool
    state: str
    #: a state seen but not reported yet (catching-up being held), and since when
    pending: str = ""
    pending_since: float = 0.0


@dataclass
class EventHub:
    """Emits, diffs and fans out one node's events; owned by the loop thread."""

    node: Node
    subscribers: dict[tuple[bytes, Any], Subscriber] = field(default_factory=dict)
    #: called with every event (the metrics count promotions from here)
    listeners: list[Callable[[dict], None]] = field(default_factory=list)
    seq: int = 0
    _role: str = ""
    _epoch: int = -1
    _peers: dict[str, _PeerSeen] = field(default_factory=dict)
    _device: tuple = ()
    _started: bool = False
    _once: dict[str, float] = field(default_factory=dict)

    # ---- emitting -------------------------------------------------------------------------

    def emit(self, kind: str, **fields: Any) -> dict:
        """Record one event: log it, hand it to listeners and subscribers."""
        node = self.node
        self.seq += 1
        ev = {
            "time": now_iso(),
            "resource": node.cfg.name,
            "node": node.me,
            "kind": kind,
            **fields,
            "seq": self.seq,
        }
        log.info("event: %s", describe(ev))
        for fn in self.listeners:
            try:
                fn(ev)
            except Exception:  # an observer's fault must not stop the node
                log.exception("event listener failed on %s", kind)
        if self.subscribers:
            self._fan_out(ev)
        return ev

    def emit_once(self, key: str, kind: str, **fields: Any) -> None:
        """emit(), at most once per ONCE_S for ``key``: a policy that fires on every write
        (srl_full while the log stays full) is one event, not one per write."""
        now = time.monotonic()
        if now - self._once.get(key, -1e9) >= ONCE_S:
            self._once[key] = now
            self.emit(kind, **fields)

    def _fan_out(self, ev: dict) -> None:
        now = time.monotonic()
        for key, sub in list(self.subscribers.items()):
            if now > sub.expires:
                self._drop(key, "its lease ran out")
                continue
            self.node.reply_ok(sub.client, sub.req_id, {"event": ev})

    # ---- subscribers (op "events") --------------------------------------------------------

    def subscribe(self, client: bytes, req_id: Any, doc: dict) -> None:
        """A new subscription gets the current state as "exists" events, then every event;
        the same request id again renews the lease (answered, so the client knows the daemon
        is there); ``cancel`` ends it."""
        key = (client, req_id)
        now = time.monotonic()
        sub = self.subscribers.get(key)
        if doc.get("cancel"):
            if sub is not None:
                self._drop(key, "it cancelled")
            self.node.reply_ok(client, req_id, {"cancelled": True})
            return
        if sub is not None:
            sub.expires = now + sub.lease_s
            self.node.reply_ok(client, req_id, {"renewed": True})
            return
        if doc.get("renew"):
            self.node.reply_error(
                client, req_id, "no such events subscription (the daemon restarted?)"
            )
            return
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            self.node.reply_error(
                client, req_id, f"too many events subscribers ({MAX_SUBSCRIBERS}); try later"
            )
            return
        lease = min(max(float(doc.get("lease", DEFAULT_LEASE_S)), 1.0), MAX_LEASE_S)
        self.subscribers[key] = Subscriber(client, req_id, lease, now + lease)
        log.info(
            "events subscriber added: %d subscribed (lease %.0fs)", len(self.subscribers), lease
        )
        for ev in self.exists():
            self.node.reply_ok(client, req_id, {"event": ev})

    def _drop(self, key: tuple[bytes, Any], why: str) -> None:
        self.subscribers.pop(key, None)
        log.info("events subscriber dropped (%s): %d subscribed", why, len(self.subscribers))

    def expire(self) -> None:
        now = time.monotonic()
        for key, sub in list(self.subscribers.items()):
            if now > sub.expires:
                self._drop(key, "its lease ran out")

    def exists(self) -> list[dict]:
        """The current state as events of kind "exists": the resource, then each peer."""
        node = self.node
        base = {"time": now_iso(), "resource": node.cfg.name, "node": node.me, "kind": "exists"}
        dev = node.device
        out = [
            {
                **base,
                "role": str(node.role),
                "epoch": max(node.epoch, node.known_epoch),
                "end_lsn": node.watcher.durable_end,
                "following": node.following or None,
                "consistent": node.consistent,
                "device": dev.path if dev is not None else None,
            }
        ]
        for name, (connected, state) in self._peer_view().items():
            p = node.peers[name]
            out.append(
                {**base, "peer": name, "connected": connected, "state": state, "mode": p.mode}
            )
        return out

    # ---- the differ -----------------------------------------------------------------------

    def _peer_state(self, p: Any, connected: bool) -> str:
        """The state `replctl status` shows for a peer, from the same fields, cheaply."""
        node = self.node
        if node.primary is not None:
            if not connected and p.state != PeerState.DCM:
                return str(PeerState.DISCONNECTED)
            job = node.dcm.resyncs.get(p.name)
            if p.state == PeerState.DCM_RESYNC and job is not None and job.full:
                return str(PeerState.FULL_SYNC)
            return str(p.state)
        if not connected:
            return str(PeerState.DISCONNECTED)
        return str(p.hello.role) if p.hello else "unknown"

    def _peer_view(self) -> dict[str, tuple[bool, str]]:
        node = self.node
        now = time.monotonic()
        out = {}
        for name, p in node.peers.items():
            connected = p.alive(node.heartbeat_s, now)
            out[name] = (connected, self._peer_state(p, connected))
        return out

    def turn(self) -> None:
        """Called by the loop every turn: report what changed since the last turn."""
        node = self.node
        role, epoch = str(node.role), max(node.epoch, node.known_epoch)
        if not self._started:
            # the state at start is what `exists` reports; changes count from here
            self._started = True
            self._role, self._epoch = role, epoch
            self._peers = {n: _PeerSeen(c, s) for n, (c, s) in self._peer_view().items()}
            self._device = self._device_view()
            return
        if role != self._role:
            self.emit("role", old=self._role, new=role, epoch=epoch)
            self._role, self._epoch = role, epoch
        elif epoch != self._epoch:
            self.emit("epoch", old=self._epoch, new=epoch, primary=node.following or None)
            self._epoch = epoch
        now = time.monotonic()
        for name, (connected, state) in self._peer_view().items():
            seen = self._peers.get(name)
            if seen is None:  # added by replctl adjust
                self._peers[name] = _PeerSeen(connected, state)
                self.emit("peer-added", peer=name, connected=connected, state=state)
                continue
            if connected != seen.connected:
                seen.connected = connected
                self.emit("peer-connected" if connected else "peer-disconnected", peer=name)
                if not connected:
                    self._on_sync_peer_lost(name)
            self._diff_state(name, seen, state, now)
        for name in list(self._peers):
            if name not in node.peers:
                del self._peers[name]
                self.emit("peer-removed", peer=name)
        dev = self._device_view()
        if dev != self._device:
            self._device_changed(self._device, dev)
            self._device = dev
        if self.subscribers:
            self.expire()

    def _diff_state(self, name: str, seen: _PeerSeen, state: str, now: float) -> None:
        if state == seen.state:
            seen.pending = ""
            return
        if state in HELD and seen.state != PeerState.DISCONNECTED:
            if seen.pending != state:
                seen.pending, seen.pending_since = state, now
                return
            if now - seen.pending_since < CATCHING_UP_HOLD_S:
                return
        old, seen.state, seen.pending = seen.state, state, ""
        self.emit("peer-state", peer=name, old=old, new=state)

    def _on_sync_peer_lost(self, name: str) -> None:
        """on_sync_loss=block: writes wait for the lost sync peer (degrade is emitted where
        the primary degrades it)."""
        node = self.node
        p = node.peers[name]
        if node.primary is not None and p.mode == "sync" and node.cfg.on_sync_loss == "block":
            self.emit(
                "policy",
                policy="on_sync_loss",
                action="block",
                peer=name,
                why=f"writes wait up to {node.cfg.sync_timeout:g}s for it",
            )

    def _device_view(self) -> tuple:
        dev = self.node.device
        if dev is None:
            return ()
        return (dev.path, bool(dev.lost), bool(self.node.device_io.fenced))

    def _device_changed(self, old: tuple, new: tuple) -> None:
        o_path, o_lost, o_fenced = old or (None, False, False)
        n_path, n_lost, n_fenced = new or (None, False, False)
        dev = self.node.device
        if n_path and n_path != o_path:
            self.emit("device-exposed", device=n_path)
        if n_lost and not o_lost:
            self.emit("device-lost", device=n_path or o_path, error=dev.error if dev else None)
        if n_fenced and not o_fenced and (n_path or o_path):
            self.emit("device-fenced", device=n_path or o_path)
        if o_path and not n_path:
            self.emit("device-withdrawn", device=o_path)


__all__ = ["EventHub", "describe", "format_event", "now_iso"]
