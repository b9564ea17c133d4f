"""What operators see: `replctl status` (table, --json against docs/status-schema.md,
--watch on a terminal and in a pipe) and the progress of long waits (sync --full --wait,
promote, down, up --wait) on a terminal (a real pty: a bar) and in a pipe (plain lines).

Every wait here is on output or status with a deadline; none sleeps to synchronise.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replengine.demo.localcluster import LocalResource
from tests.conftest import MiB, peer

SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "status-schema.md"
ANSI = re.compile(r"\x1b\[")

# ---- the documented schema -------------------------------------------------------------------

ROW = re.compile(r"^\| `([^`]+)` \| ([a-z ]+?) \| (.+) \|$")
TYPES: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "map": lambda v: isinstance(v, dict),
}


def documented() -> dict[str, tuple[str, bool]]:
    """path -> (type, nullable) from the tables of docs/status-schema.md."""
    rows: dict[str, tuple[str, bool]] = {}
    for line in SCHEMA_DOC.read_text().splitlines():
        m = ROW.match(line)
        if not m:
            continue
        path, typ = m.group(1), m.group(2).strip()
        nullable = typ.endswith(" or null")
        typ = typ.removesuffix(" or null")
        assert typ in TYPES, f"{SCHEMA_DOC.name}: {path}: unknown type {typ!r}"
        assert path not in rows, f"{SCHEMA_DOC.name}: {path} documented twice"
        rows[path] = (typ, nullable)
    return rows


def schema_problems(doc: dict[str, Any], schema: dict[str, tuple[str, bool]]) -> list[str]:
    """Every key of ``doc``, recursively, is documented with its type; every documented
    field of an object that is present is there too (nothing removed silently)."""
    problems: list[str] = []

    def walk(obj: dict[str, Any], prefix: str) -> None:
        for key, value in obj.items():
            path = prefix + key
            if path not in schema:
                problems.append(f"{path}: not documented in {SCHEMA_DOC.name}")
                continue
            typ, nullable = schema[path]
            if value is None:
                if not nullable:
                    problems.append(f"{path}: null, documented as never null ({typ})")
                continue
            if not TYPES[typ](value):
                problems.append(f"{path}: {type(value).__name__} {value!r}, documented {typ}")
                continue
            if typ == "object":
                walk(value, path + ".")
            elif typ == "map":
                for item in value.values():
                    if not isinstance(item, dict):
                        problems.append(f"{path}.*: {item!r} is not an object")
                    else:
                        walk(item, path + ".*.")
        # documented children of this object (not of a map's entries' siblings) are present
        depth = prefix.count(".")
        for path in schema:
            if path.startswith(prefix) and path.count(".") == depth and path[len(prefix) :]:
                if path[len(prefix) :] not in obj:
                    problems.append(f"{path}: documented but missing")

    walk(doc, "")
    return problems


def test_schema_doc_parses_and_its_checker_catches_an_undocumented_field():
    schema = documented()
    assert schema["schema_version"] == ("integer", False)
    assert schema["peers.*.lag_seconds"] == ("number", True)
    assert len(schema) > 80, len(schema)
    bad = {"schema_version": 1, "peers": {"b": {"mode": "sync", "frobs": 3}}}
    problems = schema_problems(bad, schema)
    assert "peers.*.frobs: not documented in status-schema.md" in problems, problems
    assert "resource: documented but missing" in problems, problems


# ---- helpers: the CLI in a pipe and in a pty ---------------------------------------------------


def cli(r: LocalResource, node: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "replengine.cli", args[0], "--config", str(r.config)] + [
        "--node",
        node,
        *args[1:],
    ]


class Pty:
    """A command on a real pseudo-terminal (120x40, TERM=xterm): everything it draws."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.out = b""

    def read_until(self, pred: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while not pred(self.text):
            left = deadline - time.monotonic()
            assert left > 0, f"no {what} on the terminal within {timeout}s: {self.text[-3000:]!r}"
            if not self._read(min(left, 0.5)) and self.proc.poll() is not None:
                assert pred(self.text), (
                    f"exited ({self.proc.returncode}) before {what}: {self.text[-3000:]!r}"
                )
        return self.text

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the other side is closed
            return False
        self.out += chunk
        return bool(chunk)

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def finish(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        while self._read(0.05):
            pass
        os.close(self.master)
        assert self.proc.poll() is not None, (
            f"still running after {timeout}s: {self.text[-2000:]!r}"
        )
        return self.proc.returncode


def read_lines_until(
    proc: subprocess.Popen, pred: Callable[[list[str]], bool], timeout: float, what: str
) -> list[str]:
    """Lines of a piped stdout until ``pred`` holds for them (a reader thread: no sleeps)."""
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if pred(lines):
                done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), f"no {what} within {timeout}s: {''.join(lines)[-3000:]!r}"
    assert pred(lines), f"output ended before {what}: {''.join(lines)[-3000:]!r}"
    return lines


# ---- status: the table and the document --------------------------------------------------------


def test_status_json_matches_the_documented_schema_on_primary_and_secondary(resource):
    """A live document -- primary while a full sync runs, a secondary, a stopped async peer
    lagging -- has exactly the documented fields with their documented types."""
    r = resource(
        {"alpha": "sync", "beta": "sync", "gamma": "async"},
        volume_size=16 * MiB,
        extra={"resync_rate": 4},
    )
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    vol.write(0, b"s" * 65536)
    r.wait_synced()
    r.replctl("alpha", "sync", "--full", "beta")
    st = r.wait_for(
        lambda: (s := r.status("alpha"))["peers"]["beta"]["resync"] and s, 30, "the resync"
    )
    schema = documented()
    docs = {"primary (resync running)": st}
    r.wait_for(lambda: peer(r, "alpha", "beta")["state"] == "up-to-date", 60, "beta in sync")
    assert r.replctl("alpha", "verify", "beta", check=False).returncode == 0  # fills "verify"
    r.freeze("gamma")
    vol.write(65536, b"t" * 4096)
    vol.close()
    for node in ("alpha", "beta"):
        out = r.replctl(node, "status", "--json")
        doc = json.loads(out.stdout)
        assert doc["schema_version"] == 1
        docs[doc["role"]] = doc
    assert docs["primary"]["dcm"]["last_resync"]["peer"] == "beta", docs["primary"]["dcm"]
    assert docs["primary"]["last_promotion"]["epoch"] == 1
    assert docs["primary"]["verify"]["nodes"]["beta"]["status"] == "identical"
    assert docs["primary"]["peers"]["gamma"]["lag_records"] >= 1
    assert docs["primary"]["peers"]["gamma"]["lag_seconds"] is not None
    assert docs["secondary"]["peers"]["alpha"]["lag_seconds"] is None
    for what, doc in docs.items():
        problems = schema_problems({k: v for k, v in doc.items() if k not in ("id", "ok")}, schema)
        assert not problems, f"{what}:\n" + "\n".join(problems)
    r.signal("gamma", signal.SIGCONT)


def test_status_table_shows_roles_states_and_the_lag_of_a_stopped_peer(resource):
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "async"})
    r.up()
    r.promote("alpha")
    r.wait_synced()
    r.freeze("gamma")
    vol = r.connect("alpha")
    for i in range(5):
        vol.write(i * 4096, b"w" * 4096)
    vol.close()
    # the age of gamma's oldest missing write grows while it stays stopped
    r.wait_for(lambda: (peer(r, "alpha", "gamma")["lag_seconds"] or 0) >= 1.0, 30, "1 s of lag")
    out = r.replctl("alpha", "status").stdout
    lines = out.splitlines()
    assert lines[0].split() == [
        "RESOURCE",
        "NODE",
        "ROLE",
        "EPOCH",
        "CONSISTENT",
        "SRL",
        "USE",
        "DEVICE",
    ]
    assert lines[1].split()[:5] == ["r0", "alpha", "primary", "1", "yes"], out
    assert re.search(r"\(\d+%\)", lines[1]), out
    rows = {ln.split()[0]: ln.split() for ln in lines if ln.startswith("  ") and ln.split()}
    assert rows["PEER"] == [
        "PEER",
        "MODE",
        "CONNECTION",
        "STATE",
        "LAG",
        "RECORDS",
        "LAG",
        "BYTES",
        "LAG",
        "TIME",
    ]
    assert rows["beta"][:5] == ["beta", "sync", "connected", "up-to-date", "0"], out
    gamma = rows["gamma"]
    assert gamma[:2] == ["gamma", "async"] and gamma[4] == "5", out
    assert gamma[3] in ("catching-up", "disconnected"), out
    assert float(gamma[-1].rstrip("s")) >= 1.0, out  # LAG TIME, e.g. 1.4s
    assert not ANSI.search(out), out
    sec = r.replctl("beta", "status").stdout
    assert "r0        beta  secondary" in sec and "following alpha" in sec, sec
    r.signal("gamma", signal.SIGCONT)


# ---- status --watch ------------------------------------------------------------------------------


def test_watch_redraws_the_table_in_place_on_a_terminal_and_ctrl_c_exits_0(resource):
    r = resource({"alpha": "sync", "beta": "sync"})
    r.up()
    r.promote("alpha")
    t = Pty(cli(r, "alpha", "status", "--watch", "0.2"))
    t.read_until(lambda s: s.count("RESOURCE  NODE") >= 3, 30, "three redraws")
    t.proc.send_signal(signal.SIGINT)
    assert t.finish(30) == 0, t.text[-2000:]
    text = t.text
    # each redraw homes the cursor and clears what is below: the table stays in place
    assert text.count("\x1b[H") >= 3 and "\x1b[J" in text, text[:500]
    assert "every 0.2s: replctl status" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-2000:]


def test_watch_in_a_pipe_prints_a_block_per_interval_with_a_separator(resource):
    r = resource({"alpha": "sync", "beta": "sync"})
    r.up()
    r.promote("alpha")
    proc = subprocess.Popen(
        cli(r, "alpha", "status", "--watch", "0.2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = read_lines_until(
            proc, lambda ls: sum(ln.startswith("--- ") for ln in ls) >= 3, 30, "three blocks"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (proc.returncode, err)
    text = "".join(lines) + out
    assert not ANSI.search(text), text[:500]
    blocks = [b for b in re.split(r"^--- .* ---$", text, flags=re.M) if b.strip()]
    assert len(blocks) >= 3
    for b in blocks[:3]:
        assert "r0        alpha  primary" in b and "beta" in b, b
    assert re.search(r"^--- \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+ ---$", text, flags=re.M), text[:300]
    assert err == "", err

    # --json --watch: one compact document per line, each a whole status
    proc = subprocess.Popen(
        cli(r, "alpha", "status", "--json", "--watch", "0.2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = read_lines_until(proc, lambda ls: len(ls) >= 2, 30, "two JSON lines")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    docs = [json.loads(ln) for ln in lines[:2]]
    assert all(d["schema_version"] == 1 and d["role"] == "primary" for d in docs), docs


# ---- progress of long waits ----------------------------------------------------------------------


def _sync_resource(resource) -> LocalResource:
    """16 MiB volumes, block copies capped at 4 MiB/s: a full sync lasts about 4 s."""
    r = resource(
        {"alpha": "sync", "beta": "sync", "gamma": "sync"},
        volume_size=16 * MiB,
        extra={"resync_rate": 4},
    )
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    vol.write(0, b"d" * 65536)
    vol.close()
    r.wait_synced()
    return r


def test_sync_full_wait_draws_a_bar_on_a_terminal(resource):
    r = _sync_resource(resource)
    t = Pty(cli(r, "alpha", "sync", "--full", "beta", "--wait", "--timeout", "120"))
    t.read_until(lambda s: "━" in s and "full sync of beta: copying" in s, 60, "a progress bar")
    assert t.finish(120) == 0, t.text[-2000:]
    text = t.text
    assert re.search(r"\d+\.\d/16\.0 MiB", text), text[-2000:]  # done/total
    assert "MiB/s" in text, text[-2000:]
    # the bar is erased; the command's lines are the same as without a terminal
    assert "full sync of beta: 16777216 bytes owed, copying now" in text
    assert text.rstrip().endswith("beta is up to date"), text[-500:]


def test_sync_full_wait_prints_plain_lines_in_a_pipe(resource):
    r = _sync_resource(resource)
    out = r.replctl("alpha", "sync", "--full", "beta", "--wait", "--timeout", "120")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0] == "full sync of beta: 16777216 bytes owed, copying now", lines
    assert lines[-1] == "beta is up to date", lines
    progress = [ln for ln in lines if ln.startswith("full sync of beta: copying:")]
    assert progress, lines
    assert re.fullmatch(
        r"full sync of beta: copying: \d+\.\d MiB of 16\.0 MiB \(\d+%\), [\d.]+ MiB/s, ETA [\d.]+s",
        progress[0],
    ), progress
    assert not ANSI.search(out.stdout + out.stderr)
    assert out.stderr == ""


def _failover_to_a_laggard(resource) -> LocalResource:
    """alpha primary; gamma (async) stopped while writes go on; alpha frozen (a hung primary:
    its kernel still accepts connections, so the probe cannot tell it is gone); gamma resumed.
    Promoting gamma now probes (alpha never answers: up to 3 heartbeats of 1 s) and then pulls
    what it lacks from beta. A killed alpha would refuse the connection and cost the probe no
    wait at all (test_events), too short for a progress line to show."""
    r = resource(
        {"alpha": "sync", "beta": "sync", "gamma": "async"}, heartbeat_ms=1000, srl_size=64 * MiB
    )
    r.up()
    r.promote("alpha")
    r.wait_synced()
    r.freeze("gamma")
    vol = r.connect("alpha")
    for i in range(500):  # more than the kernel buffers toward gamma hold
        vol.write((i % 64) * 65536, bytes([i % 251]) * 65536)
    vol.close()
    r.freeze("alpha")
    r.signal("gamma", signal.SIGCONT)
    return r


PROMOTED = re.compile(
    r"promoted: epoch \d+ starts at LSN \d+, pulled \d+ records from beta \([\d.]+s\)"
)


def test_promote_draws_a_bar_on_a_terminal(resource):
    r = _failover_to_a_laggard(resource)
    t = Pty(cli(r, "gamma", "promote"))
    t.read_until(lambda s: "promote r0/gamma: probing peers" in s, 30, "the promotion's bar")
    assert t.finish(120) == 0, t.text[-2000:]
    assert PROMOTED.search(t.text), t.text[-2000:]
    assert r.status("gamma")["role"] == "primary"


def test_promote_in_a_pipe_prints_plain_lines_and_the_same_last_line(resource):
    r = _failover_to_a_laggard(resource)
    out = r.replctl("gamma", "promote")
    lines = out.stdout.splitlines()
    assert "promote r0/gamma: probing peers" in lines, lines
    assert PROMOTED.fullmatch(lines[-1]), lines
    assert not ANSI.search(out.stdout + out.stderr) and out.stderr == "", out


def _down_with_a_write_pending(resource) -> tuple[LocalResource, threading.Thread]:
    """beta (sync) stopped, a write pending on alpha: down drains until beta counts as lost
    (3 heartbeats of 2 s) and the write completes degraded."""
    r = resource({"alpha": "sync", "beta": "sync"}, heartbeat_ms=2000)
    r.up()
    r.promote("alpha")
    r.wait_synced()
    r.freeze("beta")
    vol = r.connect("alpha")
    writer = threading.Thread(target=lambda: (vol.write(0, b"p" * 4096), vol.close()))
    writer.start()
    r.wait_for(lambda: r.status("alpha")["writes_pending"] == 1, 30, "a pending write")
    return r, writer


def test_down_draws_a_draining_bar_on_a_terminal(resource):
    r, writer = _down_with_a_write_pending(resource)
    t = Pty(cli(r, "alpha", "down"))
    t.read_until(lambda s: "stopping r0/alpha: draining writes" in s, 30, "the drain bar")
    assert t.finish(120) == 0, t.text[-2000:]
    writer.join(30)
    assert re.search(r"r0/alpha down; volume complete up to LSN \d+", t.text), t.text[-1000:]
    r.signal("beta", signal.SIGCONT)


def test_down_in_a_pipe_prints_plain_lines(resource):
    r, writer = _down_with_a_write_pending(resource)
    out = r.replctl("alpha", "down")
    writer.join(30)
    lines = out.stdout.splitlines()
    assert any(
        ln.startswith("stopping r0/alpha: draining writes: 0 of 1 writes") for ln in lines
    ), lines
    assert re.fullmatch(r"r0/alpha down; volume complete up to LSN \d+", lines[-1]), lines
    assert not ANSI.search(out.stdout) and out.stderr == "", out
    r.signal("beta", signal.SIGCONT)


def test_up_wait_returns_once_caught_up(resource):
    r = resource({"alpha": "sync", "beta": "sync", "gamma": "async"})
    r.up("alpha", "beta")
    r.promote("alpha")
    vol = r.connect("alpha")
    for i in range(100):
        vol.write(i * 4096, b"c" * 4096)
    vol.close()
    out = r.replctl("gamma", "up", "--wait", "--timeout", "120")
    last = out.stdout.splitlines()[-1]
    assert re.fullmatch(r"r0/gamma caught up with alpha at LSN (\d+)", last), out.stdout
    assert int(last.rsplit(" ", 1)[1]) >= 100
    st = r.status("gamma")
    assert st["end_lsn"] >= 101 and st["consistent"], st


# ---- pure parts: the write clock, the table's cells, plain progress lines ------------------------


def test_write_clock_gives_the_age_of_the_oldest_unacknowledged_write():
    from replengine.node.status import WriteClock

    c = WriteClock()
    for lsn, t in ((10, 100.0), (11, 100.5), (12, 101.0)):
        c.note(lsn, t, floor=1)
    assert c.age(13, 13, now=105.0) == 0.0  # nothing missing
    assert c.age(11, 13, now=105.0) == 4.5
    assert c.age(10, 13, now=105.0) == 5.0
    assert c.age(9, 13, now=105.0) is None  # written before the clock began
    c.note(13, 101.0005, floor=1)  # within the resolution: not sampled, dated by LSN 12
    assert c.age(13, 14, now=105.0) == 4.0
    for lsn in range(14, 5000):  # the log clears as it goes: the clock forgets as much
        c.note(lsn, 101.0 + lsn, floor=lsn - 2)
    assert len(c.lsns) < 3000, len(c.lsns)
    assert c.age(4998, 5000, now=6000.0) == 6000.0 - (101.0 + 4998)
    assert c.age(4990, 5000, now=6000.0) is None  # cleared from the log: forgotten


def test_table_cells_and_notes():
    from replengine.cli.status_view import duration, render, resync_cell, size

    assert [size(0), size(4096), size(3 << 20), size(None)] == ["0 B", "4.0 KiB", "3.0 MiB", "-"]
    assert [duration(0.25), duration(125), duration(7500)] == ["0.2s", "2m05s", "2h05m"]
    rs = {
        "phase": "copying",
        "bytes_done": 8 << 20,
        "bytes_total": 32 << 20,
        "rate_bytes_per_s": 4 << 20,
        "eta_s": 6.0,
    }
    assert resync_cell(rs) == "copying 8.0 MiB/32.0 MiB (25%), 4.0 MiB/s, ETA 6.0s"
    doc = {
        "resource": "r0",
        "node": "beta",
        "role": "secondary",
        "epoch": 2,
        "consistent": False,
        "srl": {"capacity": 1 << 20, "used_bytes": 1 << 19},
        "device": None,
        "device_error": None,
        "start_lsn": 5,
        "end_lsn": 9,
        "applied_end": 8,
        "following": None,
        "promotion": {
            "phase": "pull",
            "records_done": 3,
            "records_total": 10,
            "source": "gamma",
            "bytes_pulled": 12288,
            "seconds": 1.0,
        },
        "stopping": None,
        "writes_stalled": 0,
        "divergent_tail": {"records": 2, "bytes": 8192, "first_lsn": 7, "end_lsn": 9},
        "peers": {},
    }
    text = render(doc)
    assert "r0        beta  secondary  2      NO          512.0 KiB/1.0 MiB (50%)  -" in text
    assert "PROMOTING: pulling 3/10 records from gamma (12.0 KiB)" in text
    assert "divergent tail discarded: 2 records, 8192 bytes, LSNs [7, 9)" in text
    assert "PEER" not in text  # no peers, no peer table
    # why an inconsistent node is: the block copy it waits for (replctl invalidate)
    rw = {"phase": "waiting", "source": None, "owed_bytes": 64 << 20}
    rw |= {"missing_bytes": None, "received_bytes": None, "as_of_lsn": None}
    text = render(doc | {"rewind": rw})
    assert "INCONSISTENT: 64.0 MiB of blocks owed; fetched from the next primary" in text
    rw |= {"phase": "blocks", "source": "alpha", "missing_bytes": 3 << 20}
    text = render(doc | {"rewind": rw | {"received_bytes": 1 << 20}})
    assert (
        "INCONSISTENT: fetching blocks from alpha: 1.0 MiB received, at most 3.0 MiB to come "
        "(only chunks that differ are sent), 64.0 MiB owed"
    ) in text
    text = render(doc | {"rewind": rw | {"phase": "catchup", "as_of_lsn": 42}})
    assert "INCONSISTENT: blocks from alpha in; replaying its records up to LSN 42" in text


def test_plain_progress_lines_are_paced_and_name_each_phase(monkeypatch):
    import io

    from replengine.cli import progress

    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    bar = progress.Progress("sync", unit="bytes", tty=False, out=out)
    steps = [(0.5, 1 << 20, "a"), (1.2, 2 << 20, "a"), (2.0, 3 << 20, "a"), (3.3, 4 << 20, "a")]
    steps += [(3.4, 5 << 20, "b")]
    for t, done, phase in steps:
        now[0] = 1000.0 + t
        bar.update(done, 16 << 20, detail="1.0 MiB/s", phase=phase)
    assert out.getvalue().splitlines() == [
        "a: 2.0 MiB of 16.0 MiB (12%), 1.0 MiB/s",  # not before 1 s
        "a: 4.0 MiB of 16.0 MiB (25%), 1.0 MiB/s",  # 2 s later
        "b: 5.0 MiB of 16.0 MiB (31%), 1.0 MiB/s",  # a new phase: at once
    ]


def test_ctrl_c_stops_the_wait_not_the_full_sync(resource):
    r = _sync_resource(resource)
    proc = subprocess.Popen(
        cli(r, "alpha", "sync", "--full", "beta", "--wait"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        read_lines_until(
            proc,
            lambda ls: any(ln.startswith("full sync of beta: copying:") for ln in ls),
            60,
            "a progress line",
        )
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines() == [
        "replctl sync: interrupted; the daemon carries on with what it was asked "
        "(see 'replctl status')"
    ], err
    r.wait_for(
        lambda: (p := peer(r, "alpha", "beta"))["state"] == "up-to-date" and p["resync"] is None,
        60,
        "the full sync to end without replctl",
    )
    assert r.status("alpha")["dcm"]["last_resync"]["peer"] == "beta"
