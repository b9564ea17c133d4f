"""Tagged writes, the writer thread and its ledger.

Every 512-byte sector a writer writes starts with a 16-byte tag (magic, write id, sector
index, round), so a volume read back after a round says, sector by sector, which write left
it there. The ledger keeps, for every write of the round: the connection it went through
(node, epoch of that primary), its order there, its offset and data, and its outcome —
completed with an LSN (and when), failed with the daemon's error, or abandoned in flight
(primary killed or frozen). Completed writes are exact; the others are "uncertain": each may
or may not be in the history that won, and the checks allow either.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from replengine.demo.localcluster import LocalResource
from replengine.errors import ReplError
from replengine.runtime import is_alive
from replengine.wire.control import ControlClient

SECTOR = 512
MAGIC = b"RFLT"
TAG = struct.Struct("<4sIII")  # magic, write id, sector index within the write, round


def make_data(rng: random.Random, wid: int, rnd: int, nsectors: int) -> bytes:
    return b"".join(
        TAG.pack(MAGIC, wid, i, rnd) + rng.randbytes(SECTOR - TAG.size) for i in range(nsectors)
    )


def read_tag(sector: bytes) -> tuple[int, int, int] | None:
    """(write id, sector index, round) of a tagged sector, None for zeros or foreign data."""
    magic, wid, idx, rnd = TAG.unpack_from(sector)
    return (wid, idx, rnd) if magic == MAGIC else None


@dataclass(eq=False)
class Conn:
    """One writer connection to one primary, in one epoch."""

    cid: int
    node: str
    epoch: int
    base_lsn: int  # the primary's end when the connection began: its first write's LSN >=
    qd: int = 1
    writes: list[Write] = field(default_factory=list)


@dataclass(eq=False)
class Write:
    wid: int
    conn: Conn
    seq: int  # submission order on its connection
    offset: int
    data: bytes
    t_submit: float
    lsn: int | None = None  # set when the write completed to the writer
    t_done: float | None = None
    error: str | None = None  # failed or abandoned: outcome unknown

    @property
    def epoch(self) -> int:
        return self.conn.epoch

    @property
    def completed(self) -> bool:
        return self.lsn is not None

    def describe(self) -> str:
        state = (
            f"completed LSN {self.lsn}"
            if self.completed
            else f"uncertain ({(self.error or 'in flight')[:80]})"
        )
        return (
            f"write #{self.wid} ({len(self.data)} B at {self.offset}, via {self.conn.node} "
            f"epoch {self.epoch}, {state})"
        )


class Ledger:
    """Every write of one round, by id and by connection."""

    def __init__(self, rnd: int, first_wid: int, t0: float) -> None:
        self.round = rnd
        self.next_wid = first_wid
        self.t0 = t0
        self.conns: list[Conn] = []
        self.writes: dict[int, Write] = {}
        self.lock = threading.Lock()

    def new_conn(self, node: str, epoch: int, base_lsn: int, qd: int) -> Conn:
        with self.lock:
            c = Conn(len(self.conns), node, epoch, base_lsn, qd)
            self.conns.append(c)
            return c

    def new_write(self, conn: Conn, rng: random.Random, volume_size: int, big: bool) -> Write:
        nsec = rng.randint(1, 128 if big else 32)
        hot = 256 << 10 if rng.random() < 0.5 else volume_size
        offset = SECTOR * rng.randrange(0, (hot - nsec * SECTOR) // SECTOR + 1)
        with self.lock:
            wid = self.next_wid
            self.next_wid += 1
        w = Write(
            wid,
            conn,
            len(conn.writes),
            offset,
            make_data(rng, wid, self.round, nsec),
            time.monotonic() - self.t0,
        )
        with self.lock:
            conn.writes.append(w)
            self.writes[wid] = w
        return w

    def all(self) -> list[Write]:
        with self.lock:
            return list(self.writes.values())

    def completed(self) -> list[Write]:
        return [w for w in self.all() if w.completed]

    def counts(self) -> dict[str, int]:
        ws = self.all()
        done = sum(1 for w in ws if w.completed)
        return {"writes": len(ws), "completed": done, "uncertain": len(ws) - done}


class Writer(threading.Thread):
    """Writes tagged data to whichever node the schedule names as primary.

    The schedule sets `target` (a Conn) after every promotion and clears it when there is no
    primary. On a change the old connection is kept *draining*: what was in flight there
    still gets its answer recorded (a frozen primary continued later may still complete or
    fail it), until its daemon is gone or the writer stops. Queue depth is the connection's
    `qd`; writes are paced a little (a workload, not a synchronisation), except in burst
    mode, which fills SRLs. `adopt()` hands the writer writes sent by the schedule itself
    (the late writes sent to a continued zombie primary)."""

    def __init__(self, r: LocalResource, ledger: Ledger, seed: int) -> None:
        super().__init__(name="faults-writer", daemon=True)
        self.r = r
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self._target: Conn | None = None
        self._adopted: list[Stream] = []
        self.burst = False
        self.paused = False
        self.stop_ev = threading.Event()
        self.idle = threading.Event()  # paused (or stopping) with nothing in flight
        self.drain_s = 10.0
        self.crash: BaseException | None = None

    @property
    def target(self) -> Conn | None:
        with self.lock:
            return self._target

    def set_target(self, conn: Conn | None) -> None:
        with self.lock:
            self._target = conn

    def adopt(self, stream: Stream) -> None:
        with self.lock:
            self._adopted.append(stream)

    def pause(self, timeout: float = 10.0) -> bool:
        """Stop submitting; True once nothing is in flight on the current connection."""
        self.idle.clear()
        self.paused = True
        return self.idle.wait(timeout)

    def resume(self) -> None:
        self.paused = False

    def stop(self, drain_s: float = 10.0) -> None:
        self.drain_s = drain_s
        self.stop_ev.set()
        if self.is_alive():
            self.join(drain_s + 30)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the schedule as a harness error
            self.crash = exc

    def _run(self) -> None:
        cur: Stream | None = None
        draining: list[Stream] = []
        stop_deadline: float | None = None
        t0 = self.ledger.t0
        while True:
            with self.lock:
                draining += self._adopted
                self._adopted = []
            for st in list(draining):
                st.collect(t0, 0)
                if not st.inflight or not st.daemon_alive():
                    st.abandon(t0, "abandoned in flight: its primary's daemon is gone")
                    st.close()
                    draining.remove(st)
            if self.stop_ev.is_set():
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + self.drain_s
                busy = (cur is not None and cur.inflight) or draining
                if not busy or time.monotonic() > stop_deadline:
                    for st in ([cur] if cur else []) + draining:
                        st.abandon(t0, "abandoned in flight when the writer stopped")
                        st.close()
                    break
            tgt = self.target
            if tgt is not (cur.conn if cur else None):
                if cur is not None:
                    draining.append(cur)
                cur = None
                if tgt is not None:
                    try:
                        cur = Stream(self.r, tgt)
                    except ReplError:
                        cur = None  # not listening (yet): try again
            quiet = self.paused or self.stop_ev.is_set() or cur is None or cur.dead
            if quiet and (cur is None or not cur.inflight):
                self.idle.set()
                time.sleep(0.01)
                continue
            assert cur is not None
            if not quiet and len(cur.inflight) < cur.conn.qd:
                w = self.ledger.new_write(cur.conn, self.rng, self.r.volume_size, self.burst)
                cur.submit(w)
                if not self.burst:
                    time.sleep(self.rng.uniform(0, 0.006))
                continue
            cur.collect(t0, 0.05)
            if cur.inflight and not cur.daemon_alive():
                cur.abandon(t0, "abandoned in flight: its primary's daemon is gone")
                cur.dead = True
        self.idle.set()


class Stream:
    """A control connection to one primary and the writes in flight on it."""

    def __init__(self, r: LocalResource, conn: Conn) -> None:
        self.conn = conn
        self.pid = r.pid(conn.node)
        self.ctl = ControlClient(r.paths(conn.node).socket, 1.0)
        self.inflight: deque[tuple[Write, int]] = deque()
        self.dead = False  # it refused writes (not primary, fenced): no more writes here
        self._alive_checked = 0.0
        self._alive = True

    def submit(self, w: Write) -> None:
        self.inflight.append((w, self.ctl.send("write", w.data, offset=w.offset)))

    def collect(self, t0: float, timeout: float) -> None:
        """Record the answers that arrived, oldest first; wait up to `timeout` for one."""
        while self.inflight:
            w, req = self.inflight[0]
            try:
                doc, _ = self.ctl.wait(req, timeout)
            except ReplError:  # no answer yet
                return
            self.inflight.popleft()
            now = time.monotonic() - t0
            if doc.get("ok"):
                w.lsn, w.t_done = int(doc["lsn"]), now
            else:
                w.error, w.t_done = str(doc.get("error", "write failed")), now
                if "SRL full" not in w.error and "timed out" not in w.error:
                    self.dead = True  # not primary / fenced / stopping
                elif "SRL full" in w.error:
                    time.sleep(0.02)  # srl_full=fail: do not spin on refusals
            timeout = 0

    def daemon_alive(self) -> bool:
        now = time.monotonic()
        if now - self._alive_checked > 0.3:
            self._alive_checked = now
            self._alive = self.pid is not None and is_alive(self.pid)
        return self._alive

    def abandon(self, t0: float, why: str) -> None:
        now = time.monotonic() - t0
        while self.inflight:
            w, _ = self.inflight.popleft()
            w.error, w.t_done = why, now

    def close(self) -> None:
        self.ctl.close()
