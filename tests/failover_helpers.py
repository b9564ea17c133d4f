"""Helpers for the real-process failover tests (tests/test_failover*.py).

Everything here drives real `replengined` processes through `LocalResource`; waits poll the
daemons' status (never a blind sleep). The `Ledger` is the test's model of the volume: the
writes in the order they were submitted on one client connection, which is LSN order.
"""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass, field

from replengine.demo.localcluster import LocalResource
from replengine.log.srl import SRL


def stop(r: LocalResource, node: str) -> None:
    r.freeze(node)


def cont(r: LocalResource, node: str) -> None:
    r.signal(node, signal.SIGCONT)


def crash(r: LocalResource, node: str) -> None:
    """SIGKILL (works on a stopped process too) and wait until it is gone."""
    r.kill(node)


def offline_srl(r: LocalResource, node: str) -> tuple[int, int, list[tuple[int, int]]]:
    """(start, end, history) of a node's SRL while its daemon is not running."""
    srl = SRL.open(r.srl_path(node))
    try:
        return srl.start_lsn, srl.end_lsn, [tuple(h) for h in srl.history]
    finally:
        srl.close()


def volume_bytes(r: LocalResource, node: str) -> bytes:
    return r.volume_path(node).read_bytes()


def settled_ends(r: LocalResource, nodes: list[str], timeout: float = 30.0) -> dict[str, int]:
    """After the primary died: wait until every node has noticed (follows nobody), has applied
    all it logged, and its end no longer moves between two polls; return the ends."""
    prev: dict[str, int] = {}

    def pred() -> dict[str, int] | None:
        nonlocal prev
        sts = {n: r.status(n) for n in nodes}
        if any(s["following"] or s["role"] != "secondary" for s in sts.values()):
            prev = {}
            return None
        if any(s["end_lsn"] != s["applied_end"] for s in sts.values()):
            prev = {}
            return None
        ends = {n: s["end_lsn"] for n, s in sts.items()}
        ok = ends if ends == prev else None
        prev = ends
        return ok

    return r.wait_for(pred, timeout, f"{nodes} to settle without a primary")


def wait_role(
    r: LocalResource, node: str, role: str, following: str | None = None, timeout: float = 30.0
) -> dict:
    def pred() -> dict | None:
        s = r.status(node)
        if s["role"] != role:
            return None
        if following is not None and s["following"] != following:
            return None
        return s

    return r.wait_for(
        pred, timeout, f"{node} to be {role}" + (f" following {following}" if following else "")
    )


def wait_consistent(r: LocalResource, nodes: list[str], timeout: float = 60.0) -> int:
    """wait_synced plus: nobody is rewinding, everybody is consistent and every secondary
    follows the one primary among `nodes` (if there is one)."""

    def pred() -> int | None:
        sts = [r.status(n) for n in nodes]
        if any(s["rewinding"] or not s["consistent"] for s in sts):
            return None
        primaries = [s["node"] for s in sts if s["role"] == "primary"]
        if len(primaries) > 1 or any(
            s["role"] == "secondary" and primaries and s["following"] != primaries[0] for s in sts
        ):
            return None
        ends = {s["end_lsn"] for s in sts} | {s["applied_end"] for s in sts}
        return ends.pop() if len(ends) == 1 else None

    return r.wait_for(pred, timeout, f"{nodes} consistent at one end LSN")


@dataclass
class Write:
    offset: int
    data: bytes
    lsn: int | None = None  # set when the write completed to the writer


@dataclass
class Ledger:
    """Model of the volume: a base image plus writes in LSN order from LSN `base_lsn`."""

    image: bytearray
    base_lsn: int
    writes: list[Write] = field(default_factory=list)

    def add(self, offset: int, data: bytes) -> Write:
        w = Write(offset, data)
        self.writes.append(w)
        return w

    def lsn_of(self, index: int) -> int:
        return self.base_lsn + index

    def write_at(self, lsn: int) -> Write:
        return self.writes[lsn - self.base_lsn]

    def bytes_between(self, first: int, end: int) -> int:
        return sum(len(self.write_at(lsn).data) for lsn in range(first, end))

    def image_at(self, end_lsn: int) -> bytearray:
        """The volume as of every record below end_lsn."""
        img = bytearray(self.image)
        for w in self.writes[: end_lsn - self.base_lsn]:
            img[w.offset : w.offset + len(w.data)] = w.data
        return img

    def matching_prefix(self, snapshot: bytes, upto: int) -> int | None:
        """The k in [0, upto] with snapshot == base image + writes[:k], if any."""
        img = bytearray(self.image)
        if img == snapshot:
            return 0
        for k, w in enumerate(self.writes[:upto], start=1):
            img[w.offset : w.offset + len(w.data)] = w.data
            if img == snapshot:
                return k
        return None

    def rebase(self, end_lsn: int) -> None:
        """Keep the records below end_lsn, fold them into the base image."""
        self.image = self.image_at(end_lsn)
        self.writes = []
        self.base_lsn = end_lsn


def random_write(rng: random.Random, volume_size: int, hot: int = 1 << 20) -> tuple[int, bytes]:
    """A write of 512 B..64 KiB at a 512-aligned offset; half of them in a hot first MiB so
    that overlapping writes make ordering matter."""
    size = 512 * rng.randint(1, 128)
    span = hot if rng.random() < 0.5 else volume_size
    offset = 512 * rng.randrange(0, (span - size) // 512 + 1)
    return offset, rng.randbytes(size)


def diff_summary(a: bytes, b: bytes, block: int = 4096) -> str:
    bad = [i for i in range(0, min(len(a), len(b)), block) if a[i : i + block] != b[i : i + block]]
    return f"{len(bad)} blocks of {block} differ, first at offsets {bad[:8]}"


def log_tail(r: LocalResource, node: str, lines: int = 40) -> str:
    return "\n".join(r.log(node).splitlines()[-lines:])


def describe_logs(r: LocalResource, nodes: list[str] | None = None, lines: int = 25) -> str:
    return "\n".join(f"--- {n} log ---\n{log_tail(r, n, lines)}" for n in (nodes or r.nodes))


def promote_cli(r: LocalResource, node: str, *extra: str) -> tuple[int, str, str]:
    proc = r.replctl(node, "promote", *extra, check=False, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


__all__ = [
    "Ledger",
    "Write",
    "crash",
    "cont",
    "describe_logs",
    "diff_summary",
    "log_tail",
    "offline_srl",
    "promote_cli",
    "random_write",
    "settled_ends",
    "stop",
    "volume_bytes",
    "wait_consistent",
    "wait_role",
]
