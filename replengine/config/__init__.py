"""Resource configuration: one TOML file per resource, identical on every node.

Every node loads the same file; the settings that all nodes must agree on are condensed into
``ResourceConfig.digest`` so peers can refuse each other when their files drift apart, while
local paths (volume, SRL) may legitimately differ per node and are left out of it.

The package is split by concern (defaults.py: fixed values; model.py: the dataclasses;
helpers.py: naming and identity; loader.py: the file format's rules; check.py: the generic
validation machinery); this module keeps the one public surface callers import, typically as
``from replengine import config as configmod``.
"""

from __future__ import annotations

from replengine.config.defaults import (
    CONFIG_DIR,
    DEFAULT_DCM_REGION_SIZE,
    DEFAULT_HEARTBEAT_MS,
    DEFAULT_RUN_DIR,
    DEFAULT_SYNC_TIMEOUT,
    MAX_NODES,
    MIN_NODES,
    MIN_SRL_SIZE,
    MIN_VOLUME_SIZE,
    MODES,
    ON_SYNC_LOSS,
    SRL_FULL,
    UUID_NAMESPACE,
)
from replengine.config.helpers import compute_digest, default_path, derive_uuid
from replengine.config.loader import load, loads
from replengine.config.model import NodeConfig, ResourceConfig

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_DCM_REGION_SIZE",
    "DEFAULT_HEARTBEAT_MS",
    "DEFAULT_RUN_DIR",
    "DEFAULT_SYNC_TIMEOUT",
    "MAX_NODES",
    "MIN_NODES",
    "MIN_SRL_SIZE",
    "MIN_VOLUME_SIZE",
    "MODES",
    "ON_SYNC_LOSS",
    "SRL_FULL",
    "UUID_NAMESPACE",
    "NodeConfig",
    "ResourceConfig",
    "compute_digest",
    "default_path",
    "derive_uuid",
    "load",
    "loads",
]
