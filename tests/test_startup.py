"""What a start imports: every Pacemaker operation runs the agent anew (a failover runs it
several times: notifies, promote), and a restarted node's daemon starts cold. Modules that
cost tens of milliseconds and that these starts do not need must stay out of them (the
timings are in the commits that took them out; tests do not time things)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def imported_by(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(
    ("module", "heavy", "why"),
    [
        # xml.sax.saxutils imports urllib.request, http.client, email, ssl: ~40 ms; only the
        # meta-data action escapes XML
        ("replengine.pacemaker.agent", "urllib.request", "meta-data's XML escaping"),
        # crc32c >= 2.4 asks importlib.metadata for its version (zipfile, email): ~50 ms cold
        ("replengine.daemon", "importlib.metadata", "the crc32c package's __init__"),
        ("replengine.client", "importlib.metadata", "the crc32c package's __init__"),
        # `replctl up` starts the daemon first and leaves the config to it (cli/up.py): the
        # config's modules (tomllib, hashlib, uuid, dataclasses) are ~25 ms cold before it
        ("replengine.cli", "replengine.config", "cli/main.py's commands"),
    ],
)
def test_a_start_does_not_import_what_it_does_not_use(module: str, heavy: str, why: str) -> None:
    assert heavy not in imported_by(module), f"{module} imports {heavy} (via {why}?)"
