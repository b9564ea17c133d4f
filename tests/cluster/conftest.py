"""Session-scoped `cluster` fixture: one real 3-node Pacemaker cluster for all cluster tests.

Skips (with the reason) when not root or when the cluster packages cannot be installed.
Environment:
  REPLENGINE_SKIP_CLUSTER=1        skip every test that needs the cluster
  REPLENGINE_CLUSTER_PREFIX=rpe    namespace/node-name prefix (nodes are <prefix>-n1..)
  REPLENGINE_CLUSTER_LOGS=DIR      copy the nodes' logs to DIR before teardown if a test failed
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .harness import Cluster, ClusterUnavailable, missing_tools

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-cluster-deps.sh"


def _ensure_cluster_packages() -> str | None:
    """Install the cluster packages if missing; returns why they are unusable, or None."""
    if not missing_tools():
        return None
    try:
        res = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=1200,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cluster packages missing and {INSTALL_SCRIPT.name} could not run: {e}"
    if res.returncode != 0:
        tail = (res.stdout + res.stderr).strip().splitlines()[-5:]
        return (
            f"cluster packages missing and {INSTALL_SCRIPT.name} failed "
            f"(exit {res.returncode}): " + " | ".join(tail)
        )
    still = missing_tools()
    if still:
        return "cluster packages installed but still missing: " + ", ".join(still)
    return None


@pytest.fixture(scope="session")
def cluster(request):
    if os.environ.get("REPLENGINE_SKIP_CLUSTER"):
        pytest.skip("REPLENGINE_SKIP_CLUSTER is set")
    if os.geteuid() != 0:
        pytest.skip("cluster tests need root (network namespaces, mounts, apt packages)")
    why = _ensure_cluster_packages()
    if why:
        pytest.skip(why)
    c = Cluster(
        n=3,
        prefix=os.environ.get("REPLENGINE_CLUSTER_PREFIX", "rpe"),
        subnet="10.98.0",
        fencing=True,
        token_ms=1000,
        dc_deadtime="2s",
    )
    try:
        c.setup()
    except ClusterUnavailable as e:
        c.teardown()
        pytest.skip(f"cannot build a cluster here: {e}")
    except BaseException:
        _keep_logs(c, force=True)
        c.teardown()
        raise
    yield c
    _keep_logs(c, force=request.session.testsfailed > 0)
    c.teardown()


def _keep_logs(c: Cluster, force: bool) -> None:
    dest = os.environ.get("REPLENGINE_CLUSTER_LOGS")
    if dest and force:
        path = c.collect_logs(dest)
        print(f"\ncluster logs kept in {path}")
