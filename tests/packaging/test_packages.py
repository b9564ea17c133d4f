"""The packages, built from this tree and used as an operator would: both built by
scripts/build-packages.sh in a copy of the tree; the RPMs listed and checked with rpmlint; the
.debs checked with lintian, installed with apt-get (which pulls Debian 12's own python3-*
packages), run with nothing but the installed files and /usr/bin/python3 (replctl --version,
ocf-tester on the installed agent, `replctl demo`: a 3-node resource + an async 4th with a
SIGKILL of the primary and a log-diff failover on the packaged block device), then purged
with nothing of them left. Needs root and Debian's build tools
(scripts/install-packaging-deps.sh, run by scripts/test.sh)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
DEBS = ("replengine", "replengine-pacemaker", "replengine-udev")
AGENT = Path("/usr/lib/ocf/resource.d/replengine/replengine")
UDEV_RULE = Path("/usr/lib/udev/rules.d/65-replengine.rules")
RUNTIME_RULE = Path("/run/udev/rules.d/65-replengine.rules")
#: what the packages install; none of it may be there after the purge
INSTALLED = (
    AGENT.parent,
    UDEV_RULE,
    Path("/usr/lib/python3/dist-packages/replengine"),
    Path(f"/usr/lib/python3/dist-packages/replengine-{VERSION}.dist-info"),
    Path("/usr/sbin/replctl"),
    Path("/usr/sbin/replengined"),
    Path("/lib/systemd/system/replengined@.service"),
    Path("/etc/replengine/r0.toml.example"),
    Path("/usr/share/man/man8/replctl.8.gz"),
    Path("/usr/share/man/man8/replengined.8.gz"),
    Path("/usr/share/man/man5/replengine.toml.5.gz"),
    Path("/usr/share/man/man7/ocf_replengine_replengine.7.gz"),
    *(Path("/usr/share/doc") / p for p in DEBS),
)
#: the installed files and Debian's python3, nothing of this checkout or of a virtualenv
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.packaging,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs packages: needs root"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("dpkg-buildpackage", "rpmbuild", "lintian", "rpmlint")),
        reason="build tools missing: run scripts/install-packaging-deps.sh",
    ),
]


def run(*argv: str | Path, env: dict | None = None, cwd: Path | str = "/", timeout: float = 600):
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc


def clean(*argv: str | Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run from / (so no checkout is on sys.path) in an environment of nothing but PATH."""
    return run(*argv, env=CLEAN_ENV, timeout=timeout)


def apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    return run("apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", *args, env=env)


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packages")
    # what a build in the checkout would leave (others may be editing the rest meanwhile)
    traces = ("debian", ".pybuild", "build", "dist", "packaging", "replengine-*.tar.gz")
    status = ("git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--")
    before = run(*status, *traces, cwd=REPO).stdout
    run("bash", REPO / "scripts" / "build-packages.sh", out, cwd=REPO)
    assert run(*status, *traces, cwd=REPO).stdout == before  # the build ran in a copy
    return out


def test_rpm_contents_requirements_and_rpmlint(packages):
    main, agent, udev = (
        packages / f"{name}-{VERSION}-1.noarch.rpm"
        for name in ("replengine", "replengine-pacemaker", "replengine-udev")
    )
    files = run("rpm", "-qlp", main).stdout.split()
    for f in (
        "/usr/sbin/replctl",
        "/usr/sbin/replengined",
        "/usr/lib/python3.11/site-packages/replengine/cli/main.py",
        "/usr/lib/systemd/system/replengined@.service",
        "/etc/replengine/r0.toml.example",
        "/usr/share/man/man8/replctl.8.gz",
        "/usr/share/man/man5/replengine.toml.5.gz",
    ):
        assert f in files, f
    assert f"{AGENT}" in run("rpm", "-qlp", agent).stdout.split()
    assert f"{UDEV_RULE}" in run("rpm", "-qlp", udev).stdout.split()
    assert "/etc/replengine/r0.toml.example" in run("rpm", "-qcp", main).stdout
    requires = run("rpm", "-qRp", main).stdout
    for dep in ("python3.11", "python3.11dist(pyzmq) >= 24", "python3.11dist(pyfuse3) >= 3.2"):
        assert dep in requires.splitlines(), requires
    assert f"replengine = {VERSION}-1" in run("rpm", "-qRp", agent).stdout
    # the agent runs on the package's interpreter
    assert "/usr/bin/python3.11" in run("rpm", "-qRp", agent).stdout
    lint = run(
        "rpmlint", "-c", REPO / "packaging" / "rpm" / "rpmlint.toml", main, agent, udev
    ).stdout
    assert re.search(r"\b0 errors\b", lint), lint
    assert not re.search(r"^\S+: E: ", lint, re.M), lint


def test_lintian_has_no_errors_or_warnings(packages):
    debs = [packages / f"{name}_{VERSION}_all.deb" for name in DEBS]
    proc = subprocess.run(
        ["lintian", "--allow-root", "--pedantic", "--display-info", *map(str, debs)],
        capture_output=True,
        text=True,
    )
    tags = [ln for ln in proc.stdout.splitlines() if re.match(r"^[EW]: ", ln)]
    assert proc.returncode == 0 and not tags, proc.stdout + proc.stderr


def test_deb_install_run_and_purge(packages):
    debs = [packages / f"{name}_{VERSION}_all.deb" for name in DEBS]
    for name in DEBS:
        info = run("dpkg-deb", "-f", packages / f"{name}_{VERSION}_all.deb", "Version").stdout
        assert info.strip() == VERSION
    if AGENT.exists() and subprocess.run(["dpkg", "-S", str(AGENT)]).returncode != 0:
        pytest.skip(f"{AGENT} exists and is no package's (a cluster test running?)")
    # the runtime copy of the rule (scripts/start-udevd.sh) would hide the packaged one
    runtime_rule = RUNTIME_RULE.read_bytes() if RUNTIME_RULE.exists() else None
    RUNTIME_RULE.unlink(missing_ok=True)
    try:
        apt_get("install", *map(str, debs))
        check_installed()
    finally:
        apt_get("purge", *DEBS)
        if runtime_rule is not None:
            RUNTIME_RULE.write_bytes(runtime_rule)
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}\\n", *DEBS], capture_output=True, text=True
    ).stdout
    assert "installed" not in status.split(), status
    left = [str(p) for p in INSTALLED if p.exists()]
    assert not left, f"left after purge: {left}"
    if Path("/etc/replengine").exists():  # kept only for what others put there
        assert any(Path("/etc/replengine").iterdir())


def check_installed() -> None:
    # replctl and replengined from /usr/sbin on Debian's python3 and its python3-* modules
    assert clean("sh", "-c", "command -v replctl").stdout.strip() == "/usr/sbin/replctl"
    assert clean("replctl", "--version").stdout.strip() == f"replctl {VERSION}"
    assert "--config" in clean("replengined", "--help").stdout
    where = clean(
        "/usr/bin/python3",
        "-c",
        "import replengine, zmq, trio, pyfuse3; print(replengine.__file__, zmq.__version__)",
    ).stdout.split()
    assert where[0].startswith("/usr/lib/python3/dist-packages/replengine/"), where
    debian_zmq = run("dpkg-query", "-W", "-f=${Version}", "python3-zmq").stdout
    assert debian_zmq.startswith(where[1]), (where, debian_zmq)  # Debian's pyzmq (24 in 12)
    for page in ("replctl", "replengined", "replengine.toml", "ocf_replengine_replengine"):
        clean("man", "-w", page)
    assert clean("stat", "-c", "%a", AGENT).stdout.strip() == "755"
    # the unit is there and nothing enabled it
    unit = Path("/lib/systemd/system/replengined@.service")
    assert "ExecStart=/usr/sbin/replengined --config /etc/replengine/%i.toml" in unit.read_text()
    assert not list(Path("/etc/systemd/system").rglob("replengined@*"))
    # the example config is a conffile and a valid config
    assert (
        "/etc/replengine/r0.toml.example"
        in run("dpkg-query", "-W", "-f=${Conffiles}", "replengine").stdout
    )
    clean(
        "/usr/bin/python3",
        "-c",
        "from replengine import config; "
        "config.load('/etc/replengine/r0.toml.example', node='alpha', check_local=False)",
    )
    ocf_tester()
    demo()


def ocf_tester() -> None:
    """ocf-tester on the installed agent over a 2-node resource whose first node is this host
    (ocf-tester starts, promotes, demotes and stops it; meta-data runs as 'nobody')."""
    if not shutil.which("ocf-tester"):
        pytest.fail("ocf-tester missing: scripts/install-cluster-deps.sh installs resource-agents")
    work = world_readable_dir("ocf")
    me = os.uname().nodename
    ports = free_ports(2)
    for n in ("a", "b"):
        for f in ("vol", "srl"):
            with open(work / f"{f}-{n}", "wb") as fh:
                fh.truncate(16 << 20)
    cfg = work / "r0.toml"
    cfg.write_text(
        f'[resource]\nname = "r0"\nsrl_full = "stall"\non_sync_loss = "degrade"\n'
        f'run_dir = "{work}/run"\npromote_min_peers = 0\ndevice = "none"\n\n'
        f'[nodes."{me}"]\naddress = "127.0.0.1:{ports[0]}"\nvolume = "{work}/vol-a"\n'
        f'srl = "{work}/srl-a"\nmode = "sync"\n\n'
        f'[nodes.peer-b]\naddress = "127.0.0.1:{ports[1]}"\nvolume = "{work}/vol-b"\n'
        f'srl = "{work}/srl-b"\nmode = "sync"\n'
    )
    env = {**CLEAN_ENV, "HA_RSCTMP": str(work / "rsctmp")}
    out = run(
        "ocf-tester", "-n", "r0", "-o", "resource=r0", "-o", f"config={cfg}", AGENT, env=env
    ).stdout
    assert "passed all tests" in out, out
    shutil.rmtree(work, ignore_errors=True)


def demo() -> None:
    """The installed `replctl demo`: 3 sync nodes + an async 4th as real replengined processes
    of the installed package, ext4 on the primary's /dev/replengine/r0 (named by the packaged
    udev rule), SIGKILL of the primary, log-diff failover, every fsynced file read back."""
    run("bash", REPO / "scripts" / "start-udevd.sh", cwd=REPO)  # udevd, not a rule: see above
    RUNTIME_RULE.unlink(missing_ok=True)  # start-udevd.sh installs none when the package's is there
    run("udevadm", "control", "--reload")
    work = world_readable_dir("demo")
    out = clean(
        "replctl", "demo", "--dir", work, "--volume-mib", "64", "--files", "60", timeout=300
    ).stdout
    assert "alpha is primary (epoch 1) with device /dev/replengine/r0" in out, out
    assert "alpha KILLED with SIGKILL" in out, out
    assert re.search(r"promoted gamma in [\d.]+s: pulled \d+ records", out), out
    assert "120 of 120 fsynced files read back intact" in out, out
    assert "e2fsck -fn: clean" in out, out
    assert "volume checksums IDENTICAL on alpha, beta, gamma, delta" in out, out
    shutil.rmtree(work, ignore_errors=True)


def world_readable_dir(name: str) -> Path:
    """A directory outside pytest's 0700 tmp tree: ocf-tester runs the agent's meta-data as
    'nobody'."""
    d = Path(tempfile.mkdtemp(prefix=f"replengine-pkg-{name}-", dir="/var/tmp"))
    d.chmod(0o755)
    return d


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
