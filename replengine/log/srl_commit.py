"""The SRL's group commit: one appender at a time leads a batch -- writes every queued
record with one vectored write and one fdatasync -- and wakes the others, so N concurrent
appends cost about one disk sync (docs/srl-format.md, "Appends and group commit").

A mixin of replengine.log.srl.SRL: it works on the SRL's queue, index and positions.
"""

from __future__ import annotations

import os
import time

from replengine.errors import SRLError
from replengine.log.srl_format import (
    BLOCK,
)
from replengine.log.srl_io import (
    DURABLE,
    FAILED,
    PENDING,
    ZEROS,
    Batch,
    Item,
    write_records,
)
from replengine.log.srl_recovery import (
    SCAN_WINDOW,
)

#: One batch writes at most this much (a single larger record goes alone). Bounds how far a
#: torn batch can reach beyond its first record, which recovery's look-ahead must cover.
MAX_BATCH_BYTES = 16 << 20
#: Batches in flight at once, together at most MAX_INFLIGHT_BYTES (see _can_lead). Another
#: batch may start while some are being written or synced once >= OVERLAP_MIN_BYTES are
#: queued: big records then overlap their copy and fdatasync with the other batches' (the
#: disk does better with several syncs in flight), while small ones wait and share the next
#: fdatasync (for them, concurrent fdatasyncs of one ext4 file measured slower).
MAX_INFLIGHT = 8
OVERLAP_MIN_BYTES = 256 << 10
MAX_INFLIGHT_BYTES = 2 * MAX_BATCH_BYTES
assert SCAN_WINDOW > 2 * MAX_INFLIGHT_BYTES - BLOCK  # recovery's look-ahead covers them


class GroupCommit:
    # ------------------------------------------------------------------ committer

    def _wait_item(self, item: Item, timeout: float | None) -> int:
        """Leader-follower group commit: while ``item`` is not durable, either this thread
        may start the next batch (then it writes everything queued, its own record included)
        or it sleeps until its record is durable or the finishing leader nominates it.
        A lone writer thus commits its own record without any thread handoff, and concurrent
        writers share one fdatasync per batch. A waiter woken for a durable record returns
        without touching ``_lock``, so the wakeups after a sync do not convoy on it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        lock = self._lock
        while item.state == PENDING:
            with lock:
                while item.state == PENDING and self._can_lead():
                    self._lead_batch()
                if item.state != PENDING:
                    item.signal()  # pass the wakeup on to any other thread waiting on it
                    break
                item.waiting = True
                waiter = item.arm()
            left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            woken = waiter.acquire(timeout=left)
            if woken and item.state != PENDING:
                waiter.release()  # final state: stays released for any other waiter
                break
            with lock:
                item.waiting = False
                if not woken and item.signalled:  # signalled just after the timeout
                    woken = waiter.acquire(blocking=False)
                if woken:
                    item.signalled = False
                    if item.state != PENDING:  # finished after the wakeup: pass it on
                        item.signal()
                elif item.state == PENDING:
                    raise TimeoutError(f"{self.path}: LSN {item.lsn} not durable after {timeout} s")
        if item.state == FAILED:
            assert item.error is not None
            raise item.error
        return item.lsn

    def _commit_loop(self) -> None:
        """Committer thread: leads batches for appends nobody waits on yet (append_nowait),
        so their fdatasync runs while the caller sends the UPDATE; drains the queue at close."""
        with self._lock:
            while True:
                if self._can_lead():
                    self._lead_batch()
                elif self._closing and not self._queue and not self._inflight:
                    return
                else:
                    self._work_cv.wait()

    def _can_lead(self) -> bool:
        """A new batch may start when none is in flight, or when the queued records are big
        (>= OVERLAP_MIN_BYTES), up to MAX_INFLIGHT batches and MAX_INFLIGHT_BYTES together:
        several fdatasyncs in flight keep the disk busy while the next records are copied,
        and the bound keeps a torn tail inside recovery's look-ahead. Small records wait for
        the syncs in flight and share the next one."""
        if not self._queue or self._forming:
            return False
        if self._inflight == 0:
            return True
        return (
            self._inflight < MAX_INFLIGHT
            and self._queued_bytes >= OVERLAP_MIN_BYTES
            and self._inflight_bytes + self._queue[0].size <= MAX_INFLIGHT_BYTES
        )

    def _lead_batch(self) -> None:
        """Write + fdatasync the next batch. Called and returns with ``_lock`` held; the I/O
        runs without it so appends keep queueing for the next batch.

        An fdatasync makes durable every write that completed before it was called, so the
        LSNs it covers are those of the batches written contiguously when it starts. A batch
        written while an earlier one is still being written skips its own fdatasync: the
        earlier batch's, which starts after both writes, covers it.
        """
        if not self._inflight and self._await_siblings():
            return
        limit = min(MAX_BATCH_BYTES, MAX_INFLIGHT_BYTES - self._inflight_bytes)
        items, nbytes = self._take_batch(limit)
        # small records from several threads: their next ones are worth waiting for
        writers = {it.thread for it in items} if nbytes < OVERLAP_MIN_BYTES else set()
        self._last_writers = writers if len(writers) > 1 else set()
        batch = Batch(items, nbytes, items[-1].lsn + 1)
        self._flight.append(batch)
        self._inflight += 1
        self._inflight_bytes += nbytes
        committed, lock = self._durable_end, self._lock
        lock.release()
        try:
            try:
                written = write_records(self._fd, self._area_off, self._sb.log_id, items, committed)
            finally:
                lock.acquire()
            if self._failed is not None:  # another batch failed meanwhile: this one too
                return
            batch.written = True
            self.stats.batches += 1
            self.stats.bytes_written += written
            covered = self._covered()
            if covered < batch.end:
                return  # an earlier batch is still being written; its sync covers this one
            lock.release()
            t0 = time.monotonic()
            try:
                self._fdatasync()
            finally:
                lock.acquire()
            self._last_sync = time.monotonic() - t0
        except OSError as exc:
            if self._failed is None:
                self._fail(items, exc)
            return
        if self._failed is None:
            self._make_durable(covered)

    def _await_siblings(self) -> bool:
        """Group commit's commit_delay: writers of the last (small-record) batch are on their
        way back with their next record; waiting (at most one fdatasync's time) for them to
        queue it lets this batch, and its single fdatasync, carry them too instead of half of
        them. Only after a batch from two or more threads: a lone writer (or writers
        serialised elsewhere) never waits. Returns True if another thread took over."""
        missing = self._last_writers
        if not missing:
            return False
        self._last_writers = set()
        missing.difference_update(it.thread for it in self._queue)
        if not missing:
            return False
        deadline = time.monotonic() + min(self._last_sync, 0.001)
        self._awaited = missing  # _enqueue removes arrivals and notifies when it is empty
        self._forming = True
        try:
            while missing:
                left = deadline - time.monotonic()
                if left <= 0 or not self._arrival_cv.wait(left):
                    self.stats.delay_timeouts += 1
                    break
        finally:
            self._forming = False
            self._awaited = set()
        return not self._can_lead()

    def _covered(self) -> int:
        """The LSN end an fdatasync starting now makes durable: the batches in flight that are
        completely written, up to the first one that is not."""
        end = self._durable_end
        for b in self._flight:
            if not b.written:
                break
            end = b.end
        return end

    def _make_durable(self, covered: int) -> None:
        """Everything below ``covered`` is durable: index it, wake its waiters."""
        flight, add = self._flight, self._index.add
        if flight and flight[0].end <= covered:
            while flight and flight[0].end <= covered:
                b = flight.popleft()
                self._inflight -= 1
                self._inflight_bytes -= b.nbytes
                for it in b.items:
                    add(it.lsn, it.pos, it.length)
                    it.state = DURABLE
                    it.data = ZEROS[:0]  # drop the caller's buffer early
                    it.signal()
            self._durable_end = it.lsn + 1
            self._durable_pos = (it.pos + it.size) % self._cap
        self._done_cv.notify_all()  # admin operations waiting for the log to go idle
        self._nominate()

    def _nominate(self) -> None:
        """Hand the next batch to the waiter of the oldest queued record, or to the committer
        thread if nobody waits on it yet (append_nowait)."""
        if self._can_lead():
            head = self._queue[0]
            if head.waiting:
                head.signal()
            else:
                self._work_cv.notify()

    def _take_batch(self, limit: int) -> tuple[list[Item], int]:
        queue = self._queue
        batch = [queue.popleft()]
        total = batch[0].size
        while queue and total + queue[0].size <= limit:
            total += queue[0].size
            batch.append(queue.popleft())
        self._queued_bytes -= total
        return batch, total

    def _fail(self, batch: list[Item], exc: OSError) -> None:
        """An I/O error leaves the on-disk tail unknown: fail everything, refuse further use."""
        err = SRLError(
            f"{self.path}: writing LSNs {batch[0].lsn}..{batch[-1].lsn} failed: "
            f"{exc}; the SRL must be reopened (recovery decides what survived)"
        )
        self._failed = err
        for it in (*(i for b in self._flight for i in b.items), *self._queue):
            if it.state == PENDING:
                it.state, it.error = FAILED, err
                it.signal()
        self._queue.clear()
        self._flight.clear()
        self._queued_bytes = self._inflight = self._inflight_bytes = 0
        self._done_cv.notify_all()
        self._work_cv.notify_all()

    def _fdatasync(self) -> None:
        os.fdatasync(self._fd)
        self.stats.syncs += 1
