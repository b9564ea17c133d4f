"""`replctl demo`: the product in one minute, on this one machine.

Four real daemons on loopback (alpha primary; beta, gamma sync; delta async) with file
volumes; a workload; gamma and delta paused at different moments so the secondaries lag
differently; the primary killed with SIGKILL; gamma — not the most up-to-date one — promoted.
It pulls what it lacks from beta, raises the epoch, and ships each survivor exactly the records
it lacks. The timeline shows records and bytes moved against the volume size, the promote
time, and that every volume ends identical.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

from replengine.demo.localcluster import LocalResource

BLOCK = 4096


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.2f}s] {msg}", flush=True)


def _write(vol, n: int, vol_size: int, rng: random.Random) -> None:
    blocks = vol_size // BLOCK
    inflight = []
    for _ in range(n):
        inflight.append(vol.submit(rng.randrange(blocks) * BLOCK, rng.randbytes(BLOCK)))
        if len(inflight) >= 16:
            vol.wait(inflight.pop(0))
    for req in inflight:
        vol.wait(req)


def _ends(r: LocalResource, names: list[str]) -> dict[str, int]:
    return {n: r.status(n)["end_lsn"] for n in names}


def run_demo(args: argparse.Namespace) -> int:
    tl = Timeline()
    workdir = (
        Path(args.dir)
        if args.dir
        else Path(tempfile.mkdtemp(prefix="replengine-demo-", dir="/var/tmp"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    vol_size = args.volume_mib << 20
    r = LocalResource(
        workdir,
        nodes={"alpha": "sync", "beta": "sync", "gamma": "sync", "delta": "async"},
        # a 4 KiB record takes 8 KiB of SRL; room for 3x the workload
        volume_size=vol_size,
        srl_size=max(64 << 20, args.records * 3 * 8192),
        heartbeat_ms=300,
    )
    rng = random.Random(42)
    n = args.records
    ok = False
    try:
        r.create()
        tl.say(
            f"resource r0: 4 nodes on 127.0.0.1, {args.volume_mib} MiB file volumes in {workdir}"
        )
        r.up()
        r.promote("alpha")
        tl.say("alpha is primary (epoch 1); beta, gamma sync; delta async")
        vol = r.connect("alpha")
        _write(vol, n, vol_size, rng)
        r.wait_synced()
        tl.say(f"wrote {n} x 4 KiB; all four nodes at LSN {r.status('alpha')['end_lsn'] - 1}")
        r.freeze("delta")
        _write(vol, n // 2, vol_size, rng)
        r.freeze("gamma")
        tl.say("paused delta, wrote more; paused gamma (sync: degraded after 3 heartbeats)")
        _write(vol, n // 2, vol_size, rng)
        vol.close()
        ends = _ends(r, ["alpha", "beta"])
        tl.say(f"primary alpha at end LSN {ends['alpha']}, beta at {ends['beta']}")
        r.kill("alpha")
        tl.say("alpha KILLED with SIGKILL")
        r.signal("gamma", signal.SIGCONT)
        r.signal("delta", signal.SIGCONT)
        # resumed nodes first drain what was already in their sockets: wait until the ends
        # stop moving, so the figures below are what the promotion really finds
        last: dict[str, dict[str, int]] = {"ends": {}}

        def settled() -> dict[str, int] | None:
            now = _ends(r, ["beta", "gamma", "delta"])
            same = now == last["ends"]
            last["ends"] = now
            if not same:
                time.sleep(0.3)
            return now if same else None

        before = r.wait_for(settled, 30, "the survivors' end LSNs to settle")
        best = max(before, key=lambda k: before[k])
        for name, end in before.items():
            tl.say(
                f"  {name:5s} end LSN {end:6d}  lacks {before[best] - end:5d} records"
                f"{'  <- most up to date' if name == best else ''}"
            )
        t = time.monotonic()
        r.promote("gamma")
        promote_s = time.monotonic() - t
        st = r.status("gamma")
        lp = st["last_promotion"]
        tl.say(
            f"promoted gamma in {promote_s:.2f}s: pulled {lp['pulled_records']} records "
            f"({lp['pulled_bytes']} bytes) from {lp['pulled_from'] or 'nobody'}, epoch "
            f"{lp['epoch']} starts at LSN {lp['first_lsn']}"
        )
        r.wait_synced(["beta", "gamma", "delta"])
        st = r.status("gamma")
        tl.say("survivors in sync; log-diff shipped by gamma:")
        for name in ("beta", "delta"):
            p = st["peers"][name]
            tl.say(
                f"  to {name:5s}: {p['shipped_records']:5d} records, {p['shipped_bytes']:9d} "
                f"bytes = {p['shipped_bytes'] / vol_size:.4%} of the {vol_size} byte volume"
            )
        r.up("alpha")
        r.wait_synced()
        tl.say("alpha restarted: rejoined as a secondary of gamma and caught up")
        sums = r.checksums()
        same = len(set(sums.values())) == 1
        tl.say(
            f"verify: volume checksums {'IDENTICAL' if same else 'DIFFER'} on "
            f"{', '.join(sums)} ({next(iter(sums.values()))[:16]}...)"
        )
        shipped = sum(st["peers"][n]["shipped_bytes"] for n in ("beta", "delta"))
        print()
        print(
            f"figures: promote {promote_s:.2f}s; records pulled {lp['pulled_records']}; "
            f"bytes shipped to survivors {shipped + lp['pulled_bytes']} vs a full copy of "
            f"{2 * vol_size} (2 volumes): {(shipped + lp['pulled_bytes']) / (2 * vol_size):.4%}"
        )
        ok = same
        if args.keep:
            print(f"\nleft running (--keep): replctl status --config {r.config} --node gamma")
        return 0 if ok else 1
    finally:
        if not args.keep:
            r.stop_all()
            if not args.dir:
                shutil.rmtree(workdir, ignore_errors=True)
        elif not ok:
            print(f"logs: {r.run_dir}", file=os.sys.stderr)
