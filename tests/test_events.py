"""`replctl events`: a real subscriber (the command as a subprocess) to real daemons through a
failover; and a killed subscriber is dropped while the daemon goes on."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from conftest import THREE_NODES

from replengine.demo.localcluster import LocalResource
from tests.device_helpers import needs_device, udevd

__all__ = ["udevd"]  # the fixture, used by name

pytestmark = pytest.mark.slow


class Subscriber:
    """`replctl events --json` on one node, its lines read by a thread into a queue."""

    def __init__(self, r: LocalResource, node: str, *extra: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "replengine.cli",
            "events",
            "--json",
            "--config",
            str(r.config),
        ]
        self.proc = subprocess.Popen(
            [*cmd, "--node", node, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait(self, pred: Callable[[dict], bool], what: str, timeout: float = 30) -> dict:
        """The first event (after those already taken) matching ``pred``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no event {what} within {timeout}s; got:\n"
                    + "\n".join(json.dumps(e) for e in self.seen[-30:])
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            ev = json.loads(line)
            self.seen.append(ev)
            if pred(ev):
                return ev

    def seen_or_wait(self, pred: Callable[[dict], bool], what: str, timeout: float = 30) -> dict:
        """Like wait(), but an event already taken counts: for events whose order between
        them is not defined (one loop turn may report several changes)."""
        for ev in self.seen:
            if pred(ev):
                return ev
        return self.wait(pred, what, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def subscribers(r: LocalResource, node: str) -> int:
    """How many events subscribers the node's daemon holds (from its log: each add/drop
    line says the count)."""
    counts = re.findall(r"events subscriber \w+.*?: (\d+) subscribed", r.log(node))
    return int(counts[-1]) if counts else 0


def test_events_through_a_failover(resource: Callable[..., LocalResource]) -> None:
    """beta's events while alpha is promoted, written to, killed -9, and beta promoted: the
    exists lines, alpha seen as primary, alpha disconnected, the promotion decision with the
    end LSN of every node that decided it, and beta's role change with its epoch."""
    r = resource(THREE_NODES)
    r.up()
    sub = Subscriber(r, "beta")
    try:
        res = sub.wait(lambda e: e["kind"] == "exists" and "peer" not in e, "exists (resource)")
        assert res["resource"] == "r0" and res["node"] == "beta", res
        assert res["role"] == "secondary", res
        peers = {
            sub.wait(lambda e: e["kind"] == "exists" and "peer" in e, "exists (peer)")["peer"]
            for _ in range(2)
        }
        assert peers == {"alpha", "gamma"}, peers
        r.promote("alpha")
        sub.wait(
            lambda e: e["kind"] == "peer-state" and e["peer"] == "alpha" and e["new"] == "primary",
            "alpha seen as primary",
        )
        sub.seen_or_wait(lambda e: e["kind"] == "epoch" and e["new"] >= 1, "epoch raised by alpha")
        vol = r.connect("alpha")
        for i in range(20):
            vol.write(i * 4096, bytes([i]) * 4096)
        vol.close()
        end = r.wait_synced()
        r.kill("alpha")
        sub.wait(
            lambda e: e["kind"] == "peer-disconnected" and e["peer"] == "alpha",
            "alpha disconnected",
        )
        r.promote("beta")
        dec = sub.wait(lambda e: e["kind"] == "promotion", "promotion decision")
        assert dec["chosen"] == "beta", dec
        assert dec["ends"] == {"beta": end, "gamma": end}, dec
        assert dec["best_end"] == end and dec["first_lsn"] == end, dec
        # alpha's daemon is dead: its port refuses beta's reconnections, so the probe did
        # not wait out its window for an answer that cannot come
        assert dec["unreachable"] == ["alpha"] and dec["refused"] == ["alpha"], dec
        role = sub.seen_or_wait(lambda e: e["kind"] == "role", "beta's role change")
        assert (role["old"], role["new"], role["epoch"]) == ("secondary", "primary", dec["epoch"])
        sub.wait(
            lambda e: e["kind"] == "peer-state" and e["peer"] == "gamma" and e["new"] != "primary",
            "gamma's state as beta's secondary",
        )
        times = [e["time"] for e in sub.seen]
        assert all(t.endswith("Z") and t[10] == "T" for t in times), times[:3]
        assert times == sorted(times), "events out of order"
        seqs = [e["seq"] for e in sub.seen if e["kind"] != "exists"]
        assert seqs == sorted(seqs), seqs
    finally:
        sub.stop()
    log = r.log("beta")
    assert "event: promotion chosen beta" in log, "the promotion is not in beta's log"


def test_human_lines_and_timeout(resource: Callable[..., LocalResource]) -> None:
    """Without --json: one line per event, `TIME r0 NODE ...`; --timeout ends it with 0."""
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    out = r.replctl("alpha", "events", "--timeout", "1.5").stdout.splitlines()
    assert out[0].split()[1:4] == ["r0", "alpha", "exists"], out
    assert "role primary" in out[0], out
    peer_lines = [ln for ln in out if " exists peer " in ln]
    assert len(peer_lines) == 2 and all("state up-to-date" in ln for ln in peer_lines), out


def test_killed_subscriber_is_dropped(resource: Callable[..., LocalResource]) -> None:
    """A subscriber killed with SIGKILL (it never cancels) is dropped when its lease runs
    out; one that is SIGSTOPped too; the daemon keeps replicating meanwhile."""
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    subs = [Subscriber(r, "alpha"), Subscriber(r, "alpha")]
    for s in subs:
        s.wait(lambda e: e["kind"] == "exists", "exists")
    r.wait_for(lambda: subscribers(r, "alpha") == 2, 10, "two subscribers")
    subs[0].proc.send_signal(signal.SIGKILL)
    subs[1].proc.send_signal(signal.SIGSTOP)
    vol = r.connect("alpha")
    try:
        for i in range(50):
            vol.write(i * 4096, b"x" * 4096)
        r.wait_for(lambda: subscribers(r, "alpha") == 0, 30, "both subscribers dropped")
        assert "its lease ran out" in r.log("alpha")
        for i in range(50):
            vol.write(i * 4096, b"y" * 4096)
        r.wait_synced()
    finally:
        vol.close()
        subs[1].proc.send_signal(signal.SIGCONT)
        for s in subs:
            s.stop()
    # a new subscriber is served as before
    again = Subscriber(r, "alpha")
    try:
        again.wait(lambda e: e["kind"] == "exists", "exists for a new subscriber")
    finally:
        again.stop()


def test_policy_and_full_sync_events(resource: Callable[..., LocalResource]) -> None:
    """On the primary: `replctl sync --full gamma` is a full-sync-started, gamma's state
    full-sync, then full-sync-finished and up-to-date again; a sync secondary killed fires
    on_sync_loss=degrade; `replctl down` says it is stopping, and the subscriber then exits 1
    saying the daemon stopped."""
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    r.wait_synced()
    sub = Subscriber(r, "alpha")
    try:
        sub.wait(lambda e: e["kind"] == "exists" and e.get("peer") == "gamma", "exists gamma")
        r.replctl("alpha", "sync", "--full", "gamma")
        started = sub.wait(lambda e: e["kind"] == "full-sync-started", "full sync started")
        assert started["peer"] == "gamma" and started["bytes"] > 0, started
        done = sub.wait(lambda e: e["kind"] == "full-sync-finished", "full sync finished", 120)
        assert done["peer"] == "gamma", done
        states = [e["new"] for e in sub.seen if e["kind"] == "peer-state" and e["peer"] == "gamma"]
        assert "full-sync" in states, states
        sub.seen_or_wait(
            lambda e: (
                e["kind"] == "peer-state" and e["peer"] == "gamma" and e["new"] == "up-to-date"
            ),
            "gamma up to date again",
            60,
        )
        r.kill("beta")
        pol = sub.wait(lambda e: e["kind"] == "policy", "on_sync_loss policy")
        assert (pol["policy"], pol["action"], pol["peer"]) == ("on_sync_loss", "degrade", "beta")
        r.down("alpha")
        sub.seen_or_wait(lambda e: e["kind"] == "stopping", "stopping")
        assert sub.proc.wait(30) == 1
        assert sub.proc.stderr is not None and "stopped" in sub.proc.stderr.read()
    finally:
        sub.stop()


@needs_device
def test_device_events(resource: Callable[..., LocalResource], udevd: None) -> None:
    """A real /dev/replengine device: exposed on promotion; on demotion fenced and withdrawn,
    with the role change."""
    r = resource(THREE_NODES, name="evdev", device="fuse-loop", volume_size=32 << 20)
    r.up()
    sub = Subscriber(r, "alpha")
    try:
        sub.wait(lambda e: e["kind"] == "exists" and "peer" not in e, "exists")
        r.promote("alpha")
        dev = r.status("alpha")["device"]
        exposed = sub.seen_or_wait(lambda e: e["kind"] == "device-exposed", "device exposed")
        assert exposed["device"] == dev, (exposed, dev)
        r.wait_synced()
        r.replctl("alpha", "demote")
        sub.wait(lambda e: e["kind"] == "role" and e["new"] == "secondary", "demoted")
        sub.seen_or_wait(lambda e: e["kind"] == "device-fenced", "device fenced")
        gone = sub.seen_or_wait(lambda e: e["kind"] == "device-withdrawn", "device withdrawn")
        assert gone["device"] == dev, gone
    finally:
        sub.stop()
