#!/usr/bin/env python3
"""Run every benchmark and write docs/benchmarks.md: the machine, each goal PASS/MISS with its
figures, each benchmark's own output as printed (the ratios side by side), and plots where a
picture says more (promote time against volume size beside the full copy's line; the
distribution of 4 KiB write latency with and without sync secondaries).

Run: ``bash scripts/bench-report.sh [--quick]`` (installs matplotlib into .venv, runs this as
root). Each benchmark runs on its own, one after the other, on this machine's one disk; the
load average before each is recorded, since a busy machine makes every figure worse. A
benchmark that cannot run here (fio missing, not root) is reported as such, not hidden.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replengine import __version__  # noqa: E402


@dataclass
class Bench:
    name: str
    script: str
    what: str
    takes_json: bool = False
    needs: list[str] = field(default_factory=list)  # commands that must exist
    root: bool = False


BENCHES = [
    Bench("srl", "srl.py", "SRL appends against the raw disk (group commit)"),
    Bench(
        "replication",
        "replication.py",
        "replicated writes through the client API against the raw disk",
        takes_json=True,
    ),
    Bench(
        "failover",
        "failover.py",
        "log-diff failover against the volume size, and against a full copy",
        takes_json=True,
    ),
    Bench(
        "catchup",
        "catchup.py",
        "log-diff catch-up rate and every daemon's memory while it runs",
        takes_json=True,
    ),
    Bench("resync", "resync.py", "full sync against a plain copy; write p99 during a sync"),
    Bench(
        "device",
        "device.py",
        "fio on /dev/replengine/<resource> against a plain loop device",
        needs=["fio", "losetup"],
        root=True,
    ),
]


@dataclass
class Run:
    bench: Bench
    output: str = ""
    seconds: float = 0.0
    code: int | None = None
    skipped: str = ""
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    data: dict | None = None

    def goals(self) -> list[tuple[str, str]]:
        """(PASS|MISS, the line) for every goal line the benchmark printed."""
        out = []
        for line in self.output.splitlines():
            m = re.search(r"\b(PASS|MISS)\b", line)
            if m:
                text = re.sub(r"\s+", " ", line.replace(m.group(1), "", 1)).strip(" :")
                out.append((m.group(1), text))
        return out


def machine() -> list[str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1 << 20)
    osname = "unknown"
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            osname = line.split("=", 1)[1].strip('"')
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {mem} GiB",
        f"- OS: {osname}, kernel {platform.release()}; Python {platform.python_version()}",
        f"- disk: {disk_of('/var/tmp')}",
        f"- replengine {__version__}, commit {commit()}",
    ]


def disk_of(path: str) -> str:
    try:
        src = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--target", path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if not src:
        return "unknown"
    dev = src[0]
    rota = ""
    try:
        rota = subprocess.run(
            ["lsblk", "-ndo", "ROTA,MODEL", dev], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    kind = "" if not rota else (" (rotational)" if rota.startswith("1") else " (not rotational)")
    fs = src[1] if len(src) > 1 else "?"
    return f"{dev} ({fs}){kind}; every node's files and every reference copy on it"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            # the report's own outputs, rewritten by this very run, do not count
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!docs/benchmarks.md",
                ":!docs/bench-*.png",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_bench(b: Bench, quick: bool, workdir: str, tmp: Path) -> Run:
    run = Run(b, load_before=os.getloadavg())
    missing = [c for c in b.needs if shutil.which(c) is None]
    if missing:
        run.skipped = f"{', '.join(missing)} not installed"
        return run
    if b.root and os.geteuid() != 0:
        run.skipped = "needs root"
        return run
    cmd = [sys.executable, str(ROOT / "bench" / b.script), "--dir", workdir]
    if quick:
        cmd.append("--quick")
    jpath = tmp / f"{b.name}.json"
    if b.takes_json:
        cmd += ["--json", str(jpath)]
    print(f"== {b.name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run.seconds = time.monotonic() - t0
    run.code = proc.returncode
    run.output = proc.stdout
    print(proc.stdout, flush=True)
    if b.takes_json and jpath.exists():
        run.data = json.loads(jpath.read_text())
    return run


def plot_failover(run: Run, out: Path) -> bool:
    """Promote time and promote + catch-up against volume size, with the full copy's line."""
    if not run.data:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(run.data["rows"], key=lambda r: r["size"])
    gib = [r["size"] / (1 << 30) for r in rows]
    copies = {int(k): v for k, v in run.data["copies"].items()}
    # the copy's cost per GiB, from the biggest measured copy: a straight line through zero
    measured = [(s, c["seconds"]) for s, c in copies.items() if c["how"] == "measured"]
    per_gib = max(measured)[1] / (max(measured)[0] / (1 << 30)) if measured else None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(gib, [r["promote_s"] for r in rows], "o-", label="promote (service back)")
    ax.plot(
        gib,
        [r["promote_s"] + r["catchup_s"] for r in rows],
        "s-",
        label="promote + laggard's catch-up",
    )
    if per_gib:
        ax.plot(
            gib, [g * per_gib for g in gib], "--", color="grey", label="full copy (measured rate)"
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("volume size (GiB)")
    ax.set_ylabel("seconds")
    ax.set_title(f"failover with {run.data['lag_records']} records of lag")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def plot_latency(run: Run, out: Path) -> bool:
    """Distribution (CDF) of 4 KiB QD1 write latency: raw disk, alone, with sync peers."""
    if not run.data:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"raw disk (pwrite + fdatasync)": run.data["raw"]["rand-4K-qd1"]["latency_s"]}
    for label, cfg in run.data["configs"].items():
        series[label] = cfg["workloads"]["rand-4K-qd1"]["latency_s"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, lat in series.items():
        xs = sorted(x * 1000 for x in lat)
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.plot(xs, ys, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("write latency (ms), 4 KiB at queue depth 1")
    ax.set_ylabel("fraction of writes completed")
    ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def write_report(runs: list[Run], quick: bool, path: Path, plots: dict[str, str]) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `bench/report.py{' --quick' if quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; every figure below comes from "
        "that one run, on this machine:",
        "",
        *machine(),
        "",
        "Each benchmark prints its figures beside their reference (the raw disk, a plain copy, "
        "a plain loop device) measured in the same run, as ratios. "
        + (
            "This was a `--quick` run: smaller volumes and fewer writes than the goals assume."
            if quick
            else "Full runs."
        ),
        "",
        "## Goals",
        "",
        "| benchmark | result | goal and figures |",
        "|---|---|---|",
    ]
    for run in runs:
        if run.skipped:
            lines.append(f"| {run.bench.name} | not run | {run.skipped} |")
            continue
        goals = run.goals()
        if run.code and not goals:
            lines.append(f"| {run.bench.name} | FAILED | exit status {run.code} (output below) |")
        elif run.code:
            lines.append(f"| {run.bench.name} | - | exit status {run.code}: a goal missed |")
        for verdict, text in goals:
            lines.append(f"| {run.bench.name} | {verdict} | {text.replace('|', '/')} |")
        if not goals and not run.code:
            lines.append(f"| {run.bench.name} | - | no goal line printed (figures below) |")
    for run in runs:
        b = run.bench
        lines += ["", f"## {b.name}: {b.what}", ""]
        if run.skipped:
            lines.append(f"Not run: {run.skipped}.")
            continue
        la = ", ".join(f"{x:.2f}" for x in run.load_before)
        lines.append(
            f"`python3 bench/{b.script}{' --quick' if quick else ''}`: {run.seconds:.0f} s, "
            f"exit status {run.code}; load average before: {la}."
        )
        if b.name in plots:
            lines += ["", f"![{b.name}]({plots[b.name]})"]
        lines += ["", "```", run.output.rstrip(), "```"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every benchmark's --quick mode")
    ap.add_argument("--dir", default="/var/tmp", help="where the benchmarks put their files")
    ap.add_argument("--only", nargs="*", help="run only these (default: all)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args(argv)
    names = {b.name for b in BENCHES}
    bad = [n for n in args.only or [] if n not in names]
    if bad:
        ap.error(f"unknown benchmark {', '.join(bad)} (known: {', '.join(sorted(names))})")
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        for b in chosen:
            runs.append(run_bench(b, args.quick, args.dir, Path(tmp)))
    for run in runs:
        png = out.parent / f"bench-{run.bench.name}.png"
        drawn = False
        if run.bench.name == "failover":
            drawn = plot_failover(run, png)
        elif run.bench.name == "replication":
            drawn = plot_latency(run, png)
        if drawn:
            plots[run.bench.name] = png.name
    write_report(runs, args.quick, out, plots)
    print(f"wrote {out}" + (f" and {', '.join(plots.values())}" if plots else ""))
    # a benchmark that printed no goal and failed is an error; a missed goal is a figure
    return 1 if any(r.code and not r.goals() for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
