"""Admitting a peer's message: who sent it, is it ours, is it well-formed.

Whatever fails here is bad input from outside (invariant 7): refused with a reason (a
REJECT back to strangers and to another resource's nodes) and nothing changes. Each refusal
is logged with its reason, at most one line per sender and kind of fault every 10 s; the
lines held back are counted in the next one ("and 312 more like it"), so thousands of bad
messages cost a few lines, not a flooded disk. The kind is the reason with its numbers and
quoted names taken out, so whoever sends cannot make every line new.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from replengine.errors import ForeignResourceError, ProtocolError
from replengine.wire.protocol import Message, Reject, decode, encode
from replengine.wire.security import RateLog

if TYPE_CHECKING:
    from replengine.node.core import Node
    from replengine.node.peers import Peer

log = logging.getLogger("replengined")
#: refusals of peers' messages (shared with the roles that refuse well-formed ones)
refusals = RateLog(log)
_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|0x[0-9a-f]+|\d+")


def kind(reason: str) -> str:
    """The reason without what the sender chose (numbers, quoted names, and the detail after
    a colon, such as the JSON parser's own words): a rate-limit key."""
    return _VARIABLE.sub("_", reason.split(": ", 1)[0])[:120]


def admit(node: Node, inc: Any) -> tuple[Peer, Message] | None:
    sender = inc.identity.decode(errors="replace")
    peer = node.peers.get(sender)
    if peer is None:
        refusals(
            "unknown",  # one key for all strangers: their names are theirs to choose
            logging.WARNING,
            "message from unknown peer %r refused (not a node of resource %s)",
            sender[:64],
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
        refusals(f"foreign:{sender}", logging.WARNING, "refused %s: %s", sender, exc)
        _refuse(
            node,
            inc,
            f"{node.me} belongs to resource {node.cfg.name} ({node.cfg.uuid}), "
            "not to yours: check the uuid and node addresses in the config",
        )
        return None
    except ProtocolError as exc:
        refusals(
            f"bad:{sender}:{kind(str(exc))}",
            logging.WARNING,
            "malformed message from %s dropped: %s",
            sender,
            exc,
        )
        return None
    except Exception as exc:  # a decoder bug must not let one message kill the node
        if refusals(
            f"bug:{sender}",
            logging.ERROR,
            "malformed message from %s dropped (decoder error): %r",
            sender,
            exc,
        ):
            log.debug("decoder error", exc_info=True)
        return None
    return peer, msg


def _refuse(node: Node, inc: Any, reason: str) -> None:
    """A REJECT straight back on the connection it came from, so the stranger logs why."""
    node.transport.reply_router(
        inc.identity, encode(node.cfg.uuid, node.epoch, node.me, Reject(reason))
    )
