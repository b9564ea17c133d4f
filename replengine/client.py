"""Local client API: applications write to the primary through its daemon.

    from replengine.client import connect
    with connect("/etc/replengine/r0.toml") as vol:
        vol.write(0, b"x" * 4096)      # returns once durable per the resource's policy
        data = vol.read(0, 4096)

A write returns only when the record is durable in the primary's SRL and in every sync
secondary that counts (invariant 1). `submit()`/`wait()` keep several writes in flight.
"""

from __future__ import annotations

from pathlib import Path

from replengine import config as configmod
from replengine.errors import ReplError, RoleError
from replengine.runtime import CONTROL_SOCKET
from replengine.wire.control import ControlClient


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


def control(
    config_path: str | Path, node: str | None = None, timeout_s: float = 30.0
) -> ControlClient:
    cfg = configmod.load(config_path, node=node, check_local=False)
    return ControlClient(cfg.runtime_dir() / CONTROL_SOCKET, timeout_s)


def connect(config_path: str | Path, node: str | None = None) -> Volume:
    """Open the resource's volume on this node; RoleError unless this node is the primary."""
    ctl = control(config_path, node)
    st = ctl.call("status")[0]
    if st["role"] != "primary":
        ctl.close()
        where = f" (the primary is {st['following']})" if st.get("following") else ""
        raise RoleError(
            f"node {st['node']} of {st['resource']} is a secondary{where}: writes go to the primary"
        )
    return Volume(ctl)
