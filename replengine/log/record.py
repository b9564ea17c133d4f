"""The unit of replication: one logged update.

A record is identified by its LSN; the epoch says which primary generation wrote it, so
records from a deposed primary can be told apart from the new history (invariant 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Record:
    lsn: int
    epoch: int
    offset: int
    data: bytes
    #: CRC32C of ``data`` when already known (checked against the data by whoever set it:
    #: the SRL on reading, the wire decoder on receiving), so it is not computed twice
    crc: int | None = field(default=None, compare=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.data)
