"""A volume that hangs (a SAN path failing over, a stuck controller), on the node's own FUSE
passthrough (tests.faults.faultfs) whose process the test SIGSTOPs: the volume's writes then
wait in the kernel while the SRL, a plain file, keeps working.

- A daemon that stops meanwhile keeps answering: requests that reach it after its loop ended
  (a `replctl status`, an application's write) are refused at once with "stopping", not left
  unanswered for as long as the volume takes; another `down` is answered with the first, once
  the node has stopped; and what the log held still reaches the volume.
- A sync secondary whose volume hangs stops acknowledging once its log cannot be cleared, but
  goes on beaconing: under on_sync_loss = "degrade" the primary degrades it after three of
  its heartbeats, as a lost one, instead of making the application wait for it for ever;
  under "block" every write waits for it, and srl_full = "dcm" does not release it.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from replengine.demo.localcluster import LocalResource
from replengine.errors import ReplError
from replengine.runtime import wait_gone
from tests.conftest import SRL_SIZE, VOLUME_SIZE, Ledger, kill_leftovers, peer, short_workdir
from tests.faults import faultfs

KiB = 1024


class SlowVolumeResource(LocalResource):
    """``slow``'s volume file (and its SRL with ``whole_disk``) in ``disk/``, where the test
    mounts the FUSE passthrough."""

    slow = "alpha"
    whole_disk = False

    def volume_path(self, node: str) -> Path:
        if node == self.slow:
            return self.workdir / "disk" / f"{node}-volume.img"
        return super().volume_path(node)

    def srl_path(self, node: str) -> Path:
        if node == self.slow and self.whole_disk:
            return self.workdir / "disk" / f"{node}-srl.img"
        return super().srl_path(node)


@pytest.fixture
def slow_alpha(tmp_path: Path):
    yield from volume_on_fuse(tmp_path, "alpha")


@pytest.fixture
def slow_beta(tmp_path: Path):
    yield from volume_on_fuse(tmp_path, "beta", srl_size=2 * 1024 * KiB, srl_full="dcm")


@pytest.fixture
def slow_beta_block(tmp_path: Path):
    yield from volume_on_fuse(
        tmp_path,
        "beta",
        srl_size=1032 * KiB,  # the smallest an SRL may be: full after 15 of these writes
        srl_full="dcm",
        on_sync_loss="block",
        extra={"sync_timeout": 1.0},
    )


@pytest.fixture
def hung_alpha(tmp_path: Path):
    """alpha's volume and SRL on the stoppable disk, beta asynchronous: alpha completes its
    writes alone (as a primary whose sync secondaries are all degraded does)."""
    yield from volume_on_fuse(
        tmp_path, "alpha", whole_disk=True, nodes={"alpha": "sync", "beta": "async"}
    )


def volume_on_fuse(
    tmp_path: Path,
    node: str,
    whole_disk: bool = False,
    nodes: dict[str, str] | None = None,
    **kw,
):
    work = short_workdir(tmp_path) / "res"
    mnt, backing = work / "disk", work / "disk.backing"
    mnt.mkdir(parents=True)
    backing.mkdir()
    kw.setdefault("srl_size", SRL_SIZE)
    r = SlowVolumeResource(
        work,
        nodes=nodes or {"alpha": "sync", "beta": "sync"},
        volume_size=VOLUME_SIZE,
        **kw,
    )
    r.slow, r.whole_disk = node, whole_disk
    with faultfs.mounted(backing, mnt) as fuse:
        try:
            yield r, fuse, backing / f"{node}-volume.img"
        finally:
            os.kill(fuse.pid, signal.SIGCONT)
            r.stop_all()
            kill_leftovers(r.config)


def test_a_stopping_daemon_refuses_at_once_and_still_applies_its_log(slow_alpha) -> None:
    r, fuse, alpha_volume = slow_alpha
    r.create()
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    first, last = os.urandom(4 * KiB), os.urandom(4 * KiB)
    vol.write(0, first)
    r.wait_synced()  # beta's first sync (it reads alpha's volume) is over

    # the volume hangs; a write still completes (its record is in both SRLs), the applier
    # waits in the kernel to copy it to the volume
    os.kill(fuse.pid, signal.SIGSTOP)
    vol.write(64 * KiB, last)
    r.signal("alpha", signal.SIGTERM)
    pid = r.pid("alpha")
    assert pid is not None

    ctl = r.control("alpha", timeout_s=10)
    deadline = time.monotonic() + 30
    while True:  # answered normally until the loop has drained and ended
        try:
            ctl.call("status")
        except ReplError as exc:
            refusal = str(exc)
            break
        assert time.monotonic() < deadline, "alpha's loop did not end after SIGTERM"
    assert "r0 on alpha is stopping" in refusal, refusal
    assert "status refused" in refusal, refusal
    with pytest.raises(ReplError, match="r0 on alpha is stopping.*write refused"):
        vol.write(128 * KiB, os.urandom(4 * KiB))
    again = ctl.send("down")  # a second stop: answered once the first one is done
    r.wait_for(
        lambda: "stopping: still waiting for the last writes to" in r.log("alpha"),
        10,
        "alpha to say what its stop waits for",
    )
    assert r.pid("alpha") == pid, "alpha stopped with its volume hung"

    os.kill(fuse.pid, signal.SIGCONT)
    doc, _ = ctl.wait(again, 60)
    assert doc["ok"], doc
    wait_gone(pid, 30)
    assert "stopped" in r.log("alpha").splitlines()[-1]
    with open(alpha_volume, "rb") as f:
        assert f.read(4 * KiB) == first
        f.seek(64 * KiB)
        assert f.read(4 * KiB) == last, "the record written while the volume hung was lost"


def test_a_sync_secondary_whose_volume_hangs_is_degraded_not_waited_for(slow_beta) -> None:
    r, fuse, _ = slow_beta
    r.create()
    r.up()
    r.promote("alpha")
    ledger = Ledger(r.volume_size)
    vol = r.connect("alpha")
    r.wait_synced()
    os.kill(fuse.pid, signal.SIGSTOP)
    # beta logs these until its 2 MiB SRL is full (it cannot apply, so cannot clear), then
    # acknowledges nothing more while it goes on beaconing
    rng = random.Random(3)
    for _ in range(48):  # 3 MiB
        off, data = (
            rng.randrange(0, r.volume_size // (64 * KiB)) * 64 * KiB,
            rng.randbytes(64 * KiB),
        )
        ledger.add(vol.write(off, data), off, data)
    assert peer(r, "alpha", "beta")["degraded"]
    assert "SYNC SECONDARY beta NOT ACKNOWLEDGING" in r.log("alpha")

    os.kill(fuse.pid, signal.SIGCONT)  # back: it catches up (its dirty regions) and is sync
    r.wait_for(lambda: not peer(r, "alpha", "beta")["degraded"], 60, "beta synchronous again")
    r.wait_synced()
    r.down()
    for n in r.nodes:
        ledger.check_file(r.volume_path(n), n)


def test_under_block_dcm_does_not_release_a_sync_secondary_whose_volume_hangs(
    slow_beta_block,
) -> None:
    """on_sync_loss = "block" promises that no write completes unless every sync secondary
    has it. beta's volume hangs: its log fills and it acknowledges nothing more while it
    goes on beaconing. alpha's writes time out after sync_timeout, and once alpha's own
    log is full of them, the ones that do not fit time out too, naming beta, connected, as
    what holds the log: srl_full = "dcm" does not switch a connected sync secondary, whose
    writes would then complete without it (the fault campaign's check, seed 13703 round
    5). When beta's volume answers, every write acknowledged is on both nodes."""
    r, fuse, _ = slow_beta_block
    r.create()
    r.up()
    r.promote("alpha")
    r.wait_synced()
    os.kill(fuse.pid, signal.SIGSTOP)
    slots = iter(range(r.volume_size // (64 * KiB)))
    lock = threading.Lock()
    done: dict[int, bytes] = {}
    errors: list[str] = []

    def writer() -> None:
        with r.connect("alpha") as vol:
            while True:
                with lock:
                    if any("SRL full" in e for e in errors):
                        return
                    slot = next(slots, None)
                if slot is None:
                    return
                data = os.urandom(64 * KiB)
                try:
                    vol.write(slot * 64 * KiB, data)
                except ReplError as exc:
                    with lock:
                        errors.append(str(exc))
                else:
                    with lock:
                        done[slot] = data

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    os.kill(fuse.pid, signal.SIGCONT)
    full = [e for e in errors if "SRL full" in e]
    assert full, f"no write stalled on a full log: {errors[:3]}"
    assert "held by beta (sync, connected, acknowledged up to LSN" in full[0], full[0]
    assert "srl_full=dcm" in full[0], full[0]
    assert any("waiting for sync secondaries beta" in e for e in errors), errors[:3]
    assert "switched to dcm" not in r.log("alpha")
    assert not peer(r, "alpha", "beta")["degraded"]
    r.wait_synced(timeout=120)
    for node in r.nodes:
        with open(r.volume_path(node), "rb") as f:
            for slot, data in done.items():
                f.seek(slot * 64 * KiB)
                assert f.read(64 * KiB) == data, f"write at slot {slot} missing on {node}"


def test_a_primary_replaced_while_its_disk_hung_acknowledges_nothing_alone(hung_alpha) -> None:
    """alpha, primary with only an asynchronous secondary, completes writes on its own disk's
    word. Its disk hangs under a write (its loop waits in the SRL's write, while its ZeroMQ
    threads keep its connections up); beta is promoted meanwhile, as Pacemaker would once
    alpha's monitor timed out. When the disk answers, the write must fail as fenced: were it
    acknowledged, it would be lost with alpha's divergent tail. (Found by the fault campaign,
    seed 7400 round 5: the turn that waited on the disk went on to complete the write before
    the next turn saw that it had stalled.)"""
    r, fuse, _ = hung_alpha
    r.create()
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    vol.write(0, os.urandom(4 * KiB))
    r.wait_synced()
    os.kill(fuse.pid, signal.SIGSTOP)
    answer: dict[str, object] = {}

    def late_write() -> None:
        try:
            answer["lsn"] = vol.write(8 * KiB, os.urandom(4 * KiB))
        except ReplError as exc:
            answer["error"] = str(exc)

    t = threading.Thread(target=late_write, daemon=True)
    t.start()
    r.wait_for(lambda: peer(r, "beta", "alpha")["state"] != "primary", 30, "beta to lose alpha")
    r.promote("beta", "--force")
    os.kill(fuse.pid, signal.SIGCONT)
    t.join(60)
    assert not t.is_alive(), "the write to alpha got no answer"
    assert "error" in answer, f"alpha acknowledged a write alone after beta replaced it: {answer}"
    r.wait_for(lambda: r.status("alpha")["role"] == "secondary", 30, "alpha to step down")
