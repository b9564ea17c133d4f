"""The primary's pipeline (Fig. 2 of the seed, primary side: docs/architecture.md).

write → SRL append (group commit, runs beside the network send) → UPDATE to every streaming
secondary → completion once durable locally and acknowledged by every sync secondary that
counts (invariant 1) → background apply → CLEAR once every secondary has the record.

Live replication and catch-up are one mechanism: each peer has a `next_lsn` and a bounded
window; records come from an in-memory cache of recent writes or, for a lagging peer, from the
SRL. A rejoining peer therefore never stalls the writers: it only ever costs bounded reads.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from replengine.errors import SRLFullError
from replengine.log.record import Record
from replengine.node.peers import MISSED_BEATS
from replengine.node.states import IN_DCM, PeerState
from replengine.node.status import WriteClock
from replengine.wire.protocol import Clear, Update, Updates, encode

if TYPE_CHECKING:
    from replengine.node.context import PrimaryContext
    from replengine.node.peers import Peer

log = logging.getLogger(__name__)

WINDOW_BYTES = 32 << 20
WINDOW_RECORDS = 4096
CACHE_BYTES = 64 << 20
PUMP_BUDGET = 16 << 20
#: records in one UPDATES message at most, and bytes of data (it is one frame, copied once)
BATCH_RECORDS = 256
BATCH_BYTES = 1 << 20


@dataclass
class PendingWrite:
    lsn: int
    client: bytes
    req_id: int
    t0: float


@dataclass
class StalledWrite:
    client: bytes
    req_id: int
    offset: int
    data: memoryview
    t0: float


class Primary:
    def __init__(self, node: PrimaryContext) -> None:
        self.node = node
        self.pending: deque[PendingWrite] = deque()
        self.stalled: deque[StalledWrite] = deque()
        self.cache: dict[int, Record] = {}
        self.cache_bytes = 0
        self.assigned_end = node.srl.end_lsn
        self.clock = WriteClock()  # when each LSN was asked for: status's lag in seconds
        self.clear_end = node.srl.start_lsn
        self.accepting = True
        self._stall_logged = False
        #: after a stall (node.liveness) writes no sync secondary has to acknowledge wait
        #: until then: another node may have been promoted meanwhile, whose HELLO comes first
        self.alone_hold_until = 0.0

    # ---- writes ---------------------------------------------------------------------------

    def submit(self, client: bytes, req_id: int, offset: int, data: memoryview) -> None:
        node = self.node
        if offset < 0 or offset + len(data) > node.volume.size:
            node.reply_error(
                client,
                req_id,
                f"write of {len(data)} bytes at offset {offset} "
                f"is outside the volume ({node.volume.size} bytes)",
            )
            return
        if self.stalled:
            self.stalled.append(StalledWrite(client, req_id, offset, data, time.monotonic()))
            return
        if not self._append(client, req_id, offset, data, time.monotonic()):
            self._on_full(StalledWrite(client, req_id, offset, data, time.monotonic()))

    def _append(self, client: bytes, req_id: int, offset: int, data: memoryview, t0: float) -> bool:
        node = self.node
        try:
            pending = node.srl.append_nowait(node.epoch, offset, data, kick=False)
        except SRLFullError:
            return False
        rec = Record(pending.lsn, node.epoch, offset, data)
        if node.dcm.maps:
            node.dcm.mark(pending.lsn, offset, len(data))
        self.cache[rec.lsn] = rec
        self.cache_bytes += len(data)
        node.metrics.note_append(len(data))
        self.assigned_end = rec.lsn + 1
        self.clock.note(rec.lsn, t0, node.srl.start_lsn)
        node.watcher.put(pending, rec)
        self.pending.append(PendingWrite(rec.lsn, client, req_id, t0))
        return True

    def _on_full(self, w: StalledWrite) -> None:
        node = self.node
        policy = node.cfg.srl_full
        if policy == "dcm" and node.dcm_release(self):
            if self._append(w.client, w.req_id, w.offset, w.data, w.t0):
                return
        node.events.emit_once(
            "srl-full",
            "policy",
            policy="srl_full",
            action=policy if policy == "fail" else "stall",
            used_bytes=node.srl.used_bytes,
            capacity=node.srl.capacity,
        )
        if policy == "fail":
            node.reply_error(
                w.client,
                w.req_id,
                "SRL full: a secondary lags too far behind "
                f"(srl_full=fail; SRL {node.srl.used_bytes} bytes used of "
                f"{node.srl.capacity}); write refused",
            )
            return
        if not self._stall_logged:
            node.warn_once(
                "srl-full",
                "SRL full (%d of %d bytes used): writers stall until it can be cleared; "
                "held by %s (srl_full=%s)",
                node.srl.used_bytes,
                node.srl.capacity,
                self.log_holder(),
                policy,
            )
            self._stall_logged = True
        self.stalled.append(w)

    def retry_stalled(self) -> None:
        while self.stalled:
            w = self.stalled[0]
            if not self._append(w.client, w.req_id, w.offset, w.data, w.t0):
                if self.node.cfg.srl_full == "dcm" and self.node.dcm_release(self):
                    continue
                return
            self.stalled.popleft()
        self._stall_logged = False

    def required_sync(self) -> list[Peer]:
        node = self.node
        peers = [
            p
            for p in node.peers.values()
            if p.mode == "sync" and not p.rejected and p.state not in IN_DCM
        ]
        if node.cfg.on_sync_loss == "block":
            return peers
        return [p for p in peers if not p.degraded]

    def complete(self) -> None:
        """Complete writes, in LSN order, that are durable wherever they must be."""
        node = self.node
        durable = node.watcher.durable_end
        required = self.required_sync()
        if not required:
            node.liveness.within_turn()  # a turn that waited on a hung disk stalled too
        now = time.monotonic()
        if not required and now < self.alone_hold_until:
            return  # completed alone, they would be the divergent tail of a replaced primary
        while self.pending:
            w = self.pending[0]
            if w.lsn >= durable:
                break
            missing = [p.name for p in required if p.acked_end <= w.lsn]
            if missing:
                if node.cfg.on_sync_loss == "block" and now - w.t0 > node.cfg.sync_timeout:
                    self.pending.popleft()
                    node.reply_error(
                        w.client,
                        w.req_id,
                        f"write LSN {w.lsn} timed out after "
                        f"{node.cfg.sync_timeout}s waiting for sync secondaries "
                        f"{', '.join(missing)} (on_sync_loss=block)",
                    )
                    continue
                break
            self.pending.popleft()
            node.reply_ok(w.client, w.req_id, {"lsn": w.lsn})
            node.metrics.note_write(w.lsn, w.t0, now)
            if node.copier.pacer is not None:
                node.copier.pacer.note_write(now - w.t0, now)
        for w in list(self.stalled):
            if node.cfg.on_sync_loss == "block" and now - w.t0 > node.cfg.sync_timeout:
                self.stalled.remove(w)
                node.reply_error(
                    w.client,
                    w.req_id,
                    f"write timed out: SRL full for {node.cfg.sync_timeout}s "
                    f"(srl_full={node.cfg.srl_full}; held by {self.log_holder()})",
                )

    def stop_accepting(self, why: str) -> None:
        """No new write from now on (a demote, a stop). Writes stalled on a full SRL were
        never logged, and room comes only once a lagging secondary catches up, which may be
        never (it is gone, or this node is cut off): they fail now, saying so, instead of
        holding the demote until then, or the stop for its drain's minute (seed 10803 round
        9). Logged writes still drain: their outcome is decided by their acknowledgements."""
        self.accepting = False
        node = self.node
        for s in self.stalled:
            node.reply_error(
                s.client,
                s.req_id,
                f"write not logged: {node.me} is {why} and its SRL was full "
                f"(srl_full={node.cfg.srl_full}); nothing of it was written",
            )
        self.stalled.clear()

    def drained(self) -> bool:
        return not self.pending and not self.stalled

    def fail_all(self, reason: str) -> None:
        for w in self.pending:
            self.node.reply_error(w.client, w.req_id, reason)
        for s in self.stalled:
            self.node.reply_error(s.client, s.req_id, reason)
        self.pending.clear()
        self.stalled.clear()

    # ---- degrade / recover sync peers -----------------------------------------------------

    def check_sync_peers(self) -> None:
        node = self.node
        stuck = self.not_acknowledging() if node.cfg.on_sync_loss == "degrade" else set()
        for p in node.peers.values():
            if p.mode != "sync" or p.rejected:
                continue
            alive = p.alive(node.heartbeat_s)
            if (
                (not alive or p.name in stuck)
                and not p.degraded
                and node.cfg.on_sync_loss == "degrade"
            ):
                p.degraded = True
                p.ack_wait = None
                why = "lost" if not alive else "not acknowledging"
                node.events.emit(
                    "policy", policy="on_sync_loss", action="degrade", peer=p.name, why=why
                )
                if not alive:
                    log.error(
                        "SYNC SECONDARY %s LOST: replication to it degraded to async until "
                        "it catches up (on_sync_loss=degrade); completed writes are no longer "
                        "guaranteed on it",
                        p.name,
                    )
                else:
                    log.error(
                        "SYNC SECONDARY %s NOT ACKNOWLEDGING: connected, but nothing "
                        "acknowledged past LSN %d over %d of its heartbeats while writes wait "
                        "for it (its log takes no records: a hung disk, an SRL it cannot "
                        "clear); replication to it degraded to async until it catches up "
                        "(on_sync_loss=degrade); completed writes are no longer guaranteed "
                        "on it",
                        p.name,
                        p.acked_end - 1,
                        MISSED_BEATS,
                    )
            elif (
                alive
                and p.degraded
                and p.state not in IN_DCM
                and p.acked_end >= self.caught_up_mark()
            ):
                p.degraded = False
                log.warning(
                    "sync secondary %s caught up at LSN %d: synchronous again",
                    p.name,
                    p.acked_end - 1,
                )

    def not_acknowledging(self) -> set[str]:
        """Sync peers that keep beaconing but acknowledge nothing while a locally durable
        write waits for them: MISSED_BEATS of their HELLOs since their acknowledgement last
        moved, as three missed beats make a silent peer lost. Counted in HELLOs received,
        not in time, so a primary that did not run for a while (its peers' messages still
        queued, acknowledgements first) does not take its own stall for theirs."""
        node = self.node
        w = self.pending[0] if self.pending else None
        out = set()
        for p in self.required_sync():
            if w is None or w.lsn >= node.watcher.durable_end or p.acked_end > w.lsn:
                p.ack_wait = None
            elif p.ack_wait is None or p.ack_wait[0] != p.acked_end:
                p.ack_wait = (p.acked_end, p.hellos)
            elif p.hellos - p.ack_wait[1] >= MISSED_BEATS:
                out.add(p.name)
        return out

    def caught_up_mark(self) -> int:
        """A peer that has every LSN below this has everything already completed, so
        waiting for it from now on costs no more than any in-sync peer."""
        return self.pending[0].lsn if self.pending else self.assigned_end

    def on_connect(self, p: Peer) -> None:
        """Under degrade, a sync peer that (re)connects behind is async until caught up."""
        if (
            p.mode == "sync"
            and self.node.cfg.on_sync_loss == "degrade"
            and p.acked_end < self.caught_up_mark()
            and not p.degraded
        ):
            p.degraded = True
            log.warning(
                "sync secondary %s connected %d records behind: replicated "
                "asynchronously until it catches up",
                p.name,
                self.assigned_end - p.acked_end,
            )

    # ---- streaming ------------------------------------------------------------------------

    def pump(self) -> None:
        node = self.node
        for p in node.peers.values():
            if p.streaming and p.alive(node.heartbeat_s):
                self._pump_peer(p)
        self._evict()

    def _pump_peer(self, p: Peer) -> None:
        """Send ``p`` the records it lacks, within its window. Several ready at once (a
        peer catching up, writes at queue depth > 1) go as one UPDATES message of up to
        BATCH_RECORDS / BATCH_BYTES: a receive, decode and dispatch per batch instead of per
        record is most of what a catching-up secondary spends. A lone record goes as an
        UPDATE, as before."""
        node = self.node
        budget = PUMP_BUDGET
        durable = node.watcher.durable_end
        batch: list[Record] = []
        batch_bytes = 0
        read_ahead: dict[int, Record] = {}
        next_lsn, inflight, nsent = p.next_lsn, p.inflight_bytes, len(p.sent)
        while (
            next_lsn < self.assigned_end
            and inflight < WINDOW_BYTES
            and nsent < WINDOW_RECORDS
            and budget > 0
        ):
            lsn = next_lsn
            rec = self.cache.get(lsn)
            if rec is None:
                rec = read_ahead.pop(lsn, None)
                if rec is None:
                    if lsn >= durable:
                        break
                    if lsn < node.srl.start_lsn:
                        if batch:
                            break  # send what we have; the next turn finds the gap
                        log.error(
                            "secondary %s needs LSN %d but the SRL starts at %d: resyncing "
                            "it from blocks",
                            p.name,
                            lsn,
                            node.srl.start_lsn,
                        )
                        node.dcm.enter_full(p, self)
                        node.dcm.start_resync(p)
                        return
                    # catch-up from the log (the peer is behind what we keep in memory): paced
                    # like a block copy, so a laggard's catch-up cannot swamp the writers. One
                    # pread for the records that lie back to back from here, judged and paid
                    # for once (per record, the pacer's calls were a quarter of the loop's
                    # time in a catch-up, cProfile)
                    pacer = node.copier.pacer
                    if pacer is not None:
                        pacer.start()
                        if not pacer.ready():
                            break
                    want = min(BATCH_BYTES, budget)
                    got = node.srl.get_many(lsn, min(durable, self.assigned_end), want)
                    if pacer is not None:
                        pacer.spend(sum(len(r.data) for r in got))
                    read_ahead = {r.lsn: r for r in got[1:]}
                    rec = got[0]
                budget -= len(rec.data)
            batch.append(rec)
            batch_bytes += len(rec.data)
            next_lsn, inflight, nsent = lsn + 1, inflight + len(rec.data), nsent + 1
            if len(batch) >= BATCH_RECORDS or batch_bytes >= BATCH_BYTES:
                if not self._send_batch(p, batch):
                    return
                batch, batch_bytes = [], 0
        if batch and not self._send_batch(p, batch):
            return
        if p.state != "dcm-resync":
            p.state = (
                PeerState.UP_TO_DATE if p.acked_end >= self.assigned_end else PeerState.CATCHING_UP
            )

    def _send_batch(self, p: Peer, batch: list[Record]) -> bool:
        """One UPDATE or UPDATES to ``p``; its window accounting once it is on its way."""
        node = self.node
        if len(batch) == 1:
            r = batch[0]
            body: Update | Updates = Update(r.lsn, r.epoch, r.offset, r.data, self.clear_end, r.crc)
        else:
            body = Updates(batch, self.clear_end)
        if not node.transport.send(p.name, encode(node.cfg.uuid, node.epoch, node.me, body)):
            return False  # the socket's queue is full: the same records next turn
        for r in batch:
            n = len(r.data)
            p.sent.append((r.lsn, n))
            p.shipped_bytes += n
            p.inflight_bytes += n
        p.shipped_records += len(batch)
        p.next_lsn = batch[-1].lsn + 1
        p.clear_sent = self.clear_end
        return True

    def _evict(self) -> None:
        if not self.cache:
            return
        node = self.node
        nexts = [p.next_lsn for p in node.peers.values() if p.streaming]
        floor = min(nexts) if nexts else self.assigned_end
        durable = node.watcher.durable_end
        lsn = min(self.cache)
        while self.cache and lsn < durable and (lsn < floor or self.cache_bytes > CACHE_BYTES):
            rec = self.cache.pop(lsn, None)
            if rec is not None:
                self.cache_bytes -= len(rec.data)
            lsn += 1

    # ---- clearing -------------------------------------------------------------------------

    def log_holder(self) -> str:
        """What keeps the SRL from being cleared, for the messages of a full log: a
        stall under srl_full = "dcm" means nothing could be released (seed 13703 round 5
        said "srl_full=stall" there and named nothing)."""
        node = self.node
        applied = node.applier.applied_end
        if applied < self.clear_end:
            return f"this node's own volume, applied up to LSN {applied - 1}"
        held = []
        for p in node.peers.values():
            floor = node.dcm.clear_floor(p)
            end = p.acked_end if floor is None else floor
            if end <= self.clear_end:
                if floor is not None:
                    how = "in dcm or a resync, covered"
                else:  # a sync peer still connected is waited for, and not released to dcm
                    link = "connected" if p.streaming and not p.degraded else "not connected"
                    how = f"{p.mode}, {link}, acknowledged"
                held.append(f"{p.name} ({how} up to LSN {end - 1})")
        return ", ".join(held) or "records not yet durable here"

    def update_clear(self) -> None:
        """CLEAR(X) once every secondary of the resource has logged everything below X."""
        node = self.node
        ends = []
        for p in node.peers.values():
            floor = node.dcm.clear_floor(p)
            ends.append(p.acked_end if floor is None else floor)
        clear_end = min(ends + [node.watcher.durable_end])
        if clear_end > self.clear_end:
            self.clear_end = clear_end
            node.applier.clear(clear_end)

    def send_idle_clears(self) -> None:
        node = self.node
        for p in node.peers.values():
            if p.streaming and p.clear_sent < self.clear_end and p.next_lsn >= self.assigned_end:
                if node.transport.send(
                    p.name, encode(node.cfg.uuid, node.epoch, node.me, Clear(self.clear_end))
                ):
                    p.clear_sent = self.clear_end
