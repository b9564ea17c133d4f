"""Transport between real processes while one of them is stopped and its peers reconnect.

Three processes each run a node's `Transport` (ROUTER + a DEALER per peer, heartbeats of
200 ms) and send small numbered messages to both peers as fast as the transport takes them.
One process at a time is SIGSTOPped for longer than the heartbeat timeout, so its peers give
up their connections to it and reconnect while it cannot answer, and then SIGCONTinued with
its peers' old connections still full of unread messages.

With ROUTER_HANDOVER and the node name as the DEALERs' routing id, the reconnection took over
the routing id while the old connection was still being read; libzmq 4.3.5 then aborted the
stopped process ("Assertion failed: !_io_error (src/stream_engine_base.cpp:310)",
zeromq/libzmq#4841), mostly within the first few stops. The test asserts that no process
dies, that every process hears from both peers again afterwards, that each message is
reported with the name of the node that sent it, and that no message from a peer arrives
before one that peer sent earlier.

Run as a script (``python test_transport.py NAME PORTS_JSON CONTROL_DIR HEARTBEAT_MS``), this
file is the worker: it prints one JSON line of counters every 100 ms.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

NAMES = ["alpha", "beta", "gamma"]
HEARTBEAT_MS = 200  # peers give up a silent connection after 3 heartbeats: 600 ms
STOP_S = 1.0
STOPS = 12
PAD = b"p" * 64


def worker(me: str, ports: dict[str, int], control_dir: str, heartbeat_ms: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from replengine.wire.transport import Transport

    peers = {n: f"127.0.0.1:{p}" for n, p in ports.items() if n != me}
    t = Transport(
        me, f"127.0.0.1:{ports[me]}", peers, os.path.join(control_dir, f"{me}.sock"), heartbeat_ms
    )
    me_b = me.encode()
    seq = dict.fromkeys(peers, 0)
    last = dict.fromkeys(peers, -1)
    got = dict.fromkeys(peers, 0)
    backwards = mismatched = 0
    next_report = 0.0
    while True:
        t.poll(5)
        t.watch.take_disconnected()
        for _ in range(20000):
            inc = t.recv_peer()
            if inc is None:
                break
            sender = inc.identity.decode(errors="replace")
            if sender not in got or len(inc.frames) != 3 or inc.frames[0].bytes != sender.encode():
                mismatched += 1
                continue
            n = int.from_bytes(inc.frames[1].bytes, "big")
            if n <= last[sender]:
                backwards += 1
            last[sender] = n
            got[sender] += 1
        for p in peers:
            for _ in range(64):
                if not t.send(p, [me_b, seq[p].to_bytes(8, "big"), PAD]):
                    break
                seq[p] += 1
        now = time.monotonic()
        if now >= next_report:
            next_report = now + 0.1
            line = {"got": got, "backwards": backwards, "mismatched": mismatched}
            print(json.dumps(line), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workers:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        ports = {n: free_port() for n in NAMES}
        self.latest: dict[str, dict] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        for n in NAMES:
            with open(tmp_path / f"{n}.err", "wb") as err:
                self.procs[n] = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        n,
                        json.dumps(ports),
                        str(tmp_path),
                        str(HEARTBEAT_MS),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            threading.Thread(target=self._read, args=(n,), daemon=True).start()

    def _read(self, name: str) -> None:
        out = self.procs[name].stdout
        assert out is not None
        for line in out:
            self.latest[name] = json.loads(line)

    def got(self) -> dict[str, dict[str, int]]:
        return {n: dict(self.latest.get(n, {}).get("got", {})) for n in NAMES}

    def dead(self) -> dict[str, str]:
        out = {}
        for n, p in self.procs.items():
            rc = p.poll()
            if rc is not None:
                err = (self.tmp_path / f"{n}.err").read_text(errors="replace").strip()
                out[n] = f"exit {rc}: {err[-300:]}"
        return out

    def wait_flowing(self, since: dict[str, dict[str, int]], timeout: float) -> None:
        """Every process has received more from each peer than in `since`."""
        deadline = time.monotonic() + timeout
        while True:
            assert not self.dead(), f"worker died: {self.dead()}"
            now = self.got()
            stuck = [
                f"{n}<-{p}"
                for n in NAMES
                for p in NAMES
                if p != n and now[n].get(p, 0) <= since.get(n, {}).get(p, 0)
            ]
            if not stuck:
                return
            assert time.monotonic() < deadline, f"no messages for {stuck} in {timeout}s: {now}"
            time.sleep(0.05)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()  # SIGKILL ends a stopped process too
            p.wait()


@pytest.mark.slow
def test_stop_cont_while_peers_reconnect_neither_aborts_nor_stalls(tmp_path: Path) -> None:
    w = Workers(tmp_path)
    try:
        w.wait_flowing({}, timeout=15)
        for i in range(STOPS):
            victim = w.procs[NAMES[i % len(NAMES)]]
            victim.send_signal(signal.SIGSTOP)
            time.sleep(STOP_S)
            victim.send_signal(signal.SIGCONT)
            time.sleep(0.8)
            assert not w.dead(), f"after stop {i + 1} of {NAMES[i % len(NAMES)]}: {w.dead()}"
        w.wait_flowing(w.got(), timeout=10)
        time.sleep(0.3)  # one more report from each, counting everything received so far
        for n in NAMES:
            report = w.latest[n]
            assert report["mismatched"] == 0, f"{n}: messages under the wrong name: {report}"
            assert report["backwards"] == 0, f"{n}: a peer's messages out of order: {report}"
    finally:
        w.close()


def test_newer_connection_order_wraps_and_prefers_chosen_ids() -> None:
    from replengine.wire.transport import _newer

    def rid(n: int) -> bytes:
        return b"\0" + (n % (1 << 32)).to_bytes(4, "big")

    assert _newer(rid(8), rid(7)) and not _newer(rid(7), rid(8))
    assert _newer(rid(2), rid((1 << 32) - 3))  # the ROUTER's counter wrapped
    assert not _newer(rid(7), rid(7))
    assert _newer(b"alpha", rid(7)) and _newer(rid(7), b"alpha")


def _take(t, timeout: float) -> list[tuple[bytes, bytes]]:
    """Every (name, payload) the transport hands over within ``timeout`` seconds."""
    out = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        t.poll(20)
        while (inc := t.recv_peer()) is not None:
            out.append((inc.identity, inc.frames[0].bytes))
    return out


def test_a_peers_live_connection_is_not_muted_by_an_abandoned_one_numbered_after_it(
    tmp_path: Path,
) -> None:
    """Fault campaign, seed 11301: a peer abandons a connection mid-handshake on a lossy
    link and makes another; the abandoned one's handshake and first message, still in the
    peer's kernel, arrive after the live one was numbered. The live one was then dropped as
    a leftover for good: this node never heard the peer again, while the peer heard it."""
    import zmq

    from replengine.wire.transport import ADOPT_AFTER_BEATS, Transport

    hb_ms = 250
    port = free_port()
    t = Transport("gamma", f"127.0.0.1:{port}", {}, str(tmp_path / "c.sock"), hb_ms)
    ctx = zmq.Context.instance()
    live, abandoned = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    try:
        for s in (live, abandoned):
            s.setsockopt(zmq.LINGER, 0)
        live.connect(f"tcp://127.0.0.1:{port}")
        live.send_multipart([b"beta", b"live-first"])
        assert _take(t, 0.5) == [(b"beta", b"live-first")]
        abandoned.connect(f"tcp://127.0.0.1:{port}")  # numbered after the live one
        abandoned.send_multipart([b"beta", b"abandoned"])
        assert _take(t, 0.5) == [(b"beta", b"abandoned")]
        abandoned.close(0)
        # what comes at once on the older connection is a leftover, as before
        for i in range(5):
            live.send_multipart([b"beta", b"burst-%d" % i])
        assert _take(t, 0.1) == []
        # then it goes on delivering, as a live peer does at each heartbeat: taken again
        got: list[tuple[bytes, bytes]] = []
        beats = 0
        while not got and beats < 10 * ADOPT_AFTER_BEATS:
            live.send_multipart([b"beta", b"beat-%d" % beats])
            beats += 1
            got = _take(t, hb_ms / 1000)
        assert got and got[0][0] == b"beta", f"beta's live connection stayed muted: {got}"
        assert beats <= ADOPT_AFTER_BEATS + 2, f"taken only after {beats} heartbeats"
        live.send_multipart([b"beta", b"after"])
        assert _take(t, 0.3) == [(b"beta", b"after")]
        # a newer connection of beta still takes over at once, as before
        newer = ctx.socket(zmq.DEALER)
        newer.setsockopt(zmq.LINGER, 0)
        newer.connect(f"tcp://127.0.0.1:{port}")
        newer.send_multipart([b"beta", b"newer"])
        assert _take(t, 0.5) == [(b"beta", b"newer")]
        live.send_multipart([b"beta", b"stale"])
        assert _take(t, 0.1) == []
        newer.close(0)
    finally:
        live.close(0)
        abandoned.close(0)
        t.close()


if __name__ == "__main__":
    worker(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
