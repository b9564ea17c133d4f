"""A resync that outlives the SRL: its log folded into the copy, so writes go on.

While a dcm resync (a full sync, a returning node's dirty regions) copies blocks, the
primary keeps every record from the copy's start (``resume_lsn``): its receiver is streamed
from there once the copy ends. A copy that takes longer than the SRL takes to fill with the
application's writes (a large volume, a capped `resync_rate`) would then hold the log until
it ends, and under any `srl_full` policy the application would wait or fail for as long.

Instead, once the records held for the copy take half the SRL, the regions they touched are
marked in the peer's dirty-region map (made durable first), and the very bytes they wrote
that the copy has already read are added to it, to be read again, as of every completed
write, and sent whatever the receiver's digests said; the copy's resume point moves to the
log's durable end: the records below it may go, the receiver gets their effect in the
blocks. The receiver sees only more blocks and a later ``resume_lsn`` in BLOCK_DONE
(docs/protocol.md, "Long copies").

What a fold adds is the application's own writes, which the replication stream would have
sent anyway: the copier reads them first and unpaced (they were just written, so mostly from
the page cache), and the pacer, which protects the application from the copy, slows only
the rest. So the copy ends however fast the application rewrites what it has sent, as long
as the receiver keeps up with the application's writes, as any secondary must; it sends the
volume once plus, at most, what the application wrote during it (``bytes_resent`` in
status).

Progress (regions cleared from the map as the receiver acknowledges them, so that a copy cut
short resumes after them) then counts only blocks read after the last fold: a block read
before it may lack a folded record (copier.CopyJob.gen). A region a fold marks again stays
owed until the copy ends: a copy cut short after the fold sends it whole again.
"""

from __future__ import annotations

import logging
import time
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replengine.node.copier import outside

if TYPE_CHECKING:
    from replengine.node.copier import CopyJob
    from replengine.node.dcm import Resync
    from replengine.storage.dirtymap import DirtyMap

log = logging.getLogger(__name__)

#: records held for a running copy may take this share of the SRL before they are folded
FOLD_SHARE = 0.5
#: folds after the first are logged at most this often (a long copy under heavy writes
#: folds every time half the SRL fills)
FOLD_LOG_EVERY_S = 30.0


@dataclass
class Written:
    """Where each write since a copy's resume point went, in LSN order (24 bytes a write,
    the records themselves stay in the SRL): the regions a fold sends again."""

    lsns: array = field(default_factory=lambda: array("q"))
    offsets: array = field(default_factory=lambda: array("q"))
    lengths: array = field(default_factory=lambda: array("q"))

    def add(self, lsn: int, offset: int, length: int) -> None:
        self.lsns.append(lsn)
        self.offsets.append(offset)
        self.lengths.append(length)

    def below(self, end: int) -> list[tuple[int, int]]:
        """The (offset, length) of every write with an LSN below ``end``."""
        i = bisect_left(self.lsns, end)
        return list(zip(self.offsets[:i], self.lengths[:i], strict=True))

    def take_below(self, end: int) -> None:
        """Forget the writes with an LSN below ``end``."""
        i = bisect_left(self.lsns, end)
        del self.lsns[:i], self.offsets[:i], self.lengths[:i]

    def clear(self) -> None:
        del self.lsns[:], self.offsets[:], self.lengths[:]


def region_ranges(touched: list[tuple[int, int]], dmap: DirtyMap) -> list[tuple[int, int]]:
    """The whole regions of ``dmap`` these byte ranges touch, one range each, in order."""
    rs, size = dmap.region_size, dmap.volume_size
    regions = sorted({r for off, n in touched for r in range(off // rs, (off + n - 1) // rs + 1)})
    return [(r * rs, min(rs, size - r * rs)) for r in regions]


def holds_log(srl: Any, job: Resync, watcher: Any) -> bool:
    """Whether the records kept for ``job`` take FOLD_SHARE of the SRL."""
    end = watcher.durable_end
    return end > job.resume_lsn and (
        srl.bytes_between(job.resume_lsn, end) >= FOLD_SHARE * srl.capacity
    )


def prefold(job: Resync, dmap: DirtyMap, durable_end: int) -> None:
    """Fold before the copy has started (it waits for the receiver's digests): the regions
    the records [job.resume_lsn, durable_end) touched are owed (marked, made durable) and
    those the copy's ranges do not cover are kept for it; it reads everything after now,
    so nothing is read again, and it will not trust digests of ours taken before now."""
    ranges = region_ranges(job.written.below(durable_end), dmap)
    _owe(job, dmap, ranges, durable_end)
    extra = outside(ranges, [(o, o + n) for o, n in job.ranges])
    job.prefolded = sorted(set(job.prefolded) | set(extra))  # whole regions, no overlap
    _restart_at(job, durable_end, sum(n for _, n in extra), before_copy=True)


def fold(job: Resync, copy: CopyJob, dmap: DirtyMap, durable_end: int) -> None:
    """Fold the records [job.resume_lsn, durable_end) into the running ``copy``. The caller
    has made sure no other thread writes ``dmap``."""
    touched = job.written.below(durable_end)
    _owe(job, dmap, region_ranges(touched, dmap), durable_end)
    added = copy.extend(touched)  # those it has not read yet are read after now anyway
    if job.tally is not None:
        job.tally.partial.clear()  # pieces read before the fold no longer count
    copy.resume_lsn = durable_end
    job.folded_bytes += added
    _restart_at(job, durable_end, added, before_copy=False)


def _owe(job: Resync, dmap: DirtyMap, ranges: list[tuple[int, int]], durable_end: int) -> None:
    """The regions written below ``durable_end`` owed in the map, durably, before a record
    they cover can be cleared."""
    job.written.take_below(durable_end)
    for off, n in ranges:
        dmap.mark(off, n)
    dmap.flush()


def _restart_at(job: Resync, durable_end: int, added: int, before_copy: bool) -> None:
    """The copy's receiver is streamed from ``durable_end`` now; logged on the first fold
    and then at most every FOLD_LOG_EVERY_S."""
    first, job.resume_lsn = job.resume_lsn, durable_end
    job.dirty_bytes += added
    job.folds += 1
    now = time.monotonic()
    if job.folds > 1 and now - job.fold_logged < FOLD_LOG_EVERY_S:
        return
    job.fold_logged = now
    log.warning(
        "the resync to %s held %.0f%% of the SRL%s: the %s written since LSN %d%s are "
        "read and sent again instead (%d bytes%s; %d folds, %d bytes read again so far), "
        "and its log restarts at LSN %d",
        job.peer,
        100 * FOLD_SHARE,
        " before its copy began" if before_copy else "",
        "regions" if before_copy else "bytes",
        first,
        "" if before_copy else " over what it had read",
        added,
        " outside its ranges" if before_copy else "",
        job.folds,
        job.folded_bytes,
        durable_end,
    )


__all__ = [
    "FOLD_SHARE",
    "Written",
    "fold",
    "holds_log",
    "prefold",
    "region_ranges",
]
