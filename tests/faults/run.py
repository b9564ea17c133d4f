"""Long runs of the fault schedule: per-round lines, then a summary.

    python -m tests.faults.run --rounds 30 --seed 1 --seeds 10 --mode both

runs, for each mode and each of the seeds 1..10, 30 rounds on one resource (rebuilt after a
violation and every --rebuild-every rounds): 600 rounds. `--net netns` puts every node in its
own network namespace and adds partitions, packet loss, delay, a filling SRL and a failing
disk to the faults (`--net both`: each seed and mode in both); `--json FILE` writes the
summary with every failed round's full report. Prints one line per round, every
violation's full report (rule broken, schedule, daemon log lines) as it happens, and at the
end: rounds, faults by kind, failovers, promotions refused, violations by kind. Exit status 1
if any violation was seen. Run it from the repository (or a snapshot of it) with PYTHONPATH
naming that tree, so the daemons import the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import replengine

from .schedule import Harness, Summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.faults.run", description=__doc__)
    ap.add_argument("--rounds", type=int, default=10, help="rounds per seed and mode")
    ap.add_argument("--seed", type=int, default=1, help="first seed")
    ap.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed")
    ap.add_argument("--mode", choices=["degrade", "block", "both"], default="degrade")
    ap.add_argument("--srl-full", choices=["stall", "fail", "dcm"], help="default: per seed")
    ap.add_argument(
        "--net",
        choices=["loopback", "netns", "both"],
        default="loopback",
        help="loopback: every node on 127.0.0.1; netns: each node in its own network "
        "namespace on a bridge, with partitions, loss, delay, SRL fill and disk errors",
    )
    ap.add_argument("--no-disk", action="store_true", help="netns without the faultfs disk")
    ap.add_argument(
        "--disk-all",
        action="store_true",
        help="netns: every node's files on a faultfs disk (a blackout then cuts the power "
        "of every node's disk), not only one node's",
    )
    ap.add_argument(
        "--device",
        choices=["none", "fuse-loop", "mixed"],
        default="none",
        help="the block device frontend of the nodes (mixed: fuse-loop for odd seeds)",
    )
    ap.add_argument(
        "--keys",
        choices=["off", "on", "mixed"],
        default="off",
        help="CURVE between the nodes (a key pair each; mixed: for seeds 2 and 3 mod 4, so "
        "that --device mixed crosses it)",
    )
    ap.add_argument(
        "--resync-rate",
        type=float,
        default=0,
        help="MiB/s cap on block copies (default none): copies then outlast what a burst "
        "takes to fill the SRL, and fold its records in",
    )
    ap.add_argument("--converge-s", type=float, default=30.0, help="bound on convergence")
    ap.add_argument("--rebuild-every", type=int, default=20)
    ap.add_argument("--workdir", help="default: a new directory under /tmp")
    ap.add_argument("--json", help="write the summary and every failed round here")
    ap.add_argument("--verbose", "-v", action="store_true", help="print each schedule step")
    ap.add_argument("--stop-on-violation", action="store_true")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="print the combined summary of runs' --json files (runs side by side) and exit",
    )
    args = ap.parse_args(argv)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    deferred: list[int] = []

    def defer(signum: int, frame: object) -> None:
        deferred.append(signum)

    # a run started in the background (nohup … &) ignores SIGINT: SIGINT and SIGTERM both
    # end it cleanly (the resource torn down, namespaces and mounts removed, summary printed)
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    if args.merge:
        print(merge([json.loads(Path(f).read_text()) for f in args.merge]))
        return 0

    workroot = Path(args.workdir or tempfile.mkdtemp(prefix="faults-", dir="/tmp"))
    workroot.mkdir(parents=True, exist_ok=True)
    print(
        f"replengine from {os.path.dirname(replengine.__file__)}; work in {workroot}; "
        f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}",
        flush=True,
    )
    modes = ["degrade", "block"] if args.mode == "both" else [args.mode]
    nets = ["loopback", "netns"] if args.net == "both" else [args.net]
    summary = Summary()
    t0 = time.monotonic()
    stop = False
    settings = [
        (seed, net, mode)
        for seed in range(args.seed, args.seed + args.seeds)
        for net in nets
        for mode in modes
    ]
    for seed, net, mode in settings:
        device = args.device
        if device == "mixed":
            device = "fuse-loop" if seed % 2 else "none"
        keys = args.keys == "on" or (args.keys == "mixed" and seed % 4 >= 2)
        h = Harness(
            workroot,
            seed,
            mode,
            srl_full=args.srl_full,
            converge_s=args.converge_s,
            rebuild_every=args.rebuild_every,
            verbose=args.verbose,
            net=net,
            disk=not args.no_disk,
            disk_all=args.disk_all,
            device=device,
            keys=keys,
            resync_rate=args.resync_rate,
        )
        try:
            for _ in range(args.rounds):
                res = h.run_round()
                summary.add(res)
                print(res.line(), flush=True)
                if not res.ok:
                    print(res.report(), flush=True)
                    if args.stop_on_violation:
                        stop = True
                        break
        except KeyboardInterrupt:
            stop = True
        finally:
            # a signal must not cut the teardown short (daemons and namespaces would outlive
            # the run): it is held until the teardown is done, then ends the run
            deferred.clear()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, defer)
            try:
                h.teardown(remove=True)
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, interrupted)
            stop = stop or bool(deferred)
        if stop:
            break
    wall = time.monotonic() - t0
    print(f"\n==== summary ({wall:.0f}s wall) ====", flush=True)
    print(summary.text(), flush=True)
    if args.json:
        doc = {"command": " ".join(sys.argv), "wall_seconds": round(wall, 1), **summary.doc()}
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 1 if summary.failed else 0


def merge(docs: list[dict]) -> str:
    """The summary of several runs' --json documents (runs side by side: wall time is the
    longest one's)."""
    total: dict = {}
    for d in docs:
        for k, v in d.items():
            if isinstance(v, dict) and k != "violation_signatures":
                c = total.setdefault(k, Counter())
                c.update(v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                if k == "wall_seconds":
                    total[k] = max(total.get(k, 0), v)
                else:
                    total[k] = total.get(k, 0) + v
    failed = [f for d in docs for f in d.get("failed", [])]
    lines = [
        f"runs: {len(docs)}: " + " ; ".join(d.get("command", "?") for d in docs),
        f"rounds: {total.get('rounds', 0)} ({total.get('clean', 0)} clean, "
        f"{total.get('rounds', 0) - total.get('clean', 0)} with violations); "
        f"{total.get('seconds_in_rounds', 0):.0f}s in rounds, "
        f"{total.get('wall_seconds', 0):.0f}s wall (longest run)",
        f"rounds by setting: {dict(sorted(total.get('rounds_by_setting', {}).items()))}",
        f"faults by kind: {dict(sorted(total.get('faults', {}).items()))}",
        f"failovers (successful promotions): {total.get('failovers', 0)}",
        f"promotions refused: {sum(total.get('refusals', {}).values())} "
        f"{dict(total.get('refusals', Counter()).most_common())}",
        f"writes: {dict(total.get('writes', {}))}",
        f"bytes verified: {total.get('bytes_verified', 0)} "
        f"({total.get('bytes_verified', 0) / (1 << 20):.0f} MiB)",
        f"notes: {dict(total.get('notes', {}))}",
        f"violations: {sum(total.get('violations', {}).values())} "
        f"{dict(total.get('violations', {}))}",
    ]
    for f in failed:
        lines.append(
            f"  seed {f['seed']} round {f['round']} {f.get('net', '')} {f['mode']} "
            f"srl_full={f['srl_full']}: " + "; ".join(f["violations"])[:300]
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
