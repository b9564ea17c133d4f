"""Shared fixtures for the multi-process replication tests.

`resource` is a factory: ``r = resource(nodes={...}, srl_full="fail")`` creates a
LocalResource (real replengined processes on 127.0.0.1, file volumes) under the test's
tmp_path. At teardown every daemon it started is killed (``stop_all()``, then any leftover
process whose command line names the resource's config), writer threads are stopped, and on
failure the tail of every node's log is printed so the report shows what the daemons saw.

`Ledger` is the test's model of the volume: every completed write with its LSN, replayed in
LSN order into a bytearray, so "the last bytes written" is exact even with overlapping
writes and several writes in flight.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from replengine.client import Volume
from replengine.demo.localcluster import LocalResource, blank_file, wait_gone
from replengine.errors import ReplError
from replengine.wire.control import ControlClient

KiB, MiB = 1 << 10, 1 << 20

#: sizes used by every multi-process test: small, so a checksum or a down is quick
VOLUME_SIZE = 16 * MiB
SRL_SIZE = 16 * MiB
FOUR_NODES = {"alpha": "sync", "beta": "sync", "gamma": "sync", "delta": "async"}
THREE_NODES = {"alpha": "sync", "beta": "sync", "gamma": "sync"}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


class Ledger:
    """Completed writes (lsn, offset, data) and the volume content they imply."""

    def __init__(self, size: int = VOLUME_SIZE, base: bytes | None = None) -> None:
        self.size = size
        #: what the volume held before the resource's first write (zeros: a blank volume)
        self.base = base
        self.entries: list[tuple[int, int, bytes]] = []
        self.lock = threading.Lock()

    def add(self, lsn: int, offset: int, data: bytes) -> None:
        with self.lock:
            self.entries.append((lsn, offset, bytes(data)))

    def __len__(self) -> int:
        with self.lock:
            return len(self.entries)

    def sorted_entries(self) -> list[tuple[int, int, bytes]]:
        with self.lock:
            return sorted(self.entries)

    def model(self) -> bytearray:
        """The volume as the writers must see it: every write applied in LSN order."""
        vol = bytearray(self.base) if self.base is not None else bytearray(self.size)
        lsns = set()
        for lsn, off, data in self.sorted_entries():
            assert lsn not in lsns, f"LSN {lsn} was returned for two different writes"
            lsns.add(lsn)
            vol[off : off + len(data)] = data
        return vol

    def expected(self, offset: int, length: int, model: bytearray | None = None) -> bytes:
        m = self.model() if model is None else model
        return bytes(m[offset : offset + length])

    def check_reads(self, vol: Volume) -> None:
        """Read every ledger entry back through the client: the last bytes written there."""
        model = self.model()
        for lsn, off, data in self.sorted_entries():
            got = vol.read(off, len(data))
            want = bytes(model[off : off + len(data)])
            assert got == want, (
                f"read of write LSN {lsn} ({len(data)} bytes at {off}) "
                f"differs from the ledger at byte "
                f"{first_diff(got, want)}"
            )

    def check_file(self, path: Path, what: str) -> None:
        """Compare a volume file byte for byte with the model (the base where never
        written)."""
        model = self.model()
        with open(path, "rb") as f:
            content = f.read()
        assert len(content) == self.size, f"{what}: volume file is {len(content)} bytes"
        if content != model:
            at = first_diff(content, bytes(model))
            hits = [
                (lsn, off, len(d))
                for lsn, off, d in self.sorted_entries()
                if off <= at < off + len(d)
            ]
            raise AssertionError(
                f"{what}: volume file {path} differs from the ledger at byte "
                f"{at}; writes covering it (lsn, offset, length): {hits[-3:]}"
            )


def first_diff(a: bytes, b: bytes) -> int:
    if len(a) != len(b):
        return min(len(a), len(b))
    for i in range(0, len(a), 4096):
        if a[i : i + 4096] != b[i : i + 4096]:
            for j in range(i, min(i + 4096, len(a))):
                if a[j] != b[j]:
                    return j
    return -1


def random_write(
    rng: random.Random,
    size: int = VOLUME_SIZE,
    lo: int = 4 * KiB,
    hi: int = 256 * KiB,
    span: int | None = None,
) -> tuple[int, bytes]:
    """A 4 KiB-aligned write of lo..hi bytes; `span` confines offsets (more overlaps)."""
    length = rng.randrange(lo // 4096, hi // 4096 + 1) * 4096
    limit = min(size, span or size) - length
    offset = rng.randrange(0, limit // 4096 + 1) * 4096
    return offset, rng.randbytes(length)


def write_chunks(vol: Volume, ledger: Ledger, rng: random.Random, n: int) -> None:
    """``n`` writes of 64 KiB of random bytes at random 64 KiB-aligned offsets of the
    ledger's volume, each recorded with its LSN once acknowledged."""
    for _ in range(n):
        off = rng.randrange(0, ledger.size // (64 * KiB)) * 64 * KiB
        data = rng.randbytes(64 * KiB)
        ledger.add(vol.write(off, data), off, data)


def control_op(r: LocalResource, node: str, op: str) -> dict:
    """`replctl <op>` without the CLI's start-up (a Python interpreter, a second or so
    under load, that a test timing an operation against a network event cannot afford):
    the answer, or {"error": ...}."""
    ctl = ControlClient(r.paths(node).socket, 60)
    try:
        doc, _ = ctl.wait(ctl.send(op), 60)
    finally:
        ctl.close()
    return doc if doc.get("ok") else {"error": doc.get("error", "refused")}


def smallest_srl(r: LocalResource, node: str) -> None:
    """``node``'s SRL replaced by the smallest one an SRL may be (1 MiB + 8 KiB) and
    initialised: a log that fills after a few dozen 64 KiB records."""
    blank_file(r.srl_path(node), MiB + 8 * KiB)
    r.replctl(node, "init", "--force")


class Writer(threading.Thread):
    """Writes random data through its own client connection until stopped.

    Keeps the ledger of completed writes; a write that fails is recorded in `errors` (its
    outcome is unknown, so a test that wants an exact ledger asserts there are none)."""

    def __init__(
        self,
        r: LocalResource,
        node: str,
        ledger: Ledger,
        seed: int = 1,
        hi: int = 256 * KiB,
        span: int | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(name=f"writer-{node}", daemon=True)
        self.r, self.node, self.ledger = r, node, ledger
        self.rng = random.Random(seed)
        self.hi, self.span, self.limit = hi, span, limit
        self.stop_ev = threading.Event()
        self.errors: list[str] = []
        self.done = 0

    def run(self) -> None:
        vol = self.r.connect(self.node)
        try:
            while not self.stop_ev.is_set() and (self.limit is None or self.done < self.limit):
                off, data = random_write(self.rng, self.ledger.size, hi=self.hi, span=self.span)
                try:
                    lsn = vol.write(off, data)
                except ReplError as exc:
                    self.errors.append(str(exc))
                    return
                self.ledger.add(lsn, off, data)
                self.done += 1
        finally:
            vol.close()

    def stop(self, timeout: float = 60) -> None:
        self.stop_ev.set()
        self.join(timeout)
        assert not self.is_alive(), "writer thread did not finish its last write"


def short_workdir(tmp_path: Path) -> Path:
    """tmp_path, unless the control socket path would exceed the AF_UNIX limit (107)."""
    if len(str(tmp_path / "run" / "r0" / "alpha" / "control.sock")) < 100:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="re-", dir="/tmp"))


def kill_leftovers(config: Path) -> None:
    """Kill any process still running for this resource's config (a daemon whose pid file
    was lost, a replctl stuck on a socket)."""
    needle = str(config)
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["pid"] != me and any(needle in part for part in cmd):
                os.kill(proc.info["pid"], signal.SIGCONT)
                os.kill(proc.info["pid"], signal.SIGKILL)
                wait_gone(proc.info["pid"], 10)
        except (psutil.Error, ProcessLookupError, ReplError):
            continue


@pytest.fixture
def resource(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., LocalResource]]:
    """Factory: resource(nodes=..., **LocalResource kwargs) -> created (not started)."""
    made: list[LocalResource] = []
    base = short_workdir(tmp_path)

    def make(nodes: dict[str, str] | None = None, **kw) -> LocalResource:
        kw.setdefault("volume_size", VOLUME_SIZE)
        kw.setdefault("srl_size", SRL_SIZE)
        kw.setdefault("heartbeat_ms", 300)
        r = LocalResource(base / f"res{len(made)}", nodes=dict(nodes or FOUR_NODES), **kw)
        made.append(r)
        return r.create()

    yield make

    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for r in made:
        if failed:
            for n in r.nodes:
                tail = "\n".join(r.log(n).splitlines()[-25:])
                print(f"\n----- log of {n} (last 25 lines) -----\n{tail}")
        r.stop_all()
        kill_leftovers(r.config)


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    """Register Writer threads here so they are stopped even when a test fails."""
    ws: list[Writer] = []
    yield ws
    for w in ws:
        w.stop_ev.set()
    for w in ws:
        w.join(30)


def peer(r: LocalResource, node: str, name: str) -> dict:
    return r.status(node)["peers"][name]
