"""A full sync slower than the SRL fills: the application's writes go on (the records held
for the copy are folded into it, node.resync_fold), every node ends identical to the ledger,
and a copy cut by kill -9 after folds still resumes to an identical volume.

alpha's 64 MiB of random data is copied to a blank beta at 16 MiB/s (4 s) through SRLs of
2 MiB, under srl_full = "stall", while the application rewrites 1 MiB of it: before the fold,
the writes stalled from the moment the SRL was full until the copy ended.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

from replengine.demo.localcluster import LocalResource
from tests.conftest import Ledger, Writer, kill_leftovers, short_workdir
from tests.faults import faultfs
from tests.test_full_sync_auto import fill, resent, sent, wait_in_sync

MiB = 1 << 20
TWO = {"alpha": "sync", "beta": "sync"}


def written(ledger: Ledger) -> int:
    return sum(len(data) for _, _, data in ledger.sorted_entries())


def syncing(r: LocalResource, node: str = "beta") -> bool:
    return r.status("alpha")["peers"][node]["state"] == "full-sync"


def long_sync(
    resource: Callable[..., LocalResource],
    writers: list[Writer],
    seed: int,
    span: int | None = 1 * MiB,
    hi: int = 16 * 1024,
    srls: int = 3,
    rate: int = 16,
) -> tuple[LocalResource, Ledger, Writer, int]:
    """beta's full sync running at ``rate`` MiB/s, slower than alpha's SRL fills; returns
    once the writer, still running, has written ``srls`` SRLs' worth during it (its writes of
    up to ``hi`` bytes within the first ``span`` bytes, None: anywhere)."""
    r = resource(
        TWO,
        volume_size=64 * MiB,
        srl_size=2 * MiB,
        srl_full="stall",
        extra={"resync_rate": rate, "resync_adaptive": False},
    )
    base = random.Random(seed).randbytes(r.volume_size)
    fill(r.volume_path("alpha"), base)
    r.up()
    r.promote("alpha")
    cap = r.status("alpha")["srl"]["capacity"]
    r.wait_for(lambda: syncing(r), 30, "beta's full sync to start")
    ledger = Ledger(r.volume_size, base=base)
    w = Writer(r, "alpha", ledger, seed=seed, hi=hi, span=span)
    writers.append(w)
    w.start()
    r.wait_for(
        lambda: written(ledger) >= srls * cap and syncing(r),
        30,
        f"{srls} SRLs' worth of writes while beta's full sync runs",
    )
    assert not w.errors, w.errors
    return r, ledger, w, cap


def check_identical(r: LocalResource, ledger: Ledger, w: Writer | None) -> None:
    if w is not None:
        wait_in_sync(r, ledger, w, writes=50)
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    r.down()
    for n in r.nodes:  # every completed write, on every node, over alpha's data
        ledger.check_file(r.volume_path(n), n)


def test_writes_go_on_through_a_full_sync_longer_than_the_srl(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    """(Once the copy has sent its last block, the receiver catching up holds the log again
    for a few heartbeats: a 2 MiB SRL may fill then, briefly.)"""
    r, ledger, w, _ = long_sync(resource, writers, seed=11)
    wait_in_sync(r, ledger, w, writes=50)
    copied, again = sent(r, "beta"), resent(r, "beta")
    print(
        f"64 MiB full sync through a 2 MiB SRL under writes: {copied} bytes copied, {again} resent"
    )
    assert copied <= 1.1 * r.volume_size, copied  # the volume once
    assert again <= written(ledger), (again, written(ledger))  # the writes, at most once more
    check_identical(r, ledger, None)
    assert "over what it had read are read and sent again instead" in r.log("alpha")


def test_writes_go_on_while_the_application_rewrites_the_whole_volume(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    """Writes of up to 64 KiB anywhere in the 64 MiB: most land on chunks already sent, and
    the folds send those bytes again (the writes' own bytes, not their 1 MiB regions). Before,
    the folds stopped once they had read a tenth of the volume again, and the copy then held
    the log: the writes stopped until it ended (after about 26 MiB of them, of the 64 MiB
    asked for during the copy's 8 s at least)."""
    r, ledger, w, _ = long_sync(resource, writers, 15, span=None, hi=64 * 1024, srls=32, rate=8)
    wait_in_sync(r, ledger, w, writes=50)
    copied, again = sent(r, "beta"), resent(r, "beta")
    print(f"64 MiB full sync under writes anywhere: {copied} bytes copied, {again} resent")
    assert copied <= 1.1 * r.volume_size, copied
    assert 0 < again <= written(ledger), (again, written(ledger))
    check_identical(r, ledger, None)


def test_a_folded_full_sync_cut_by_kill_9_of_the_target_resumes(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    """Folds marked regions again in beta's map: a restart of beta must get every one."""
    r, ledger, w, _ = long_sync(resource, writers, seed=12, span=None, hi=64 * 1024)
    r.kill("beta")
    r.up("beta")
    check_identical(r, ledger, w)


def test_a_folded_full_sync_cut_by_kill_9_of_the_source_resumes(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    """alpha dies after folds: restarted and promoted again, it owes beta what its map and
    its log say, and the volumes end identical with every write it completed."""
    r, ledger, w, _ = long_sync(resource, writers, seed=13)
    w.stop()  # first: a write cut by the kill would have an unknown outcome
    r.kill("alpha")
    r.up("alpha")
    r.promote("alpha")
    w2 = Writer(r, "alpha", ledger, seed=14, hi=16 * 1024, span=1 * MiB)
    writers.append(w2)
    w2.start()
    check_identical(r, ledger, w2)


class BetaOnFuse(LocalResource):
    """beta's volume in ``disk/``, where the test mounts the FUSE passthrough."""

    def volume_path(self, node: str) -> Path:
        if node == "beta":
            return self.workdir / "disk" / "beta-volume.img"
        return super().volume_path(node)


def test_writes_go_on_while_the_receiver_takes_its_digests(
    tmp_path: Path, writers: list[Writer]
) -> None:
    """beta reads its volume for its digests before any block is sent, which on a large
    volume takes as long as a copy: here its volume hangs meanwhile (its FUSE server
    stopped), so alpha's SRL fills with what it keeps for beta. alpha folds it in before the
    copy starts (nothing to read again), the writes go on, and once beta's volume answers
    the copy reads every chunk as it is then (not trusting digests taken before the fold)."""
    work = short_workdir(tmp_path) / "res"
    mnt, backing = work / "disk", work / "disk.backing"
    mnt.mkdir(parents=True)
    backing.mkdir()
    with faultfs.mounted(backing, mnt) as fuse:
        r = BetaOnFuse(work, nodes=dict(TWO), volume_size=32 * MiB, srl_size=2 * MiB)
        try:
            r.create()
            base = random.Random(21).randbytes(r.volume_size)
            fill(r.volume_path("alpha"), base)
            r.up()
            os.kill(fuse.pid, signal.SIGSTOP)
            r.promote("alpha")
            cap = r.status("alpha")["srl"]["capacity"]
            ledger = Ledger(r.volume_size, base=base)
            w = Writer(r, "alpha", ledger, seed=22, hi=16 * 1024)
            writers.append(w)
            w.start()
            r.wait_for(
                lambda: written(ledger) >= 3 * cap and syncing(r),
                30,
                "3 SRLs' worth of writes while beta takes its digests",
            )
            assert r.status("alpha")["peers"]["beta"]["resync"]["phase"] == "checksums"
            assert "before its copy began" in r.log("alpha")
            os.kill(fuse.pid, signal.SIGCONT)
            check_identical(r, ledger, w)
        finally:
            os.kill(fuse.pid, signal.SIGCONT)
            r.stop_all()
            kill_leftovers(r.config)
