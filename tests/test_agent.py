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


# ---- parameters, exit reasons, clone meta, stop without a config ----------------------------

REASON = "ocf-exit-reason:"


def exit_reasons(proc: subprocess.CompletedProcess, prefix: str = REASON) -> list[str]:
    return [ln[len(prefix) :] for ln in proc.stderr.splitlines() if ln.startswith(prefix)]


def daemon_pid(r: LocalResource) -> int | None:
    return r.paths(os.uname().nodename).daemon_pid()


def test_metadata_is_generated_from_the_parameter_and_action_tables(agent):
    from xml.etree import ElementTree

    from replengine.pacemaker import params

    root = ElementTree.fromstring(run_agent(agent, "meta-data", None).stdout)
    got = {p.get("name"): p for p in root.iter("parameter")}
    assert list(got) == [p.name for p in params.PARAMETERS]
    for p in params.PARAMETERS:
        assert got[p.name].get("required") == str(int(p.required))
        assert got[p.name].find("content").get("type") == p.content
        assert got[p.name].find("content").get("default") == p.default
    actions = [(a.get("name"), a.get("role")) for a in root.iter("action")]
    assert actions == [(a.name, a.role) for a in params.ACTIONS]
    # every declared action is dispatched (none answers 'unimplemented')
    usage = run_agent(agent, "usage", None).stdout
    assert all(name in usage for name in params.action_names())


@pytest.mark.parametrize(
    "value,ok",
    [
        ("", True),
        ("0", True),
        ("1", True),
        (" 1 ", True),
        ("2", False),
        ("-1", False),
        ("abc", False),
        ("1.5", False),
        ("+1", False),
    ],
)
def test_min_peers_is_validated(agent, local_resource, value, ok):
    """min_peers: a non-negative integer, at most the number of peers in the config (1 here),
    else OCF_ERR_CONFIGURED with a reason naming it, in validate-all, start and promote."""
    cfg = local_resource.config
    proc = run_agent(agent, "validate-all", cfg, OCF_RESKEY_min_peers=value)
    if ok:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 6, proc.stderr
    (reason,) = exit_reasons(proc)
    assert "min_peers" in reason and value.strip() in reason, reason
    start = run_agent(agent, "start", cfg, OCF_RESKEY_min_peers=value)
    assert start.returncode == 6 and "min_peers" in exit_reasons(start)[0]
    assert daemon_pid(local_resource) is None  # refused before starting anything
    promote = run_agent(agent, "promote", cfg, OCF_RESKEY_min_peers=value)
    assert promote.returncode == 6 and "min_peers" in exit_reasons(promote)[0]


def test_min_peers_above_the_peer_count_says_how_many_there_are(agent, local_resource):
    proc = run_agent(agent, "validate-all", local_resource.config, OCF_RESKEY_min_peers="3")
    assert proc.returncode == 6
    assert exit_reasons(proc) == [
        f"parameter min_peers=3 is more than the 1 peer(s) of resource r0 in "
        f"{local_resource.config}: promote could never go ahead; set it to 0-1 or leave it "
        "empty for the config's promote_min_peers (0)"
    ]


def test_auto_init_must_be_a_boolean(agent, local_resource):
    proc = run_agent(agent, "validate-all", local_resource.config, OCF_RESKEY_auto_init="maybe")
    assert proc.returncode == 6
    assert "auto_init" in exit_reasons(proc)[0]


def test_every_failure_prints_an_exit_reason(agent, local_resource, tmp_path):
    """ocf-exit-reason:<text> on stderr (Pacemaker shows it in crm_mon), one line, naming
    what is wrong; $OCF_EXIT_REASON_PREFIX is honoured as ocf-shellfuncs does."""
    cfg = local_resource.config
    bad = tmp_path / "bad.toml"
    bad.write_text("[resource]\nname = 'r0'\n")
    for action in ("validate-all", "start", "promote", "demote"):
        proc = run_agent(agent, action, bad)
        assert proc.returncode == 6, (action, proc.stderr)
        (reason,) = exit_reasons(proc)
        assert "bad.toml" in reason, (action, reason)
    recurring = run_agent(agent, "monitor", bad, OCF_RESKEY_CRM_meta_interval="10000")
    assert recurring.returncode == 6 and "bad.toml" in exit_reasons(recurring)[0]
    # success and a probe's 'stopped' print none
    assert exit_reasons(run_agent(agent, "validate-all", cfg)) == []
    assert exit_reasons(run_agent(agent, "monitor", bad)) == []
    unknown = run_agent(agent, "frobnicate", cfg)
    assert unknown.returncode == 3 and "frobnicate" in exit_reasons(unknown)[0]
    custom = run_agent(agent, "validate-all", bad, OCF_EXIT_REASON_PREFIX="why:")
    assert exit_reasons(custom, "why:") and not exit_reasons(custom)
    # a refused promote says why, in replctl's words
    assert run_agent(agent, "start", cfg).returncode == 0
    try:
        refused = run_agent(agent, "promote", cfg, OCF_RESKEY_min_peers="1")
        assert refused.returncode == 1
        (reason,) = exit_reasons(refused)
        assert reason.startswith("promote of r0 on ") and "peers reachable" in reason, reason
        # a recurring monitor that finds the daemon gone says so
        local_resource.kill(os.uname().nodename)
        gone = run_agent(agent, "monitor", cfg, OCF_RESKEY_CRM_meta_interval="11000")
        assert gone.returncode == 7
        assert "replengined of r0 is not running" in exit_reasons(gone)[0]
    finally:
        assert run_agent(agent, "stop", cfg).returncode == 0


def test_resource_parameter_missing_or_invalid_is_configured_error(agent, tmp_path):
    """Not a traceback with status 1: a missing or unusable 'resource' is OCF_ERR_CONFIGURED
    with a reason."""
    missing = run_agent(agent, "validate-all", None, OCF_RESKEY_resource="")
    assert missing.returncode == 6
    assert "parameter resource is required" in exit_reasons(missing)[0]
    invalid = run_agent(agent, "validate-all", None, OCF_RESKEY_resource="../etc/passwd")
    assert invalid.returncode == 6
    assert "not valid" in exit_reasons(invalid)[0]
    assert "Traceback" not in invalid.stderr
    assert run_agent(agent, "stop", None, OCF_RESKEY_resource="../x").returncode == 0


PROMOTABLE = {
    "OCF_RESKEY_CRM_meta_on_node": os.uname().nodename,
    "OCF_RESKEY_CRM_meta_timeout": "120000",
    "OCF_RESKEY_CRM_meta_clone_max": "2",
    "OCF_RESKEY_CRM_meta_clone_node_max": "1",
    "OCF_RESKEY_CRM_meta_globally_unique": "false",
    "OCF_RESKEY_CRM_meta_notify": "true",
    "OCF_RESKEY_CRM_meta_promotable": "true",
    "OCF_RESKEY_CRM_meta_promoted_max": "1",
    "OCF_RESKEY_CRM_meta_promoted_node_max": "1",
    "OCF_RESKEY_CRM_meta_master_max": "1",
    "OCF_RESKEY_CRM_meta_master_node_max": "1",
}


def _without(*names: str) -> dict[str, str]:
    return {k: v for k, v in PROMOTABLE.items() if k.rsplit("_meta_", 1)[1] not in names}


@pytest.mark.parametrize(
    "meta,word",
    [
        # a plain primitive: Pacemaker passes no clone meta at all
        (
            {"OCF_RESKEY_CRM_meta_on_node": "x", "OCF_RESKEY_CRM_meta_timeout": "20000"},
            "not run as a promotable clone",
        ),
        # a clone that is not promotable
        (
            _without(
                "promotable", "promoted_max", "promoted_node_max", "master_max", "master_node_max"
            ),
            "not run as a promotable clone",
        ),
        ({**PROMOTABLE, "OCF_RESKEY_CRM_meta_notify": "false"}, "notify=true"),
        (_without("notify"), "notify=true"),
        (
            {
                **PROMOTABLE,
                "OCF_RESKEY_CRM_meta_promoted_max": "2",
                "OCF_RESKEY_CRM_meta_master_max": "2",
            },
            "promoted-max=1",
        ),
        ({**PROMOTABLE, "OCF_RESKEY_CRM_meta_clone_node_max": "2"}, "clone-node-max=1"),
    ],
)
def test_refuses_to_run_other_than_as_promotable_clone_with_notify(
    agent, local_resource, meta, word
):
    cfg = local_resource.config
    for action in ("validate-all", "start"):
        proc = run_agent(agent, action, cfg, **meta)
        assert proc.returncode == 6, (action, proc.stderr)
        (reason,) = exit_reasons(proc)
        assert word in reason, reason
    assert daemon_pid(local_resource) is None


def test_clone_meta_is_checked_only_when_pacemaker_passes_it(agent, local_resource):
    cfg = local_resource.config
    # as Pacemaker runs it: a promotable clone with notify=true
    assert run_agent(agent, "validate-all", cfg, **PROMOTABLE).returncode == 0
    # Pacemaker 2.0 names only (master_max), no 'promotable' meta
    legacy = _without("promotable", "promoted_max", "promoted_node_max")
    assert run_agent(agent, "validate-all", cfg, **legacy).returncode == 0
    # by hand: no meta at all, or only what ocf-tester / crm_resource set
    assert run_agent(agent, "validate-all", cfg).returncode == 0
    manual = {"OCF_RESKEY_CRM_meta_timeout": "20000", "OCF_RESKEY_CRM_meta_interval": "0"}
    assert run_agent(agent, "validate-all", cfg, **manual).returncode == 0


def test_stop_with_broken_config_stops_the_running_daemon(agent, local_resource):
    """A config broken (or removed) while the daemon runs: stop finds the daemon by the config
    path it runs with, stops it, and only then reports success; the promoted flag goes too."""
    cfg = local_resource.config
    me = os.uname().nodename
    assert run_agent(agent, "start", cfg).returncode == 0
    assert run_agent(agent, "promote", cfg).returncode == 0
    pid = daemon_pid(local_resource)
    assert pid is not None
    good = cfg.read_text()
    cfg.write_text("[resource\nthis is not toml\n")
    try:
        assert run_agent(agent, "validate-all", cfg).returncode == 6
        proc = run_agent(agent, "stop", cfg)
        assert proc.returncode == 0, proc.stderr
        assert not is_alive(pid), "stop returned success with the daemon still running"
        assert "stop with a broken config" in proc.stderr
    finally:
        cfg.write_text(good)
    rsctmp = Path(os.environ["HA_RSCTMP"])
    assert not (rsctmp / f"replengine-r0-{me}.promoted").exists()
    assert run_agent(agent, "monitor", cfg).returncode == 7  # stopped, not failed Promoted
    # with the config file gone altogether
    assert run_agent(agent, "start", cfg).returncode == 0
    pid = daemon_pid(local_resource)
    cfg.rename(cfg.with_suffix(".moved"))
    try:
        assert run_agent(agent, "stop", cfg).returncode == 0
        assert not is_alive(pid)
    finally:
        cfg.with_suffix(".moved").rename(cfg)


FAKE_DAEMON = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(300)\n"
)


def fake_daemon(config: Path, node: str) -> subprocess.Popen:
    """A process that looks like `replengine.daemon --config C --node N` and ignores SIGTERM."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FAKE_DAEMON,
            "replengine.daemon",
            "--config",
            str(config),
            "--node",
            node,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def is_alive(pid: int) -> bool:
    from replengine.runtime import is_alive as alive

    return alive(pid)


def test_stop_with_broken_config_escalates_to_sigkill(agent, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[resource]\nname = 'r0'\n")
    me = os.uname().nodename
    daemons = []
    try:
        daemon = fake_daemon(bad, me)
        daemons.append(daemon)
        other = fake_daemon(tmp_path / "other.toml", me)  # another resource's: left alone
        daemons.append(other)
        elsewhere = fake_daemon(bad, "some-other-node")  # another node's (tests share hosts)
        daemons.append(elsewhere)
        proc = run_agent(agent, "stop", bad, OCF_RESKEY_CRM_meta_timeout="6000")
        assert proc.returncode == 0, proc.stderr
        assert daemon.wait(timeout=5) == -9
        assert other.poll() is None and elsewhere.poll() is None
    finally:
        for p in daemons:
            p.kill()
            p.wait()


def test_stop_finds_daemon_by_default_run_dir_pid_file(agent, tmp_path):
    """The config (and so its run_dir) is unusable: the pid file under the default run dir
    /run/replengine/<resource>/<node> still leads to the daemon."""
    from replengine.config import DEFAULT_RUN_DIR

    me = os.uname().nodename
    resource = f"agenttest-{os.getpid()}"
    rundir = DEFAULT_RUN_DIR / resource / me
    try:
        rundir.mkdir(parents=True, exist_ok=True)
    except OSError:
        pytest.skip(f"cannot write {DEFAULT_RUN_DIR}")
    daemon = fake_daemon(tmp_path / "started-with.toml", me)
    try:
        (rundir / "replengined.pid").write_text(f"{daemon.pid}\n")
        proc = run_agent(
            agent,
            "stop",
            tmp_path / "missing.toml",
            OCF_RESKEY_resource=resource,
            OCF_RESKEY_CRM_meta_timeout="6000",
        )
        assert proc.returncode == 0, proc.stderr
        assert daemon.wait(timeout=5) == -9
    finally:
        daemon.kill()
        daemon.wait()
        shutil.rmtree(DEFAULT_RUN_DIR / resource, ignore_errors=True)


def test_stop_fails_with_reason_when_the_daemon_survives(monkeypatch, tmp_path):
    """If the daemon cannot be made to go, stop must fail (Pacemaker then fences the node)
    and say which process is left."""
    from replengine.pacemaker import agent as agentmod
    from replengine.pacemaker import process as processmod

    bad = tmp_path / "bad.toml"
    bad.write_text("[resource]\nname = 'r0'\n")
    sent = []
    monkeypatch.setattr(processmod, "_signal", lambda proc, sig: sent.append(sig))  # no effect
    monkeypatch.setattr(processmod, "KILL_WAIT_S", 0.3)
    daemon = fake_daemon(bad, os.uname().nodename)
    environ = {
        "OCF_RESKEY_resource": "r0",
        "OCF_RESKEY_config": str(bad),
        "OCF_RESKEY_CRM_meta_timeout": "6000",
        "HA_RSCTMP": str(tmp_path / "rsctmp"),
    }
    try:
        with pytest.raises(agentmod.OCFError) as err:
            agentmod.Agent(environ).stop()
        assert err.value.rc == 1
        assert str(daemon.pid) in err.value.reason and "SIGKILL" in err.value.reason
        assert sent == [15, 9]
    finally:
        daemon.kill()
        daemon.wait()


@pytest.fixture
def device_resource(tmp_path):
    """As local_resource, with the block device."""
    me = os.uname().nodename
    r = LocalResource(
        tmp_path,
        name="agentdev",
        nodes={me: "sync", "peer-b": "sync"},
        extra={"promote_min_peers": 0},
        device="fuse-loop",
    )
    r.create()
    yield r
    r.stop_all()


def test_agent_with_the_device(agent, device_resource, tmp_path):
    """promote exposes the device; demote fails (with the holder in its exit reason) while
    a file system is mounted on it; stop forces it away; a killed Promoted daemon's stale
    loop device is removed by stop."""
    from tests.device_helpers import device_unavailable, mounted, sh

    if device_unavailable():
        pytest.skip(device_unavailable())
    r, me = device_resource, os.uname().nodename
    cfg = r.config
    env = {"OCF_RESOURCE_INSTANCE": "agentdev", "OCF_RESKEY_resource": "agentdev"}
    assert run_agent(agent, "start", cfg, **env).returncode == 0
    assert run_agent(agent, "promote", cfg, **env).returncode == 0
    dev = r.status(me)["device"]
    sh("mkfs.ext4", "-q", dev)
    with mounted(dev, tmp_path / "m") as mnt:
        proc = run_agent(agent, "demote", cfg, **env)
        assert proc.returncode == 1
        assert f"mounted on {mnt}" in proc.stderr and "ocf-exit-reason:" in proc.stderr
        assert run_agent(agent, "monitor", cfg, **env).returncode == 8  # still Promoted
        assert run_agent(agent, "stop", cfg, **env).returncode == 0
        with pytest.raises(OSError):
            (mnt / "after-stop").write_bytes(b"x" * 4096)
            os.sync()
            fd = os.open(mnt / "after-stop", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    assert run_agent(agent, "start", cfg, **env).returncode == 0
    assert run_agent(agent, "promote", cfg, **env).returncode == 0
    kernel = r.status(me)["device_kernel"]
    r.kill(me)
    assert run_agent(agent, "monitor", cfg, **env).returncode == 9
    assert kernel in sh("losetup", "--list", "--noheadings", "-O", "NAME").stdout
    assert run_agent(agent, "stop", cfg, **env).returncode == 0
    loops = sh("losetup", "--list", "--noheadings", "-O", "BACK-FILE").stdout
    assert f"agentdev/{me}/replengine-fuse" not in loops, loops
