"""Exception hierarchy.

Every error a sysadmin can see derives from ReplError and carries a message that names what
was wrong (file, key, LSN, peer) so it can be acted on without reading code.
"""

from __future__ import annotations


class ReplError(Exception):
    """Base of every replengine error."""


class ConfigError(ReplError):
    """The resource config file is wrong; the message names file:line and key."""


class SRLError(ReplError):
    """The storage replication log cannot do what was asked (full, wrong LSN, not initialised)."""


class SRLCorruptError(SRLError):
    """A record or superblock failed its checksum where a torn write cannot explain it."""


class SRLFullError(SRLError):
    """Not enough free space in the SRL for the record."""


class VolumeError(ReplError):
    """The volume cannot be opened, is too small, or an I/O on it failed."""


class ProtocolError(ReplError):
    """A wire message is malformed, foreign or from an unknown peer."""


class ForeignResourceError(ProtocolError):
    """A message carries another resource's UUID: a misconfigured or foreign cluster."""


class RoleError(ReplError):
    """The operation does not fit the node's current role (e.g. a write on a secondary)."""


class ApplyError(ReplError):
    """Applying the log to the volume went wrong (out of order): the node stops."""


class DeviceError(ReplError):
    """The block device frontend cannot do what was asked: missing kernel support, the device
    in use by a mount or a process, or a helper (losetup, FUSE) that failed."""
