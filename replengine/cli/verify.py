"""`replctl verify`: are the nodes' volumes identical?

Each running daemon checksums its own volume (per-chunk digests, holes skipped) once its
applier has caught up, so the comparison is of complete volumes, not of a moving target.
"""

from __future__ import annotations

from pathlib import Path

from replengine import config as configmod
from replengine.errors import ReplError
from replengine.wire.control import ControlClient


def checksums(cfg: configmod.ResourceConfig, names: list[str]) -> dict[str, dict]:
    out = {}
    for name in names:
        cfg.node(name)
        ctl = ControlClient(cfg.paths(name).socket, timeout_s=3600)
        try:
            out[name] = ctl.call("checksum", timeout_s=3600)[0]
        finally:
            ctl.close()
    return out


def verify(cfg_path: Path, nodes: list[str]) -> int:
    cfg = configmod.load(cfg_path, check_local=False)
    names = nodes or [n for n in cfg.nodes if cfg.paths(n).socket.exists()]
    if len(names) < 2:
        raise ReplError(
            "verify needs at least two nodes whose daemons run on this machine "
            f"(found {names or 'none'}); name them, or run it where they are"
        )
    sums = checksums(cfg, names)
    ref = sums[names[0]]
    for name in names:
        s = sums[name]
        print(
            f"{name}: {s['digest'][:32]} applied up to LSN {s['applied_end'] - 1} "
            f"({s['size']} bytes)"
        )
    bad = [n for n in names if sums[n]["digest"] != ref["digest"]]
    if not bad:
        print(f"identical: {', '.join(names)}")
        return 0
    for name in bad:
        diff = [
            i
            for i, (a, b) in enumerate(zip(ref["chunks"], sums[name]["chunks"], strict=False))
            if a != b
        ]
        print(
            f"{name} DIFFERS from {names[0]} in {len(diff)} chunks of {ref['chunk_size']} "
            f"bytes (first at byte {diff[0] * ref['chunk_size'] if diff else '?'})"
        )
    return 1
