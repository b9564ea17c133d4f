"""`replctl demo`: the product in one minute, on this one machine, as a user meets it.

Four real daemons on loopback (alpha primary; beta, gamma sync; delta async) with file
volumes. alpha exposes the resource as a block device, /dev/replengine/r0; an ext4 file
system is made on it, mounted, and files are written and fsynced while gamma and delta are
paused at different moments, so the secondaries lag differently. alpha is killed with SIGKILL;
gamma, not the most up-to-date one, is promoted: it pulls what it lacks from beta, raises the
epoch, ships each survivor exactly the records it lacks, and exposes the device. The same
file system is mounted on gamma and every fsynced file is read back; the timeline shows records
and bytes moved against the volume size, the promote time, and that every volume ends
identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from replengine.demo.localcluster import LocalResource
from replengine.errors import ReplError
from replengine.frontend import check_kind


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.2f}s] {msg}", flush=True)


def _sh(*argv: str | Path) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ReplError(
            f"{' '.join(map(str, argv))} failed: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


class Files:
    """Files an application wrote and fsynced: what the failover must keep."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sums: dict[str, str] = {}

    def write(self, root: Path, count: int) -> int:
        written = 0
        for _ in range(count):
            i = len(self.sums)
            d = root / f"dir{i % 8}"
            d.mkdir(exist_ok=True)
            data = self.rng.randbytes(self.rng.choice([4096, 16384, 65536]))
            with open(d / f"f{i:05d}", "wb") as f:
                f.write(data)
                f.flush()  # out of Python's buffer: fsync syncs only what the kernel has
                os.fsync(f.fileno())
            fd = os.open(d, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            self.sums[f"dir{i % 8}/f{i:05d}"] = hashlib.sha256(data).hexdigest()
            written += len(data)
        return written

    def check(self, root: Path) -> list[str]:
        bad = []
        for rel, want in self.sums.items():
            try:
                if hashlib.sha256((root / rel).read_bytes()).hexdigest() != want:
                    bad.append(rel)
            except OSError:
                bad.append(rel)
        return bad


def _ends(r: LocalResource, names: list[str]) -> dict[str, int]:
    return {n: r.status(n)["end_lsn"] for n in names}


def _umount(mnt: Path) -> None:
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "--lazy", str(mnt)], capture_output=True)


def run_demo(args: argparse.Namespace) -> int:
    tl = Timeline()
    try:
        check_kind("fuse-loop")
    except ReplError as exc:
        print(f"replctl demo needs the block device: {exc}", flush=True)
        return 1
    if os.geteuid() != 0:
        print("replctl demo needs root (FUSE mount, loop device, mount)", flush=True)
        return 1
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
        volume_size=vol_size,
        srl_size=max(128 << 20, args.files * 3 * 80 << 10),
        heartbeat_ms=300,
        device="fuse-loop",
        keys=True,  # CURVE between the nodes, as in production
    )
    files = Files(random.Random(42))
    n = args.files
    ok = False
    mounts: list[Path] = []
    try:
        r.create()
        tl.say(
            f"resource r0: 4 nodes on 127.0.0.1, {args.volume_mib} MiB file volumes in {workdir}"
        )
        r.up()
        r.promote("alpha")
        dev = r.status("alpha")["device"]
        tl.say(f"alpha is primary (epoch 1) with device {dev}; beta, gamma sync; delta async")
        # every inode table and the journal written now, not by ext4lazyinit later
        _sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
        mnt = workdir / "mnt-alpha"
        mnt.mkdir()
        _sh("mount", dev, mnt)
        mounts.append(mnt)
        tl.say(f"mkfs.ext4 {dev}; mounted on {mnt}")
        files.write(mnt, n)
        r.wait_synced()
        tl.say(
            f"wrote and fsynced {n} files; all four nodes at LSN {r.status('alpha')['end_lsn'] - 1}"
        )
        r.freeze("delta")
        files.write(mnt, n // 2)
        r.freeze("gamma")
        tl.say("paused delta, wrote more; paused gamma (sync: degraded after 3 heartbeats)")
        files.write(mnt, n // 2)
        ends = _ends(r, ["alpha", "beta"])
        tl.say(
            f"{len(files.sums)} files fsynced; primary alpha at end LSN {ends['alpha']}, "
            f"beta at {ends['beta']}"
        )
        r.kill("alpha")
        tl.say("alpha KILLED with SIGKILL (its device now fails every I/O)")
        _umount(mnt)
        mounts.remove(mnt)
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
            f"{lp['epoch']} starts at LSN {lp['first_lsn']}; device {st['device']}"
        )
        mnt = workdir / "mnt-gamma"
        mnt.mkdir()
        _sh("mount", st["device"], mnt)
        mounts.append(mnt)
        bad = files.check(mnt)
        tl.say(
            f"mounted on gamma (journal replayed): {len(files.sums) - len(bad)} of "
            f"{len(files.sums)} fsynced files read back intact"
        )
        _umount(mnt)
        mounts.remove(mnt)
        fsck = subprocess.run(["e2fsck", "-fn", st["device"]], capture_output=True, text=True)
        tl.say(f"e2fsck -fn: {'clean' if fsck.returncode == 0 else 'ERRORS'}")
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
            f"{2 * vol_size} (2 volumes): {(shipped + lp['pulled_bytes']) / (2 * vol_size):.4%}; "
            f"fsynced files lost: {len(bad)}"
        )
        ok = same and not bad and fsck.returncode == 0
        if args.keep:
            print(f"\nleft running (--keep): replctl status --config {r.config} --node gamma")
        return 0 if ok else 1
    finally:
        for m in mounts:
            _umount(m)
        if not args.keep:
            r.stop_all()
            if not args.dir:
                shutil.rmtree(workdir, ignore_errors=True)
        elif not ok:
            print(f"logs: {r.run_dir}", file=os.sys.stderr)
