"""Helpers of the cluster tests (test_replengine_cluster.py, test_filesystem_cluster.py): a
resource of the namespace cluster (r0 unless told), and a small in-node tool.

Host side (imported by the test): write the resource config, install the OCF agent with its
shebang pointed at this interpreter, ask the nodes for their daemon's status/checksum, read
promotion scores, and show the daemon/agent logs when something fails.

Node side (run inside a node, ``python replengine_helpers.py VERB ...``; standard library and
replengine only, because it runs with the node's clean environment):

  write CONFIG LEDGER TAG FIRST COUNT BLOCK0 [DEPTH]
        COUNT 4 KiB writes through the client API (replengine.client.connect), DEPTH of them
        in flight (default 1); write k goes to block BLOCK0 + k with data(TAG, k).  After
        each write has *returned* (= completed), one line "TAG k offset lsn" is appended to
        LEDGER and flushed, so the ledger holds exactly the completed writes even if the node
        is killed mid-run.
  check CONFIG LEDGER...
        read every ledger entry back through the client API; prints a JSON summary.
  checksum CONFIG
        the local daemon's volume checksum (after its applier has caught up), as JSON.
  status CONFIG
        the local daemon's status, as JSON.
  fswrite DIR COUNT SEED
        COUNT files of 1 byte .. 256 KiB (random, from SEED) in DIR of a mounted file system,
        each written, fsync'ed and closed, then DIR itself fsync'ed (so that the names are
        durable too); prints {name: sha256} of what was written, only once all of it is
        durable.
  fssum DIR
        {name: sha256} of every regular file in DIR, as JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
AGENT_SRC = REPO / "ocf" / "replengine"
BLOCK = 4096
RESOURCE = "r0"
UUID = "5b0c7a52-8d0e-4d8a-9c35-2f7a0f6c1e01"
VOLUME_SIZE = 64 << 20
SRL_SIZE = 64 << 20
PORT = 7790


def data(tag: str, k: int) -> bytes:
    """The 4 KiB written by write k of ledger tag: unique per (tag, k)."""
    return hashlib.sha256(f"{tag}:{k}".encode()).digest() * (BLOCK // 32)


# ----------------------------------------------------------------------------- node side


def _node_write(
    cfg: str, ledger: str, tag: str, first: int, count: int, block0: int, depth: int = 1
) -> int:
    from collections import deque

    from replengine.client import connect

    done = 0
    inflight: deque = deque()
    with connect(cfg) as vol, open(ledger, "a") as out:

        def complete() -> None:
            nonlocal done
            req, k, off = inflight.popleft()
            lsn = vol.wait(req)
            out.write(f"{tag} {k} {off} {lsn}\n")
            out.flush()
            done += 1

        for k in range(first, first + count):
            off = (block0 + k) * BLOCK
            inflight.append((vol.submit(off, data(tag, k)), k, off))
            if len(inflight) >= depth:
                complete()
        while inflight:
            complete()
    print(json.dumps({"written": done}))
    return 0


def read_ledger(path: str | os.PathLike) -> list[tuple[str, int, int, int]]:
    """Complete lines of a ledger file (a line cut by a crash is not a completed write)."""
    entries = []
    with contextlib.suppress(FileNotFoundError):
        for line in Path(path).read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            tag, k, off, lsn = line.split()
            entries.append((tag, int(k), int(off), int(lsn)))
    return entries


def _node_check(cfg: str, ledgers: list[str]) -> int:
    from replengine.client import connect

    checked, bad = 0, []
    with connect(cfg) as vol:
        for ledger in ledgers:
            for tag, k, off, lsn in read_ledger(ledger):
                got = vol.read(off, BLOCK)
                checked += 1
                if got != data(tag, k):
                    bad.append(
                        {
                            "tag": tag,
                            "k": k,
                            "offset": off,
                            "lsn": lsn,
                            "zero": got == bytes(len(got)),
                            "len": len(got),
                        }
                    )
        st = vol.status()
    print(
        json.dumps(
            {
                "checked": checked,
                "bad": bad[:20],
                "bad_count": len(bad),
                "node": st["node"],
                "role": st["role"],
                "end_lsn": st["end_lsn"],
            }
        )
    )
    return 0


def _ctl(cfg_path: str):
    from replengine import config as configmod
    from replengine.client import ControlClient

    cfg = configmod.load(cfg_path, check_local=False)
    return ControlClient(cfg.runtime_dir() / "control.sock", timeout_s=120)


def _node_call(cfg: str, op: str) -> int:
    ctl = _ctl(cfg)
    try:
        doc = ctl.call(op, timeout_s=120)[0]
    finally:
        ctl.close()
    doc.pop("id", None)
    doc.pop("chunks", None)
    print(json.dumps(doc))
    return 0


def _node_fswrite(directory: str, count: int, seed: int) -> int:
    import random

    rng = random.Random(seed)
    sums = {}
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        name = f"file-{seed}-{k:03d}"
        body = rng.randbytes(rng.randint(1, 256 << 10))
        fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        sums[name] = hashlib.sha256(body).hexdigest()
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    print(json.dumps(sums))
    return 0


def _node_fssum(directory: str) -> int:
    sums = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).iterdir())
        if p.is_file()
    }
    print(json.dumps(sums))
    return 0


def node_main(argv: list[str]) -> int:
    verb, args = argv[0], argv[1:]
    if verb == "write":
        cfg, ledger, tag, first, count, block0, *depth = args
        return _node_write(
            cfg, ledger, tag, int(first), int(count), int(block0), int(depth[0]) if depth else 1
        )
    if verb == "check":
        return _node_check(args[0], args[1:])
    if verb in ("checksum", "status"):
        return _node_call(args[0], verb)
    if verb == "fswrite":
        return _node_fswrite(args[0], int(args[1]), int(args[2]))
    if verb == "fssum":
        return _node_fssum(args[0])
    print(f"unknown verb {verb}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- host side


def create_clone(cluster: Any, resource: str, cfg: Path) -> None:
    """`pcs resource create` as the README says: a promotable clone with notify."""
    cluster.pcs(
        "resource",
        "create",
        resource,
        "ocf:replengine:replengine",
        f"resource={resource}",
        f"config={cfg}",
        "promotable",
        "notify=true",
    )


def write_config(
    cluster: Any,
    path: Path,
    run_dir: Path,
    modes: dict[int, str],
    device: str = "none",
    resource: str = RESOURCE,
    uuid: str = UUID,
    port: int = PORT,
) -> Path:
    """A resource (r0 unless told) over the cluster's nodes: sparse 64 MiB volume + 64 MiB
    SRL in each node dir.  Another module's resource takes another name, uuid and port, so
    that the two never share files, a listening port or the machine-wide device name
    /dev/replengine/<resource>."""
    lines = [
        "[resource]",
        f'name = "{resource}"',
        f'uuid = "{uuid}"',
        'srl_full = "stall"',
        'on_sync_loss = "degrade"',
        "heartbeat_ms = 300",
        f'run_dir = "{run_dir}"',
        f'device = "{device}"',
    ]
    for i in cluster.nodes:
        d = cluster.node_dir(i)
        vol, srl = d / f"{resource}-volume.img", d / f"{resource}-srl.img"
        for f, size in ((vol, VOLUME_SIZE), (srl, SRL_SIZE)):
            with open(f, "wb") as fh:
                fh.truncate(size)
        lines += [
            "",
            f'[nodes."{cluster.name(i)}"]',
            f'address = "{cluster.addr(i)}:{port}"',
            f'volume = "{vol}"',
            f'srl = "{srl}"',
            f'mode = "{modes[i]}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def install_agent(cluster: Any, workdir: Path) -> str:
    """ocf:replengine:replengine, its shebang pointed at this interpreter (the venv's)."""
    body = AGENT_SRC.read_text().split("\n", 1)[1]
    src = workdir / "replengine-agent"
    src.write_text(f"#!{sys.executable}\n{body}")
    return cluster.install_agent(src, "replengine", "replengine")


def node_tool(cluster: Any, i: int, *args: Any, timeout: float = 120, check: bool = True):
    return cluster.run(i, sys.executable, str(HERE), *args, timeout=timeout, check=check)


def node_json(cluster: Any, i: int, *args: Any, timeout: float = 120) -> dict:
    return json.loads(node_tool(cluster, i, *args, timeout=timeout).stdout)


def replctl(cluster: Any, i: int, *args: Any, check: bool = True, timeout: float = 60):
    return cluster.run(
        i, sys.executable, "-m", "replengine.cli", *args, check=check, timeout=timeout
    )


def status(cluster: Any, i: int, cfg: Path) -> dict:
    """`replctl status --json` inside node i."""
    return json.loads(replctl(cluster, i, "status", "--json", "--config", cfg, timeout=30).stdout)


def promotion_score(cluster: Any, asker: int, node: str) -> str | None:
    """The transient promotion score of r0 on node (Pacemaker 2.1: master-r0; 3.x:
    promotion-r0), read with crm_attribute from node `asker`; None if absent."""
    for name in (f"master-{RESOURCE}", f"promotion-{RESOURCE}"):
        res = cluster.run(
            asker,
            "crm_attribute",
            "-t",
            "status",
            "-l",
            "reboot",
            "-N",
            node,
            "-n",
            name,
            "-G",
            "-q",
            check=False,
            timeout=20,
        )
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
    return None


def agent_log_count(cluster: Any, i: int, text: str) -> int:
    """How many of node i's pacemaker.log lines (kept across reboots) hold the agent's text."""
    path = cluster.log_dir(i) / "pacemaker" / "pacemaker.log"
    try:
        return sum(
            1
            for line in path.read_text(errors="replace").splitlines()
            if "replengine(" in line and text in line
        )
    except OSError:
        return 0


def tail(path: Path, n: int = 60, grep: str | None = None) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({path}: {e})"
    if grep:
        lines = [line for line in lines if grep in line]
    return "\n".join(lines[-n:])


def diagnostics(cluster: Any, run_dir: Path, resource: str = RESOURCE) -> str:
    """Daemon logs, the agent's lines of pacemaker.log, fence events."""
    parts = []
    for i in cluster.nodes:
        name = cluster.name(i)
        parts.append(f"===== {name} replengined.log (tail)")
        parts.append(tail(run_dir / resource / name / "replengined.log", 80))
        parts.append(f"===== {name} pacemaker.log: agent lines (tail)")
        parts.append(
            tail(cluster.log_dir(i) / "pacemaker" / "pacemaker.log", 60, grep="replengine(")
        )
    parts.append(f"fence events: {cluster.fence_events}")
    return "\n".join(parts)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


if __name__ == "__main__":
    sys.exit(node_main(sys.argv[1:]))
