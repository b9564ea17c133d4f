"""The validated config as the rest of the engine sees it: a frozen NodeConfig per node and
the ResourceConfig seen from one of them.

Kept apart from the loader so that modules which only hold a config (node, daemon, CLI) read
a small file of plain records, not the validation that produced them.
"""

from __future__ import annotations

import dataclasses
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

from replengine.errors import ConfigError
from replengine.runtime import RuntimePaths


@dataclass(frozen=True)
class NodeConfig:
    """One node of the resource as the config file describes it.

    ``address`` is the canonical ``host:port`` (IPv6 in brackets), so two spellings of the same
    endpoint compare equal and the digest does not depend on cosmetic differences.
    """

    name: str
    host: str
    port: int
    address: str
    volume: Path
    srl: Path
    mode: str
    #: the block device frontend on this node when it is primary (config.defaults.DEVICES)
    device: str = "fuse-loop"
    #: its CURVE public key (Z85, 40 characters); None when the resource runs without keys
    public_key: str | None = None
    #: where this node reads its own CURVE secret key (only meaningful with public keys)
    secret_key_file: Path | None = None
    #: "host:port" of its Prometheus endpoint (node.metrics); None: off
    metrics: str | None = None

    @property
    def endpoint(self) -> str:
        """ZeroMQ TCP endpoint for this node's listening socket (``tcp://host:port``)."""
        return f"tcp://{self.address}"

    @property
    def is_sync(self) -> bool:
        return self.mode == "sync"


@dataclass(frozen=True)
class ResourceConfig:
    """A validated resource config, seen from one node (``local``).

    Frozen so that every module can hold it without defensive copies; ``nodes`` is a plain dict
    (kept picklable for multi-process tests) and must not be mutated.
    """

    path: Path
    name: str
    uuid: uuidlib.UUID
    srl_full: str
    on_sync_loss: str
    sync_timeout: float
    promote_min_peers: int
    dcm_region_size: int
    run_dir: Path
    heartbeat_ms: int
    nodes: dict[str, NodeConfig] = field(hash=False)  # in file order
    local: NodeConfig
    digest: str
    #: True when ``uuid`` was not in the file and was derived from name + addresses.
    uuid_derived: bool = False
    #: block copies (full sync, dcm resync): a cap in MiB/s (0: none), and whether they
    #: yield to the application's writes (node.pacing)
    resync_rate: float = 0.0
    resync_adaptive: bool = True
    #: bytes per chunk digest of a checksummed resync (a chunk equal on both ends is not
    #: sent): smaller chunks send less of a volume with scattered differences, and hash more
    resync_chunk_size: int = 1 << 20

    @property
    def curve(self) -> bool:
        """Whether nodes authenticate each other and encrypt with CurveZMQ (every node has a
        public_key; the loader refuses a file where only some do)."""
        return all(n.public_key for n in self.nodes.values())

    def peers(self) -> list[NodeConfig]:
        """Every node but the local one, in file order."""
        return [n for n in self.nodes.values() if n.name != self.local.name]

    def sync_peers(self) -> list[NodeConfig]:
        """Peers a primary on this node replicates to synchronously."""
        return [n for n in self.peers() if n.mode == "sync"]

    def async_peers(self) -> list[NodeConfig]:
        """Peers a primary on this node replicates to asynchronously."""
        return [n for n in self.peers() if n.mode == "async"]

    def node(self, name: str) -> NodeConfig:
        """The node called ``name``; ConfigError listing the known names otherwise."""
        try:
            return self.nodes[name]
        except KeyError:
            raise ConfigError(
                f"{self.path}: node {name!r} is not in resource {self.name!r} "
                f"(nodes: {', '.join(self.nodes)})"
            ) from None

    def for_node(self, name: str) -> ResourceConfig:
        """The same config seen from node ``name`` (no local file checks are made).

        Lets tests and `replctl` look at several nodes from one file; the digest is unchanged
        because it covers only settings every node shares.
        """
        return dataclasses.replace(self, local=self.node(name))

    def runtime_dir(self, node: str | None = None) -> Path:
        """``run_dir/<resource>/<node>``: sockets and pid files of one node's daemon.

        Includes the node so several nodes of one resource can run on one host in tests.
        """
        name = self.local.name if node is None else self.node(node).name
        return self.run_dir / self.name / name

    def paths(self, node: str | None = None) -> RuntimePaths:
        """The control socket, pid file and log of a node's daemon."""
        return RuntimePaths(self.runtime_dir(node))
