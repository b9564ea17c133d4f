"""Background work of both roles: wait for SRL durability, apply to the volume, clear.

Two threads per node, so the daemon's loop never waits on a disk:
- the DurabilityWatcher waits on pending SRL appends in LSN order and publishes the durable
  end; only durable records go on to the volume (a record must never reach the volume before
  it is in the log, or a crash would leave data no log can account for);
- the Applier writes records to the volume strictly in LSN order (invariant 2) and performs
  clears: flush the volume, then advance the SRL start (invariant 3: a record leaves the log
  only once it is applied and durable on the volume).

Records handed to the applier stay in `overlay` until written, so a read on the primary can
see every completed write even while the applier is behind.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from replengine.record import Record

log = logging.getLogger(__name__)


class Applier(threading.Thread):
    def __init__(self, srl: Any, volume: Any, applied_end: int,
                 on_progress: Callable[[], None]) -> None:
        super().__init__(name="applier", daemon=True)
        self.srl = srl
        self.volume = volume
        self.applied_end = applied_end
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._on_progress = on_progress
        self.overlay: dict[int, Record] = {}
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.pending_clear = 0

    def replay(self, first: int, end: int) -> None:
        """Re-apply SRL records [first, end) (after a restart) before anything newer."""
        self._q.put(("replay", first, end))

    def put(self, rec: Record) -> None:
        with self.lock:
            self.overlay[rec.lsn] = rec
        self._q.put(("rec", rec))

    def clear(self, clear_end: int) -> None:
        """Advance the SRL start to clear_end once everything before it is applied."""
        if clear_end > self.pending_clear:
            self.pending_clear = clear_end
            self._q.put(("clear",))

    def barrier(self) -> threading.Event:
        """An event set once everything queued so far is applied and flushed."""
        ev = threading.Event()
        self._q.put(("barrier", ev))
        return ev

    def stop(self) -> None:
        self._q.put(("stop",))

    def snapshot_overlay(self) -> list[Record]:
        with self.lock:
            return sorted(self.overlay.values(), key=lambda r: r.lsn)

    def run(self) -> None:
        try:
            while True:
                item = self._q.get()
                kind = item[0]
                if kind == "stop":
                    self._clear(self.pending_clear)
                    self.volume.flush()
                    return
                if kind == "rec":
                    self._apply(item[1])
                elif kind == "replay":
                    for rec in self.srl.read(item[1], item[2]):
                        if rec.lsn >= self.applied_end:
                            self._apply(rec)
                    # records older than applied_end were applied before the restart
                elif kind == "barrier":
                    self.volume.flush()
                    item[1].set()
                # a clear waits for the records it covers to be applied: retry it whenever
                # the queue runs dry or the applier has passed its target
                if self.pending_clear > self.srl.start_lsn and (
                        self._q.empty() or self.applied_end >= self.pending_clear):
                    self._clear(self.pending_clear)
        except BaseException as exc:  # surfaced by the loop as a failed node
            log.exception("applier stopped: %s", exc)
            self.error = exc
            self._on_progress()

    def _apply(self, rec: Record) -> None:
        if rec.lsn < self.applied_end:
            return
        if rec.lsn != self.applied_end:
            raise RuntimeError(f"apply out of order: LSN {rec.lsn} while expecting "
                               f"{self.applied_end}")
        self.volume.apply(rec)
        with self.lock:
            self.applied_end = rec.lsn + 1
            self.overlay.pop(rec.lsn, None)
        self._on_progress()

    def _clear(self, clear_end: int) -> None:
        new_start = min(clear_end, self.applied_end, self.srl.end_lsn)
        if new_start <= self.srl.start_lsn:
            return
        self.volume.flush()
        self.srl.advance_start(new_start)
        self._on_progress()


class DurabilityWatcher(threading.Thread):
    """Waits on SRL appends in order; hands durable records to the applier."""

    def __init__(self, applier: Applier, durable_end: int,
                 on_durable: Callable[[], None]) -> None:
        super().__init__(name="durability", daemon=True)
        self.applier = applier
        self.durable_end = durable_end
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._on_durable = on_durable
        self.error: BaseException | None = None

    def put(self, pending: Any, rec: Record) -> None:
        self._q.put((pending, rec))

    def stop(self) -> None:
        self._q.put(None)

    def run(self) -> None:
        try:
            while True:
                item = self._q.get()
                if item is None:
                    return
                pending, rec = item
                pending.wait()
                self.durable_end = rec.lsn + 1
                self.applier.put(rec)
                self._on_durable()
        except BaseException as exc:
            log.exception("SRL append failed: %s", exc)
            self.error = exc
            self._on_durable()
