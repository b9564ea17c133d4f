#!/usr/bin/env python3
"""Log-diff catch-up: how fast a secondary that was away gets the records it lacks, and what
memory that costs every daemon.

Run: ``python3 bench/catchup.py [--quick] [--dir DIR]`` (data under /var/tmp, removed after).

One resource of three real daemons on this machine (a: primary, b: sync, c: async; one disk
for all): c is frozen (SIGSTOP) while 4 KiB records are written at random offsets, 16 in
flight, then thawed once the writer has been idle past the pacer's window (a catch-up while the
application writes is paced to keep its latency; bench/resync.py measures that); measured
is the time from the thaw until c's durable end equals a's, as records/s,
and each daemon's peak RSS meanwhile (sampled every 10 ms). Two lags: 20 000 records (the
figure of issue 13) and one that fills ~90 % of the SRL (the memory goal's worst case).
Reference: the same records appended to a plain SRL on the same disk by one process (what
the log alone costs), so the ratio says how much of the catch-up is replication's own.

Goals: >= 50 000 records/s; every daemon's peak RSS <= 200 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replengine.demo.localcluster import LocalResource  # noqa: E402
from replengine.log.record import Record  # noqa: E402
from replengine.log.srl import SRL  # noqa: E402
from replengine.log.srl_format import record_size  # noqa: E402
from replengine.node.pacing import WINDOW_S  # noqa: E402

MIB = 1 << 20
REC = 4096
VOLUME = 1 << 30


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def plain_srl_rate(base: Path, n: int, srl_size: int) -> float:
    """Records/s of one process appending ``n`` records to an SRL (batches of 256, each
    waited for), on the same disk: the log's own cost of taking the records."""
    path = base / "plain-srl"
    with open(path, "wb") as f:
        f.truncate(srl_size)
    srl = SRL.create(path, resource="bench", uuid=uuid.uuid4(), node="x")
    buf = os.urandom(REC)
    t0 = time.perf_counter()
    pend = []
    for i in range(n):
        pend.append(srl.append_record_nowait(Record(i + 1, 0, i * REC % VOLUME, buf), kick=False))
        if len(pend) >= 256:
            pend[-1].wait()
            pend = []
    if pend:
        pend[-1].wait()
    dt = time.perf_counter() - t0
    srl.close()
    path.unlink()
    return n / dt


def case(base: Path, n: int, srl_size: int, seed: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="catchup-", dir=base))
    r = LocalResource(
        work, nodes={"a": "sync", "b": "sync", "c": "async"}, volume_size=VOLUME, srl_size=srl_size
    )
    r.create()
    try:
        r.up()
        r.promote("a")
        r.wait_synced(timeout=120)
        r.freeze("c")
        vol = r.connect("a")
        rng = random.Random(seed)
        buf = os.urandom(REC)
        t0 = time.monotonic()
        reqs = []
        for _ in range(n):
            reqs.append(vol.submit(rng.randrange(0, VOLUME // REC) * REC, buf))
            if len(reqs) >= 16:
                vol.wait(reqs.pop(0))
        for q in reqs:
            vol.wait(q)
        vol.close()
        log(f"  {n} records written in {time.monotonic() - t0:.1f}s with c frozen")
        # the writer is done: past the pacer's window (it paces a catch-up while the
        # application writes, to keep its latency: bench/resync.py measures that case)
        time.sleep(2 * WINDOW_S + 0.1)
        procs = {name: psutil.Process(r.pid(name)) for name in ("a", "b", "c")}
        peak = dict.fromkeys(procs, 0)
        end = r.status("a")["end_lsn"]
        t0 = time.monotonic()
        r.signal("c", 18)  # SIGCONT
        while True:
            for name, p in procs.items():
                peak[name] = max(peak[name], p.memory_info().rss)
            if r.status("c")["end_lsn"] >= end:
                break
            time.sleep(0.01)
        dt = time.monotonic() - t0
        return {"records": n, "seconds": dt, "rate": n / dt, "peak_rss": peak}
    finally:
        r.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 64 MiB SRL for the full case")
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="replbench-catchup-", dir=args.dir))
    srl_full = (128 if args.quick else 512) * MIB
    full_n = int(0.9 * (srl_full - 8192) / record_size(REC))
    cases = [(20_000, 256 * MIB), (full_n, srl_full)]
    t_all = time.monotonic()
    try:
        rows = []
        for n, size in cases:
            log(f"catch-up of {n} records, SRL {size // MIB} MiB ...")
            rows.append({**case(base, n, size, seed=len(rows) + 1), "srl_mib": size // MIB})
        plain = plain_srl_rate(base, 20_000, 256 * MIB)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"catch-up bench{' (--quick)' if args.quick else ''}: 3 nodes, c (async) frozen while "
        "4 KiB records are written (16 in flight), then thawed; one disk for all"
    )
    print(
        f"{'records':>8} {'SRL':>8} {'seconds':>8} {'records/s':>10} {'vs plain SRL':>12}  peak RSS"
    )
    for row in rows:
        rss = "  ".join(f"{k} {v / MIB:.0f} MiB" for k, v in row["peak_rss"].items())
        print(
            f"{row['records']:>8} {row['srl_mib']:>4} MiB {row['seconds']:8.2f} "
            f"{row['rate']:10.0f} {row['rate'] / plain:12.2f}  {rss}"
        )
    print(f"plain SRL appends (one process, same disk): {plain:.0f} records/s")
    first = rows[0]["rate"]
    worst = max(max(row["peak_rss"].values()) for row in rows)
    goals = [
        (f"catch-up of 20 000 records >= 50 000 records/s ({first:.0f})", first >= 50_000),
        (f"every daemon's peak RSS <= 200 MiB ({worst / MIB:.0f} MiB)", worst <= 200 * MIB),
    ]
    for text, ok in goals:
        print(f"{'PASS' if ok else 'MISS'}  {text}")
    print(f"total {time.monotonic() - t_all:.1f}s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "plain_rate": plain, "goals": [[t, ok] for t, ok in goals]})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
