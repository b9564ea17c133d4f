"""Crash safety: a child appends and acknowledges; SIGKILL at a random moment; every
acknowledged append must be back, intact, and the log must accept appends again.

The kill point is a random number of acknowledgements read from the child's pipe (the test
waits on the pipe, never on a timer), so a trial is both random and deterministic to replay:
the seed is the test id. 60 trials, single and concurrent writers, on a 1 MiB SRL that wraps
around many times per trial.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from replengine.log.srl import MIN_SRL_SIZE, SRL

CHILD = Path(__file__).with_name("srl_crash_child.py")
TRIALS = 60


def run_child_and_kill(
    path: Path,
    seed: int,
    writers: int,
    acks_before_kill: int,
    kill: Callable[[subprocess.Popen], None] = subprocess.Popen.kill,
) -> tuple[dict[int, tuple[int, int, str]], int]:
    """Run the child until it has acknowledged ``acks_before_kill`` appends, SIGKILL it
    (``kill``: how, e.g. with its disk's power cut: test_srl_powercut), and return every
    acknowledgement it managed to write (also those still in the pipe) and the highest
    clear it reported."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(seed), str(writers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acks: dict[int, tuple[int, int, str]] = {}
    cleared = 0
    assert proc.stdout is not None

    def parse(line: str) -> None:
        nonlocal cleared
        parts = line.split()
        if parts and parts[0] == "ack":
            acks[int(parts[1])] = (int(parts[2]), int(parts[3]), parts[4])
        elif parts and parts[0] == "clear":
            cleared = max(cleared, int(parts[1]))

    try:
        while len(acks) < acks_before_kill:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"child exited early: {proc.wait()} {proc.stderr.read()}")
            parse(line)
        kill(proc)
        rest, err = proc.communicate(timeout=30)
        for line in rest.splitlines():
            parse(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -9, f"child was not killed but exited {proc.returncode}: {err}"
    return acks, cleared


def check_recovered(path: Path, acks: dict[int, tuple[int, int, str]], cleared: int) -> None:
    """Every acknowledged append is back, intact; the log takes appends again (and closes
    cleanly, so the next open takes the clean path)."""
    with SRL.open(path) as srl:
        last = max(acks)
        assert srl.end_lsn >= last + 1, f"acked LSN {last} lost: end is {srl.end_lsn}"
        assert srl.start_lsn >= cleared  # a reported clear never goes back
        for lsn, (offset, length, digest) in acks.items():
            if lsn < srl.start_lsn:
                continue  # cleared by the child
            rec = srl.get(lsn)
            assert (rec.offset, len(rec.data)) == (offset, length), f"LSN {lsn}"
            assert hashlib.sha256(rec.data).hexdigest() == digest, f"LSN {lsn} data differs"
        records = list(srl.read(srl.start_lsn, srl.end_lsn))  # the tail is clean: all verify
        assert [r.lsn for r in records] == list(range(srl.start_lsn, srl.end_lsn))
        end = srl.end_lsn
        if srl.free_bytes < srl.record_size(5000):
            srl.advance_start(end)
        assert srl.append(1, 0, b"after crash" * 400) == end
    with SRL.open(path) as srl:
        assert srl.end_lsn == end + 1 and srl.get(end).data == b"after crash" * 400


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_during_appends(tmp_path: Path, trial: int) -> None:
    rng = random.Random(trial)
    writers = 1 if trial % 3 == 0 else rng.choice([2, 4, 8])
    path = tmp_path / "srl"
    SRL.create(path, resource="r0", uuid=uuid.uuid4(), node="n", size=MIN_SRL_SIZE).close()
    acks, cleared = run_child_and_kill(path, trial, writers, rng.randint(1, 250))
    check_recovered(path, acks, cleared)


@pytest.mark.parametrize("trial", range(TRIALS // 3))
def test_kill_during_appends_after_a_clean_close(tmp_path: Path, trial: int) -> None:
    """The child opens a log closed cleanly (its recovery skips the torn-tail search, which
    the mark allows only until the open rewrites the superblock), after a first crash left
    dead headers of a dropped tail past the end: the second crash's recovery must still find
    every acknowledged append and never take one of the first crash's dead records."""
    rng = random.Random(10_000 + trial)
    path = tmp_path / "srl"
    SRL.create(path, resource="r0", uuid=uuid.uuid4(), node="n", size=MIN_SRL_SIZE).close()
    acks, cleared = run_child_and_kill(path, trial, rng.choice([1, 4]), rng.randint(1, 250))
    check_recovered(path, acks, cleared)
    acks, cleared = run_child_and_kill(
        path, 10_000 + trial, rng.choice([1, 2, 8]), rng.randint(1, 250)
    )
    check_recovered(path, acks, cleared)
