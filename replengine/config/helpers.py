"""Helpers that name and identify a resource without loading its file.

Each is a pure function of its arguments (and, for default_path, the environment), so the
agent can find a resource's file and every node can compute the same UUID and digest without
coordination.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid as uuidlib
from collections.abc import Mapping
from pathlib import Path

from replengine.config.check import _MAX_NAME, _valid_name
from replengine.config.defaults import CONFIG_DIR, KEY_SUFFIX, UUID_NAMESPACE
from replengine.config.model import NodeConfig
from replengine.errors import ConfigError


def default_path(resource: str) -> Path:
    """``/etc/replengine/<resource>.toml`` (directory overridable by $REPLENGINE_CONFIG_DIR).

    The environment override exists so the CLI and daemon can be exercised without root.
    """
    if not _valid_name(resource):
        raise ConfigError(
            f"resource name {resource!r} is not valid: use 1-{_MAX_NAME} of A-Z a-z 0-9 _ . - "
            "(it becomes a file name)"
        )
    base = os.environ.get("REPLENGINE_CONFIG_DIR")
    return (Path(base) if base else CONFIG_DIR) / f"{resource}.toml"


def default_key_path(resource: str) -> Path:
    """``/etc/replengine/<resource>.key``: a node's CURVE secret key when the config names no
    ``secret_key_file`` (the directory follows $REPLENGINE_CONFIG_DIR like default_path)."""
    return default_path(resource).with_suffix(KEY_SUFFIX)


def derive_uuid(name: str, addresses: list[str]) -> uuidlib.UUID:
    """Resource UUID when the file sets none: uuid5 of the name and the sorted addresses.

    Every node reads the same file, so every node computes the same UUID without coordination.
    Changing a node address therefore changes a derived UUID: set ``uuid`` explicitly in
    production so the SRLs keep matching when addresses change.
    """
    return uuidlib.uuid5(UUID_NAMESPACE, "\n".join([name, *sorted(addresses)]))


def compute_digest(
    name: str,
    resource_uuid: uuidlib.UUID,
    srl_full: str,
    on_sync_loss: str,
    dcm_region_size: int,
    nodes: Mapping[str, NodeConfig],
) -> str:
    """sha256 hex over the canonical JSON of the settings every node must agree on.

    Local paths are deliberately excluded (they may differ per node); nodes are sorted by name
    so reordering tables in the file does not change the digest.
    """
    doc = {
        "name": name,
        "uuid": str(resource_uuid),
        "srl_full": srl_full,
        "on_sync_loss": on_sync_loss,
        "dcm_region_size": dcm_region_size,
        "nodes": [
            # a public key only when set, so a file without keys keeps its digest
            {"name": n.name, "address": n.address, "mode": n.mode}
            | ({"public_key": n.public_key} if n.public_key else {})
            for n in sorted(nodes.values(), key=lambda n: n.name)
        ],
    }
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()
