"""Rewriting the SRL's shape: cutting a divergent tail, emptying it at an LSN, and changing
its epoch history -- the rare operations that pause appends and rewrite the superblock,
each durable step by step so a crash at any point recovers to a state that says the truth.

A mixin of replengine.log.srl.SRL.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from contextlib import contextmanager

from replengine.errors import SRLError
from replengine.log.history import check, divergence_point, epoch_at, normalise
from replengine.log.record import Record
from replengine.log.srl_format import (
    MAX_HISTORY,
    REC_ALIGN,
    record_size,
)
from replengine.log.srl_io import (
    ZEROS,
    new_log_id,
)


class LogSurgery:
    def truncate(self, new_end: int) -> list[Record]:
        """Drop records >= new_end (a divergent tail) and return them.

        Three steps, each durable: superblock marks [new_end, old end) dead (so a crash
        midway cannot resurrect them nor be mistaken for corruption), their headers are
        zeroed, and the superblock clears the mark.
        """
        with self._sb_lock, self._paused_appends():
            if not self._start_lsn <= new_end <= self._durable_end:
                raise SRLError(
                    f"{self.path}: cannot truncate to LSN {new_end}: log holds "
                    f"[{self._start_lsn}, {self._durable_end})"
                )
            old_end, old_end_pos = self._durable_end, self._durable_pos
            if new_end == old_end:
                return []
            records = [self._read_at(n, *self._index.lookup(n)) for n in range(new_end, old_end)]
            end_pos = self._end_pos_of(new_end)
            self._write_superblock(
                end_lsn=new_end, end_pos=end_pos, trunc_lsn=new_end, trunc_end_pos=old_end_pos
            )
            self._zero_headers(self._positions_from(new_end, end_pos, old_end))
            self._write_superblock(trunc_lsn=0, trunc_end_pos=0)
            self._index.truncate(new_end)
            self._durable_end = self._next_lsn = new_end
            self._durable_pos = self._next_pos = end_pos
            return records

    def _positions_from(self, lsn: int, pos: int, end: int) -> list[int]:
        """Block positions of records [lsn, end) and of WRAP markers in front of them."""
        out = []
        for n in range(lsn, end):
            rpos, length = self._index.lookup(n)
            if rpos != pos:
                out.append(pos)  # a WRAP marker sits where the record was expected
            out.append(rpos)
            pos = (rpos + record_size(length)) % self._cap
        return out

    def _zero_headers(self, positions: list[int]) -> None:
        """Erase the record (or WRAP marker) headers at these positions: one REC_ALIGN
        block each, the least any record occupies -- a whole BLOCK would run into the
        records after a short one (the live start, when the tail filled the log)."""
        for pos in positions:
            os.pwrite(self._fd, ZEROS[:REC_ALIGN], self._area_off + pos)
        self._fdatasync()

    def reset(self, lsn: int) -> None:
        """Make the log empty at ``lsn`` (start == end == lsn). A fresh log id in the
        superblock makes every older record on disk unrecognisable in one atomic write."""
        if lsn < 1:
            raise SRLError(f"{self.path}: cannot reset to LSN {lsn}: LSNs start at 1")
        with self._sb_lock, self._paused_appends():
            self._write_superblock(
                log_id=new_log_id(),
                start_lsn=lsn,
                start_pos=0,
                end_lsn=lsn,
                end_pos=0,
                trunc_lsn=0,
                trunc_end_pos=0,
            )
            self._index.reset(lsn)
            self._start_lsn = self._durable_end = self._next_lsn = lsn
            self._start_pos = self._durable_pos = self._next_pos = 0

    @contextmanager
    def _paused_appends(self) -> Generator[None, None, None]:
        """Block new appends and wait for the committer to go idle, holding ``_lock``:
        truncate and reset rewrite positions the committer relies on, so they run alone."""
        with self._lock:
            self._check_usable()
            while self._paused:
                self._done_cv.wait()
            self._paused = True
            try:
                self._done_cv.wait_for(lambda: not self._queue and not self._inflight)
                yield
            finally:
                self._paused = False
                self._done_cv.notify_all()

    def add_epoch(self, epoch: int, first_lsn: int) -> None:
        """Record (epoch, first_lsn) in the history, durable before return (invariant 4)."""
        with self._sb_lock:
            hist = list(self._sb.history)
            if epoch <= self.epoch:
                raise SRLError(
                    f"{self.path}: epoch {epoch} must exceed the current epoch {self.epoch}"
                )
            if hist and first_lsn < hist[-1][1]:
                raise SRLError(
                    f"{self.path}: epoch {epoch} cannot start at LSN {first_lsn}, "
                    f"before epoch {hist[-1][0]} (LSN {hist[-1][1]})"
                )
            if len(hist) >= MAX_HISTORY:
                raise SRLError(
                    f"{self.path}: epoch history is full ({MAX_HISTORY} entries); "
                    "re-create the SRL after a full resync to start a new history"
                )
            with self._lock:
                self._check_usable()
                end, end_pos = self._durable_end, self._durable_pos
            self._write_superblock(
                history=[*hist, (epoch, first_lsn)], end_lsn=end, end_pos=end_pos
            )

    def set_history(self, history: Sequence[tuple[int, int]]) -> None:
        """Replace the epoch history, durable before return.

        Only a history that names the same epoch for every LSN this one knows below the end is
        taken: a follower may drop epochs that wrote nothing it kept (a promotion lost before
        its first write) and take its primary's newer ones, but never re-label a record.
        """
        new = normalise(history)
        check(new)
        with self._sb_lock:
            with self._lock:
                self._check_usable()
                end, end_pos = self._durable_end, self._durable_pos
            old = self._sb.history
            empty = self._start_lsn == end  # no record to re-label (after a reset)
            if not empty and divergence_point(old, new, end) < end:
                raise SRLError(
                    f"{self.path}: history {list(new)} names another epoch than {list(old)} "
                    f"for a record below LSN {end}"
                )
            if end > self._start_lsn and epoch_at(new, self._start_lsn) is None:
                raise SRLError(
                    f"{self.path}: history {list(new)} does not say which epoch wrote LSN "
                    f"{self._start_lsn}, the oldest record in the log"
                )
            if len(new) > MAX_HISTORY:
                raise SRLError(f"{self.path}: history of {len(new)} entries exceeds {MAX_HISTORY}")
            if new == tuple(old):
                return
            self._write_superblock(history=list(new), end_lsn=end, end_pos=end_pos)
