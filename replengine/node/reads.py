"""Reads on the primary as of every completed write."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replengine.node.context import LogAndVolume


def consistent_read(node: LogAndVolume, offset: int, length: int, *, once: bool = False) -> bytes:
    """Volume content as of every completed write: the volume plus records not yet applied.

    The overlay is snapshotted before the volume is read: a record missing from the snapshot
    was already applied, so the read sees it either way. ``once``: see Volume.read."""
    snap = node.applier.snapshot_overlay()
    data = node.volume.read(offset, length, once=once)
    end = offset + length
    over = [r for r in snap if r.offset < end and offset < r.offset + len(r.data)]
    if not over:
        return data  # the usual case (a copy's MiB chunks): no two extra copies of it
    buf = bytearray(data)
    for rec in over:
        lo, hi = max(offset, rec.offset), min(end, rec.offset + len(rec.data))
        buf[lo - offset : hi - offset] = rec.data[lo - rec.offset : hi - rec.offset]
    return bytes(buf)
