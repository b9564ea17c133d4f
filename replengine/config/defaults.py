"""The config's fixed values: defaults, limits and allowed words, in one place.

They sit apart from the loader so the dataclasses, the helpers and the loader can share them
without importing each other, and so a reader finds every limit the loader enforces at once.
"""

from __future__ import annotations

import uuid as uuidlib
from pathlib import Path

CONFIG_DIR = Path("/etc/replengine")
DEFAULT_RUN_DIR = Path("/run/replengine")
DEFAULT_SYNC_TIMEOUT = 30.0
DEFAULT_HEARTBEAT_MS = 1000
DEFAULT_DCM_REGION_SIZE = 1 << 20
#: bytes per chunk digest of a checksummed resync, and its bounds: a digest covers at most
#: what either end reads at once (storage.chunksums.MAX_CHUNK, checked equal in the tests)
DEFAULT_RESYNC_CHUNK_SIZE = 1 << 20
MIN_RESYNC_CHUNK_SIZE = 4096
MAX_RESYNC_CHUNK_SIZE = 8 << 20
MIN_NODES = 2
MAX_NODES = 16
MIN_VOLUME_SIZE = 4096
#: 8 KiB of superblocks plus at least 1 MiB of circular log area (see srl.py).
MIN_SRL_SIZE = (1 << 20) + 8192

SRL_FULL = ("stall", "fail", "dcm")
ON_SYNC_LOSS = ("degrade", "block")
MODES = ("sync", "async")
#: block device frontends (replengine.frontend): only fuse-loop is implemented; the others are
#: detected and explained when asked for
DEVICES = ("fuse-loop", "nbd", "ublk", "dm", "none")
DEFAULT_DEVICE = "fuse-loop"
#: a node's CURVE secret key when the config names none: <config dir>/<resource>.key
KEY_SUFFIX = ".key"
#: CurveZMQ public keys are 32 bytes, written in Z85 as 40 characters of this alphabet
Z85_ALPHABET = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
Z85_KEY_LEN = 40

#: Namespace for resource UUIDs derived from the config (uuid5), fixed forever: changing it
#: would give every existing resource a new identity and orphan its SRLs.
UUID_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "https://replengine.invalid/resource")
