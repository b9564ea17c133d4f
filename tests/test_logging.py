"""The daemon's log: the resource in every line, rotation (logrotate's rename) loses no line,
syslog when run by Pacemaker (and the file when there is no syslog socket)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import THREE_NODES

from replengine.demo.localcluster import LocalResource

pytestmark = pytest.mark.slow

#: "2026-12-05 03:01:02,345 r0/alpha replengined[123] INFO ..."
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} r0/alpha \S+\[\d+\] [A-Z]+ ")


def subscribe_once(r: LocalResource, node: str) -> None:
    """Make the daemon log a line ("events subscriber added") and wait for it to be done."""
    r.replctl(node, "events", "--timeout", "0.2")


def added(text: str) -> int:
    return text.count("events subscriber added")


def test_rotation_loses_no_line(resource: Callable[..., LocalResource]) -> None:
    """Rename the log file as logrotate does (no copytruncate, no signal): the daemon's next
    lines go to a new file at the old name, and every line is in one of the two files."""
    r = resource(THREE_NODES)
    r.up("alpha")
    path = r.paths("alpha").log
    for _ in range(3):
        subscribe_once(r, "alpha")
    rotated = path.with_name(path.name + ".1")
    os.rename(path, rotated)
    for _ in range(3):
        subscribe_once(r, "alpha")
    r.wait_for(lambda: path.exists() and added(path.read_text()) == 3, 10, "lines in the new file")
    old, new = rotated.read_text(), path.read_text()
    assert added(old) == 3, old
    assert "listening on" in old and "listening on" not in new
    bad = [ln for ln in (old + new).splitlines() if not LINE.match(ln)]
    assert not bad, f"log lines without the resource: {bad[:5]}"


def test_up_hands_its_output_to_the_log_file(resource: Callable[..., LocalResource]) -> None:
    """`replctl up` starts the daemon before reading the config, with its own output as the
    daemon's: once up, the daemon writes to its log file only, so a caller that reads
    `up`'s output to its end (the agent, a script's pipe) is not held by the daemon."""
    r = resource(THREE_NODES)
    cmd = [sys.executable, "-m", "replengine.cli", "up", "--config", str(r.config)]
    done = subprocess.run([*cmd, "--node", "alpha"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "up (pid" in done.stdout, done
    pid, log = r.pid("alpha"), r.paths("alpha").log
    assert pid is not None
    for fd in (1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == str(log), f"fd {fd} is not the log"
    text = log.read_text()
    assert "listening on" in text
    bad = [ln for ln in text.splitlines() if not LINE.match(ln)]
    assert not bad, f"log lines without the resource: {bad[:5]}"


def test_up_of_a_node_that_is_up_changes_nothing(resource: Callable[..., LocalResource]) -> None:
    """The daemon `up` starts finds this node's daemon running and says so before it opens
    or logs anything: the running one's log gets no line from it."""
    r = resource(THREE_NODES)
    r.up("alpha")
    pid = r.pid("alpha")
    again = r.replctl("alpha", "up")
    assert f"already up (pid {pid})" in again.stdout, again
    assert r.pid("alpha") == pid
    pids = set(re.findall(r"replengined\S*\[(\d+)\]", r.paths("alpha").log.read_text()))
    assert pids == {str(pid)}, f"lines from other processes in the log: {pids}"


def test_a_second_daemon_of_a_node_refuses(resource: Callable[..., LocalResource]) -> None:
    """Started by hand or by its systemd unit (no ready fd) while its node's daemon runs:
    it refuses, naming the running one, and the running one goes on."""
    r = resource(THREE_NODES)
    r.up("alpha")
    pid = r.pid("alpha")
    cmd = [sys.executable, "-m", "replengine.daemon", "--config", str(r.config)]
    done = subprocess.run([*cmd, "--node", "alpha"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert f"r0/alpha is running already (pid {pid})" in done.stderr, done.stderr
    assert r.pid("alpha") == pid and r.status("alpha")["role"] == "secondary"


def test_up_with_a_bad_node_says_why_once(resource: Callable[..., LocalResource]) -> None:
    """A config the daemon refuses: `up` fails with the daemon's reason, said once, and no
    run directory or log is made for a node that is not in the config."""
    r = resource(THREE_NODES)
    bad = r.replctl("nosuch", "up", check=False)
    assert bad.returncode == 1, bad
    assert bad.stderr.count("'nosuch' is not in the config") == 1, bad.stderr
    assert not r.paths("nosuch").dir.exists()


def test_pacemaker_without_syslog_socket_logs_to_the_file(
    resource: Callable[..., LocalResource], tmp_path: Path
) -> None:
    """Started by the agent (OCF_RESOURCE_INSTANCE set) where the syslog socket is missing:
    the file it would log to otherwise, saying why."""
    r = resource(THREE_NODES)
    if os.path.exists("/dev/log"):
        pytest.skip("/dev/log exists here: the fallback is not reachable")
    env = {**os.environ, "OCF_RESOURCE_INSTANCE": "r0"}
    cmd = [sys.executable, "-m", "replengine.cli", "up", "--config", str(r.config)]
    subprocess.run([*cmd, "--node", "alpha"], env=env, check=True, capture_output=True)
    text = r.paths("alpha").log.read_text()
    assert "no syslog at /dev/log" in text and "logging to the file instead" in text, text
    assert "listening on" in text


def test_syslog_gets_every_line_with_the_resource(
    resource: Callable[..., LocalResource], tmp_path: Path
) -> None:
    """With a syslog socket (here one of the test's, as /dev/log would be): RFC 3164 lines
    tagged replengined[pid], the resource/node in each, the daemon facility."""
    r = resource(THREE_NODES)
    sock_path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(1.0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "replengine.daemon", "--config", str(r.config)]
        + ["--node", "alpha", "--syslog", str(sock_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    got: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not any("listening on" in g for g in got):
            assert time.monotonic() < deadline, f"no 'listening on' over syslog: {got}"
            try:
                got.append(sock.recv(65536).decode())
            except TimeoutError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        while not any(" stopped" in g for g in got):
            assert time.monotonic() < deadline, f"no 'stopped' over syslog: {got}"
            try:
                got.append(sock.recv(65536).decode())
            except TimeoutError:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        sock.close()
    pri = 3 << 3  # LOG_DAEMON
    for g in got:
        m = re.match(r"^<(\d+)>replengined\[(\d+)\]: r0/alpha [A-Z]+ ", g)
        assert m and int(m.group(1)) >> 3 == pri >> 3, g
        assert int(m.group(2)) == proc.pid, g
    assert not r.paths("alpha").log.exists() or "listening" not in r.paths("alpha").log.read_text()
