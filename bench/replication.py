#!/usr/bin/env python3
"""Replicated write throughput and latency through the client API, against the raw disk.

Run: ``python3 bench/replication.py [--quick] [--dir DIR]`` (data under /var/tmp by default,
a real disk, removed afterwards; full run < 3 min, --quick < 40 s).

Workloads, each through `replengine.client` on the primary:
  seq-1M-qd1    sequential 1 MiB writes, one at a time
  rand-4K-qd1   random 4 KiB writes, one at a time (write latency)
  rand-4K-qd16  random 4 KiB writes, 16 in flight (client submit()/wait())
Configurations (real replengined processes on 127.0.0.1, file volumes, one shared disk):
  (a) primary alone  -- peers never started, promoted with --force, on_sync_loss=degrade
  (b) 1 sync secondary
  (c) 2 sync + 1 async secondaries
Raw baseline: a plain file on the same file system, same pattern and bytes, os.pwrite +
os.fdatasync per write (16 threads for qd16).
Floor: a bare pyzmq round trip between two processes, measured in the same run, printed
with the least a QD1 write with a sync secondary can take here (two round trips and the
secondary's fdatasync).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from replengine.demo.localcluster import LocalResource  # noqa: E402

KIB, MIB = 1 << 10, 1 << 20
VOLUME = 256 * MIB

CONFIGS = {
    "a: primary alone": ({"alpha": "sync", "beta": "sync"}, ["alpha"]),
    "b: 1 sync": ({"alpha": "sync", "beta": "sync"}, ["alpha", "beta"]),
    "c: 2 sync + 1 async": (
        {"alpha": "sync", "beta": "sync", "gamma": "sync", "delta": "async"},
        ["alpha", "beta", "gamma", "delta"],
    ),
}

HEADER = """\
replengine replication benchmark ({mode})
  ratio      = our MiB/s / raw MiB/s, raw = one plain file on the same file system written
               with the same pattern and bytes, os.pwrite + os.fdatasync per write
  raw-equiv  = our MiB/s x copies / raw MiB/s, copies = 2 x (nodes running): every node
               writes each byte twice to this one shared disk (its SRL record, durably, and
               its volume copy, by the background applier), so the disk does `copies` times
               our bytes; 1.0 = replication costs no more than the bytes it must write
               (it can exceed 1: volume copies are flushed in batches, not per write)
  latency    = client submit -> completion per write (qd16: including time queued)
  goals: 4K qd1 p99 <= 3x raw 4K write+fdatasync p99 (configs with a sync secondary);
         1 MiB raw-equiv >= 0.5; every daemon's peak RSS <= 200 MiB; and the hot-path
         issue's: with 1 sync, 4K qd1 p50 <= 2x raw p50 and 4K qd16 raw-equiv >= 0.9;
         with 2 sync + 1 async, 1 MiB raw-equiv >= 0.8"""


@dataclass
class Result:
    mib_s: float
    p50_ms: float
    p99_ms: float
    writes: int
    #: every write's latency in seconds (for bench/report.py's plots; not printed)
    samples: list[float] = field(default_factory=list, repr=False)


@dataclass
class Workload:
    name: str
    size: int
    qd: int
    count: int
    sequential: bool
    offsets: list[int] = field(default_factory=list)

    def make_offsets(self, seed: int) -> list[int]:
        if self.sequential:
            n = VOLUME // self.size
            return [(i % n) * self.size for i in range(self.count)]
        rng = random.Random(seed)
        return [rng.randrange(0, VOLUME // self.size) * self.size for _ in range(self.count)]


def pct(lat: list[float], q: float) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(q * len(s)))] * 1e3


def summarise(lat: list[float], total_bytes: int, elapsed: float) -> Result:
    return Result(total_bytes / MIB / elapsed, pct(lat, 0.5), pct(lat, 0.99), len(lat), lat)


# ---- raw baseline -----------------------------------------------------------------------


def run_raw(path: Path, wl: Workload, offsets: list[int]) -> Result:
    buf = os.urandom(wl.size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, VOLUME)
        lat: list[float] = []
        lock = threading.Lock()
        it = iter(offsets)

        def worker() -> None:
            mine = []
            while True:
                with lock:
                    off = next(it, None)
                if off is None:
                    break
                t0 = time.perf_counter()
                os.pwrite(fd, buf, off)
                os.fdatasync(fd)
                mine.append(time.perf_counter() - t0)
            with lock:
                lat.extend(mine)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(wl.qd)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return summarise(lat, wl.size * len(offsets), elapsed)


# ---- the transport's own round trip ------------------------------------------------------

ECHO = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); port = s.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
while True:
    msg = s.recv_multipart()
    if msg[1] == b"end":
        break
    s.send_multipart(msg)
"""


def zmq_round_trip(count: int) -> float:
    """p50 ms of a bare pyzmq DEALER -> ROUTER -> DEALER round trip of 4 KiB between two
    processes over TCP on 127.0.0.1: what every hop of a replicated write costs before any
    of our code runs (each crosses both processes' ZeroMQ I/O threads)."""
    import zmq

    echo = subprocess.Popen(
        [sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.connect(f"tcp://127.0.0.1:{port}")
        buf, lat = os.urandom(4 * KIB), []
        for _ in range(count):
            t0 = time.perf_counter()
            s.send(buf)
            s.recv()
            lat.append(time.perf_counter() - t0)
        s.send(b"end")
        s.close(linger=1000)
        ctx.term()
        echo.wait(timeout=10)
    finally:
        echo.kill()
    return pct(lat, 0.5)


# ---- through the client API -----------------------------------------------------------


def run_client(r: LocalResource, wl: Workload, offsets: list[int]) -> Result:
    vol = r.connect("alpha")
    buf = os.urandom(wl.size)
    lat: list[float] = []
    inflight: deque[tuple[int, float]] = deque()
    try:
        t0 = time.perf_counter()
        for off in offsets:
            inflight.append((vol.submit(off, buf), time.perf_counter()))
            if len(inflight) >= wl.qd:
                req, ts = inflight.popleft()
                vol.wait(req)
                lat.append(time.perf_counter() - ts)
        while inflight:
            req, ts = inflight.popleft()
            vol.wait(req)
            lat.append(time.perf_counter() - ts)
        elapsed = time.perf_counter() - t0
    finally:
        vol.close()
    return summarise(lat, wl.size * len(offsets), elapsed)


class RssSampler(threading.Thread):
    """Peak RSS of each daemon, sampled every 100 ms while a configuration runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.procs = {n: psutil.Process(p) for n, p in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.stop_ev = threading.Event()

    def run(self) -> None:
        while not self.stop_ev.is_set():
            self.sample()
            self.stop_ev.wait(0.1)

    def sample(self) -> None:
        for n, p in self.procs.items():
            try:
                self.peak[n] = max(self.peak[n], p.memory_info().rss)
            except psutil.Error:
                pass

    def stop(self) -> dict[str, int]:
        self.stop_ev.set()
        self.join()
        self.sample()
        return self.peak


def run_config(
    workdir: Path,
    label: str,
    nodes: dict[str, str],
    running: list[str],
    workloads: list[Workload],
    srl_size: int,
) -> tuple[dict[str, Result], dict[str, int]]:
    r = LocalResource(
        workdir,
        nodes=nodes,
        volume_size=VOLUME,
        srl_size=srl_size,
        on_sync_loss="degrade",
        srl_full="stall",
    )
    r.create()
    try:
        r.up(*running)
        r.promote("alpha", *(["--force"] if len(running) < len(nodes) else []))
        warm = r.connect("alpha")
        for i in range(16):
            warm.write(i * 4096, b"w" * 4096)  # first write waits for a missing peer's degrade
        warm.close()
        rss = RssSampler({n: r.pid(n) for n in running})  # type: ignore[misc]
        rss.start()
        out = {}
        for wl in workloads:
            out[wl.name] = run_client(r, wl, wl.offsets)
            r.wait_synced(running, timeout=120)  # next workload starts from a quiet resource
        peaks = rss.stop()
        r.down(*running)
        return out, peaks
    finally:
        r.stop_all()


def fmt_row(label: str, res: Result, raw: Result, copies: int) -> str:
    ratio = res.mib_s / raw.mib_s
    return (
        f"  {label:<22} {res.mib_s:9.1f} {res.p50_ms:8.3f} {res.p99_ms:8.3f} "
        f"{ratio:7.3f} {ratio * copies:9.3f}"
    )


def dump_json(
    path: str,
    raw: dict[str, Result],
    results: dict[str, tuple[dict[str, Result], dict[str, int], int]],
    goals: list[tuple[str, bool, str]],
) -> None:
    def res(x: Result) -> dict:
        return {
            "mib_s": x.mib_s,
            "p50_ms": x.p50_ms,
            "p99_ms": x.p99_ms,
            "writes": x.writes,
            "latency_s": x.samples,
        }

    doc = {
        "raw": {name: res(x) for name, x in raw.items()},
        "configs": {
            label: {
                "workloads": {n: res(x) for n, x in r.items()},
                "peak_rss": peaks,
                "copies": copies,
            }
            for label, (r, peaks, copies) in results.items()
        },
        "goals": [{"what": w, "pass": ok, "detail": d} for w, ok, d in goals],
    }
    Path(path).write_text(json.dumps(doc))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the data (< 40 s)")
    ap.add_argument("--dir", default="/var/tmp", help="where to put the files (a real disk)")
    ap.add_argument("--json", help="also write every figure and latency sample here")
    args = ap.parse_args(argv)
    div = 4 if args.quick else 1
    workloads = [
        Workload("seq-1M-qd1", MIB, 1, 192 // div, True),
        Workload("rand-4K-qd1", 4 * KIB, 1, 3000 // div, False),
        Workload("rand-4K-qd16", 4 * KIB, 16, 6000 // div, False),
    ]
    for i, wl in enumerate(workloads):
        wl.offsets = wl.make_offsets(seed=100 + i)
    total = sum(wl.size * wl.count for wl in workloads)
    # the lone primary never clears (its absent peer has nothing): its SRL must hold it all
    srl_size = max(64 * MIB, 4 * total)

    print(HEADER.format(mode="quick" if args.quick else "full"))
    base = Path(tempfile.mkdtemp(prefix="replbench-", dir=args.dir))
    t_start = time.monotonic()
    try:
        raw = {wl.name: run_raw(base / "raw.img", wl, wl.offsets) for wl in workloads}
        print("\nraw disk (pwrite + fdatasync per write):")
        for wl in workloads:
            x = raw[wl.name]
            print(
                f"  {wl.name:<13} {x.mib_s:9.1f} MiB/s  p50 {x.p50_ms:.3f} ms  "
                f"p99 {x.p99_ms:.3f} ms  ({x.writes} writes)"
            )
        results: dict[str, tuple[dict[str, Result], dict[str, int], int]] = {}
        for i, (label, (nodes, running)) in enumerate(CONFIGS.items()):
            res, peaks = run_config(base / f"cfg{i}", label, nodes, running, workloads, srl_size)
            results[label] = (res, peaks, 2 * len(running))
        goals: list[tuple[str, bool, str]] = []
        for wl in workloads:
            print(
                f"\n{wl.name} ({wl.count} writes of {wl.size // KIB} KiB, "
                f"raw {raw[wl.name].mib_s:.1f} MiB/s)"
            )
            print(
                f"  {'configuration':<22} {'MiB/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
                f"{'ratio':>7} {'raw-equiv':>9}"
            )
            for label, (res, _, copies) in results.items():
                print(fmt_row(label, res[wl.name], raw[wl.name], copies))
        print("\ndaemon peak RSS (MiB):")
        for label, (_, peaks, _) in results.items():
            print(f"  {label:<22} " + "  ".join(f"{n} {v / MIB:.1f}" for n, v in peaks.items()))
        raw_p99 = raw["rand-4K-qd1"].p99_ms
        for label, (res, peaks, copies) in results.items():
            if not label.startswith("a"):
                p99 = res["rand-4K-qd1"].p99_ms
                goals.append(
                    (
                        f"4K qd1 p99 {label}",
                        p99 <= 3 * raw_p99,
                        f"{p99:.3f} ms vs 3 x {raw_p99:.3f} = {3 * raw_p99:.3f} ms",
                    )
                )
            if label.startswith("b"):
                p50, raw_p50 = res["rand-4K-qd1"].p50_ms, raw["rand-4K-qd1"].p50_ms
                goals.append(
                    (
                        f"4K qd1 p50 {label}",
                        p50 <= 2 * raw_p50,
                        f"{p50:.3f} ms vs 2 x {raw_p50:.3f} = {2 * raw_p50:.3f} ms",
                    )
                )
                q16 = res["rand-4K-qd16"].mib_s * copies / raw["rand-4K-qd16"].mib_s
                goals.append((f"4K qd16 raw-equiv {label}", q16 >= 0.9, f"{q16:.3f} (goal >= 0.9)"))
            eq = res["seq-1M-qd1"].mib_s * copies / raw["seq-1M-qd1"].mib_s
            want = 0.8 if label.startswith("c") else 0.5
            goals.append((f"1 MiB raw-equiv {label}", eq >= want, f"{eq:.3f} (goal >= {want})"))
            worst = max(peaks.values())
            goals.append(
                (f"RSS {label}", worst <= 200 * MIB, f"max {worst / MIB:.1f} MiB (goal <= 200)")
            )
        print("\ngoals:")
        for what, ok, detail in goals:
            print(f"  {'PASS' if ok else 'MISS'}  {what:<36} {detail}")
        rtt = zmq_round_trip(3000 // div)
        raw_p50 = raw["rand-4K-qd1"].p50_ms
        floor = 2 * rtt + raw_p50
        print(
            f"\n(the floor of a QD1 write with 1 sync secondary here: two ZeroMQ round trips, "
            f"client to primary and primary to secondary, {rtt:.3f} ms each bare, plus the "
            f"secondary's fdatasync after the first hop, the raw p50 {raw_p50:.3f} ms (the "
            f"primary's own overlaps it): {floor:.3f} ms, against the p50 goal's "
            f"{2 * raw_p50:.3f} ms; what is left for both daemons' own work: "
            f"{1e3 * (2 * raw_p50 - floor):.0f} us)"
        )
        print(f"\n(wall time {time.monotonic() - t_start:.1f} s)")
        if args.json:
            dump_json(args.json, raw, results, goals)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
