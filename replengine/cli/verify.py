"""`replctl verify [NODE...]`: online, exact comparison of the primary's volume with its
secondaries' (replengine.node.verifier says how it stays exact while writes go on).

Exit status: 0 every node compared and identical; 1 a region differs on some node (the
regions are listed); 2 some node could not be compared (and none differs).
"""

from __future__ import annotations

import json
import sys
import time

from replengine.errors import ReplError
from replengine.wire.control import ControlClient, NoAnswer

#: how often the progress is shown while the verify runs
PROGRESS_EVERY_S = 1.0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


def run(ctl: ControlClient, nodes: list[str], as_json: bool, timeout_s: float) -> int:
    req_id = ctl.send("verify", nodes=nodes)
    deadline = time.monotonic() + timeout_s
    tty = sys.stderr.isatty()
    shown = False
    while True:
        try:
            doc, _ = ctl.wait(req_id, timeout_s=PROGRESS_EVERY_S)
            break
        except NoAnswer:
            if time.monotonic() > deadline:
                raise ReplError(f"verify did not finish within {timeout_s:.0f}s") from None
        shown = _progress(ctl, tty) or shown
    if shown and tty:
        print(file=sys.stderr)
    if not doc.get("ok"):
        raise ReplError(doc.get("error", "unknown error"))
    code = exit_code(doc)
    if as_json:
        print(json.dumps({**doc, "exit": code}, indent=2, sort_keys=True))
    else:
        print("\n".join(report(doc)))
    return code


def _progress(ctl: ControlClient, tty: bool) -> bool:
    st = ctl.call("status", timeout_s=10)[0].get("verify") or {}
    if not st.get("running"):
        return False
    done, total = st["asked_bytes"], st["volume_bytes"]
    line = f"verify: {_mib(done)} of {_mib(total)} asked ({100 * done / max(total, 1):.0f}%)"
    if tty:
        print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)
    return True


def exit_code(doc: dict) -> int:
    statuses = [r["status"] for r in doc["nodes"].values()]
    if "differs" in statuses:
        return 1
    if any(s != "identical" for s in statuses):
        return 2
    return 0


def report(doc: dict) -> list[str]:
    lines = [
        f"verify against {doc['reference']} (primary): {_mib(doc['volume_bytes'])} in "
        f"{_mib(doc['chunk_bytes'])} chunks, each node as of the same LSN "
        f"({doc['first_lsn']}..{doc['last_lsn']}), {doc['elapsed_s']:.1f} s"
    ]
    for name, res in sorted(doc["nodes"].items()):
        if res["status"] == "identical":
            lines.append(f"  {name}: identical ({res['compared_bytes']} bytes compared)")
        elif res["status"] == "differs":
            regions = res["regions"]
            lines.append(
                f"  {name}: DIFFERS in {len(regions)} region(s), {res['differing_bytes']} bytes:"
            )
            lines += [f"    offset {off} length {n}" for off, n in regions]
            if res["reason"]:
                lines.append(f"    (then not compared further: {res['reason']})")
        else:
            lines.append(f"  {name}: not compared: {res['reason']}")
    return lines


__all__ = ["exit_code", "report", "run"]
