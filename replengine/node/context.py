"""What each role may see of its node: narrow, structural interfaces.

The loop (node.core.Node) satisfies all of them; a role names only the one it needs, so what
it can touch is written down, reviewable, and faked in its unit tests (tests/test_secondary.py,
tests/test_rewind.py, tests/test_copier.py) without a daemon. The promotion's own context is
failover.promotion.PromotionContext.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from replengine.config import ResourceConfig
    from replengine.log.srl import SRL
    from replengine.node.applier import Applier, LocalSync
    from replengine.node.copier import BlockCopier
    from replengine.node.peers import Peer
    from replengine.node.rewind import Rewinder
    from replengine.storage.volume import Volume
    from replengine.wire.protocol import Hello
    from replengine.wire.transport import Transport


class LogAndVolume(Protocol):
    """The node's own data: its log, its volume, the threads that sync and apply them."""

    srl: SRL
    volume: Volume
    applier: Applier
    watcher: LocalSync
    heartbeat_s: float

    def send(self, peer: str, body: Any, flags: int = 0) -> bool: ...


class SecondaryContext(LogAndVolume, Protocol):
    """The secondary pipeline: which primary it follows, the epoch it knows, whom to ack."""

    me: str
    cfg: ResourceConfig
    transport: Transport
    known_epoch: int
    following: str
    peers: dict[str, Peer]
    rewinder: Rewinder | None
    dcm_rx: Any  # a dcm resync being received (node.dcm_receiver.DcmReceiver), or None
    ops: Any  # pull_source and pulled_bytes of a running promotion

    def warn_once(self, key: str, msg: str, *args: Any) -> None: ...
    def follow(self, peer: Peer, h: Hello) -> None: ...


class RewindContext(LogAndVolume, Protocol):
    """A divergent-tail rewind: cut the log, mark the node inconsistent, talk to its source."""

    following: str
    consistent: bool
    rewinder: Rewinder | None
    last_divergent: dict[str, Any]

    def drop_log_from(self, lsn: int) -> None: ...
    def restart_log_at(self, lsn: int, source: str) -> None: ...
    def hello(self) -> Hello: ...
    def copy_ended(self, source: str) -> None: ...


class DcmContext(RewindContext, Protocol):
    """dcm tracking and resync on a primary, and receiving one on a secondary."""

    rewind_marker: Path

    me: str
    cfg: ResourceConfig
    peers: dict[str, Peer]
    primary: Any
    copier: BlockCopier
    events: Any  # node.events.EventHub


class PrimaryContext(LogAndVolume, Protocol):
    """The primary pipeline: its epoch, its peers, the writers to answer, dcm when full."""

    copier: BlockCopier  # its pacer hears of every completed write
    me: str
    cfg: ResourceConfig
    transport: Transport
    peers: dict[str, Peer]
    dcm: Any  # node.dcm.DcmTracker
    events: Any  # node.events.EventHub: decisions and policy triggers are emitted there
    metrics: Any  # node.metrics.Metrics: write counts and latencies

    @property
    def epoch(self) -> int: ...
    def dcm_release(self, primary: Any) -> bool: ...
    def reply_ok(self, client: bytes, req_id: Any, doc: dict | None = None) -> None: ...
    def reply_error(self, client: bytes, req_id: Any, error: str) -> None: ...
    def warn_once(self, key: str, msg: str, *args: Any) -> None: ...


__all__ = [
    "DcmContext",
    "DeviceHooks",
    "Exposed",
    "LogAndVolume",
    "PrimaryContext",
    "RewindContext",
    "SecondaryContext",
]


#: Called once when exposing ends, from another thread: the device path, or None and the error.
Exposed = Callable[[str | None, str | None], None]


class DeviceHooks(Protocol):
    """A block device over the resource's volume, present only while the node is primary:
    what the loop asks of a frontend (replengine.frontend, which sits above the node and is
    handed in by the daemon)."""

    kind: str
    #: the path applications use (the stable udev name when there is one), once exposed
    path: str | None
    #: the kernel device behind it (/dev/loop3), once exposed
    kernel_device: str | None
    #: why the device is missing or broken, for status
    error: str
    #: exposed, then broken under its users (the kernel ended the FUSE connection)
    lost: bool

    def expose(self, done: Exposed) -> None:
        """Start exposing in the background; ``done`` is called from another thread."""
        ...

    def holders(self) -> list[str]:
        """Who has the device mounted or open, as `umount` would name them; [] when free."""
        ...

    def withdraw(self) -> None:
        """Detach the device and undo everything expose did (blocking, idempotent). I/O
        still in the kernel gets EIO."""
        ...

    def cleanup_stale(self) -> list[str]:
        """Remove what a killed daemon of this node left behind; what was removed."""
        ...
