"""Admitting a peer's message: who sent it, is it ours, is it well-formed.

Whatever fails here is bad input from outside (invariant 7): refused with a reason (a
REJECT back to strangers and to another resource's nodes), logged once per kind, and nothing
changes. What passes is handed to the node's dispatch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from replengine.errors import ForeignResourceError, ProtocolError
from replengine.wire.protocol import Message, Reject, decode, encode

if TYPE_CHECKING:
    from replengine.node.core import Node
    from replengine.node.peers import Peer

log = logging.getLogger("replengined")


def admit(node: Node, inc: Any) -> tuple[Peer, Message] | None:
    sender = inc.identity.decode(errors="replace")
    peer = node.peers.get(sender)
    if peer is None:
        node.warn_once(
            f"unknown:{sender}",
            "message from unknown peer %r refused (not a node of resource %s)",
            sender,
            node.cfg.name,
        )
        _refuse(node, inc, f"{sender!r} is not a node of resource {node.cfg.name}")
        return None
    try:
        msg = decode([f.buffer for f in inc.frames], node.cfg.uuid)
        if msg.header.sender != sender:
            raise ProtocolError(
                f"sender field {msg.header.sender!r} does not match "
                f"the connection's node {sender!r}"
            )
    except ForeignResourceError as exc:
        node.warn_once(f"foreign:{sender}", "refused %s: %s", sender, exc)
        _refuse(
            node,
            inc,
            f"{node.me} belongs to resource {node.cfg.name} ({node.cfg.uuid}), "
            "not to yours: check the uuid and node addresses in the config",
        )
        return None
    except ProtocolError as exc:
        node.warn_once(f"bad:{sender}:{exc}", "malformed message from %s dropped: %s", sender, exc)
        return None
    except Exception as exc:  # a decoder bug must not let one message kill the node
        log.exception("malformed message from %s dropped (decoder error): %s", sender, exc)
        return None
    return peer, msg


def _refuse(node: Node, inc: Any, reason: str) -> None:
    """A REJECT straight back on the connection it came from, so the stranger logs why."""
    node.transport.reply_router(
        inc.identity, encode(node.cfg.uuid, node.epoch, node.me, Reject(reason))
    )
