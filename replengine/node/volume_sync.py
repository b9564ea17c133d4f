"""The volume's slow calls, beside the applier: the fdatasync a clear needs, and starting
writeback early.

Both wait for the disk, for milliseconds to tens of milliseconds each. Made by the applier
itself, they stopped it applying: in a laggard's catch-up of 20 000 records after a
failover, its applier spent ~40 % of its time in them (py-spy), and the volume reached the
log's end 0.03-0.14 s after the last record was logged (4 runs); with them here, 0.03-0.06 s.
The applier only asks (a flag and a notify); this thread runs what was asked, once for any
number of requests made meanwhile. A clear still flushes before it moves the log's start
(invariant 3): it only no longer holds up the records behind it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

__all__ = ["VolumeSync"]


class VolumeSync(threading.Thread):
    """``clear`` and ``writeback`` run here, one at a time, when asked; an exception from
    either goes to ``failed`` (the applier's error: the node stops) and ends the thread."""

    def __init__(
        self,
        clear: Callable[[], None],
        writeback: Callable[[], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        super().__init__(name="volume-sync", daemon=True)
        self._clear, self._writeback, self._failed = clear, writeback, failed
        self._cond = threading.Condition()
        self._want_clear = self._want_writeback = self._stopping = False

    def want_clear(self) -> None:
        if not self._want_clear:
            with self._cond:
                self._want_clear = True
                self._cond.notify()

    def want_writeback(self) -> None:
        if not self._want_writeback:
            with self._cond:
                self._want_writeback = True
                self._cond.notify()

    def stop(self) -> None:
        """Finish what is running (not what is only asked for) and end."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self.is_alive():
            self.join()

    def run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._want_clear or self._want_writeback or self._stopping):
                        self._cond.wait()
                    if self._stopping:
                        return
                    clear, writeback = self._want_clear, self._want_writeback
                    self._want_clear = self._want_writeback = False
                if writeback:
                    self._writeback()
                if clear:
                    self._clear()
        except BaseException as exc:  # surfaced by the loop as a failed node
            log.exception("volume flush failed: %s", exc)
            self._failed(exc)
