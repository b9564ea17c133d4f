"""`replctl verify`: online and exact. Writes go on across the whole volume during every
verify here: a verify that compared each node's volume "now" would report the chunks those
writes had reached on one node and not yet on another. This one reports none, and finds a
region corrupted on purpose on a secondary, as byte offset and length."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from replengine.demo.localcluster import LocalResource
from tests.conftest import FOUR_NODES, Ledger, Writer

MiB = 1 << 20
VOLUME = 32 * MiB
#: small, so that the writers hit every chunk many times during a verify
SMALL = 24 * MiB


def verify(r: LocalResource, node: str, *names: str) -> tuple[int, dict | None, str]:
    """Exit status, the JSON result (None when refused) and stderr."""
    proc = r.replctl(node, "verify", "--json", *names, check=False)
    doc = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, doc, proc.stderr


def started(r: LocalResource, resource: Callable[..., LocalResource] | None = None):
    r.up()
    r.promote("alpha")
    r.wait_synced(timeout=120)


def corrupt(r: LocalResource, node: str, offset: int, data: bytes) -> None:
    """Change a secondary's volume behind replengine's back (a disk that lies)."""
    fd = os.open(r.volume_path(node), os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_no_region_differs_while_writes_go_on_everywhere(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    """Five verifies, each while four writers keep rewriting chunks all over a small volume
    (sync and async secondaries): every node identical, every byte compared, and writes
    completed during each verify (else the test would prove nothing). Hashing each node's
    volume as it stands when the request arrives, instead of at the batch's LSN, fails here."""
    r = resource(FOUR_NODES, volume_size=SMALL)
    started(r)
    ledger = Ledger(r.volume_size)
    ws = [Writer(r, "alpha", ledger, seed=7 + i, hi=256 * 1024) for i in range(4)]
    writers.extend(ws)
    for w in ws:
        w.start()
    r.wait_for(lambda: len(ledger) > 200, 60, "the writers under way")
    for _ in range(5):
        before = len(ledger)
        code, doc, err = verify(r, "alpha")
        during = len(ledger) - before
        assert code == 0, (code, err, doc)
        assert doc is not None and doc["exit"] == 0
        assert set(doc["nodes"]) == {"beta", "gamma", "delta"}
        for name, res in doc["nodes"].items():
            assert res["status"] == "identical", (name, res)
            assert res["compared_bytes"] == SMALL, (name, res)
            assert res["regions"] == []
        assert doc["last_lsn"] > doc["first_lsn"], doc  # the history moved during it
        assert during >= 20, f"only {during} writes completed during the verify"
    for w in ws:
        w.stop()
        assert not w.errors, w.errors
    # and the human form says the same
    out = r.replctl("alpha", "verify").stdout
    assert out.count(": identical") == 3, out


def test_a_corrupted_region_on_a_secondary_is_found_while_writes_go_on(
    resource: Callable[..., LocalResource], writers: list[Writer]
) -> None:
    """gamma's disk changes 100 bytes at 20 MiB + 12345 and 8 KiB across the 25 MiB chunk
    boundary, outside where the writer writes (so no write repairs them): verify lists
    exactly those chunks as offset and length, exit 1; beta stays identical."""
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "sync"}, volume_size=VOLUME)
    started(r)
    ledger = Ledger(r.volume_size)
    w = Writer(r, "alpha", ledger, seed=8, hi=64 * 1024, span=16 * MiB)
    writers.append(w)
    w.start()
    r.wait_for(lambda: len(ledger) > 100, 60, "the writer under way")
    corrupt(r, "gamma", 20 * MiB + 12345, b"\xa5" * 100)
    corrupt(r, "gamma", 25 * MiB - 4096, b"\x5a" * 8192)
    before = len(ledger)
    code, doc, err = verify(r, "alpha")
    assert len(ledger) > before, "no write completed during the verify"
    assert code == 1, (code, err, doc)
    assert doc is not None
    gamma = doc["nodes"]["gamma"]
    assert gamma["status"] == "differs"
    # adjacent differing chunks are one region
    assert gamma["regions"] == [[20 * MiB, MiB], [24 * MiB, 2 * MiB]], gamma
    assert gamma["differing_bytes"] == 3 * MiB
    assert doc["nodes"]["beta"]["status"] == "identical"
    human = r.replctl("alpha", "verify", check=False)
    assert human.returncode == 1
    assert "gamma: DIFFERS in 2 region(s)" in human.stdout, human.stdout
    assert f"offset {20 * MiB} length {MiB}" in human.stdout
    assert "verify: gamma differs" in r.log("alpha")
    # repaired (a full sync of gamma from the primary): identical again
    r.replctl("alpha", "sync", "--full", "gamma")
    r.wait_for(lambda: r.status("gamma")["consistent"], 120, "gamma's full sync")
    r.wait_for(
        lambda: r.status("alpha")["peers"]["gamma"]["state"] == "up-to-date",
        120,
        "gamma up to date",
    )
    code, doc, err = verify(r, "alpha", "gamma")
    assert code == 0, (code, err, doc)
    w.stop()
    assert not w.errors, w.errors


def test_what_cannot_be_compared_is_said_and_exits_2(
    resource: Callable[..., LocalResource],
) -> None:
    """On a secondary, of an unknown node, of the primary itself: refused, exit 2, nothing
    runs. A stopped secondary: the others are compared, it is 'not compared', exit 2."""
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "async"}, volume_size=VOLUME)
    started(r)
    code, doc, err = verify(r, "beta")
    assert code == 2 and doc is None
    assert "beta is not the primary of r0: run it there; the primary is alpha" in err, err
    code, doc, err = verify(r, "alpha", "omega")
    assert code == 2 and "unknown node omega" in err, err
    code, doc, err = verify(r, "alpha", "alpha")
    assert code == 2 and "alpha is the primary" in err, err
    assert r.status("alpha")["verify"] is None  # none of them started one
    r.down("gamma")
    r.wait_for(lambda: not r.status("alpha")["peers"]["gamma"]["connected"], 30, "gamma gone")
    code, doc, err = verify(r, "alpha")
    assert code == 2, (code, err, doc)
    assert doc is not None
    assert doc["nodes"]["beta"]["status"] == "identical"
    assert doc["nodes"]["gamma"] == {
        "status": "not compared",
        "regions": [],
        "differing_bytes": 0,
        "compared_bytes": 0,
        "reason": "gamma is not connected",
    }
    assert r.status("alpha")["verify"]["nodes"]["gamma"]["status"] == "not compared"


def test_a_verify_cut_short_by_a_demotion_reports_what_it_could_not_compare(
    resource: Callable[..., LocalResource],
) -> None:
    """A verify paced to 4 MiB/s runs while alpha is demoted: it answers at once with the
    secondaries 'not compared' (alpha stopped being the primary), exit 2, instead of hanging
    or reporting a verdict on chunks it never compared."""
    r = resource(
        {"alpha": "sync", "beta": "sync", "gamma": "sync"},
        volume_size=VOLUME,
        extra={"resync_rate": 4},
    )
    started(r)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "replengine.cli",
            "verify",
            "--json",
            "--config",
            str(r.config),
            "--node",
            "alpha",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    r.wait_for(
        lambda: (r.status("alpha")["verify"] or {}).get("asked_bytes", 0) > 0,
        30,
        "the verify under way",
    )
    r.replctl("alpha", "demote")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (proc.returncode, out, err)
    doc = json.loads(out)
    for name in ("beta", "gamma"):
        res = doc["nodes"][name]
        assert res["status"] == "not compared", res
        assert res["reason"] == "alpha stopped being the primary", res
        assert res["compared_bytes"] < VOLUME
