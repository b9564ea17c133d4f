"""Background work of both roles: apply to the volume, clear, and the loop's group commit.

- LocalSync lets the daemon's loop lead the SRL group commit and publish the durable end;
  only durable records go on to the volume (a record must never reach the volume before it
  is in the log, or a crash would leave data no log can account for);
- the Applier thread writes records to the volume strictly in LSN order (invariant 2) and
  performs clears: flush the volume, then advance the SRL start (invariant 3: a record
  leaves the log only once it is applied and durable on the volume).

Records handed to the applier stay in `overlay` until written, so a read on the primary can
see every completed write even while the applier is behind.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from replengine.errors import ApplyError, SRLError, VolumeError
from replengine.log.record import Record
from replengine.node.volume_sync import VolumeSync

log = logging.getLogger(__name__)

# A clear costs a volume flush and a superblock write, each an fdatasync: done per write it
# would triple the disk's sync load. Clears are therefore lazy — at most every CLEAR_EVERY_S —
# unless the log is filling (CLEAR_PRESSURE of its capacity used) or the node stops.
CLEAR_EVERY_S = 0.5
CLEAR_PRESSURE = 0.5
#: woken for one record, the applier waits this long for more before applying: each wake-up
#: of this thread costs the loop thread a GIL hand-over and the queue's futex wake in the
#: middle of a write's path (py-spy/cProfile of QD1 4 KiB writes: ~100 us of CPU per write
#: on each node, 36 us per queue put). Records are readable from the overlay meanwhile.
GATHER_S = 0.002
#: data bytes of records waiting to be applied that are kept in memory; past this a record
#: waits as its LSN only and is read back from the SRL when its turn comes. A secondary
#: catching up logs faster than its volume takes random writes: without a bound its memory
#: grew with the lag (190 MiB of RSS for a 690 MiB lag, measured; 160 with 64 MiB held)
HOLD_BYTES = 32 << 20
#: bytes applied to the volume between two starts of its writeback: the next clear's flush
#: then has at most about this much to write (storage/writeback.py)
WRITEBACK_BYTES = 4 << 20


@dataclass
class VerifyPoint:
    """Hash ``chunks`` when the volume holds exactly the records below ``lsn`` (online
    verify: every node hashes the same state while writes go on). ``done`` gets the digests,
    or an error saying why this node cannot give them; it runs in the applier thread."""

    lsn: int
    chunks: list[tuple[int, int]]
    done: Callable[[list[bytes] | None, str], None]


class Applier(threading.Thread):
    def __init__(
        self, srl: Any, volume: Any, applied_end: int, on_progress: Callable[[], None]
    ) -> None:
        super().__init__(name="applier", daemon=True)
        self.srl = srl
        self.volume = volume
        self.applied_end = applied_end
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._on_progress = on_progress
        self.overlay: dict[int, Record] = {}
        #: records waiting without their data (past HOLD_BYTES): LSN -> (offset, length)
        self.lazy: dict[int, tuple[int, int]] = {}
        self.held_bytes = 0
        #: bytes applied since the volume's writeback was last started
        self.unwritten = 0
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.pending_clear = 0
        self._last_clear = 0.0
        #: one clear at a time: the volume-sync thread's, or a barrier's here
        self._clearing = threading.Lock()
        self.sync = VolumeSync(self._clear_pending, self.volume.start_writeback, self._fail)
        #: verify points waiting for their LSN, in LSN order
        self._verifies: list[VerifyPoint] = []
        #: wake the loop for every record applied: set while something in the loop waits
        #: for the applied end (a rewind, a dcm resync); otherwise a wake per write was a
        #: turn of the loop per write for nothing (clears, barriers and the loop's own
        #: ticks still wake it)
        self.notify_applied = True

    def replay(self, first: int, end: int) -> None:
        """Re-apply SRL records [first, end) (after a restart) before anything newer."""
        self._q.put(("replay", first, end))

    def put(self, rec: Record) -> None:
        """Queue a durable record for the volume (it is in the SRL: past HOLD_BYTES of
        waiting data only its LSN waits, and the record is read back when applied)."""
        self.put_many([rec])

    def put_many(self, recs: list[Record]) -> None:
        """put() of consecutive records, with one lock and one queue item (a batch of a
        catch-up is one hand-over, not one per record)."""
        items: list[Record | int] = []
        with self.lock:
            for rec in recs:
                if self.held_bytes + len(rec.data) > HOLD_BYTES and rec.data:
                    self.lazy[rec.lsn] = (rec.offset, len(rec.data))
                    items.append(rec.lsn)
                else:
                    self.overlay[rec.lsn] = rec
                    self.held_bytes += len(rec.data)
                    items.append(rec)
        self._q.put(("many", items))

    def clear(self, clear_end: int) -> None:
        """Advance the SRL start to clear_end once everything before it is applied."""
        if clear_end > self.pending_clear:
            self.pending_clear = clear_end
            self._q.put(("clear",))

    @contextmanager
    def clears_held(self) -> Iterator[None]:
        """No clear moves the log's start meanwhile (one running is waited for): the
        caller cuts or resets the log, which a clear computed before it must not follow."""
        with self._clearing:
            yield

    def forget_from(self, lsn: int) -> None:
        """The log was cut back to ``lsn`` (a divergent tail dropped, or a reset): nothing at
        or past it is applied any more, and no clear may reach past it. The caller made
        sure the applier had finished with those records."""
        with self.lock:
            self.applied_end = min(self.applied_end, lsn)
            self._forget()
            self.pending_clear = min(self.pending_clear, lsn)
        self.cancel_verifies(f"its log was cut back to LSN {lsn}")

    def restart_at(self, lsn: int) -> None:
        """The log was emptied at ``lsn`` after a block copy brought the volume there."""
        with self.lock:
            self.applied_end = lsn
            self._forget()
            self.pending_clear = 0
        self.cancel_verifies(f"its volume was rewritten by a block copy up to LSN {lsn}")

    def barrier(self, clear_to: int = 0) -> threading.Event:
        """An event set once everything queued so far is applied and flushed, and the log
        cleared up to ``clear_to`` (a block copy is about to overwrite the volume: records
        left in the log would be replayed over its blocks after a restart)."""
        ev = threading.Event()
        self._q.put(("barrier", ev, clear_to))
        return ev

    def stop(self) -> None:
        self._q.put(("stop",))

    def verify_at(self, point: VerifyPoint) -> None:
        """Hash ``point.chunks`` once everything below ``point.lsn`` is applied. Asked
        before any record at or past that LSN is handed over (the caller's promise), so the
        applier stops there for the time the hashing takes."""
        self._q.put(("verify", point))

    def _forget(self) -> None:
        self.overlay.clear()
        self.lazy.clear()
        self.held_bytes = 0

    def snapshot_overlay(self) -> list[Record]:
        """Every record not yet applied, in LSN order; those waiting without their data are
        read from the SRL now. One cleared meanwhile was applied before it was cleared, so
        a volume read made after this call sees it: it is left out."""
        with self.lock:
            recs = list(self.overlay.values())
            lazy = list(self.lazy)
        for lsn in lazy:
            try:
                recs.append(self.srl.get(lsn))
            except SRLError:
                continue
        return sorted(recs, key=lambda r: r.lsn)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self._on_progress()

    def run(self) -> None:
        self.sync.start()
        try:
            while True:
                wanted = self.pending_clear > self.srl.start_lsn
                try:
                    item = self._q.get(timeout=CLEAR_EVERY_S if wanted else None)
                except queue.Empty:
                    item = ("tick",)
                kind = item[0]
                if kind == "many" and self._q.empty():
                    # woken for a few records: let more gather before applying (see GATHER_S)
                    time.sleep(GATHER_S)
                if kind == "stop":
                    self.sync.stop()
                    self._clear(self.pending_clear)
                    self.volume.flush()
                    return
                if kind == "many":
                    for x in item[1]:
                        if isinstance(x, Record):
                            self._apply(x)
                        elif x >= self.applied_end:
                            self._apply(self.srl.get(x))
                    self._writeback()
                elif kind == "replay":
                    for rec in self.srl.read(item[1], item[2]):
                        if rec.lsn >= self.applied_end:
                            self._apply(rec)
                    self._writeback()
                    # records older than applied_end were applied before the restart
                elif kind == "barrier":
                    self.volume.flush()
                    if item[2]:
                        self._clear(item[2])
                    item[1].set()
                    self._on_progress()
                elif kind == "verify-cancel":
                    points, self._verifies = self._verifies, []
                    for point in points:
                        point.done(None, item[1])
                elif kind == "verify":
                    self._verifies.append(item[1])
                    self._verifies.sort(key=lambda v: v.lsn)
                    self._run_verifies()
                # a clear waits for the records it covers to be applied, and for its turn
                if self.pending_clear > self.srl.start_lsn and self._clear_due():
                    self._last_clear = time.monotonic()
                    self.sync.want_clear()
        except BaseException as exc:  # surfaced by the loop as a failed node
            log.exception("applier stopped: %s", exc)
            self._fail(exc)

    def _apply(self, rec: Record) -> None:
        if rec.lsn < self.applied_end:
            return
        if rec.lsn != self.applied_end:
            raise ApplyError(
                f"apply out of order: LSN {rec.lsn} while expecting {self.applied_end}"
            )
        self.volume.apply(rec)
        self.unwritten += len(rec.data)
        with self.lock:
            self.applied_end = rec.lsn + 1
            held = self.overlay.pop(rec.lsn, None)
            if held is not None:
                self.held_bytes -= len(held.data)
            self.lazy.pop(rec.lsn, None)
        if self._verifies:
            self._run_verifies()
        if self.notify_applied:
            self._on_progress()

    def _writeback(self) -> None:
        if self.unwritten >= WRITEBACK_BYTES:
            self.unwritten = 0
            self.sync.want_writeback()

    def _run_verifies(self) -> None:
        """Answer the verify points whose LSN the volume stands at now; one it has passed
        (a block copy or a reset moved it on) cannot be answered, and says so."""
        while self._verifies and self._verifies[0].lsn <= self.applied_end:
            point = self._verifies.pop(0)
            if point.lsn < self.applied_end:
                point.done(
                    None,
                    f"its volume was already past LSN {point.lsn} "
                    f"(applied up to {self.applied_end - 1})",
                )
                continue
            try:
                digests = [self.volume.digest_of(off, n) for off, n in point.chunks]
            except (OSError, VolumeError) as exc:
                point.done(None, f"reading its volume failed: {exc}")
                continue
            point.done(digests, "")

    def cancel_verifies(self, why: str) -> None:
        """Answer every waiting verify point with ``why`` (the role changed)."""
        self._q.put(("verify-cancel", why))

    def _clear_due(self) -> bool:
        if self.srl.used_bytes >= CLEAR_PRESSURE * self.srl.capacity:
            return True
        return time.monotonic() - self._last_clear >= CLEAR_EVERY_S

    def _clear_pending(self) -> None:
        self._clear(self.pending_clear)

    def _clear(self, clear_end: int) -> None:
        """Flush the volume, then clear the log up to what was applied before the flush
        (and no further than ``clear_end``)."""
        with self._clearing:
            new_start = min(clear_end, self.applied_end, self.srl.end_lsn)
            if new_start <= self.srl.start_lsn:
                return
            self._last_clear = time.monotonic()
            self.volume.flush()
            self.srl.advance_start(new_start)
        self._on_progress()


class LocalSync:
    """Makes the daemon's loop thread the SRL's group-commit leader.

    The loop queues every record it has in hand (kick=False), then `sync()` waits on the
    last one: the loop thread itself writes the batch and runs the fdatasync, and can send
    the ACK or complete the writes the moment it returns. Records that arrive meanwhile wait
    in the sockets and form the next batch. No thread hand-off lies on a write's path.

    A stream of records (a secondary catching up: UPDATES of hundreds of records, message
    after message, in one turn of the loop) is written earlier: `background()` hands what is
    queued to the SRL's committer thread at once, so the loop decodes and queues the next
    messages while the last ones are written and synced, and `take_durable()` lets it
    acknowledge what is durable without waiting (py-spy of a 20 000-record catch-up: the
    secondary's loop sat in fdatasync a third of the time while the primary's window was
    full). `sync()` at the end of the turn still waits for everything: between turns
    nothing is pending, as before."""

    def __init__(self, applier: Applier, durable_end: int) -> None:
        self.applier = applier
        self.durable_end = durable_end
        #: (handle of the last record, the records) per append, in LSN order
        self._pending: list[tuple[Any, list[Record]]] = []
        self.error: BaseException | None = None

    def put(self, pending: Any, rec: Record) -> None:
        self._pending.append((pending, [rec]))

    def put_many(self, pending: Any, recs: list[Record]) -> None:
        """Records appended together; ``pending`` is the last one's handle."""
        self._pending.append((pending, recs))

    def background(self, srl: Any) -> None:
        """Have the SRL's committer thread start on what is queued now."""
        if self._pending:
            srl.kick()

    @property
    def idle(self) -> bool:
        """No record waits to be made durable and handed to the applier."""
        return not self._pending

    def sync(self) -> bool:
        """Make everything queued durable; True if the durable end moved."""
        if not self._pending or self.error:
            return False
        batch, self._pending = self._pending, []
        # the last one first: it leads the batch; the others are durable by then
        return self._settle(batch[::-1], batch)

    def take_durable(self) -> bool:
        """Hand over what is durable already, without waiting; True if the end moved."""
        pending = self._pending
        n = 0
        for p, _ in pending:
            if not p.done:
                break
            n += 1
        if not n or self.error:
            return False
        batch, self._pending = pending[:n], pending[n:]
        return self._settle(batch, batch)  # all done: each wait returns at once

    def _settle(self, order: list, batch: list[tuple[Any, list[Record]]]) -> bool:
        """Wait for ``batch`` (in ``order``), then hand its records to the applier; an
        append's error is kept for the loop, which fails the node."""
        try:
            for pending, _ in order:
                pending.wait()
        except BaseException as exc:  # surfaced by the loop as a failed node
            log.exception("SRL append failed: %s", exc)
            self.error = exc
            return False
        self.applier.put_many([rec for _, recs in batch for rec in recs])
        self.durable_end = batch[-1][1][-1].lsn + 1
        return True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.sync()

    def join(self, timeout: float | None = None) -> None:
        pass
