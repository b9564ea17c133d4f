"""The unit of replication: one logged update.

A record is identified by its LSN; the epoch says which primary generation wrote it, so
records from a deposed primary can be told apart from the new history (invariant 4).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Record:
    lsn: int
    epoch: int
    offset: int
    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)
