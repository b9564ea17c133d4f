"""`replctl adjust`: apply an edited config to a running daemon (as `drbdadm adjust`).

Operators add a node, remove one, or switch a node between sync and async in production,
one node at a time and without restarting a primary. The daemon re-reads its config file,
checks that the change is one it can make live, and applies it:

* a node added: a connection to it (with its public key under CURVE); once it comes up with a
  freshly initialised SRL it gets a full sync by itself (node.handshake), writes going on;
* a node removed: its connection closed, its dirty-region map and any copy to it dropped; a
  primary no longer waits for it;
* a mode changed: on a primary a node made sync is waited for once it has caught up (until
  then it is degraded, as a sync node that reconnects behind is), a node made async at once
  no longer is;
* tunables (`resync_rate`, `resync_adaptive`, `resync_chunk_size`, `sync_timeout`,
  `promote_min_peers`) take effect (a chunk size at the next resync).

During the rollout some nodes run the old file and some the new: HELLO carries the digest of
the config a node ran before its last adjust, and two nodes accept each other when one's
current or previous digest is the other's (node.handshake.configs_agree), so replication
goes on between them. What a live daemon cannot change (the resource's name or uuid, this
node's own address, disks, key or device, the heartbeat) is refused, naming it, and nothing
changes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from replengine.config import ResourceConfig
from replengine.errors import ReplError
from replengine.node.peers import Peer
from replengine.node.states import IN_DCM, Role

if TYPE_CHECKING:
    from replengine.node.core import Node

log = logging.getLogger("replengined")


def refusal(node: Node, new: ResourceConfig) -> str:
    """Why ``new`` cannot be applied live ("" if it can)."""
    old = node.cfg
    if new.name != old.name:
        return f"the resource name changed ({old.name} -> {new.name}): that is another resource"
    if new.uuid != old.uuid:
        hint = (
            f'; the uuid is derived from the node addresses when the file sets none: add uuid = "{old.uuid}" to [resource]'
            if new.uuid_derived
            else ""
        )
        return f"the resource uuid changed ({old.uuid} -> {new.uuid}){hint}"
    mine, now = old.local, new.local
    for what in ("address", "volume", "srl", "device", "secret_key_file"):
        if getattr(mine, what) != getattr(now, what):
            return (
                f"this node's {what} changed ({getattr(mine, what)} -> {getattr(now, what)}): "
                "restart the daemon (replctl down; replctl up) to change it"
            )
    if (mine.public_key or "") != (now.public_key or ""):
        return "this node's public key changed: restart the daemon with its new key"
    if new.heartbeat_ms != old.heartbeat_ms:
        return "heartbeat_ms changed: restart the daemons to change it"
    if new.curve != old.curve:
        return "keys were added to or removed from the config: restart every daemon to switch"
    if new.srl_full != old.srl_full or new.on_sync_loss != old.on_sync_loss:
        return "srl_full or on_sync_loss changed: restart the daemons to change them"
    if new.dcm_region_size != old.dcm_region_size:
        return "dcm_region_size changed: restart the daemons to change it"
    removed = set(old.nodes) - set(new.nodes)
    if node.role == Role.SECONDARY and node.following in removed:
        return (
            f"{node.following} is removed, but it is the primary this node follows: move the "
            "primary elsewhere first, or remove the other nodes first"
        )
    if node.ops.promotion is not None:
        return "a promotion is running on this node; try again once it is done"
    return ""


def apply(node: Node, new: ResourceConfig) -> dict:
    """Apply ``new`` to the running node; what changed, for the reply and the log."""
    why = refusal(node, new)
    if why:
        raise ReplError(f"adjust refused, nothing changed: {why}")
    old = node.cfg
    added = [n for n in new.nodes if n not in old.nodes]
    removed = [n for n in old.nodes if n not in new.nodes]
    moved = [
        n
        for n in new.nodes
        if n in old.nodes
        and n != node.me
        and (
            new.nodes[n].address != old.nodes[n].address
            or new.nodes[n].public_key != old.nodes[n].public_key
        )
    ]
    modes = {
        n: (old.nodes[n].mode, new.nodes[n].mode)
        for n in new.nodes
        if n in old.nodes and n != node.me and new.nodes[n].mode != old.nodes[n].mode
    }
    for name in removed + moved:
        _drop(node, name, final=name in removed)
    for name in added + moved:
        nc = new.nodes[name]
        key = nc.public_key.encode() if new.curve and nc.public_key else None
        node.transport.add_peer(name, nc.address, key)
        if name in added:
            node.peers[name] = Peer(name, nc.mode)
    for name, (_was, now) in modes.items():
        _switch_mode(node, node.peers[name], now)
    changed = new.digest != old.digest
    if changed:
        node.prev_digest = old.digest
    node.cfg = new
    pacer = node.copier.pacer
    if pacer is not None:
        pacer.cap = new.resync_rate * (1 << 20)
        pacer.adaptive = new.resync_adaptive
    summary = {
        "added": added,
        "removed": removed,
        "readdressed": moved,
        "modes": {n: f"{a} -> {b}" for n, (a, b) in modes.items()},
        "digest": new.digest,
        "prev_digest": node.prev_digest or None,
    }
    if added or removed or moved or modes:
        log.warning(
            "ADJUSTED %s: added %s, removed %s, re-addressed %s, modes %s",
            new.name,
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
            ", ".join(moved) or "none",
            ", ".join(f"{n} {a}->{b}" for n, (a, b) in modes.items()) or "unchanged",
        )
    else:
        log.info("adjust: %s has no node or mode change", new.name)
    if node.primary is not None:
        node.primary.check_sync_peers()
    node.beacon()  # tell every peer now: our digests changed
    return summary


def _drop(node: Node, name: str, final: bool) -> None:
    """Close the connection to a peer; if it leaves the resource, forget what is owed to it
    (its dirty-region map, a copy to it) so nothing waits for it any more."""
    node.transport.remove_peer(name)
    if not final:
        return
    node.copier.cancel(name)
    node.offered_sums.pop(name, None)
    dcm = node.dcm
    dcm.resyncs.pop(name, None)
    dcm.covered_end.pop(name, None)
    dmap = dcm.maps.pop(name, None)
    if dmap is not None:
        dmap.close()
        dmap.path.unlink(missing_ok=True)
    node.peers.pop(name, None)
    log.warning("node %s removed from %s: no longer replicated to", name, node.cfg.name)


def _switch_mode(node: Node, peer: Peer, mode: str) -> None:
    peer.mode = mode
    primary = node.primary
    if primary is None:
        return
    if mode == "async":
        peer.degraded = False
        log.warning("%s is async now: writes no longer wait for it", peer.name)
        return
    # made sync: waited for only once it has everything already completed
    behind = peer.state in IN_DCM or peer.acked_end < primary.caught_up_mark()
    peer.degraded = behind or not peer.alive(node.heartbeat_s)
    log.warning(
        "%s is sync now: %s",
        peer.name,
        "writes wait for it once it has caught up" if peer.degraded else "writes wait for it",
    )


__all__ = ["apply", "refusal"]
