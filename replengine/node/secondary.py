"""The secondary's pipeline (Fig. 2 of the seed, secondary side: docs/architecture.md).

UPDATE → epoch check (invariant 4) → LSN continuity → SRL append → cumulative ACK once
durable → background apply in LSN order → CLEAR advances the SRL start once applied.
A gap is answered with a NACK naming the LSN expected, so the primary resends from there;
a duplicate is answered with a fresh ACK. Nothing here ever writes the volume directly.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from replengine.errors import ReplError, SRLFullError
from replengine.log.history import divergence_point, epoch_at, join
from replengine.log.record import Record
from replengine.node.inbox import refusals
from replengine.wire.protocol import Ack, Flag, Header, Nack, Update, Updates, encode

if TYPE_CHECKING:
    from replengine.node.context import SecondaryContext

log = logging.getLogger(__name__)


class Secondary:
    def __init__(self, node: SecondaryContext) -> None:
        self.node = node
        self.assigned_end = node.srl.end_lsn
        self.acked_sent = (0, 0)
        self._last_nack = (0, 0.0)
        self.srl_full = False
        #: the log's start when it last refused a record for lack of room
        self.full_at = 0
        #: whose records were refused because a block copy was still coming in
        self.refused_in_copy: set[str] = set()

    def on_update(self, header: Header, u: Update) -> bool:
        """Log one record from the primary (or pulled from a peer); True once it is queued."""
        if not self._accepts(header, u.lsn, u.clear_end):
            return False
        return self._log(header, u)

    def on_updates(self, header: Header, batch: Updates) -> None:
        """Consecutive records in one message: the sender is judged once, then each record
        is taken as an UPDATE would be, stopping at the first one refused (the rest could
        only follow it into a gap). Records already logged (a resend overlapping what
        arrived) are passed over; all of them logged already: acknowledged once, as one
        duplicate UPDATE would be."""
        recs = batch.records
        if not self._accepts(header, recs[0].lsn, batch.clear_end):
            return
        end = self.assigned_end
        if recs[0].lsn < end and self._diverged(
            header.sender, [(r.lsn, r.epoch) for r in recs if r.lsn < end]
        ):
            return
        new = recs if recs[0].lsn >= end else [r for r in recs if r.lsn >= end]
        if new:
            self._log_many(header, new, batch.clear_end)
        else:  # all logged already: acknowledged again
            self._log(header, Update.of(recs[-1], batch.clear_end))
        node = self.node
        # written and synced by the SRL's committer while the loop takes the next message;
        # what an earlier batch made durable meanwhile is acknowledged now, so the
        # primary's window refills while this turn goes on
        node.watcher.background(node.srl)
        if node.watcher.take_durable():
            self.ack()

    def _accepts(self, header: Header, lsn: int, clear_end: int) -> bool:
        """Whether records from this sender may be logged now (``lsn``, the first's, names
        them in refusals); the clear they carry is taken first."""
        node = self.node
        pulled = bool(header.flags & Flag.PULLED)
        if header.epoch < node.known_epoch:
            refusals(
                f"fenced:{header.sender}",
                logging.WARNING,
                "refused UPDATE LSN %d from %s: its epoch %d is older than the known "
                "epoch %d (fenced)",
                lsn,
                header.sender,
                header.epoch,
                node.known_epoch,
            )
            return False
        in_rewind = node.rewinder is not None and not node.rewinder.streaming
        if in_rewind or (node.dcm_rx is not None and not node.dcm_rx.done):
            # a rewind's or a dcm resync's blocks are not all in yet: a record logged now
            # could be overwritten by them. Asked for again once they are (copy_ended)
            self.refused_in_copy.add(header.sender)
            refusals(
                f"in-copy:{header.sender}",
                logging.INFO,
                "refused UPDATE LSN %d from %s until the blocks of the %s are all in",
                lsn,
                header.sender,
                "rewind" if in_rewind else "dcm resync",
            )
            return False
        if not pulled and header.sender != node.following:
            refusals(
                f"unfollowed:{header.sender}",
                logging.INFO,
                "refused UPDATE LSN %d from %s: this node follows %r, not it",
                lsn,
                header.sender,
                node.following or "nobody",
            )
            return False
        if clear_end and not pulled:
            # before anything that may drop this UPDATE: a full SRL needs exactly this clear
            node.applier.clear(clear_end)
        return True

    def _log(self, header: Header, u: Update) -> bool:
        """Queue one record of an accepted sender for the SRL (the loop's group commit makes
        it durable); refused when it is not the next LSN, lies outside the volume or names
        the wrong epoch."""
        node = self.node
        if u.lsn < self.assigned_end:
            if self._diverged(header.sender, [(u.lsn, u.rec_epoch)]):
                return False
            refusals(
                f"duplicate:{header.sender}",
                logging.INFO,
                "UPDATE LSN %d from %s is already logged (end %d): acknowledged again, "
                "not logged twice",
                u.lsn,
                header.sender,
                self.assigned_end,
            )
            self.ack(force=True)
            return False
        if u.lsn > self.assigned_end:
            self._nack(header.sender)
            return False
        if u.offset + len(u.data) > node.volume.size:
            refusals(
                f"outside:{header.sender}",
                logging.ERROR,
                "refused UPDATE LSN %d from %s: %d bytes at offset %d lie outside this "
                "node's volume (%d bytes)",
                u.lsn,
                header.sender,
                len(u.data),
                u.offset,
                node.volume.size,
            )
            return False
        if not self._epoch_matches(header.sender, u):
            return False
        rec = Record(u.lsn, u.rec_epoch, u.offset, u.data, u.crc)
        try:
            pending = node.srl.append_record_nowait(rec, kick=False)
        except SRLFullError:
            if not self.srl_full:
                log.warning(
                    "SRL full at LSN %d: not logging until the primary clears records", u.lsn
                )
                self.srl_full = True
                self.full_at = node.srl.start_lsn
            return False
        self.srl_full = False
        node.watcher.put(pending, rec)
        self.assigned_end = u.lsn + 1
        if header.flags & Flag.PULLED:
            node.ops.pulled_bytes += len(u.data)
        if u.clear_end:
            node.applier.clear(u.clear_end)
        return True

    def _log_many(self, header: Header, recs: list[Record], clear_end: int) -> None:
        """_log of consecutive records, appended to the SRL together (one lock, one
        reservation pass): the same checks per record, stopping at the first refused."""
        node = self.node
        if recs[0].lsn != self.assigned_end:
            self._nack(header.sender)  # a gap (the batch is consecutive from its first)
            return
        size = node.volume.size
        hist = node.srl.history
        epoch = node.srl.epoch
        fast_from = hist[-1][1] if hist else None
        start = 0  # recs[start:i] are checked, not yet appended
        for i, r in enumerate(recs):
            if r.offset + len(r.data) > size:
                if self._append(header, recs[start:i], clear_end):
                    self._log(header, Update.of(r, clear_end))  # refused, and said why
                return
            if not (r.epoch == epoch and fast_from is not None and fast_from <= r.lsn):
                # not the current epoch's next record: its history is checked (and maybe
                # joined) with everything before it logged, as one UPDATE at a time would
                if not self._append(header, recs[start:i], clear_end) or not self._log(
                    header, Update.of(r, clear_end)
                ):
                    return
                start = i + 1
                hist = node.srl.history
                epoch = node.srl.epoch
                fast_from = hist[-1][1] if hist else None
        self._append(header, recs[start:] if start else recs, clear_end)

    def _append(self, header: Header, recs: list[Record], clear_end: int) -> bool:
        """Queue records already checked; False if the SRL took only some (it is full)."""
        if not recs:
            return True
        node = self.node
        try:
            pending, n = node.srl.append_records_nowait(recs)
        except SRLFullError:
            pending, n = None, 0
        if n:
            node.watcher.put_many(pending, recs[:n] if n < len(recs) else recs)
            self.assigned_end = recs[n - 1].lsn + 1
            if header.flags & Flag.PULLED:
                node.ops.pulled_bytes += sum(len(r.data) for r in recs[:n])
            if clear_end:
                node.applier.clear(clear_end)
        if n < len(recs):
            if not self.srl_full:
                log.warning(
                    "SRL full at LSN %d: not logging until the primary clears records",
                    recs[n].lsn,
                )
                self.srl_full = True
                self.full_at = node.srl.start_lsn
            return False
        self.srl_full = False
        return True

    def _diverged(self, sender: str, logged: list[tuple[int, int]]) -> bool:
        """Whether records resent at LSNs this node has logged, as (LSN, record epoch), are
        of another line of history than the records logged there: never acknowledged as
        ours (the primary would count this node as holding writes it does not hold). The
        handshake with the primary we follow runs again, and finds the divergent tail to
        rewind."""
        node = self.node
        hist = node.srl.history
        for lsn, epoch in logged:
            mine = epoch_at(hist, lsn)
            if mine is not None and mine != epoch:
                break
        else:
            return False
        refusals(
            f"diverged:{sender}",
            logging.ERROR,
            "UPDATE LSN %d from %s is of epoch %d, but the record logged here at that LSN is "
            "of epoch %d: not acknowledged; this node holds a divergent tail (history %s)",
            lsn,
            sender,
            epoch,
            mine,
            hist,
        )
        self._handshake_again(sender)
        return True

    def _handshake_again(self, sender: str) -> None:
        """The primary we follow names another epoch than ours below records it sends: we
        hold a divergent tail it did not see when we began to follow it (the check in
        Node.follow runs once per primary followed). Run it again: it starts the rewind."""
        node = self.node
        peer = node.peers.get(sender)
        if sender == node.following and peer is not None and peer.hello is not None:
            node.follow(peer, peer.hello)

    def _epoch_matches(self, sender: str, u: Update) -> bool:
        """The record's epoch must be the one its sender's history names for its LSN; when
        ours names another there (an epoch we knew that wrote nothing we kept, or a newer
        one we have not seen), ours is joined to the sender's from this LSN on, durably,
        before the record is logged: a guessed boundary would look like divergence later."""
        node = self.node
        hist = node.srl.history
        if u.rec_epoch == node.srl.epoch and hist and hist[-1][1] <= u.lsn:
            return True  # the common case: the current epoch's next record
        peer = node.peers.get(sender)
        theirs = peer.hello.history if peer and peer.hello else []
        if epoch_at(theirs, u.lsn) != u.rec_epoch:
            refusals(
                f"rec-epoch:{sender}",
                logging.ERROR,
                "refused UPDATE LSN %d from %s: record epoch %d does not match its history %s",
                u.lsn,
                sender,
                u.rec_epoch,
                theirs,
            )
            return False
        if epoch_at(hist, u.lsn) == u.rec_epoch:
            return True
        try:
            joined = join(hist, theirs, u.lsn)
            node.srl.set_history(joined)
        except ReplError as exc:
            refusals(
                f"join:{sender}",
                logging.ERROR,
                "refused UPDATE LSN %d from %s: %s",
                u.lsn,
                sender,
                exc,
            )
            if divergence_point(hist, theirs, u.lsn) < u.lsn:
                self._handshake_again(sender)
            return False
        log.warning(
            "epoch history %s replaced by %s from LSN %d on (as %s's)",
            hist,
            list(joined),
            u.lsn,
            sender,
        )
        return True

    def _nack(self, sender: str) -> None:
        """Ask for a resend from our end; at most once per LSN per heartbeat."""
        expected = self.assigned_end
        now = time.monotonic()
        if self._last_nack[0] == expected and now - self._last_nack[1] < self.node.heartbeat_s:
            return
        self._last_nack = (expected, now)
        self.node.transport.send(
            sender, encode(self.node.cfg.uuid, self.node.known_epoch, self.node.me, Nack(expected))
        )

    def copy_ended(self, source: str) -> None:
        """The blocks are in and the log restarts here: records ``source`` sent meanwhile
        were refused, so ask for them now. The primary began streaming as soon as it had
        sent the last block, and without this would resend only when it finds us stuck
        (two heartbeats): a synchronous write would wait that long."""
        if source in self.refused_in_copy:
            self._last_nack = (0, 0.0)
            self._nack(source)
        self.refused_in_copy.clear()

    def ack(self, force: bool = False) -> None:
        """Cumulative ACK to the primary we follow and to a peer we are pulling from."""
        node = self.node
        if node.rewinder is not None and not node.rewinder.streaming:
            return  # its log still holds the tail being dropped: acking it would clear it
        targets = [t for t in (node.following, node.ops.pull_source) if t]
        if not targets:
            return
        state = (node.watcher.durable_end, node.applier.applied_end)
        if state[0] == self.acked_sent[0] and not force:
            # the durable end is what the primary acts on (completing writes, clearing);
            # the applied end only rides along: an ACK of its own for each record the
            # applier wrote was a message and a turn of both loops per write
            return
        frames = encode(node.cfg.uuid, node.known_epoch, node.me, Ack(*state))
        sent = [node.transport.send(t, frames) for t in dict.fromkeys(targets)]
        if all(sent):
            self.acked_sent = state

    def after_clear(self) -> None:
        """Space was freed: if we dropped an UPDATE for lack of room, ask for it again."""
        if not self.srl_full:
            return
        node = self.node
        if node.following:
            self._nack(node.following)
        elif node.ops.pull_source and node.srl.start_lsn > self.full_at:
            # a promotion cleared its log to take a pull (failover.promotion._make_room):
            # the records refused meanwhile are asked for again at once
            self.full_at = node.srl.start_lsn
            self._last_nack = (0, 0.0)
            self._nack(node.ops.pull_source)
