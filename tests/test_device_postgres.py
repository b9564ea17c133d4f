"""PostgreSQL 15 on the replicated block device through a failover: nothing committed is lost.

The engine tests check bytes; this one checks what an application is promised (README rule 6,
nothing acknowledged is lost with a sync secondary surviving). A real PostgreSQL, with its
durable defaults, runs on ext4 on alpha's device; one psql session inserts one row per
transaction and counts a row only once the server has acknowledged its COMMIT. Then alpha
"dies" while the writer is mid-transaction: the daemon is SIGKILLed, so PostgreSQL's writes in
flight fail, then the postmaster and all its children are SIGKILLed (no shutdown checkpoint,
WAL in flight). beta is promoted, PostgreSQL starts on beta's copy and runs crash recovery,
and every acknowledged row must be there, intact, with the table and its index passing
amcheck and the file system passing e2fsck.

PostgreSQL refuses to run as root, so initdb, pg_ctl and psql run as the `postgres` OS user
(runuser). That user cannot enter pytest's tmp_path (/tmp/pytest-of-root is mode 0700), so the
mount points, sockets and server logs live in a directory of their own under /tmp that
postgres may traverse; the logs are copied into tmp_path at the end for the report.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from replengine.demo.localcluster import LocalResource, free_ports
from tests.device_helpers import sh

MiB = 1 << 20
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_TOOLS = ("initdb", "pg_ctl", "postgres", "psql")
#: two sync nodes (the survivor must hold every acknowledged write) and one async
NODES = {"alpha": "sync", "beta": "sync", "gamma": "async"}
#: rows the writer must have had acknowledged before alpha dies
COMMITS_BEFORE_KILL = 300
#: a CHECKPOINT after this row: recovery then starts after it, and the pages written after
#: it need their full-page images in the WAL (full_page_writes=on)
CHECKPOINT_AFTER_ROW = 100
#: PostgreSQL's defaults, set explicitly so a changed postgresql.conf cannot weaken the test
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
PR_SET_CHILD_SUBREAPER = 36
TIMEOUT = 300.0


def skip_reason() -> str | None:
    """Skip only where the test cannot mean anything; on CI a missing PostgreSQL fails it."""
    if os.geteuid() != 0:
        return "needs root (FUSE mount, loop device, mount, runuser)"
    missing = [t for t in PG_TOOLS if not (PG_BIN / t).exists()]
    if missing and not os.environ.get("CI"):
        return (
            f"PostgreSQL 15 is not installed ({PG_BIN / missing[0]} is missing; "
            "bash scripts/install-cluster-deps.sh installs it)"
        )
    return None


def as_postgres(*argv: str | Path) -> list[str]:
    """The command line running ``argv`` as the postgres OS user."""
    return ["runuser", "-u", "postgres", "--", *map(str, argv)]


def run_as_postgres(*argv: str | Path, cwd: Path) -> str:
    """Run a PostgreSQL tool as postgres; its stdout, or a failure naming what it said."""
    proc = subprocess.run(
        as_postgres(*argv), capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


def reap(pid: int, deadline: float) -> None:
    """Wait until ``pid`` has exited and reap it if it is our child (it is: the test is a
    child subreaper, so the orphaned postmaster and its children are reparented to it).

    A zombie would still answer kill(pid, 0): PostgreSQL on beta, reading the old
    postmaster's pid from the recovered postmaster.pid, would then refuse to start,
    believing another postmaster runs there."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"process {pid} still running after SIGKILL"
        with contextlib.suppress(ChildProcessError):  # already reaped
            os.waitpid(pid, 0)
    finally:
        os.close(fd)


def sigkill(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)


def orphaned_postgres() -> list[psutil.Process]:
    """The postgres user's processes whose parent died (a killed postmaster's children),
    reparented to this test as the subreaper; zombies too, since they need reaping."""
    uid = pwd.getpwnam("postgres").pw_uid
    out: list[psutil.Process] = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.uids().real == uid:
                out += [child, *child.children(recursive=True)]
    return out


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Make this process the child subreaper while PostgreSQL runs, so that pg_ctl's
    orphaned postmaster (and, when it is killed, its children) can be waited for as events
    instead of polled for until init gets round to reaping them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(0), 0, 0, 0)


def unmount(where: Path, lazy: bool = False) -> None:
    """Unmount if mounted; lazily when asked or when a plain unmount fails."""
    if not os.path.ismount(where):
        return
    if lazy or sh("umount", where, check=False).returncode != 0:
        sh("umount", "--lazy", where)


class Postgres:
    """One PostgreSQL 15 cluster on a data directory, run as the postgres OS user,
    listening only on a unix socket in ``sockdir`` (the port only names the socket)."""

    def __init__(self, datadir: Path, sockdir: Path, port: int, logfile: Path) -> None:
        self.datadir, self.sockdir, self.port, self.logfile = datadir, sockdir, port, logfile
        self.cwd = sockdir.parent  # postgres may enter it (runuser keeps root's cwd otherwise)
        self.pid: int | None = None

    def initdb(self) -> None:
        """A new cluster with data checksums, so a torn or stale page on the survivor is
        an error when read instead of silently wrong rows."""
        run_as_postgres(
            PG_BIN / "initdb",
            "-D",
            self.datadir,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--data-checksums",
            "--no-instructions",
            cwd=self.cwd,
        )

    def start(self) -> None:
        """pg_ctl -w: returns once the server accepts connections (after crash recovery)."""
        opts = [
            "-c listen_addresses=''",
            f"-c unix_socket_directories='{self.sockdir}'",
            f"-p {self.port}",
            *(f"-c {k}={v}" for k, v in DURABLE.items()),
        ]
        run_as_postgres(
            PG_BIN / "pg_ctl",
            "start",
            "-w",
            "-t",
            str(int(TIMEOUT)),
            "-D",
            self.datadir,
            "-l",
            self.logfile,
            "-o",
            " ".join(opts),
            cwd=self.cwd,
        )
        self.pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])

    def psql_argv(self, *extra: str) -> list[str]:
        return as_postgres(
            PG_BIN / "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.sockdir,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            *extra,
        )

    def query(self, sql: str) -> str:
        """One statement through psql, unaligned and tuples only."""
        proc = subprocess.run(
            self.psql_argv("-q", "-At", "-c", sql),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=self.cwd,
        )
        assert proc.returncode == 0, f"psql -c {sql!r} failed: {proc.stderr.strip()}"
        return proc.stdout.strip()

    def kill(self) -> int:
        """kill -9 the postmaster and all its children, as on a node that died, and reap
        every one; how many there were.

        The postmaster may be forking (a new backend, or a restart after a PANIC on the
        dead device) or already gone: once it has exited, every child it had is reparented
        to this test (the subreaper), so the sweep after it finds the ones a snapshot
        missed."""
        deadline = time.monotonic() + 60
        procs: list[psutil.Process] = []
        if self.pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                pm = psutil.Process(self.pid)
                procs = [pm, *pm.children(recursive=True)]
        sigkill(procs)
        if self.pid is not None:
            reap(self.pid, deadline)
        rest = orphaned_postgres()
        sigkill(rest)
        for p in procs + rest:
            reap(p.pid, deadline)
        self.pid = None
        return len({p.pid for p in procs + rest})

    def stop(self) -> None:
        """A clean shutdown (shutdown checkpoint), then reap the postmaster."""
        run_as_postgres(
            PG_BIN / "pg_ctl", "stop", "-w", "-m", "fast", "-D", self.datadir, cwd=self.cwd
        )
        if self.pid is not None:
            reap(self.pid, time.monotonic() + 60)
        self.pid = None

    def ensure_gone(self) -> None:
        """Cleanup after a failure: no PostgreSQL process may outlive the test."""
        self.kill()


class LedgerWriter(threading.Thread):
    """One persistent psql session inserting ledger rows 1, 2, 3 ..., one transaction each.

    After every INSERT it sends ``\\echo committed N``; psql runs a command only after the
    server answered the previous one, and in autocommit mode with synchronous_commit=on that
    answer comes only once the commit record is flushed. So reading the marker back is the
    acknowledgement: row N counts as committed then, and only then. A row sent but not
    acknowledged when the node dies may or may not survive."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        super().__init__(name="ledger-writer", daemon=True)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            start_new_session=True,  # runuser and psql in one group, killed together
        )
        self.committed: list[int] = []
        self.sent = 0
        self.last_line = ""
        self.error: OSError | None = None
        self.ended = False
        self.cond = threading.Condition()
        self.stop_ev = threading.Event()

    def run(self) -> None:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            while not self.stop_ev.is_set():
                n = self.sent + 1
                self.sent = n
                sql = f"INSERT INTO ledger (id, payload) VALUES ({n}, repeat(md5('{n}'), 8));\n"
                if n == CHECKPOINT_AFTER_ROW:
                    sql += "CHECKPOINT;\n"
                stdin.write(f"{sql}\\echo committed {n}\n")
                stdin.flush()
                line = stdout.readline()
                if line != f"committed {n}\n":
                    self.last_line = line
                    return
                with self.cond:
                    self.committed.append(n)
                    self.cond.notify_all()
        except OSError as exc:  # psql is gone (broken pipe)
            self.error = exc
        finally:
            with self.cond:
                self.ended = True
                self.cond.notify_all()

    def wait_committed(self, count: int, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: len(self.committed) >= count or self.ended, timeout)
            done = len(self.committed)
        assert done >= count, (
            f"only {done} rows committed in {timeout}s (writer ended: {self.ended}, "
            f"last line {self.last_line!r}, error {self.error}, psql: {self.stderr()})"
        )

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(running)"
        return self.proc.stderr.read().strip()

    def close(self) -> None:
        """Cleanup: kill psql (and runuser) if still running, and join the thread."""
        self.stop_ev.set()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)
        self.join(60)


@contextlib.contextmanager
def workspace(keep_logs_in: Path) -> Iterator[Path]:
    """A directory postgres may traverse, holding mount points, sockets and logs; at the
    end the server logs are copied to ``keep_logs_in`` and the directory is removed, unless
    something is still mounted in it (then removing it would delete a file system's
    contents)."""
    root = Path(tempfile.mkdtemp(prefix="pgdev-", dir="/tmp"))
    root.chmod(0o711)
    pg = pwd.getpwnam("postgres")
    for sub in ("log", "sock-alpha", "sock-beta"):
        (root / sub).mkdir(mode=0o700)
        os.chown(root / sub, pg.pw_uid, pg.pw_gid)
    try:
        yield root
    finally:
        shutil.copytree(root / "log", keep_logs_in / "pglogs", dirs_exist_ok=True)
        if not any(os.path.ismount(p) for p in root.iterdir()):
            shutil.rmtree(root)


def mount(dev: str, where: Path) -> None:
    where.mkdir(exist_ok=True)
    sh("mount", dev, where)


SEVERE = re.compile(r"\b(WARNING|ERROR|FATAL|PANIC):\s")


@pytest.mark.slow
@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_postgres_keeps_every_committed_row_through_sigkill_of_the_primary(
    resource: Callable[..., LocalResource], tmp_path: Path
) -> None:
    t0 = time.monotonic()
    missing = [t for t in PG_TOOLS if not (PG_BIN / t).exists()]
    assert not missing, f"CI is set but PostgreSQL 15 lacks {missing}: install postgresql"
    r = resource(NODES, name="pgdev", device="fuse-loop", volume_size=256 * MiB, srl_size=64 * MiB)
    r.up()
    pg_user = pwd.getpwnam("postgres")
    port = free_ports(1)[0]
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(workspace(tmp_path))
        stack.enter_context(subreaper())

        # ---- alpha: ext4, a new cluster, the ledger, the writer ----------------------------
        r.promote("alpha")
        r.wait_synced()  # the first promotion's full syncs: until they end, no sync replica
        st_a = r.status("alpha")
        dev_a, kernel_a = st_a["device"], st_a["device_kernel"]
        assert dev_a and os.path.realpath(dev_a) == kernel_a, st_a
        sh("mkfs.ext4", "-q", dev_a)
        mnt_a = root / "mnt-alpha"
        mount(dev_a, mnt_a)
        stack.callback(unmount, mnt_a, True)
        data_a = mnt_a / "pgdata"
        data_a.mkdir(mode=0o700)
        os.chown(data_a, pg_user.pw_uid, pg_user.pw_gid)
        pg_a = Postgres(data_a, root / "sock-alpha", port, root / "log" / "alpha.log")
        pg_a.initdb()
        stack.callback(pg_a.ensure_gone)
        pg_a.start()
        for name, want in DURABLE.items():
            assert pg_a.query(f"SHOW {name}") == want, name
        pg_a.query("CREATE TABLE ledger (id bigint PRIMARY KEY, payload text NOT NULL)")
        t_ready = time.monotonic()

        writer = LedgerWriter(pg_a.psql_argv("-q"), root)
        stack.callback(writer.close)
        writer.start()
        writer.wait_committed(COMMITS_BEFORE_KILL, TIMEOUT)
        t_written = time.monotonic()

        # ---- alpha dies: the daemon first (PostgreSQL's writes in flight fail, no commit
        # can be flushed any more), then every PostgreSQL process ------------------------
        r.kill("alpha")
        killed = pg_a.kill()
        writer.join(60)
        assert not writer.is_alive(), "psql still waits for a server that was killed"
        psql_rc = writer.proc.wait(60)
        psql_said = writer.stderr().splitlines()[-1:]
        committed, sent = list(writer.committed), writer.sent
        unmount(mnt_a, lazy=True)

        # ---- beta takes over: its copy, journal replay, PostgreSQL crash recovery --------
        t_fail = time.monotonic()
        r.promote("beta")
        st = r.status("beta")
        dev_b = st["device"]
        assert dev_b and os.path.realpath(dev_b) == st["device_kernel"], st
        mnt_b = root / "mnt-beta"
        mount(dev_b, mnt_b)
        stack.callback(unmount, mnt_b)
        pg_b = Postgres(mnt_b / "pgdata", root / "sock-beta", port, root / "log" / "beta.log")
        stack.callback(pg_b.ensure_gone)
        pg_b.start()
        t_up = time.monotonic()

        log = pg_b.logfile.read_text()
        assert "database system was interrupted" in log, log
        assert "automatic recovery in progress" in log, log
        assert "redo done at" in log, log
        assert "database system is ready to accept connections" in log, log
        severe = [line for line in log.splitlines() if SEVERE.search(line)]
        assert not severe, "PostgreSQL on beta logged:\n" + "\n".join(severe)

        rows = pg_b.query("SELECT id FROM ledger ORDER BY id")
        found = [int(x) for x in rows.split()]
        lost = sorted(set(committed) - set(found))
        assert not lost, (
            f"{len(lost)} of {len(committed)} committed rows missing after the failover: "
            f"{lost[:20]}"
        )
        phantom = sorted(set(found) - set(range(1, sent + 1)))
        assert not phantom, f"rows never sent are in the table: {phantom[:20]}"
        assert len(found) == len(set(found))
        bad = pg_b.query("SELECT count(*) FROM ledger WHERE payload <> repeat(md5(id::text), 8)")
        assert bad == "0", f"{bad} rows with a wrong payload"
        pg_b.query("CREATE EXTENSION amcheck")
        heap = pg_b.query("SELECT count(*) FROM verify_heapam('ledger')")
        assert heap == "0", pg_b.query("SELECT * FROM verify_heapam('ledger') LIMIT 10")
        pg_b.query("SELECT bt_index_parent_check('ledger_pkey', true)")
        # the survivor takes writes again
        pg_b.query(f"INSERT INTO ledger (id, payload) VALUES ({sent + 1}, 'after failover')")

        pg_b.stop()
        unmount(mnt_b)
        fsck = sh("e2fsck", "-fn", dev_b, check=False)
        assert fsck.returncode == 0, f"e2fsck -fn after the failover: {fsck.stdout}{fsck.stderr}"
        t_end = time.monotonic()

    print(
        f"\npgdev: {len(committed)} rows committed before the kill ({sent} sent), "
        f"{len(found)} found on beta, all {len(committed)} committed among them, "
        f"{len(found) - len(committed)} in flight kept; {killed} postgres processes killed, "
        f"psql exited {psql_rc} {psql_said}; setup {t_ready - t0:.1f}s, "
        f"writing {t_written - t_ready:.1f}s ({len(committed) / (t_written - t_ready):.0f} "
        f"commits/s), failover to ready {t_up - t_fail:.1f}s, checks {t_end - t_up:.1f}s; "
        f"devices {dev_a} -> {kernel_a} on alpha, {dev_b} -> {st['device_kernel']} on beta"
    )
