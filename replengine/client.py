"""Local client API: applications write to the primary through its daemon.

    from replengine.client import connect
    with connect("/etc/replengine/r0.toml") as vol:
        vol.write(0, b"x" * 4096)      # returns once durable per the resource's policy
        data = vol.read(0, 4096)

A write returns only when the record is durable in the primary's SRL and in every sync
secondary that counts (invariant 1). `submit()`/`wait()` keep several writes in flight.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import zmq

from replengine import config as configmod
from replengine.errors import ReplError, RoleError


def _daemon_alive(rundir: Path) -> bool:
    """A socket file left by a killed daemon must not make callers wait for a timeout."""
    from replengine.localcluster import is_daemon

    try:
        return is_daemon(int((rundir / "replengined.pid").read_text()), rundir.name)
    except (FileNotFoundError, ValueError):
        return False


class ControlClient:
    """Request/response over the daemon's control socket (mode 0600: root only)."""

    def __init__(self, sock_path: Path, timeout_s: float = 30.0) -> None:
        self.sock_path = sock_path
        if not sock_path.exists() or not _daemon_alive(sock_path.parent):
            raise ReplError(f"no daemon listening at {sock_path} (is it up? 'replctl up')")
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{sock_path}")
        self.timeout_ms = int(timeout_s * 1000)
        self._ids = itertools.count(1)
        self._done: dict[int, tuple[dict, bytes | None]] = {}

    def send(self, op: str, data: Any = None, **fields: Any) -> int:
        req_id = next(self._ids)
        frames: list = [json.dumps({"op": op, "id": req_id, **fields}).encode()]
        if data is not None:
            frames.append(data)
        self.sock.send_multipart(frames, copy=len(frames) == 1 or len(data) < 65536)
        return req_id

    def wait(self, req_id: int, timeout_s: float | None = None) -> tuple[dict, bytes | None]:
        timeout = self.timeout_ms if timeout_s is None else int(timeout_s * 1000)
        while req_id not in self._done:
            if not self.sock.poll(timeout):
                raise ReplError(f"daemon at {self.sock_path} did not answer within "
                                f"{timeout / 1000:.0f}s")
            frames = self.sock.recv_multipart()
            doc = json.loads(frames[0])
            self._done[doc.get("id")] = (doc, frames[1] if len(frames) > 1 else None)
        return self._done.pop(req_id)

    def call(self, op: str, data: Any = None, timeout_s: float | None = None,
             **fields: Any) -> tuple[dict, bytes | None]:
        doc, payload = self.wait(self.send(op, data, **fields), timeout_s)
        if not doc.get("ok"):
            raise ReplError(doc.get("error", "unknown error"))
        return doc, payload

    def close(self) -> None:
        self.sock.close(0)


class Volume:
    """A replicated volume as seen by an application on the primary."""

    def __init__(self, ctl: ControlClient) -> None:
        self._ctl = ctl
        self._inflight: set[int] = set()

    def write(self, offset: int, data: bytes) -> int:
        """Write and wait; returns the record's LSN."""
        return self.wait(self.submit(offset, data))

    def submit(self, offset: int, data: bytes) -> int:
        """Start a write; pair with wait(). Lets callers keep a queue depth above one."""
        req = self._ctl.send("write", data, offset=offset)
        self._inflight.add(req)
        return req

    def wait(self, req: int) -> int:
        doc, _ = self._ctl.wait(req)
        self._inflight.discard(req)
        if not doc.get("ok"):
            raise ReplError(doc.get("error", "write failed"))
        return int(doc["lsn"])

    def read(self, offset: int, length: int) -> bytes:
        _, payload = self._ctl.call("read", offset=offset, length=length)
        return payload or b""

    def flush(self) -> None:
        for req in list(self._inflight):
            self.wait(req)
        self._ctl.call("flush")

    def status(self) -> dict:
        return self._ctl.call("status")[0]

    def close(self) -> None:
        self._ctl.close()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def control(config_path: str | Path, node: str | None = None,
            timeout_s: float = 30.0) -> ControlClient:
    cfg = configmod.load(config_path, node=node, check_local=False)
    return ControlClient(cfg.runtime_dir() / "control.sock", timeout_s)


def connect(config_path: str | Path, node: str | None = None) -> Volume:
    """Open the resource's volume on this node; RoleError unless this node is the primary."""
    ctl = control(config_path, node)
    st = ctl.call("status")[0]
    if st["role"] != "primary":
        ctl.close()
        where = f" (the primary is {st['following']})" if st.get("following") else ""
        raise RoleError(f"node {st['node']} of {st['resource']} is a secondary{where}: "
                        "writes go to the primary")
    return Volume(ctl)
