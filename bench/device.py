#!/usr/bin/env python3
"""Block device writes with fio: the replicated device against a plain loop device.

Throughput, IOPS and latency of both, side by side, over files on the one same disk.

Run as root (FUSE mount, losetup): ``python3 bench/device.py [--quick] [--dir DIR]
[--runtime S] [--volume-mib N] [--srl-mib N]``; needs fio (``apt-get install fio``). Data under
a temp dir in /var/tmp by default (a real disk), removed afterwards; full run ~2 min, --quick
~35 s.

Devices, same size, both loop devices with direct I/O and 4096-byte sectors:
  plain       ``losetup --direct-io=on --sector-size 4096`` over a plain file
  replicated  the device of a 3-node resource on this machine (alpha primary, beta sync,
              gamma async; device = "fuse-loop": alpha's daemon serves the volume as a FUSE
              file and the loop device sits over that file); every node's volume and SRL are
              files in the same work dir, so all three nodes share the plain file's disk
Jobs, fio with direct=1 ioengine=libaio, time based, one at a time, plain then replicated:
  seq-1M-qd4        sequential write, bs=1M, iodepth=4 (a few in flight, as a streaming
                    writer or a file system's writeback keeps; qd1 would time one round trip)
  rand-4K-qd1       random write 4 KiB, iodepth=1
  rand-4K-qd32      random write 4 KiB, iodepth=32
  rand-4K-qd1-sync  random write 4 KiB, iodepth=1, fdatasync=1 (an fdatasync after each write)
Before the jobs both devices are written end to end once (not measured), so that no job
writes into the holes of a sparse file: the file system's block allocation would be measured
otherwise, differently for the plain file and the daemons' files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from replengine.demo.localcluster import LocalResource  # noqa: E402
from replengine.errors import DeviceError, ReplError  # noqa: E402
from replengine.frontend import check_kind  # noqa: E402

KIB, MIB = 1 << 10, 1 << 20
NODES = {"alpha": "sync", "beta": "sync", "gamma": "async"}
PRIMARY = "alpha"
#: how long the async secondary may take to catch up after a job before it counts as a hang
SETTLE_TIMEOUT_S = 600

HEADER = """\
replengine block device benchmark ({mode}: {runtime:g} s per job, {volume} MiB devices, \
{srl} MiB SRLs)
  plain       {plain}: losetup --direct-io=on --sector-size 4096 over a file in {where}
  replicated  {device}: alpha primary, beta sync, gamma async, device = "fuse-loop";
              every volume and SRL is a file in {where}: one disk for everything
  fio         direct=1 ioengine=libaio, time based, plain then replicated for each job;
              both devices written end to end first; the resource in sync before each job
  ratio       = replicated MiB/s / plain MiB/s (the IOPS ratio too: same block size)
  clat        = fio completion latency of a write, ms (qd1 jobs). For rand-4K-qd1-sync the
              line below gives fio's fdatasync latency, and "cycle ms" = 1000 / IOPS, the
              mean time of one write + fdatasync (fio's libaio engine starts the fdatasync
              while the write is in flight, so the two latencies overlap; do not add them)
  CPU %       = CPU seconds per second of the replicated job (100 = one core busy, out of
              {cores}): each daemon (all threads), fio, and all the rest of the machine
              (the kernel's loop, FUSE and block work, and any other process running here)
  goals: seq-1M-qd4 ratio >= 0.25; rand-4K-qd1-sync ratio >= 0.4"""


@dataclass(frozen=True)
class Job:
    """One fio workload; the same on both devices."""

    name: str
    rw: str
    bs: int
    iodepth: int
    fdatasync: bool = False

    @property
    def qd1(self) -> bool:
        return self.iodepth == 1


JOBS = [
    Job("seq-1M-qd4", "write", MIB, 4),
    Job("rand-4K-qd1", "randwrite", 4 * KIB, 1),
    Job("rand-4K-qd32", "randwrite", 4 * KIB, 32),
    Job("rand-4K-qd1-sync", "randwrite", 4 * KIB, 1, fdatasync=True),
]
#: the end-to-end fill before the measured jobs
FILL = Job("fill", "write", MIB, 4)


@dataclass
class FioResult:
    mib_s: float
    iops: float
    #: completion latency of the writes, ms (0 when fio reported none)
    p50_ms: float
    p99_ms: float
    #: fio's fdatasync latency, ms, for jobs with fdatasync=1
    sync_p50_ms: float | None
    sync_p99_ms: float | None
    #: fio's own CPU, % of one core
    fio_cpu: float
    #: bytes fio wrote
    io_bytes: int

    @property
    def cycle_ms(self) -> float:
        """Mean time per write (with its fdatasync, if any): what a qd1 writer waits."""
        return 1000 / self.iops if self.iops else float("nan")


@dataclass
class Usage:
    """What one fio run cost besides its own figures, per second of the run: CPU (% of one
    core) of each daemon, of the rest of the machine; the disk under the work dir."""

    daemons: dict[str, float]
    #: every CPU the machine used but the daemons' and fio's: the kernel's loop, FUSE and
    #: block workers, and whatever else runs here
    other: float
    #: the disk under the work dir: MiB/s written, flushes/s, % of the time busy (None when
    #: the work dir has no block device of its own, a tmpfs)
    disk_mib_s: float | None
    disk_flush_s: float | None
    disk_util: float | None
    #: bytes the disk wrote from the start until settled() (the applier may lag the job)
    disk_bytes: int | None = None


class BenchError(Exception):
    """A failure that ends the benchmark with one line (and exit code 1)."""


def fatal_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so the `finally` clauses remove the devices, the
    daemons and the files when the benchmark is killed politely (timeout(1), a CI runner)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# ---- fio ----------------------------------------------------------------------------------


def fio_argv(dev: str, job: Job, runtime: float | None, out: Path) -> list[str]:
    """Arguments of one fio run; without a runtime the job writes the whole device once."""
    argv = [
        "fio",
        f"--name={job.name}",
        f"--filename={dev}",
        "--direct=1",
        "--ioengine=libaio",
        f"--rw={job.rw}",
        f"--bs={job.bs}",
        f"--iodepth={job.iodepth}",
        # fresh random offsets over the whole device on every pass; no map to keep
        "--norandommap",
        "--randrepeat=0",
        "--eta=never",
        "--output-format=json",
        f"--output={out}",
    ]
    if job.fdatasync:
        argv.append("--fdatasync=1")
    if runtime is not None:
        argv += ["--time_based", f"--runtime={runtime:g}"]
    return argv


def run_fio(dev: str, job: Job, runtime: float | None, out: Path) -> tuple[dict, float]:
    """Run fio to the end; its JSON job report and the wall time. fio is killed (never left
    holding the device open) when we are interrupted."""
    argv = fio_argv(dev, job, runtime, out)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    elapsed = time.monotonic() - t0
    text = out.read_text() if out.exists() else ""
    if proc.returncode != 0 or "{" not in text:
        msg = (stderr or stdout or text).strip().splitlines()
        raise BenchError(
            f"fio {job.name} on {dev} failed ({proc.returncode}): {msg[-1] if msg else 'no output'}"
        )
    doc = json.loads(text[text.index("{") :])  # fio may print a note before the JSON
    rep = doc["jobs"][0]
    if rep.get("error"):
        raise BenchError(
            f"fio {job.name} on {dev}: error {rep['error']} ({os.strerror(rep['error'])})"
        )
    return rep, elapsed


def percentile_ms(lat: dict, q: str) -> float:
    return float(lat.get("percentile", {}).get(q, 0)) / 1e6


def parse(rep: dict) -> FioResult:
    """The figures we print from fio's JSON job report."""
    w = rep["write"]
    clat = w.get("clat_ns", {})
    sync = rep.get("sync", {}).get("lat_ns") or {}
    has_sync = bool(sync.get("N"))
    return FioResult(
        mib_s=w["bw_bytes"] / MIB,
        iops=float(w["iops"]),
        p50_ms=percentile_ms(clat, "50.000000"),
        p99_ms=percentile_ms(clat, "99.000000"),
        sync_p50_ms=percentile_ms(sync, "50.000000") if has_sync else None,
        sync_p99_ms=percentile_ms(sync, "99.000000") if has_sync else None,
        fio_cpu=float(rep.get("usr_cpu", 0)) + float(rep.get("sys_cpu", 0)),
        io_bytes=int(w["io_bytes"]),
    )


# ---- CPU and disk -------------------------------------------------------------------------


def disk_stat_file(directory: Path) -> tuple[str, Path] | None:
    """The block device ``directory`` lives on and its /sys stat file; None on a file system
    with no device of its own (tmpfs, overlay)."""
    st = os.stat(directory)
    sys_dev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if os.major(st.st_dev) == 0 or not (sys_dev / "stat").exists():
        return None
    return f"/dev/{sys_dev.resolve().name}", sys_dev / "stat"


class Meter:
    """CPU seconds of each daemon (psutil cpu_times, all its threads) and of the whole host,
    and the disk's counters, between start() and stop(): what replication costs in CPU, and
    whether the two cores or the disk are the limit."""

    def __init__(self, pids: dict[str, int], disk_stat: Path | None) -> None:
        self.procs = {n: psutil.Process(p) for n, p in pids.items()}
        self.disk_stat = disk_stat
        self.t0 = 0.0
        self.before: dict[str, float] = {}
        self.host_before = 0.0
        self.disk_before: list[int] = []

    @staticmethod
    def _host_busy() -> float:
        """Busy seconds of all cores (Linux counts guest time in user time too)."""
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
        return sum(t) - idle - guest

    def _times(self) -> dict[str, float]:
        out = {}
        for n, p in self.procs.items():
            try:
                t = p.cpu_times()
                out[n] = t.user + t.system
            except psutil.Error:
                out[n] = float("nan")  # the daemon died: the job fails and says so
        return out

    def _disk(self) -> list[int]:
        """/sys/block/<dev>/stat: [4] writes, [6] sectors written, [9] ms busy, [15] flushes."""
        if self.disk_stat is None:
            return []
        return [int(x) for x in self.disk_stat.read_text().split()]

    def start(self) -> None:
        self.host_before = self._host_busy()
        self.before = self._times()
        self.disk_before = self._disk()
        self.t0 = time.monotonic()

    def stop(self, fio_cpu: float) -> Usage:
        elapsed = time.monotonic() - self.t0
        after = self._times()
        host = 100 * (self._host_busy() - self.host_before) / elapsed
        disk = self._disk()
        daemons = {n: 100 * (after[n] - self.before[n]) / elapsed for n in self.procs}
        d = [x - y for x, y in zip(disk, self.disk_before, strict=True)]
        return Usage(
            daemons,
            max(0.0, host - sum(daemons.values()) - fio_cpu),
            d[6] * 512 / MIB / elapsed if d else None,
            d[15] / elapsed if len(d) > 15 else None,
            min(100.0, d[9] / 10 / elapsed) if d else None,
        )

    def settled(self, use: Usage) -> Usage:
        """Count the disk's writes up to now (the nodes in sync) into ``use``."""
        d = self._disk()
        if d:
            use.disk_bytes = (d[6] - self.disk_before[6]) * 512
        return use


# ---- the two devices ----------------------------------------------------------------------


def plain_loop(file: Path, size: int) -> str:
    """A loop device set up as the fuse-loop frontend sets up its own (direct I/O, 4096-byte
    sectors) over a plain file of ``size`` bytes: the replicated device minus replication."""
    with open(file, "wb") as f:
        f.truncate(size)
    proc = subprocess.run(
        [
            "losetup",
            "--find",
            "--show",
            "--direct-io=on",
            "--sector-size",
            "4096",
            str(file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"losetup over {file} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def detach(dev: str) -> None:
    proc = subprocess.run(
        ["losetup", "--detach", dev], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        print(f"warning: losetup --detach {dev}: {proc.stderr.strip()}", file=sys.stderr)


def resource(workdir: Path, volume: int, srl: int) -> LocalResource:
    """The 3-node resource, not yet created: made before anything starts so that whatever
    starts is stopped again, even when the start itself fails half way."""
    return LocalResource(
        workdir,
        nodes=dict(NODES),
        name=f"devbench-{os.getpid()}",  # never the name of someone else's resource here
        volume_size=volume,
        srl_size=srl,
        device="fuse-loop",
        on_sync_loss="degrade",
        srl_full="stall",
    )


def start(r: LocalResource) -> str:
    """Create and start every node, promote alpha; the path of its device."""
    r.create()
    r.up()
    r.promote(PRIMARY)
    st = r.status(PRIMARY)
    dev = st.get("device")
    if not dev:
        raise BenchError(f"{PRIMARY} promoted but has no device: {st.get('device_error')}")
    return dev


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# ---- report -------------------------------------------------------------------------------


@dataclass
class Row:
    """One job on both devices."""

    job: Job
    plain: FioResult
    plain_use: Usage
    repl: FioResult
    repl_use: Usage

    @property
    def ratio(self) -> float:
        return self.repl.mib_s / self.plain.mib_s if self.plain.mib_s else float("nan")


def lat(x: float | None, show: bool = True) -> str:
    return f"{x:8.3f}" if show and x is not None else f"{'-':>8}"


def num(x: float | None, fmt: str) -> str:
    return format(x, fmt) if x is not None else f"{'-':>{len(format(0.0, fmt))}}"


def main_table(rows: list[Row]) -> list[str]:
    """One row per job: plain, replicated, ratio, CPU during the replicated run."""
    names = list(NODES)
    side = f"{'MiB/s':>8} {'IOPS':>8} {'clat p50':>8} {'clat p99':>8}"
    cpu = " ".join(f"{n:>5}" for n in names) + f" {'fio':>5} {'other':>5}"
    w = len(side)
    lines = [
        f"{'':<20} | {'plain loop':^{w}} | {'replicated':^{w}} | {'':>6} |"
        f" {'CPU % (replicated)':^{len(cpu)}}",
        f"{'job':<20} | {side} | {side} | {'ratio':>6} | {cpu}",
        "-" * (20 + 3 + w + 3 + w + 3 + 6 + 3 + len(cpu)),
    ]
    for row in rows:
        p, r, u, qd1 = row.plain, row.repl, row.repl_use, row.job.qd1
        cells = " ".join(f"{u.daemons[n]:5.0f}" for n in names)
        lines.append(
            f"{row.job.name:<20} | {p.mib_s:8.1f} {p.iops:8.0f} {lat(p.p50_ms, qd1)} "
            f"{lat(p.p99_ms, qd1)} | {r.mib_s:8.1f} {r.iops:8.0f} {lat(r.p50_ms, qd1)} "
            f"{lat(r.p99_ms, qd1)} | {row.ratio:6.3f} | {cells} {r.fio_cpu:5.0f} {u.other:5.0f}"
        )
        if row.job.fdatasync:
            lines.append(
                f"{'  its fdatasync':<20} | {'cycle ms':>8} {p.cycle_ms:8.3f} "
                f"{lat(p.sync_p50_ms)} {lat(p.sync_p99_ms)} | {'cycle ms':>8} "
                f"{r.cycle_ms:8.3f} {lat(r.sync_p50_ms)} {lat(r.sync_p99_ms)} | {'':>6} |"
            )
    return lines


def disk_table(rows: list[Row], disk: str) -> list[str]:
    """What each job made the one shared disk do: the write amplification and the flushes
    are where replication's cost shows when the CPU is not the limit."""
    side = f"{'MiB/s':>8} {'x fio':>6} {'flush/s':>8} {'busy%':>6}"
    w = len(side)
    lines = [
        f"disk {disk} during each job (x fio = bytes the disk wrote from the job's start until"
        " the nodes were in sync again / bytes fio wrote):",
        f"{'':<20} | {'plain loop':^{w}} | {'replicated':^{w}}",
        f"{'job':<20} | {side} | {side}",
    ]
    for row in rows:
        cells = []
        for res, use in ((row.plain, row.plain_use), (row.repl, row.repl_use)):
            amp = use.disk_bytes / res.io_bytes if use.disk_bytes is not None else None
            cells.append(
                f"{num(use.disk_mib_s, '8.1f')} {num(amp, '6.2f')} "
                f"{num(use.disk_flush_s, '8.0f')} {num(use.disk_util, '6.0f')}"
            )
        lines.append(f"{row.job.name:<20} | {cells[0]} | {cells[1]}")
    return lines


def goals(rows: list[Row]) -> list[str]:
    by_name = {row.job.name: row for row in rows}
    out = []
    for name, goal in (("seq-1M-qd4", 0.25), ("rand-4K-qd1-sync", 0.4)):
        row = by_name[name]
        out.append(
            f"  {'PASS' if row.ratio >= goal else 'MISS'}  {name + ' ratio':<26} "
            f"{row.ratio:.3f} (goal >= {goal}: {row.repl.mib_s:.1f} vs "
            f"{row.plain.mib_s:.1f} MiB/s)"
        )
    return out


# ---- main ---------------------------------------------------------------------------------


def preflight() -> None:
    """Everything missing, in one line, before anything is created."""
    if shutil.which("fio") is None:
        raise BenchError("fio is not installed: apt-get install fio")
    if os.geteuid() != 0:
        raise BenchError("run as root: the benchmark mounts FUSE and sets up loop devices")
    try:
        check_kind("fuse-loop")
    except DeviceError as exc:
        raise BenchError(str(exc)) from None


def bench(base: Path, runtime: float, volume: int, srl: int, mode: str) -> int:
    """Set up both devices, fill them, run every job on each, print the report. Whatever was
    set up is torn down on the way out, whatever happened."""
    plain_dev: str | None = None
    res: LocalResource | None = None
    t_start = time.monotonic()
    try:
        plain_dev = plain_loop(base / "plain.img", volume)
        res = resource(base / "resource", volume, srl)
        repl_dev = start(res)
        pids = {n: res.pid(n) for n in NODES}
        if any(p is None for p in pids.values()):
            raise BenchError(f"a daemon has no pid file: {pids}")
        print(
            HEADER.format(
                mode=mode,
                runtime=runtime,
                volume=volume // MIB,
                srl=srl // MIB,
                where=base,
                plain=plain_dev,
                device=repl_dev,
                cores=100 * (os.cpu_count() or 1),
            ),
            flush=True,
        )
        out = base / "fio.json"
        disk = disk_stat_file(base)
        for dev, label in ((plain_dev, "plain"), (repl_dev, "replicated")):
            _, took = run_fio(dev, FILL, None, out)
            progress(f"{label}: filled {volume // MIB} MiB in {took:.1f} s")
        t0 = time.monotonic()
        res.wait_synced(timeout=SETTLE_TIMEOUT_S)
        progress(f"replicated: nodes in sync {time.monotonic() - t0:.1f} s after the fill")

        meter = Meter(pids, disk[1] if disk else None)  # type: ignore[arg-type]
        rows: list[Row] = []
        for job in JOBS:
            meter.start()
            p = parse(run_fio(plain_dev, job, runtime, out)[0])
            p_use = meter.settled(meter.stop(p.fio_cpu))
            meter.start()
            r = parse(run_fio(repl_dev, job, runtime, out)[0])
            r_use = meter.stop(r.fio_cpu)
            # the next job starts from a quiet resource: the async secondary caught up
            t0 = time.monotonic()
            res.wait_synced(timeout=SETTLE_TIMEOUT_S)
            meter.settled(r_use)
            progress(
                f"{job.name}: plain {p.mib_s:.1f} MiB/s, replicated {r.mib_s:.1f} MiB/s; "
                f"nodes in sync {time.monotonic() - t0:.1f} s after it"
            )
            rows.append(Row(job, p, p_use, r, r_use))

        print()
        print("\n".join(main_table(rows)))
        print()
        if disk:
            print("\n".join(disk_table(rows, disk[0])))
        else:
            print(f"(no block device under {base}: no disk figures)")
        print("\ngoals:")
        print("\n".join(goals(rows)))
        print(f"\n(wall time {time.monotonic() - t_start:.1f} s)", flush=True)
        res.down()  # the clean way out: the daemon withdraws its device itself
        return 0
    finally:
        if res is not None:
            res.stop_all()
        if plain_dev is not None:
            detach(plain_dev)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="3 s per job, 256 MiB devices (~35 s in all)"
    )
    ap.add_argument("--dir", default="/var/tmp", help="where to put the files (a real disk)")
    ap.add_argument("--runtime", type=float, help="seconds per fio job (default 10, --quick 3)")
    ap.add_argument(
        "--volume-mib", type=int, help="size of both devices (default 1024, --quick 256)"
    )
    ap.add_argument(
        "--srl-mib", type=int, help="size of each node's SRL (default: the volume's size)"
    )
    args = ap.parse_args(argv)
    runtime = args.runtime or (3.0 if args.quick else 10.0)
    volume = (args.volume_mib or (256 if args.quick else 1024)) * MIB
    srl = (args.srl_mib or volume // MIB) * MIB
    if runtime <= 0 or volume < 16 * MIB or srl < 2 * MIB:
        ap.error("--runtime must be > 0, --volume-mib >= 16, --srl-mib >= 2")
    try:
        preflight()
    except BenchError as exc:
        print(f"bench/device.py: {exc}", file=sys.stderr)
        return 2
    fatal_on_sigterm()
    base = Path(tempfile.mkdtemp(prefix="devbench-", dir=args.dir))
    try:
        return bench(base, runtime, volume, srl, "quick" if args.quick else "full")
    except (BenchError, ReplError) as exc:
        print(f"bench/device.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/device.py: interrupted; devices, daemons and files removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
