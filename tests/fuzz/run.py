"""Run every fuzz target for a long time and print how many parser executions it made.

    .venv/bin/python -m tests.fuzz.run --examples 20000

``--examples`` is the number of hypothesis examples per target (the SRL-open target, which
writes and recovers a 1 MiB log per example, gets a third of it); each example runs its
parser on the input and on every mutant derived from it, and every call is counted. Exit
status 1, with hypothesis's smallest failing input, on the first crash (an exception other
than the parser's documented error).
"""

from __future__ import annotations

import argparse
import sys
import time

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.fuzz.targets import EXECUTIONS, TARGETS

#: targets whose one execution costs much more than the others
HEAVY = {"srl-open": 3, "config-bytes": 3}


def run_target(name: str, examples: int, rng_seed: int) -> float:
    strategy, target = TARGETS[name]

    @seed(rng_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )
    @given(strategy)
    def fuzz(inp: object) -> None:
        target(inp)

    t0 = time.monotonic()
    fuzz()
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.run")
    ap.add_argument("--examples", type=int, default=20000, help="hypothesis examples per target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", action="append", choices=sorted(TARGETS), help="run only these")
    args = ap.parse_args(argv)
    total_t = time.monotonic()
    print(f"{'target':<16} {'examples':>9} {'executions':>11} {'seconds':>8}")
    for name in args.only or list(TARGETS):
        n = max(1, args.examples // HEAVY.get(name, 1))
        before = sum(EXECUTIONS.values())
        try:
            took = run_target(name, n, args.seed)
        except Exception as exc:  # the crash, with hypothesis's note of the input
            print(f"CRASH in {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            raise
        done = sum(EXECUTIONS.values()) - before
        print(f"{name:<16} {n:>9} {done:>11} {took:>8.1f}", flush=True)
    print("by parser:")
    for parser, count in sorted(EXECUTIONS.items()):
        print(f"  {parser:<22} {count:>11}")
    total = sum(EXECUTIONS.values())
    print(f"total executions: {total} in {time.monotonic() - total_t:.0f} s, crashes: 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
