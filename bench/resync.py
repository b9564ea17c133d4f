#!/usr/bin/env python3
"""Full sync against a plain copy of the same file on the same disk, and what it costs the
application's writes meanwhile.

Run: ``python3 bench/resync.py [--quick] [--volume-mib N] [--dir DIR]`` (root not needed:
device = "none"). Data in a temp dir under /var/tmp (a real disk), removed afterwards.
Default 4096 MiB volume (~9 min); --quick 512 MiB (~1 min).

Three figures, each printed beside its reference, measured in this one run:

  dense     alpha's volume full of random data, beta's blank: promote alpha (its volume is
            the source), time until beta is consistent; vs ``cp`` of alpha's volume file to
            a new file on the same disk, with an fsync (goal: rate >= 0.7x the copy's), and,
            printed beside it, ``dd bs=1M conv=fsync`` of the same file (a user-space copy,
            which this disk runs at about half cp's in-kernel rate).
            Measured in ``--rounds`` pairs (default 3), a copy right before each sync: the
            first by the first promotion, the next by replacing beta's disk (blank volume,
            new SRL, ``replctl init``) and starting it again. This disk's speed wanders by
            +-30 % from minute to minute, so the figure is the median of the pairs' ratios;
            every pair is printed
  1 %       beta then differs from alpha in 1 % of its 1 MiB chunks: ``replctl sync --full
            beta --wait``; vs the same copy (goal: >= 20x faster than the copy); printed
            beside it, both volume files read at once by 8 threads each (cache dropped):
            what any checksummed sync must read, against the copy's read and write; and
            one node's digest pass over its volume in 1 thread and in 2 (what a node with 4
            cores or more does; the two daemons here already take both cores of this one)
  known     beta away while the application rewrites the same 1 % of chunks, past what the
            SRL holds (srl_full = "dcm"): the primary's dirty-region bitmap names them, so
            nothing is read to find them; time from ``replctl up beta`` (starting its daemon
            included; the writer idle past the pacer's window first, as below) until it is
            consistent, vs the same copy (goal: >= 20x faster); printed
            beside it, the same with beta's daemon kept running, paused while the chunks are
            rewritten and then let go (a VM pause or a cut link healing: no Python start in
            it). The checksummed 1 % case
            above cannot get there on one disk: finding 1 % that differs without a record
            of it means reading both volumes, 8 GiB against the copy's 4 GiB read + 4 GiB
            written
  p99       4 KiB writes at queue depth 1 on alpha (through the client API), the write p99
            while a dense full sync of gamma runs, its disk replaced (blank volume, new
            SRL), vs the steady state just before with all three nodes up to date (goal:
            <= 2x), with the default adaptive pacing. Printed beside it, gamma's first
            sync (a node added), against the steady state before, without gamma: that
            ratio also holds a third replica's own cost on this one disk (its fdatasync
            per write once in sync), which no pacing of the copy removes
Page cache: both sides of each comparison read a file written moments before; the caches are
dropped before each timed step when /proc/sys/vm/drop_caches is writable.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
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
from replengine.node.pacing import WINDOW_S  # noqa: E402
from replengine.storage.chunksums import chunks  # noqa: E402
from replengine.storage.hashpool import hash_workers, map_ordered  # noqa: E402
from replengine.storage.volume import Volume  # noqa: E402

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


def timed_dd(src: Path, dst: Path) -> float:
    """The same copy in user space, 1 MiB at a time (as the sync moves it), one fsync."""
    drop_caches()
    t0 = time.monotonic()
    subprocess.run(
        ["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fsync", "status=none"], check=True
    )
    dt = time.monotonic() - t0
    dst.unlink()
    return dt


#: readers per file below: this disk read two fresh files about twice as fast with two or more
#: 1 MiB readers each as with one (one 4.6 s, two 2.2 s, eight 2.1 s for 2 x 2 GiB)
READERS_PER_FILE = 8


def timed_read_both(a: Path, b: Path) -> float:
    """Both files read end to end at once, cache dropped first, each by READERS_PER_FILE
    threads over its parts: what a checksummed sync must read on one disk (each side reads
    its whole volume to hash it). A reference, not a bound: this virtual disk's read rate
    varies with the files' history and the host's cache (our sync has read both faster)."""
    drop_caches()

    def read(path: Path, start: int, end: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            while start < end and (n := len(os.pread(fd, min(MIB, end - start), start))):
                start += n
        finally:
            os.close(fd)

    size = a.stat().st_size
    parts = [
        (size * i // READERS_PER_FILE, size * (i + 1) // READERS_PER_FILE)
        for i in range(READERS_PER_FILE)
    ]
    t0 = time.monotonic()
    threads = [threading.Thread(target=read, args=(p, s, e)) for p in (a, b) for s, e in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


def timed_digest_pass(path: Path, workers: int) -> float:
    """One node's side of a checksummed sync: every 1 MiB chunk of its volume read and
    hashed, as ChunkSummer does it, by ``workers`` threads (storage.hashpool); cache
    dropped first."""
    drop_caches()
    with Volume(path, readonly=True) as v:
        t0 = time.monotonic()
        for _ in map_ordered(lambda p: v.digest_of(*p), chunks([(0, v.size)], MIB), workers):
            pass
        return time.monotonic() - t0


def wait_consistent(r: LocalResource, node: str, timeout: float, every: float = 0.05) -> float:
    """Seconds until ``node`` is consistent; ``every``: how often to look (each look is two
    status calls, which a long sync under measured writes should not pay for often)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = r.status("alpha")["peers"][node]
        if r.status(node)["consistent"] and st["state"] == "up-to-date":
            return time.monotonic() - t0
        time.sleep(every)
    raise SystemExit(f"{node} not consistent after {timeout}s: {r.describe()}")


def rewrite_past_log(r: LocalResource, chunks: list[int], data: bytes, srl_cap: int) -> int:
    """Rewrite these 1 MiB chunks on alpha until more than its SRL holds was written (a peer
    away meanwhile goes to dcm); returns the bytes written."""
    with r.connect("alpha") as v:
        written = 0
        while written <= srl_cap + 16 * MIB:
            for c in chunks:
                v.write(c * MIB, data)
            written += len(chunks) * MIB
    return written


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
    ap.add_argument("--rounds", type=int, default=3, help="copy/dense-sync pairs (median)")
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
        srl_full="dcm",
        heartbeat_ms=500,
    ).create()
    try:
        fill_random(r.volume_path("alpha"), size, seed=1)
        pairs: list[tuple[float, float]] = []  # (copy s, dense sync s)
        for rnd in range(max(1, args.rounds)):
            dd_s = timed_dd(r.volume_path("alpha"), work / "copy.img")
            copy_s = timed_copy(r.volume_path("alpha"), work / "copy.img")
            sent0 = r.status("alpha")["peers"]["beta"]["blocks_sent_bytes"] if rnd else 0
            if rnd == 0:
                # the first promotion syncs beta (and gamma, which is stopped for now)
                r.up("alpha", "beta")
                drop_caches()
                t0 = time.monotonic()
                r.promote("alpha")
            else:
                # beta's disk replaced: a blank volume and a new SRL, synced in full again
                r.down("beta")
                r.replace_disks("beta")
                drop_caches()
                t0 = time.monotonic()
                r.up("beta")
            wait_consistent(r, "beta", 3600)
            dense_s = time.monotonic() - t0
            sent = r.status("alpha")["peers"]["beta"]["blocks_sent_bytes"] - sent0
            pairs.append((copy_s, dense_s, dd_s))
            print(
                f"round {rnd + 1}: cp + fsync {copy_s:6.2f} s {size / copy_s / MIB:6.1f} MiB/s; "
                f"dd bs=1M conv=fsync {dd_s:6.2f} s {size / dd_s / MIB:6.1f} MiB/s; "
                f"full sync, dense {dense_s:6.2f} s {size / dense_s / MIB:6.1f} MiB/s "
                f"(sent {sent / size:.2f}x the volume); ratio to cp {copy_s / dense_s:.2f}, "
                f"to dd {dd_s / dense_s:.2f}"
            )
        # the pair whose ratio is the median: its copy is the reference for the 1 % case too
        copy_s, dense_s, _ = sorted(pairs, key=lambda p: p[0] / p[1])[len(pairs) // 2]
        copy_rate, dense_rate = size / copy_s, size / dense_s
        dd_ratios = sorted(p[2] / p[1] for p in pairs)

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
        both_s = timed_read_both(r.volume_path("alpha"), r.volume_path("beta"))
        print(
            f"reading both volumes at once   {both_s:8.2f} s  (8 readers per file: what a "
            f"checksummed sync must read, beside the copy's {copy_s:.2f} s)"
        )
        one_t = timed_digest_pass(r.volume_path("alpha"), 1)
        two_t = timed_digest_pass(r.volume_path("alpha"), 2)
        print(
            f"one node's digest pass         {one_t:8.2f} s  {size / one_t / MIB:.0f} MiB/s in 1 "
            f"thread, {two_t:.2f} s {size / two_t / MIB:.0f} MiB/s in 2: {one_t / two_t:.2f}x "
            f"(a node hashes in half its cores, at most 4; this one has {os.cpu_count()}: "
            f"{hash_workers()})"
        )

        # 1 % known: beta away past what the log holds, while the application rewrites
        # the same 1 % of chunks; the primary's dirty-region bitmap (srl_full = "dcm")
        # says which, so nothing is read to find them
        r.down("beta")
        srl_cap = r.status("alpha")["srl"]["capacity"]
        data = random.Random(4).randbytes(MIB)
        written = rewrite_past_log(r, bad, data, srl_cap)
        state = r.status("alpha")["peers"]["beta"]["state"]
        before = r.status("alpha")["peers"]["beta"]["blocks_sent_bytes"]
        # started once the writer has been idle past the pacer's window, as the copy it is
        # set against runs with no application (the paced case is the p99 figure's): else
        # a daemon that starts within it copies at the pacer's first rate until then
        time.sleep(2 * WINDOW_S + 0.1)
        drop_caches()
        t0 = time.monotonic()
        r.up("beta")  # counted: starting the daemon is part of what the operator waits for
        wait_consistent(r, "beta", 600, every=0.01)
        known_s = time.monotonic() - t0
        took = ((r.status("alpha").get("dcm") or {}).get("last_resync") or {}).get("seconds")
        known_sent = r.status("alpha")["peers"]["beta"]["blocks_sent_bytes"] - before
        print(
            f"dcm resync, 1 % known dirty    {known_s:8.2f} s  sent {known_sent // MIB} MiB of "
            f"{size // MIB} MiB (beta was {state!r} after {written // MIB} MiB of writes; "
            f"from `replctl up beta` until consistent; the resync itself: {took} s)"
        )

        # the same, with beta's daemon kept running: paused (a VM pause; a cut link looks the
        # same to alpha) while the chunks are rewritten past the log, then let go -- the
        # rejoin without the two Python starts `replctl up` costs
        r.freeze("beta")
        rewrite_past_log(r, bad, data, srl_cap)
        paused_state = r.status("alpha")["peers"]["beta"]["state"]
        # let go once the writer has been idle past the pacer's window, as a restart is
        # (copies while the application writes are paced: the p99 figure below measures that)
        time.sleep(2 * WINDOW_S + 0.1)
        drop_caches()
        t0 = time.monotonic()
        r.signal("beta", signal.SIGCONT)
        wait_consistent(r, "beta", 600, every=0.01)
        paused_s = time.monotonic() - t0
        took = ((r.status("alpha").get("dcm") or {}).get("last_resync") or {}).get("seconds")
        print(
            f"dcm resync, 1 % known dirty    {paused_s:8.2f} s  with beta's daemon kept running "
            f"(beta was {paused_state!r}; from SIGCONT until consistent; the resync itself: "
            f"{took} s)"
        )

        # p99 of 4 KiB QD1 writes. gamma joins for the first time (blank, never synced):
        # steady is measured without it, so that ratio also holds the cost of a third
        # replica on this one disk (its fdatasync per write), which the copy's pacing
        # cannot remove: printed, not the goal. Then, gamma up to date, steady with all
        # three; gamma's disk replaced (blank volume, new SRL), synced in full again: the
        # goal's figure, during that sync vs that steady state
        w = QD1Writer(r, size)
        w.start()
        time.sleep(8)
        t_new = time.monotonic()
        r.up("gamma")
        new_s = wait_consistent(r, "gamma", 3600)
        t_new_end = time.monotonic()
        time.sleep(8)
        t_mid = time.monotonic()
        r.down("gamma")
        r.replace_disks("gamma")
        r.up("gamma")
        gamma_s = wait_consistent(r, "gamma", 3600)
        t_end = time.monotonic()
        w.stop_ev.set()
        w.join(30)
        steady_two = w.between(t_new - 6, t_new)
        during_new = w.between(t_new + 0.5, t_new_end)
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
            f"dense full sync rate vs plain copy (median of {len(pairs)})",
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
            "1 % known dirty: dcm resync vs plain copy (x faster)",
            f"{known_s:.2f} s",
            f"{copy_s:.2f} s",
            copy_s / known_s,
            ">= 20",
            copy_s / known_s >= 20,
        ),
        (
            "4K QD1 write p99 during sync vs steady (gamma's disk replaced)",
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
        f"(dense full sync vs dd bs=1M conv=fsync, a user-space copy as ours: median ratio "
        f"{dd_ratios[len(dd_ratios) // 2]:.2f}; the goal is taken against cp, whose in-kernel "
        "sendfile copies faster on this disk)"
    )
    print(
        f"(1 % checksummed: a checksummed sync reads both volumes, 2 x {size // MIB} MiB, where "
        f"the copy reads one and writes one; here reading both at once took {both_s:.2f} s, "
        f"the copy {copy_s:.2f} s and our sync {one_s:.2f} s. On one disk it runs about as "
        "fast as the copy; 20x needs a copy 20x slower than a read pass, as over a network "
        "slower than the disks)"
    )
    print(
        f"(1 % known dirty with beta's daemon kept running, paused then let go: {paused_s:.2f} s, "
        f"{copy_s / paused_s:.1f}x faster than the copy; the figure above starts the daemon)"
    )
    print(
        f"(gamma's dense sync under writes, its disk replaced, took {gamma_s:.1f} s, "
        f"{len(during)} writes during it, {len(steady)} before with all three nodes up to "
        f"date; pacing at the end: {pacing})"
    )
    p_two, p_new = p99(steady_two), p99(during_new)
    print(
        f"(gamma joining for the first time: its sync took {new_s:.1f} s; write p99 during "
        f"it {p_new * 1e3:.2f} ms vs {p_two * 1e3:.2f} ms before, without gamma: "
        f"{p_new / p_two:.2f}x, which holds a third replica's own cost on this one disk)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
