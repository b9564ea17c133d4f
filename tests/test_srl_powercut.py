"""Crash safety through a power cut: test_srl_crash's child appends and acknowledges on a
disk that loses what was never synced (tests.faults.faultfs). At a random acknowledgement
the child is stopped, the power cut (every write not yet fdatasynced lost whole, torn at a
4 KiB boundary, or kept in any subset of its 4 KiB pieces), the child killed. Every
acknowledged append must be back, intact, and the log must take appends again.

A SIGKILL alone (test_srl_crash) leaves the page cache to the next open, so only this shows
that ``append`` returns after the fdatasync that makes its record durable, that a clear is
reported only once the superblock saying so is, and that the recovery tells a batch cut
part-way, in any order, from a corrupt log. In a third of the trials every fdatasync is
slowed, so the cut lands while batches are written and not yet synced.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from replengine.log.srl import MIN_SRL_SIZE, SRL
from replengine.storage.durable import fsync_dir
from tests.faults import faultfs
from tests.test_srl_crash import check_recovered, run_child_and_kill

TRIALS = 30


pytestmark = pytest.mark.skipif(
    faultfs.unavailable() is not None, reason=str(faultfs.unavailable())
)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory):
    with faultfs.disk_in(tmp_path_factory.mktemp("powercut")) as mnt:
        yield Path(mnt)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_power_cut_during_appends(disk: Path, trial: int) -> None:
    rng = random.Random(20_000 + trial)
    writers = 1 if trial % 3 == 0 else rng.choice([2, 4, 8])
    slow = trial % 3 == 1
    path = disk / f"srl-{trial}"
    SRL.create(path, resource="r0", uuid=uuid.uuid4(), node="n", size=MIN_SRL_SIZE).close()
    # its name too: made by the test, as an operator makes the file `replctl init` formats
    fsync_dir(disk)
    cut: list[str] = []

    def lose_power(proc: subprocess.Popen) -> None:
        # the cut's instant, drawn apart from the acknowledgement that set it off: right
        # after one, the next batch is rarely written yet (acks written meanwhile are read
        # from the pipe after the kill and checked as the others)
        time.sleep(rng.uniform(0, 0.02))
        os.kill(proc.pid, signal.SIGSTOP)  # none of its threads runs again
        cut.append(faultfs.command(disk, f"powercut {trial}").split("cut=")[1].strip())
        proc.kill()
        proc.wait()
        faultfs.command(disk, "poweron")

    faultfs.command(disk, f"slowsync {rng.choice([2, 5, 10]) if slow else 0}")
    try:
        acks, cleared = run_child_and_kill(
            path, 20_000 + trial, writers, rng.randint(1, 150), kill=lose_power
        )
    finally:
        faultfs.command(disk, "slowsync 0")
    print(f"trial {trial}: {len(acks)} acknowledged, cut kept {cut[0]}")
    check_recovered(path, acks, cleared)
