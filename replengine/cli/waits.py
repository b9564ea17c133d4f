"""What replctl shows while it waits: promote pulling, down draining, a full sync, a catch-up.

Each function maps the node's status document (docs/status-schema.md) onto a Progress; the
commands' answers and final lines are the commands' own (replengine.cli.main).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from replengine.cli.progress import POLL_S, Progress, poll_status, rate_eta
from replengine.cli.status_view import size
from replengine.errors import ReplError


def promote_view(bar: Progress, name: str) -> Callable[[dict[str, Any]], None]:
    """A promotion: probing the peers, then pulling the records this node lacks."""

    def show(st: dict[str, Any]) -> None:
        prom = st.get("promotion")
        if not prom:
            return
        if prom["phase"] == "pull":
            bar.update(
                prom["records_done"],
                prom["records_total"],
                detail=f"{size(prom['bytes_pulled'])}",
                phase=f"promote {name}: pulling from {prom['source']}",
            )
        else:
            bar.update(phase=f"promote {name}: probing peers")

    return show


@dataclass
class DownView:
    """`down`: the writes the primary still waits for before it stops."""

    bar: Progress
    name: str
    most: int = 0

    def __call__(self, st: dict[str, Any]) -> None:
        stop = st.get("stopping")
        if not stop:
            return
        left = stop["writes_pending"]
        self.most = max(self.most, left)
        if self.most:
            self.bar.update(
                self.most - left,
                self.most,
                detail=f"drain timeout {stop['drain_timeout_s']:g}s",
                phase=f"stopping {self.name}: draining writes",
            )
        else:
            self.bar.update(phase=f"stopping {self.name}: applying the log")


def wait_peer_synced(
    socket_path: Any, peer: str, timeout_s: float, bar: Progress
) -> dict[str, Any]:
    """On the primary: until ``peer`` is up to date with no resync running (the end of a
    `sync --full`). The bar shows the resync's bytes, rate and ETA as the status gives them,
    then the records it catches up. Raises ReplError when ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = poll_status(socket_path, timeout_s=10)
        if st is not None:
            p = st["peers"][peer]
            rs = p.get("resync")
            if rs is None and p["state"] == "up-to-date":
                return p
            if rs is not None:
                bar.update(
                    rs["bytes_done"],
                    rs["bytes_total"],
                    detail=rate_eta(rs["rate_bytes_per_s"], rs["eta_s"]),
                    phase=f"full sync of {peer}: {rs['phase']}",
                )
            elif p["state"] in ("catching-up", "up-to-date") and p["lag_records"]:
                bar.update(phase=f"full sync of {peer}: catching up {p['lag_records']} records")
            else:
                bar.update(phase=f"full sync of {peer}: {p['state']}")
        if time.monotonic() >= deadline:
            raise ReplError(f"{peer} not in sync after {timeout_s:g}s")
        time.sleep(POLL_S)


def caught_up(st: dict[str, Any]) -> bool:
    """A secondary following a primary, consistent, holding every record the primary last
    told it has (its HELLO, every heartbeat)."""
    primary = st.get("following")
    if st["role"] == "primary":
        return True
    if not primary or not st["consistent"] or st["rewinding"]:
        return False
    told = st["peers"].get(primary, {}).get("end_lsn")
    return told is not None and st["end_lsn"] >= told


def wait_caught_up(socket_path: Any, name: str, timeout_s: float, bar: Progress) -> dict[str, Any]:
    """`up --wait`: until this node has caught up with its primary (or is primary itself).
    Raises ReplError naming what it still waits for when ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    first: int | None = None
    why = "its daemon did not answer"
    while True:
        st = poll_status(socket_path, timeout_s=10)
        if st is not None:
            if caught_up(st):
                return st
            primary = st.get("following")
            if not primary:
                why = "no primary to follow (is one promoted and reachable?)"
                bar.update(phase=f"{name}: looking for a primary")
            elif not st["consistent"]:
                why = f"its volume is still being rebuilt from {primary}'s blocks"
                bar.update(phase=f"{name}: full sync from {primary} (inconsistent until done)")
            else:
                told = st["peers"][primary].get("end_lsn") or st["end_lsn"]
                first = st["end_lsn"] if first is None else min(first, st["end_lsn"])
                why = f"it holds LSNs up to {st['end_lsn'] - 1} of {told - 1}"
                bar.update(
                    st["end_lsn"] - first,
                    max(told - first, 1),
                    phase=f"{name}: catching up from {primary}",
                )
        if time.monotonic() >= deadline:
            raise ReplError(f"{name} not caught up after {timeout_s:g}s: {why}")
        time.sleep(POLL_S)


__all__ = ["DownView", "caught_up", "promote_view", "wait_caught_up", "wait_peer_synced"]
