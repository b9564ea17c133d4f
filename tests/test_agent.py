"""The OCF agent outside a cluster: ocf-tester, meta-data schemas, and each action's exit
code against real daemons (the Pacemaker behaviour itself is in tests/cluster)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from replengine.demo.localcluster import LocalResource

REPO = Path(__file__).resolve().parent.parent
AGENT_SRC = REPO / "ocf" / "replengine"


def install_agent(dest: Path) -> Path:
    """Copy the agent, pointing its shebang at this interpreter (the packaged one uses
    /usr/bin/python3 with the package installed system-wide)."""
    text = AGENT_SRC.read_text().split("\n", 1)[1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(f"#!{sys.executable}\n{text}")
    dest.chmod(0o755)
    return dest


def run_agent(
    agent: Path, action: str, cfg: Path | None, **extra: str
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCF_")}
    env.setdefault("HA_RSCTMP", str(Path(tempfile.gettempdir()) / "replengine-rsctmp"))
    env["OCF_ROOT"] = "/usr/lib/ocf"
    # the package may be importable only from this checkout (an interpreter without it
    # installed); the agent and the replctl/daemon processes it starts inherit this
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OCF_RESOURCE_INSTANCE"] = "r0"
    env["OCF_RESKEY_resource"] = "r0"
    if cfg is not None:
        env["OCF_RESKEY_config"] = str(cfg)
    env.update(extra)
    return subprocess.run(
        [str(agent), action], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture
def local_resource(tmp_path):
    """A 2-node resource whose first node is this host (uname -n), as ocf-tester needs."""
    me = os.uname().nodename
    r = LocalResource(
        tmp_path, nodes={me: "sync", "peer-b": "sync"}, extra={"promote_min_peers": 0}
    )
    r.create()
    yield r
    r.stop_all()


@pytest.fixture
def agent(monkeypatch, tmp_path):
    """Installed where 'nobody' can execute it (ocf-tester runs meta-data as nobody), with a
    private HA_RSCTMP so no 'promoted' flag of another test or run is seen."""
    root = Path(tempfile.mkdtemp(prefix="replengine-ocf-", dir="/var/tmp"))
    root.chmod(0o755)
    path = install_agent(root / "replengine")
    monkeypatch.setenv("HA_RSCTMP", str(tmp_path / "rsctmp"))
    yield path
    shutil.rmtree(root, ignore_errors=True)


def _lint(agent: Path, *args: str) -> subprocess.CompletedProcess:
    meta = run_agent(agent, "meta-data", None).stdout
    return subprocess.run(
        ["xmllint", "--noout", *args, "-"],
        input=meta,
        text=True,
        capture_output=True,
        cwd="/usr/share/resource-agents",
    )


@pytest.mark.skipif(not shutil.which("xmllint"), reason="xmllint (libxml2-utils) not installed")
def test_metadata_validates_against_dtd_and_rng(agent):
    dtd = _lint(agent, "--dtdvalid", "/usr/share/resource-agents/ra-api-1.dtd")
    assert dtd.returncode == 0, dtd.stderr
    rng = _lint(agent, "--relaxng", "/usr/share/resource-agents/metadata.rng")
    assert rng.returncode == 0, rng.stderr
    meta = run_agent(agent, "meta-data", None).stdout
    assert "<version>1.1</version>" in meta
    assert 'role="Promoted"' in meta and 'role="Unpromoted"' in meta


@pytest.mark.skipif(not shutil.which("ocf-tester"), reason="resource-agents not installed")
def test_ocf_tester_passes(agent, local_resource):
    if os.geteuid() != 0:
        pytest.skip("ocf-tester checks permissions as root")
    proc = subprocess.run(
        [
            "ocf-tester",
            "-n",
            "r0",
            "-o",
            "resource=r0",
            "-o",
            f"config={local_resource.config}",
            str(agent),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "passed all tests" in out, out


def test_actions_exit_codes(agent, local_resource):
    r, cfg = local_resource, local_resource.config
    me = os.uname().nodename
    assert run_agent(agent, "validate-all", cfg).returncode == 0
    assert run_agent(agent, "monitor", cfg).returncode == 7  # probe: stopped
    assert run_agent(agent, "stop", cfg).returncode == 0  # stop when stopped
    assert run_agent(agent, "start", cfg).returncode == 0
    assert run_agent(agent, "start", cfg).returncode == 0  # idempotent
    assert run_agent(agent, "monitor", cfg).returncode == 0  # Unpromoted
    assert r.status(me)["role"] == "secondary"
    assert (
        run_agent(
            agent,
            "notify",
            cfg,
            OCF_RESKEY_CRM_meta_notify_type="pre",
            OCF_RESKEY_CRM_meta_notify_operation="promote",
        ).returncode
        == 0
    )
    assert run_agent(agent, "promote", cfg).returncode == 0
    assert run_agent(agent, "monitor", cfg).returncode == 8  # Promoted
    vol = r.connect(me)
    vol.write(0, b"a" * 4096)
    vol.close()
    assert run_agent(agent, "demote", cfg).returncode == 0
    assert run_agent(agent, "monitor", cfg).returncode == 0
    assert run_agent(agent, "stop", cfg).returncode == 0
    assert run_agent(agent, "monitor", cfg).returncode == 7
    # stop applied the log: the data is on the volume file
    with open(r.volume_path(me), "rb") as f:
        assert f.read(4096) == b"a" * 4096


def test_promoted_daemon_killed_is_failed_promoted(agent, local_resource):
    cfg = local_resource.config
    me = os.uname().nodename
    assert run_agent(agent, "start", cfg).returncode == 0
    assert run_agent(agent, "promote", cfg).returncode == 0
    local_resource.kill(me)
    assert run_agent(agent, "monitor", cfg).returncode == 9
    assert run_agent(agent, "stop", cfg).returncode == 0
    assert run_agent(agent, "monitor", cfg).returncode == 7


def test_promote_refused_without_enough_peers_fails(agent, local_resource):
    cfg = local_resource.config
    assert run_agent(agent, "start", cfg).returncode == 0
    proc = run_agent(agent, "promote", cfg, OCF_RESKEY_min_peers="1")
    assert proc.returncode == 1
    assert "peers reachable" in proc.stderr
    assert run_agent(agent, "monitor", cfg).returncode == 0  # still Unpromoted
    assert run_agent(agent, "stop", cfg).returncode == 0


def test_bad_config(agent, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[resource]\nname = 'r0'\n")
    proc = run_agent(agent, "validate-all", bad)
    assert proc.returncode == 6
    assert "bad.toml" in proc.stderr
    assert run_agent(agent, "start", bad).returncode == 6
    assert run_agent(agent, "stop", bad).returncode == 0  # stop never fails on it
    assert run_agent(agent, "monitor", bad).returncode == 7  # a probe says stopped
    assert run_agent(agent, "notify", bad).returncode == 0
    missing = run_agent(agent, "validate-all", tmp_path / "nope.toml")
    assert missing.returncode == 6


def test_unknown_action(agent, local_resource):
    assert run_agent(agent, "frobnicate", local_resource.config).returncode == 3


def test_stale_pid_file_of_unrelated_process_is_not_trusted(agent, local_resource):
    """After a crash the pid in the pid file may be recycled: the agent must neither wait on
    nor kill whatever process now has it."""
    cfg = local_resource.config
    me = os.uname().nodename
    rundir = local_resource.run_dir / "r0" / me
    rundir.mkdir(parents=True, exist_ok=True)
    (rundir / "control.sock").write_text("")
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        (rundir / "replengined.pid").write_text(f"{bystander.pid}\n")
        assert run_agent(agent, "monitor", cfg).returncode == 7
        assert run_agent(agent, "stop", cfg).returncode == 0
        assert bystander.poll() is None, "stop killed an unrelated process"
        assert run_agent(agent, "start", cfg).returncode == 0  # starts a real daemon
        assert run_agent(agent, "monitor", cfg).returncode == 0
        assert run_agent(agent, "stop", cfg).returncode == 0
    finally:
        bystander.kill()
        bystander.wait()


def test_promoted_marker_is_per_boot(agent, local_resource, tmp_path):
    """The 'promoted' flag lives in HA_RSCTMP (cleared at boot): with it gone, a node whose
    primary daemon vanished reports stopped (7), as after a power cut, not failed (9)."""
    cfg = local_resource.config
    me = os.uname().nodename
    rsctmp = tmp_path / "rsctmp"
    assert run_agent(agent, "start", cfg, HA_RSCTMP=str(rsctmp)).returncode == 0
    assert run_agent(agent, "promote", cfg, HA_RSCTMP=str(rsctmp)).returncode == 0
    assert (rsctmp / f"replengine-r0-{me}.promoted").exists()
    local_resource.kill(me)
    assert run_agent(agent, "monitor", cfg, HA_RSCTMP=str(rsctmp)).returncode == 9
    assert run_agent(agent, "monitor", cfg, HA_RSCTMP=str(tmp_path / "rebooted")).returncode == 7
    assert run_agent(agent, "stop", cfg, HA_RSCTMP=str(rsctmp)).returncode == 0
