"""`replctl verify`: online and exact comparison of the primary's volume with its secondaries'.

A verify that reads each volume "now" while writes go on compares different moments of a
moving target, and reports regions that differ only because a write had reached one node and
not yet the other (the false positives that make nobody trust DRBD's verify). Here every
node hashes a chunk at the same point of the history instead: the primary picks an LSN L (its
next unassigned one) and asks itself and each secondary for the chunk's digest as of L. Each
node's applier writes records strictly in LSN order, so it answers when it has applied every
record below L and before it applies L itself (node.applier.VerifyPoint). The request
travels on the same ordered connection as the records, ahead of record L, so no node can
have gone past L when it sees the request. Equal digests then mean equal data at L, and
different digests a real difference, whatever the application writes meanwhile.

One verify runs at a time, in batches of chunks with a few batches in flight, paced like a
block copy (resync_rate, the adaptive controller): it reads every volume once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replengine.node.applier import VerifyPoint
from replengine.node.copier import CHUNK
from replengine.node.states import IN_DCM, PeerState, Role
from replengine.wire.protocol import MAX_VERIFY_CHUNKS, VerifyReq, VerifySums

if TYPE_CHECKING:
    from replengine.node.client_io import Request
    from replengine.node.core import Node

log = logging.getLogger(__name__)

#: chunks per request: a batch holds each node's applier for the time it takes to hash it
BATCH_CHUNKS = 8
#: batches in flight: enough to hide a round trip behind the hashing
WINDOW = 4
#: a secondary that has not answered a batch within this long is not compared (it may be
#: far behind: its answer waits until it has applied every record below the batch's LSN)
ANSWER_TIMEOUT_S = 300.0

assert BATCH_CHUNKS <= MAX_VERIFY_CHUNKS


@dataclass
class NodeResult:
    """What a verify found for one secondary."""

    status: str = "comparing"  # then identical, differs or not compared
    regions: list[list[int]] = field(default_factory=list)  # [offset, length], merged
    compared_bytes: int = 0
    reason: str = ""

    def differ(self, offset: int, length: int) -> None:
        if self.regions and self.regions[-1][0] + self.regions[-1][1] == offset:
            self.regions[-1][1] += length
        else:
            self.regions.append([offset, length])

    def doc(self) -> dict:
        return {
            "status": self.status,
            "regions": self.regions,
            "differing_bytes": sum(n for _, n in self.regions),
            "compared_bytes": self.compared_bytes,
            "reason": self.reason or None,
        }


@dataclass
class Batch:
    tag: str
    lsn: int
    chunks: list[tuple[int, int]]
    sent_at: float
    local: list[bytes] | None = None
    local_error: str = ""
    local_done: bool = False
    answers: dict[str, list[bytes]] = field(default_factory=dict)


class VerifyAnswers:
    """The secondary's side, and the primary's own: digests of chunks at an LSN, taken by
    the applier thread (node.applier) and handed to the loop, which sends them."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._done: deque[tuple[str, VerifyReq, list[bytes] | None, str]] = deque()

    def refusal(self, sender: str, req: VerifyReq) -> str:
        """Why this secondary cannot hash its volume as of ``req.lsn`` for ``sender``."""
        node = self.node
        if node.role != Role.SECONDARY:
            return f"{node.me} is not a secondary"
        if sender != node.following:
            return f"{node.me} does not follow {sender}"
        if not node.consistent or node.rewinder is not None or node.dcm_rx is not None:
            return f"{node.me} is inconsistent: a resync or rewind of its volume runs"
        if node.watcher.durable_end > req.lsn:
            return (
                f"{node.me} holds records past LSN {req.lsn} (up to {node.watcher.durable_end - 1})"
            )
        if req.offset >= node.volume.size:
            return f"offset {req.offset} is past the end of {node.me}'s volume ({node.volume.size} bytes)"
        return ""

    def ask(self, sender: str, req: VerifyReq) -> None:
        why = self.refusal(sender, req)
        if why:
            log.warning("verify from %s not answered: %s", sender, why)
            self.node.send(sender, VerifySums(req.tag, req.lsn, "", why))
            return
        chunks = cut(req.offset, req.count, req.chunk, self.node.volume.size)
        self.node.applier.verify_at(
            VerifyPoint(req.lsn, chunks, lambda d, e: self._finish(sender, req, d, e))
        )

    def _finish(self, sender: str, req: VerifyReq, digests: list[bytes] | None, err: str) -> None:
        # the applier's thread: hand over, and wake the loop to send it
        self._done.append((sender, req, digests, err))
        self.node.transport.wake()

    def pump(self) -> None:
        while self._done:
            sender, req, digests, err = self._done.popleft()
            hexed = "".join(d.hex() for d in digests) if digests else ""
            self.node.send(sender, VerifySums(req.tag, req.lsn, hexed, err))


def cut(offset: int, count: int, chunk: int, size: int) -> list[tuple[int, int]]:
    """``count`` chunks from ``offset``, the last one shorter at the end of the volume."""
    out = []
    for i in range(count):
        off = offset + i * chunk
        if off >= size:
            break
        out.append((off, min(chunk, size - off)))
    return out


class Verifier:
    """The primary's side: one verify job at a time, advanced by the loop."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.req: Request | None = None
        self.results: dict[str, NodeResult] = {}
        self.batches: dict[str, Batch] = {}
        self.next_offset = 0
        self.first_lsn = 0
        self.last_lsn = 0
        self.started = 0.0
        self._seq = 0
        self._local: deque[tuple[str, list[bytes] | None, str]] = deque()
        self.last: dict | None = None

    @property
    def running(self) -> bool:
        return self.req is not None

    # ---- starting -------------------------------------------------------------------------

    def start(self, req: Request, names: list[str]) -> str:
        """Start a verify of ``names`` (all secondaries when empty); an error message
        instead when it cannot start (nothing changes then)."""
        node = self.node
        if node.primary is None:
            where = f"; the primary is {node.following}" if node.following else ""
            return f"{node.me} is not the primary of {node.cfg.name}: run it there{where}"
        if self.running:
            return (
                f"a verify is already running ({self.next_offset} of {node.volume.size} "
                f"bytes asked for); wait for it"
            )
        if node.ops.promotion is not None:
            return "a promotion is running on this node; try again once it is done"
        unknown = [n for n in names if n not in node.peers and n != node.me]
        if unknown:
            return (
                f"unknown node {', '.join(unknown)} "
                f"(nodes of {node.cfg.name}: {', '.join(node.cfg.nodes)})"
            )
        if node.me in names:
            return f"{node.me} is the primary: its volume is the reference; name secondaries"
        targets = names or sorted(node.peers)
        if not targets:
            return f"{node.cfg.name} has no secondary to compare with"
        self.req = req
        self.results = {n: NodeResult() for n in targets}
        for name in targets:
            why = self._unfit(name)
            if why:
                self._give_up(name, why)
        self.batches = {}
        self.next_offset = 0
        self.first_lsn = self.last_lsn = 0
        self.started = time.monotonic()
        log.info("verify of %s against %s started", ", ".join(targets), node.me)
        self.pump()
        return ""

    def _unfit(self, name: str) -> str:
        """Why secondary ``name`` cannot be compared now ("" when it can)."""
        node = self.node
        p = node.peers.get(name)
        if p is None:
            return "it was removed from the resource"
        if not p.alive(node.heartbeat_s) or p.hello is None:
            return f"{name} is not connected"
        if p.rejected:
            return f"{name} was refused: {p.rejected}"
        if not p.hello.consistent or p.state in IN_DCM or name in node.dcm.resyncs:
            return f"{name} is inconsistent: a block resync to it runs or is owed"
        if not p.streaming or p.state == PeerState.DISCONNECTED:
            return f"{name} is not replicating from {node.me}"
        return ""

    def _give_up(self, name: str, why: str) -> None:
        res = self.results[name]
        if res.status == "comparing":
            res.status = "not compared"
            res.reason = why
            log.warning("verify: %s not compared: %s", name, why)

    def _comparing(self) -> list[str]:
        return [n for n, r in self.results.items() if r.status == "comparing"]

    # ---- the loop's turn ------------------------------------------------------------------

    def on_sums(self, sender: str, body: VerifySums) -> None:
        batch = self.batches.get(body.tag)
        if batch is None or body.lsn != batch.lsn or sender not in self.results:
            return  # an answer to a verify that ended (a late one, or a repeat)
        if self.results[sender].status != "comparing":
            return
        if body.error:
            self._give_up(sender, body.error)
            return
        raw = bytes.fromhex(body.digests)
        size = len(raw) // len(batch.chunks) if batch.chunks else 0
        if len(raw) != size * len(batch.chunks) or size == 0:
            self._give_up(sender, f"{sender} answered {len(raw)} bytes of digests")
            return
        batch.answers[sender] = [raw[i * size : (i + 1) * size] for i in range(len(batch.chunks))]

    def pump(self) -> None:
        if not self.running:
            return
        node = self.node
        while self._local:
            tag, digests, err = self._local.popleft()
            batch = self.batches.get(tag)
            if batch is not None:
                batch.local, batch.local_error, batch.local_done = digests, err, True
        now = time.monotonic()
        for name in self._comparing():
            why = self._unfit(name)
            if why:
                self._give_up(name, why)
        self._settle(now)
        pacer = node.copier.pacer
        while (
            self.next_offset < node.volume.size and len(self.batches) < WINDOW and self._comparing()
        ):
            if pacer is not None:
                pacer.start()
                if not pacer.ready():
                    break
            asked = self._send_batch(now)
            if pacer is not None:
                pacer.spend(asked)
        if not self.batches and (self.next_offset >= node.volume.size or not self._comparing()):
            self._finish()

    def _send_batch(self, now: float) -> int:
        """Ask every node for the next batch; the bytes each will read."""
        node = self.node
        assert node.primary is not None
        self._seq += 1
        tag = f"verify-{node.session}-{self._seq}"
        lsn = node.primary.assigned_end
        chunks = cut(self.next_offset, BATCH_CHUNKS, CHUNK, node.volume.size)
        self.next_offset = chunks[-1][0] + chunks[-1][1]
        batch = Batch(tag, lsn, chunks, now)
        self.batches[tag] = batch
        self.first_lsn = self.first_lsn or lsn
        self.last_lsn = lsn
        req = VerifyReq(tag, lsn, chunks[0][0], len(chunks), CHUNK)
        for name in self._comparing():
            node.send(name, req)
        node.applier.verify_at(VerifyPoint(lsn, chunks, lambda d, e: self._local_done(tag, d, e)))
        return self.next_offset - chunks[0][0]

    def _local_done(self, tag: str, digests: list[bytes] | None, err: str) -> None:
        self._local.append((tag, digests, err))  # from the applier's thread
        self.node.transport.wake()

    def _settle(self, now: float) -> None:
        """Compare every batch all its nodes have answered, in offset order."""
        for tag, batch in list(self.batches.items()):
            waiting = [n for n in self._comparing() if n not in batch.answers]
            for name in waiting:
                if now - batch.sent_at > ANSWER_TIMEOUT_S:
                    self._give_up(name, f"{name} did not answer within {ANSWER_TIMEOUT_S:.0f}s")
            if not batch.local_done:
                continue
            if batch.local is None:
                for name in self._comparing():
                    self._give_up(
                        name, f"{self.node.me} could not hash its volume: {batch.local_error}"
                    )
                del self.batches[tag]
                continue
            if any(n not in batch.answers for n in self._comparing()):
                continue
            for name in self._comparing():
                res = self.results[name]
                for (off, n), mine, theirs in zip(
                    batch.chunks, batch.local, batch.answers[name], strict=True
                ):
                    if mine != theirs:
                        res.differ(off, n)
                    res.compared_bytes += n
            del self.batches[tag]

    def _finish(self) -> None:
        node = self.node
        for res in self.results.values():
            if res.status == "comparing":
                res.status = "differs" if res.regions else "identical"
            elif res.regions:  # it differed before it dropped out: that is what it is
                res.status = "differs"
        doc = self.summary()
        req, self.req = self.req, None
        self.batches = {}
        self.last = doc
        for name, res in self.results.items():
            log.log(
                logging.ERROR if res.status == "differs" else logging.INFO,
                "verify: %s %s%s",
                name,
                res.status,
                f" ({len(res.regions)} regions, {sum(n for _, n in res.regions)} bytes)"
                if res.regions
                else (f": {res.reason}" if res.reason else ""),
            )
        if req is not None:
            node.reply_ok(req.client, req.req_id, doc)

    def abort(self, why: str) -> None:
        """This node stops being primary: every node not yet settled is not compared."""
        if not self.running:
            return
        for name in self._comparing():
            self._give_up(name, why)
        self.batches = {}
        self._finish()

    def summary(self) -> dict[str, Any]:
        node = self.node
        return {
            "reference": node.me,
            "volume_bytes": node.volume.size,
            "chunk_bytes": CHUNK,
            "asked_bytes": self.next_offset,
            "first_lsn": self.first_lsn or None,
            "last_lsn": self.last_lsn or None,
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "running": self.running,
            "nodes": {n: r.doc() for n, r in self.results.items()},
        }


__all__ = ["NodeResult", "Verifier", "VerifyAnswers", "cut"]
