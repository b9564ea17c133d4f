#!/usr/bin/env python3
"""Full sync against a plain copy of the same file on the same disk, and what it costs the
application's writes meanwhile.

Run: ``python3 bench/resync.py [--quick] [--volume-mib N] [--dir DIR]`` (root not needed:
device = "none"). Data in a temp dir under /var/tmp (a real disk), removed afterwards.
Default 4096 MiB volume (~3 min); --quick 512 MiB.

Three figures, each printed beside its reference, measured in this one run:

  dense     alpha's volume full of random data, beta's blank: promote alpha (its volume is
            the source), time until beta is consistent; vs ``cp`` of alpha's volume file to
            a new file on the same disk, with an fsync (goal: rate >= 0.7x the copy's)
  1 %       beta then differs from alpha in 1 % of its 1 MiB chunks: ``replctl sync --full
            beta --wait``; vs the same copy (goal: >= 20x faster than the copy)
  p99       4 KiB writes at queue depth 1 on alpha (through the client API), the write p99
            while a dense full sync of a re-initialised gamma runs vs without one (goal:
            <= 2x), with the default adaptive pacing
Page cache: both sides of each comparison read a file written moments before; the caches are
dropped before each timed step when /proc/sys/vm/drop_caches is writable.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from replengine.demo.localcluster import LocalResource  # noqa: E402

MIB = 1 << 20


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def fill_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for _ in range(size // (64 * MIB)):
            f.write(rng.randbytes(64 * MIB))
        f.write(rng.randbytes(size % (64 * MIB)))
        f.flush()
        os.fsync(f.fileno())


def timed_copy(src: Path, dst: Path) -> float:
    drop_caches()
    t0 = time.monotonic()
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())
    dt = time.monotonic() - t0
    dst.unlink()
    return dt


def wait_consistent(r: LocalResource, node: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = r.status("alpha")["peers"][node]
        if r.status(node)["consistent"] and st["state"] == "up-to-date":
            return time.monotonic() - t0
        time.sleep(0.05)
    raise SystemExit(f"{node} not consistent after {timeout}s: {r.describe()}")


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


class QD1Writer(threading.Thread):
    def __init__(self, r: LocalResource, size: int) -> None:
        super().__init__(daemon=True)
        self.r, self.size = r, size
        self.lat: list[tuple[float, float]] = []  # (when, latency)
        self.stop_ev = threading.Event()

    def run(self) -> None:
        rng = random.Random(3)
        data = rng.randbytes(4096)
        with self.r.connect("alpha") as v:
            while not self.stop_ev.is_set():
                off = rng.randrange(0, self.size // 4096) * 4096
                t0 = time.monotonic()
                v.write(off, data)
                t1 = time.monotonic()
                self.lat.append((t1, t1 - t0))
                time.sleep(0.002)  # an application that writes, not a flood

    def between(self, a: float, b: float) -> list[float]:
        return [lat for t, lat in self.lat if a <= t < b]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--volume-mib", type=int)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    size = (args.volume_mib or (512 if args.quick else 4096)) * MIB
    work = Path(tempfile.mkdtemp(prefix="replengine-resync-", dir=args.dir))
    print(f"volume {size // MIB} MiB, work dir {work} (one disk for every node and the copy)")
    print(f"page cache dropped before timed steps: {drop_caches()}")
    r = LocalResource(
        work / "res",
        nodes={"alpha": "sync", "beta": "sync", "gamma": "async"},
        volume_size=size,
        srl_size=256 * MIB,
        heartbeat_ms=500,
    ).create()
    try:
        fill_random(r.volume_path("alpha"), size, seed=1)
        copy_s = timed_copy(r.volume_path("alpha"), work / "copy.img")
        copy_rate = size / copy_s
        print(f"plain copy (cp + fsync)        {copy_s:8.2f} s  {copy_rate / MIB:8.1f} MiB/s")

        # dense: the first promotion syncs beta (and gamma, which is stopped for now)
        r.up("alpha", "beta")
        drop_caches()
        t0 = time.monotonic()
        r.promote("alpha")
        wait_consistent(r, "beta", 3600)
        dense_s = time.monotonic() - t0
        dense_rate = size / dense_s
        sent = r.status("alpha")["peers"]["beta"]["blocks_sent_bytes"]
        print(
            f"full sync, dense               {dense_s:8.2f} s  {dense_rate / MIB:8.1f} MiB/s  "
            f"sent {sent / size:.2f}x the volume"
        )

        # 1 %: damage 1 % of beta's chunks, then sync --full
        r.down("beta")
        chunks = size // MIB
        rng = random.Random(2)
        bad = rng.sample(range(chunks), max(1, chunks // 100))
        with open(r.volume_path("beta"), "r+b") as f:
            for c in bad:
                f.seek(c * MIB + 4096)
                f.write(b"\xa5" * 4096)
            os.fsync(f.fileno())
        r.up("beta")
        wait_consistent(r, "beta", 600)
        before = r.status("alpha")["peers"]["beta"]["blocks_sent_bytes"]
        drop_caches()
        t0 = time.monotonic()
        r.replctl("alpha", "sync", "--full", "beta", "--wait", "--timeout", "3600")
        one_s = time.monotonic() - t0
        one_sent = r.status("alpha")["peers"]["beta"]["blocks_sent_bytes"] - before
        print(
            f"full sync, 1 % differs         {one_s:8.2f} s  sent {one_sent // MIB} MiB of "
            f"{size // MIB} MiB ({len(bad)} chunks damaged)"
        )

        # p99 of 4 KiB QD1 writes: steady, then during gamma's full sync (blank gamma vs
        # alpha's dense data)
        w = QD1Writer(r, size)
        w.start()
        time.sleep(8)
        t_mid = time.monotonic()
        r.up("gamma")
        gamma_s = wait_consistent(r, "gamma", 3600)
        t_end = time.monotonic()
        w.stop_ev.set()
        w.join(30)
        steady = w.between(t_mid - 6, t_mid)
        during = w.between(t_mid + 0.5, t_end)
        pacing = r.status("alpha")["resync_pacing"]
        r.stop_all()
    finally:
        try:
            r.stop_all()
        except Exception:
            pass
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["sync"], check=False)

    dense_ratio = dense_rate / copy_rate
    speedup = copy_s / one_s
    p_steady, p_during = p99(steady), p99(during)
    print()
    print(f"{'figure':38} {'ours':>12} {'reference':>12} {'ratio':>8}  goal")
    rows = [
        (
            "dense full sync rate vs plain copy",
            f"{dense_rate / MIB:.0f} MiB/s",
            f"{copy_rate / MIB:.0f} MiB/s",
            dense_ratio,
            ">= 0.7",
            dense_ratio >= 0.7,
        ),
        (
            "1 % full sync time vs plain copy (x faster)",
            f"{one_s:.2f} s",
            f"{copy_s:.2f} s",
            speedup,
            ">= 20",
            speedup >= 20,
        ),
        (
            "4K QD1 write p99 during sync vs steady",
            f"{p_during * 1e3:.2f} ms",
            f"{p_steady * 1e3:.2f} ms",
            p_during / p_steady,
            "<= 2",
            p_during / p_steady <= 2,
        ),
    ]
    for name, ours, ref, ratio, goal, ok in rows:
        print(f"{name:38} {ours:>12} {ref:>12} {ratio:8.2f}  {goal} {'PASS' if ok else 'MISS'}")
    print(
        f"(gamma's dense sync under writes took {gamma_s:.1f} s, {len(during)} writes during it, "
        f"{len(steady)} before; pacing at the end: {pacing})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
