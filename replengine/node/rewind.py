"""Rewinding a divergent tail (pg_rewind's idea, on blocks).

A node that comes back with records nobody else kept (a former primary that wrote after the
others moved to a new epoch) drops those records from its SRL and asks the primary for exactly
the blocks they touched. Once those blocks are rewritten and the node has replayed the
primary's records up to the LSN the blocks were copied as of, its volume is a prefix state of
the history again. No full resync.

The rewind survives what a hostile schedule does to it:

* it is persistent: a marker (the block ranges still owed) is made durable *before* the tail
  is dropped, so a node restarted mid-rewind stays inconsistent and fetches them again;
* lost messages: a request that is not answered, or a copy that stops making progress, is
  asked again (only what is still missing); a BLOCK_DONE is believed only when every byte
  of every range has arrived;
* a source that steps down or dies: the copy starts over from whichever primary the node
  follows next, after checking its history against that primary's too;
* the records stream only once the blocks are in (the HELLO says it follows nobody until
  then), so a late block can never overwrite a newer record.

Phases: ``drain`` (let the applier finish with the records about to be dropped, without
blocking the loop), ``blocks`` (request, receive, verify), ``catchup`` (replay up to the copy's
LSN), then consistent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from replengine.node.copier import CHUNK
from replengine.storage.chunksums import DIGEST_SIZE
from replengine.storage.durable import remove_durably, replace_durably
from replengine.storage.hashpool import volume_digests
from replengine.wire.protocol import MAX_DATA, Block, BlockAck, BlockDone, BlockReq, Sums

if TYPE_CHECKING:
    from replengine.node.context import DcmContext, RewindContext

log = logging.getLogger(__name__)

ACK_EVERY = 4 << 20
RETRY_BEATS = 4


#: a request owing at least this share of the volume is sent with the digests of our
#: chunks: the source skips what we already hold (a full copy that was cut short resumes)
DIGEST_SHARE = 0.5


#: the digests travel in one SUMS message (16 bytes per 1 MiB chunk): up to ~1 TiB
MAX_SUMS = MAX_DATA - (1 << 20)


class Phase(Enum):
    DRAIN = "drain"
    SUMS = "sums"  # taking the digests of what we are about to ask for
    BLOCKS = "blocks"
    CATCHUP = "catchup"


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged (offset, length) ranges."""
    out: list[list[int]] = []
    for off, length in sorted(ranges):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + length - out[-1][0])
        else:
            out.append([off, length])
    return [(a, b) for a, b in out]


def subtract(ranges: list[tuple[int, int]], off: int, length: int) -> list[tuple[int, int]]:
    """``ranges`` less [off, off+length)."""
    out = []
    end = off + length
    for a, n in ranges:
        b = a + n
        if b <= off or a >= end:
            out.append((a, n))
            continue
        if a < off:
            out.append((a, off - a))
        if b > end:
            out.append((end, b - end))
    return out


def marker_path(srl: str | os.PathLike[str], resource: str, node: str) -> Path:
    """Beside a file SRL; under /var/lib/replengine for an SRL on a block device."""
    p = Path(srl)
    if p.is_file():
        return p.with_name(f"{p.name}.rewind")
    base = Path("/var/lib/replengine") / resource / node
    base.mkdir(parents=True, exist_ok=True)
    return base / "rewind"


def write_marker(path: Path, ranges: list[tuple[int, int]], divergence: int) -> None:
    """Make durable that these block ranges are owed (the volume is not a prefix state)."""
    _write_durably(path, {"ranges": [list(r) for r in ranges], "divergence": divergence})


def _write_durably(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, path)


def load_marker(path: Path) -> list[tuple[int, int]] | None:
    """The ranges a previous run still owed, or None when no rewind was under way."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.error("rewind marker %s is unreadable: copying the whole volume again", path)
        return [(0, -1)]
    return [(int(o), int(n)) for o, n in doc.get("ranges", [])]


def owe_whole_volume(node: DcmContext) -> Rewinder:
    """Every block of this node's volume is owed (a copy came short or was cut short,
    `replctl invalidate`): a rewind starts, or the running one now owes them all. The
    caller points it at the primary to fetch from (Rewinder.retarget)."""
    whole = [(0, node.volume.size)]
    if node.rewinder is None:
        node.rewinder = Rewinder.resume(node, node.rewind_marker, whole)
    else:
        node.rewinder.owed = whole
    return node.rewinder


@dataclass
class Rewinder:
    node: RewindContext
    source: str
    divergence: int
    marker: Path
    owed: list[tuple[int, int]] = field(default_factory=list)  # ranges the marker holds
    phase: Phase = Phase.DRAIN
    missing: list[tuple[int, int]] = field(default_factory=list)
    tag: str = ""
    as_of: int = 0
    received: int = 0
    acked: int = 0
    last_progress: float = 0.0
    #: the digests sent with the request (the source skips chunks equal to ours), so its
    #: BLOCK_DONE is believed when every byte it says it sent has arrived
    offered: bool = False
    _sums: _DigestJob | None = None

    # ---- starting and restarting ------------------------------------------------------------

    @classmethod
    def resume(cls, node: RewindContext, marker: Path, ranges: list[tuple[int, int]]) -> Rewinder:
        """After a restart mid-rewind: the blocks are owed again, from the next primary."""
        if ranges == [(0, -1)]:
            ranges = [(0, node.volume.size)]
        rw = cls(node, "", node.watcher.durable_end, marker, owed=merge_ranges(ranges))
        rw.phase = Phase.BLOCKS
        node.consistent = False
        log.warning(
            "a block copy (rewind or dcm resync) did not finish: %d bytes of blocks are "
            "owed; inconsistent until a primary has sent them",
            sum(n for _, n in rw.owed),
        )
        return rw

    def retarget(self, source: str, divergence: int) -> None:
        """Follow a (new) primary: drop whatever more diverges from it, fetch everything owed
        from it, from scratch (blocks from an earlier source may be of another line)."""
        self.source = source
        self.divergence = min(self.divergence, divergence)
        self.phase = Phase.DRAIN
        # the LSN an earlier source's copy stood at is of its line, not this one's: a
        # deposed primary's tail may reach far past the new primary's end, and a catch-up
        # waiting for it would wait until the application had written that far (seed 11003
        # round 1: for ever, once it stopped)
        self.as_of = 0
        self.node.consistent = False

    # ---- the loop's turn ----------------------------------------------------------------------

    def progress(self) -> None:
        node = self.node
        if not self.source or node.following != self.source:
            return  # waiting for a primary to follow (follow() retargets the rewind)
        if self.phase is Phase.DRAIN:
            if not node.watcher.idle or node.applier.applied_end < node.watcher.durable_end:
                # records still on their way to the SRL (settled at the end of the turn)
                # would land after the cut, or the applier works on records about to go
                return
            self._drop_tail()
            self._request(list(self.owed))
        elif self.phase is Phase.SUMS:
            job = self._sums
            if job is not None and job.done.is_set():
                self._sums = None
                self._send_request(job)
        elif self.phase is Phase.BLOCKS:
            stalled = time.monotonic() - self.last_progress > RETRY_BEATS * node.heartbeat_s
            if stalled:
                log.warning(
                    "rewind: no blocks from %s for %.1fs; asking again for %d bytes",
                    self.source,
                    time.monotonic() - self.last_progress,
                    sum(n for _, n in self.missing),
                )
                self._request(self.missing)
        elif (
            self.phase is Phase.CATCHUP
            and node.applier.applied_end >= self.as_of
            and getattr(node, "dcm_rx", None) is None  # a dcm resync started meanwhile ends first
        ):
            remove_durably(self.marker)
            node.consistent = True
            node.rewinder = None
            log.warning("rewind complete: consistent at LSN %d", node.applier.applied_end)

    def _drop_tail(self) -> None:
        node = self.node
        d = self.divergence
        end = node.watcher.durable_end
        ranges: list[tuple[int, int]] = []
        tail = []
        if d < node.srl.start_lsn:
            # the records that diverge were already cleared here: which blocks they touched
            # is unknown, so every block is owed
            ranges = [(0, node.volume.size)]
        elif d < end:
            tail = list(node.srl.read(d, end))
            ranges = [(r.offset, len(r.data)) for r in tail]
        self.owed = merge_ranges(self.owed + ranges)
        # durable before the tail goes: a restart must know the volume is not a prefix state
        _write_durably(self.marker, {"ranges": [list(r) for r in self.owed], "divergence": d})
        if d < end:
            node.drop_log_from(d)
        self.divergence = node.watcher.durable_end
        if tail:
            nbytes = sum(len(r.data) for r in tail)
            node.last_divergent = {
                "records": len(tail),
                "bytes": nbytes,
                "first_lsn": d,
                "end_lsn": end,
                "epochs": sorted({r.epoch for r in tail}),
                "block_ranges": [list(r) for r in merge_ranges(ranges)],
                "rewritten_from": self.source,
            }
            log.warning(
                "divergent tail discarded: %d records (%d bytes), LSNs [%d, %d); rewriting "
                "%d block ranges from %s: %s",
                len(tail),
                nbytes,
                d,
                end,
                len(ranges),
                self.source,
                ", ".join(f"{o}+{n}" for o, n in merge_ranges(ranges)),
            )
        elif ranges:
            log.error(
                "divergent records below this SRL's start (LSN %d < %d): every block is "
                "copied from %s",
                d,
                node.srl.start_lsn,
                self.source,
            )

    def _request(self, ranges: list[tuple[int, int]]) -> None:
        self.phase = Phase.BLOCKS
        self.missing = merge_ranges(ranges)
        self.tag = uuidlib.uuid4().hex[:12]
        self.received = self.acked = 0
        self.last_progress = time.monotonic()
        self.offered = False
        if not self.missing:
            self._blocks_done(self.node.watcher.durable_end)
            return
        node = self.node
        owed = sum(n for _, n in self.missing)
        if DIGEST_SHARE * node.volume.size <= owed and owed // CHUNK * DIGEST_SIZE < MAX_SUMS:
            # most of the volume is owed (a full copy cut short, records cleared long ago):
            # what we already hold costs a digest, not a copy
            self.phase = Phase.SUMS
            self._sums = _DigestJob(self.tag, list(self.missing))
            self._sums.start(node)
            return
        node.send(self.source, BlockReq(self.missing, self.tag))

    def _send_request(self, job: _DigestJob) -> None:
        node = self.node
        self.phase = Phase.BLOCKS
        self.last_progress = time.monotonic()
        if job.tag != self.tag:
            return
        if job.digests is not None:
            # ahead of the request on the same connection: the source has them when it starts
            node.send(self.source, Sums(self.tag, job.digests))
            self.offered = True
            log.info(
                "rewind: asking %s for %d bytes with the digests of our %d chunks",
                self.source,
                sum(n for _, n in self.missing),
                len(job.digests) // DIGEST_SIZE,
            )
        node.send(self.source, BlockReq(self.missing, self.tag))

    def summary(self) -> dict:
        """For `replctl status`: what an operator waits for on an inconsistent node (after
        `invalidate`, a divergent tail, a copy cut short)."""
        copying = self.phase is Phase.BLOCKS
        return {
            "phase": self.phase.value if self.source else "waiting",
            "source": self.source or None,
            "owed_bytes": sum(n for _, n in self.owed),
            "missing_bytes": sum(n for _, n in self.missing) if copying else None,
            "received_bytes": self.received if copying else None,
            "as_of_lsn": self.as_of if self.phase is Phase.CATCHUP else None,
        }

    def requested(self, source: str) -> bool:
        """Whether our request to ``source`` is out (else one is on its way to it)."""
        return self.source == source and self.phase in (Phase.BLOCKS, Phase.CATCHUP)

    # ---- messages from the source -------------------------------------------------------------

    def on_message(self, sender: str, body: Block | BlockDone) -> None:
        if sender != self.source or self.phase is not Phase.BLOCKS:
            return  # a late copy from an earlier source or request: never written
        node = self.node
        if isinstance(body, Block):
            n = len(body.data)
            if body.offset < 0 or body.offset + n > node.volume.size:
                log.error(
                    "rewind: block %d+%d from %s is outside the volume", body.offset, n, sender
                )
                return
            self.last_progress = time.monotonic()
            if not n:
                return  # the source is reading chunks we already hold: it is alive
            node.volume.write_copied(body.offset, body.data)
            self.missing = subtract(self.missing, body.offset, n)
            self.received += n
            if self.received - self.acked >= ACK_EVERY:
                node.volume.flush()  # durable before acknowledged
                self.acked = self.received
                node.send(self.source, BlockAck(self.received))
            return
        if body.tag != self.tag:
            return
        node.volume.flush()
        node.send(self.source, BlockAck(self.received))
        if self.offered and self.received == body.total:
            self.missing = []  # what was not sent was equal to ours
        elif self.offered:
            log.warning(
                "rewind: %s finished its copy but %d of %d bytes arrived; asking again",
                sender,
                self.received,
                body.total,
            )
            self._request(self.owed)
            return
        if self.missing:
            log.warning(
                "rewind: %s finished its copy but %d bytes never arrived; asking again",
                sender,
                sum(n for _, n in self.missing),
            )
            self._request(self.missing)
            return
        if body.resume_lsn:
            # the primary had us in dcm: its copy held every region we missed, and our log
            # restarts where it says (the records in between are in those blocks)
            node.restart_log_at(body.resume_lsn, self.source)
        self._blocks_done(body.primary_end)

    def _blocks_done(self, as_of: int) -> None:
        node = self.node
        node.volume.flush()
        self.as_of = max(self.as_of, as_of)
        self.phase = Phase.CATCHUP
        log.info(
            "divergent blocks rewritten (%d bytes) from %s; catching up from LSN %d to %d",
            sum(n for _, n in self.owed),
            self.source,
            node.watcher.durable_end,
            self.as_of,
        )
        node.copy_ended(self.source)

    @property
    def copying(self) -> bool:
        """Whether BLOCKs are this rewind's (a dcm resync's otherwise)."""
        return self.phase is Phase.BLOCKS

    @property
    def preparing(self) -> bool:
        """Whether its request for blocks is not out yet (its log draining, its digests
        being taken): BLOCKs now are what is left of a copy cut short, not an answer."""
        return self.phase in (Phase.DRAIN, Phase.SUMS)

    @property
    def streaming(self) -> bool:
        """Whether records may flow to this node (only once the blocks are in)."""
        return self.phase is Phase.CATCHUP


@dataclass
class _DigestJob:
    """Digests of our chunks of ``ranges``, read in a thread once the applier has written
    everything it holds (nothing else writes the volume during a rewind)."""

    tag: str
    ranges: list[tuple[int, int]]
    digests: bytes | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self, node: RewindContext) -> None:
        barrier = node.applier.barrier()
        wake = getattr(getattr(node, "transport", None), "wake", None)
        threading.Thread(
            target=self._work, args=(node, barrier, wake), name="rewind-sums", daemon=True
        ).start()

    def _work(self, node: RewindContext, barrier: threading.Event, wake: object) -> None:
        barrier.wait()
        try:
            self.digests = volume_digests(node.volume, self.ranges, CHUNK)
        except Exception as exc:  # the request then goes without digests: a plain copy
            log.error("rewind: digests of our chunks failed (%s): asking for every block", exc)
        self.done.set()
        if callable(wake):
            wake()


__all__ = ["Phase", "Rewinder", "load_marker", "marker_path", "merge_ranges", "subtract"]
