"""`replctl status` for people: the status document (docs/status-schema.md) as a compact table,
in the spirit of `drbdadm status` -- one line for the node, one row per peer.

Plain text without colour or box characters, so it reads the same on a terminal, in a pipe,
in a mail and under `watch`; scripts use `--json`, never this layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def size(n: int | float | None) -> str:
    """Bytes for people: 0 B, 512 B, 4.0 KiB, 1.5 MiB, 2.0 GiB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(s: float | None) -> str:
    """Seconds for people: 0.0s, 12.3s, 4m05s, 2h03m."""
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def table(rows: Sequence[Sequence[str]], indent: str = "", right: Sequence[int] = ()) -> list[str]:
    """Columns padded to their widest cell; ``right``: indexes of right-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def resync_cell(rs: dict[str, Any] | None) -> str:
    """A block resync running to a peer: phase, done of total, %, rate, ETA."""
    if not rs:
        return "-"
    total = rs["bytes_total"] or 0
    pct = f" ({100 * rs['bytes_done'] / total:.0f}%)" if total else ""
    eta = f", ETA {duration(rs['eta_s'])}" if rs.get("eta_s") is not None else ""
    return (
        f"{rs['phase']} {size(rs['bytes_done'])}/{size(total)}{pct}, "
        f"{size(rs['rate_bytes_per_s'])}/s{eta}"
    )


def _connection(p: dict[str, Any]) -> str:
    if p.get("rejected"):
        return "refused"
    return "connected" if p["connected"] else "disconnected"


def _state(p: dict[str, Any]) -> str:
    return f"{p['state']} (degraded)" if p.get("degraded") else str(p["state"])


def _lag(p: dict[str, Any]) -> tuple[str, str, str]:
    recs = "-" if p.get("lag_records") is None else str(p["lag_records"])
    return recs, size(p.get("lag_bytes")), duration(p.get("lag_seconds"))


def render(doc: dict[str, Any]) -> str:
    """The whole human status of one node of one resource."""
    srl = doc["srl"]
    cap = srl["capacity"] or 1
    use = (
        f"{size(srl['used_bytes'])}/{size(srl['capacity'])} ({100 * srl['used_bytes'] / cap:.0f}%)"
    )
    if doc.get("device"):
        device = str(doc["device"])
    elif doc.get("device_error"):
        device = f"NONE: {doc['device_error']}"
    else:
        device = "-"
    head = [
        ["RESOURCE", "NODE", "ROLE", "EPOCH", "CONSISTENT", "SRL USE", "DEVICE"],
        [
            str(doc["resource"]),
            str(doc["node"]),
            str(doc["role"]),
            str(doc["epoch"]),
            "yes" if doc["consistent"] else "NO",
            use,
            device,
        ],
    ]
    out = table(head)
    out.append(
        f"  log LSNs [{doc['start_lsn']}, {doc['end_lsn']}), applied up to "
        f"{doc['applied_end'] - 1}"
        + (f"; following {doc['following']}" if doc.get("following") else "")
    )
    out += _notes(doc)
    peers = doc.get("peers") or {}
    if peers:
        rows = [["PEER", "MODE", "CONNECTION", "STATE", "LAG RECORDS", "LAG BYTES", "LAG TIME"]]
        resyncs = []
        for name, p in sorted(peers.items()):
            rows.append([name, str(p["mode"]), _connection(p), _state(p), *_lag(p)])
            if p.get("resync"):
                resyncs.append(f"    {name} resync: {resync_cell(p['resync'])}")
        out.append("")
        out += table(rows, indent="  ", right=(4, 5, 6))
        out += resyncs
    return "\n".join(out)


def _notes(doc: dict[str, Any]) -> list[str]:
    """Lines for what is unusual: a promotion or a stop running, writes stalled, a discarded
    divergent tail, a device lost."""
    notes = []
    prom = doc.get("promotion")
    if prom:
        if prom["phase"] == "pull":
            notes.append(
                f"  PROMOTING: pulling {prom['records_done']}/{prom['records_total']} records "
                f"from {prom['source']} ({size(prom['bytes_pulled'])})"
            )
        else:
            notes.append(f"  PROMOTING: probing peers ({duration(prom['seconds'])})")
    stop = doc.get("stopping")
    if stop:
        notes.append(
            f"  STOPPING: draining {stop['writes_pending']} writes "
            f"({duration(stop['seconds'])} of {duration(stop['drain_timeout_s'])})"
        )
    if doc.get("writes_stalled"):
        notes.append(f"  {doc['writes_stalled']} writes STALLED: the SRL is full")
    if doc.get("device") and doc.get("device_error"):  # e.g. no udevd: no stable name
        notes.append(f"  device: {doc['device_error']}")
    if doc.get("device_lost"):
        notes.append("  device LOST: every I/O on it fails")
    rw = doc.get("rewind")
    if rw:
        notes.append(f"  INCONSISTENT: {_rewind_cell(rw)}")
    t = doc.get("divergent_tail")
    if t:
        notes.append(
            f"  divergent tail discarded: {t['records']} records, {t['bytes']} bytes, LSNs "
            f"[{t['first_lsn']}, {t['end_lsn']})"
        )
    return notes


def _rewind_cell(rw: dict[str, Any]) -> str:
    """A block copy this node waits for (`invalidate`, a divergent tail, a copy cut short)."""
    owed = size(rw["owed_bytes"])
    if rw["phase"] == "waiting":
        return f"{owed} of blocks owed; fetched from the next primary this node follows"
    src = rw["source"]
    if rw["phase"] == "blocks":
        return (
            f"fetching blocks from {src}: {size(rw['received_bytes'])} received, at most "
            f"{size(rw['missing_bytes'])} to come (only chunks that differ are sent), "
            f"{owed} owed"
        )
    if rw["phase"] == "catchup":
        return f"blocks from {src} in; replaying its records up to LSN {rw['as_of_lsn']}"
    return f"{owed} of blocks owed by {src}; preparing the request ({rw['phase']})"


__all__ = ["duration", "render", "resync_cell", "size", "table"]
