"""Tests for replengine.config: the resource TOML file, its validation and its error messages.

Each bad-input test checks the three things a sysadmin needs from the message: the file, the
line (``path:LINE:``) and the dotted key.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from replengine import config
from replengine.config import NodeConfig, ResourceConfig
from replengine.errors import ConfigError

VOL_SIZE = 64 * 1024
SRL_SIZE = config.MIN_SRL_SIZE


def make_base(vol: Path, srl: Path) -> str:
    return f"""\
# resource r0, identical on every node
[resource]
name = "r0"
srl_full = "stall"
on_sync_loss = "degrade"

[nodes.alpha]
address = "10.0.0.1:7790"
volume = "{vol}"
srl = "{srl}"
mode = "sync"

[nodes.beta]
address = "10.0.0.2:7790"
volume = "/dev/vg0/r0"
srl = "/dev/vg0/r0-srl"
mode = "async"
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    vol, srl = tmp_path / "alpha.vol", tmp_path / "alpha.srl"
    os.truncate(_touch(vol), VOL_SIZE)
    os.truncate(_touch(srl), SRL_SIZE)
    return vol, srl


@pytest.fixture
def base(files: tuple[Path, Path]) -> str:
    return make_base(*files)


def _touch(p: Path) -> Path:
    p.touch()
    return p


def write(tmp_path: Path, text: str, name: str = "r0.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line number of the nth line containing `needle` (what the error must report)."""
    seen = 0
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == nth:
                return i
    raise AssertionError(f"{needle!r} not in text")


def expect_error(path: Path, line: int, key: str | None, *fragments: str, **load_kw) -> str:
    load_kw.setdefault("node", "alpha")
    with pytest.raises(ConfigError) as ei:
        config.load(path, **load_kw)
    msg = str(ei.value)
    assert f"{path}:{line}:" in msg, msg
    if key is not None:
        assert f"key '{key}'" in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


# --------------------------------------------------------------------------- valid configs


def test_full_config_round_trips_into_dataclasses(tmp_path: Path, files: tuple[Path, Path]) -> None:
    vol, srl = files
    text = f"""\
[resource]
name = "r0"
uuid = "6f1c2a9e-3d4b-4c5d-8e6f-7a8b9c0d1e2f"
srl_full = "dcm"
on_sync_loss = "block"
sync_timeout = 12.5
promote_min_peers = 2
dcm_region_size = 65536
resync_chunk_size = 65536
run_dir = "/tmp/replengine-run"
heartbeat_ms = 250
device = "none"

[nodes.alpha]
address = "10.0.0.1:7790"
volume = "{vol}"
srl = "{srl}"
mode = "sync"

[nodes.beta]
address = "[FD00::0002]:7791"
volume = "/dev/vg0/r0"
srl = "/dev/vg0/r0-srl"
mode = "sync"
device = "fuse-loop"

[nodes."gamma.example-1"]
address = "Gamma.Example.COM:7792"
volume = "rel/vol"
srl = "rel/srl"
mode = "async"
"""
    path = write(tmp_path, text)
    cfg = config.load(path, node="alpha")

    alpha = NodeConfig("alpha", "10.0.0.1", 7790, "10.0.0.1:7790", vol, srl, "sync", "none")
    beta = NodeConfig(
        "beta",
        "fd00::2",
        7791,
        "[fd00::2]:7791",
        Path("/dev/vg0/r0"),
        Path("/dev/vg0/r0-srl"),
        "sync",
        "fuse-loop",  # its own device key wins over the resource's
    )
    gamma = NodeConfig(
        "gamma.example-1",
        "gamma.example.com",
        7792,
        "gamma.example.com:7792",
        tmp_path / "rel/vol",  # relative paths are relative to the config file
        tmp_path / "rel/srl",
        "async",
        "none",
    )
    assert cfg == ResourceConfig(
        path=path,
        name="r0",
        uuid=uuid.UUID("6f1c2a9e-3d4b-4c5d-8e6f-7a8b9c0d1e2f"),
        srl_full="dcm",
        on_sync_loss="block",
        sync_timeout=12.5,
        promote_min_peers=2,
        dcm_region_size=65536,
        run_dir=Path("/tmp/replengine-run"),
        heartbeat_ms=250,
        resync_chunk_size=65536,
        nodes={"alpha": alpha, "beta": beta, "gamma.example-1": gamma},
        local=alpha,
        digest=cfg.digest,
        uuid_derived=False,
    )
    assert list(cfg.nodes) == ["alpha", "beta", "gamma.example-1"]  # file order
    assert len(cfg.digest) == 64 and int(cfg.digest, 16) >= 0
    assert cfg.peers() == [beta, gamma]
    assert cfg.sync_peers() == [beta] and cfg.async_peers() == [gamma]
    assert beta.endpoint == "tcp://[fd00::2]:7791"
    assert cfg.runtime_dir() == Path("/tmp/replengine-run/r0/alpha")
    assert cfg.runtime_dir("beta") == Path("/tmp/replengine-run/r0/beta")
    assert cfg.node("beta") is cfg.nodes["beta"]

    other = cfg.for_node("beta")
    assert other.local == beta and other.digest == cfg.digest
    assert [n.name for n in other.peers()] == ["alpha", "gamma.example-1"]
    assert other.runtime_dir() == Path("/tmp/replengine-run/r0/beta")
    assert other != cfg


def test_defaults_for_optional_keys(tmp_path: Path, base: str) -> None:
    cfg = config.load(write(tmp_path, base), node="alpha")
    assert cfg.sync_timeout == 30.0
    assert cfg.promote_min_peers == 1  # majority of the one other node
    assert cfg.dcm_region_size == 1 << 20
    assert cfg.resync_chunk_size == 1 << 20
    assert cfg.run_dir == Path("/run/replengine")
    assert cfg.heartbeat_ms == 1000
    assert all(n.device == "fuse-loop" for n in cfg.nodes.values())
    assert cfg.uuid_derived
    assert cfg.uuid == config.derive_uuid("r0", ["10.0.0.2:7790", "10.0.0.1:7790"])
    assert cfg.runtime_dir() == Path("/run/replengine/r0/alpha")


def test_promote_min_peers_default_is_majority_of_other_nodes(tmp_path: Path, base: str) -> None:
    extra = "".join(
        f'\n[nodes.n{i}]\naddress = "10.0.1.{i}:7790"\nvolume = "/v"\nsrl = "/s"\nmode = "async"\n'
        for i in range(3)
    )
    cfg = config.load(write(tmp_path, base + extra), node="alpha")
    assert len(cfg.nodes) == 5
    assert cfg.promote_min_peers == 2


def test_derived_uuid_is_the_same_on_every_node_and_ignores_order(tmp_path: Path, files) -> None:
    vol, srl = files
    a = config.load(write(tmp_path, make_base(vol, srl), "a.toml"), node="alpha")
    reordered = (
        make_base(vol, srl).replace("10.0.0.1:7790", "X").replace("10.0.0.2:7790", "10.0.0.1:7790")
    )
    reordered = reordered.replace("X", "10.0.0.2:7790")
    b = config.load(write(tmp_path, reordered, "b.toml"), node="alpha")
    assert a.uuid == b.uuid  # same set of addresses, different order
    c = config.load(
        write(tmp_path, make_base(vol, srl).replace('"r0"', '"r1"'), "c.toml"), node="alpha"
    )
    assert c.uuid != a.uuid
    assert a.for_node("beta").uuid == a.uuid


def test_digest_ignores_local_paths_but_not_modes(tmp_path: Path, files) -> None:
    vol, srl = files
    text = make_base(vol, srl)
    a = config.load(write(tmp_path, text, "a.toml"), node="alpha")
    other_paths = text.replace("/dev/vg0/r0-srl", "/dev/sdc1").replace(
        '"/dev/vg0/r0"', '"/dev/sdb1"'
    )
    b = config.load(write(tmp_path, other_paths, "b.toml"), node="alpha")
    assert b.nodes["beta"].volume == Path("/dev/sdb1")
    assert a.digest == b.digest
    changed_mode = text.replace('mode = "async"', 'mode = "sync"')
    c = config.load(write(tmp_path, changed_mode, "c.toml"), node="alpha")
    assert c.digest != a.digest
    changed_policy = text.replace('"stall"', '"fail"')
    d = config.load(write(tmp_path, changed_policy, "d.toml"), node="alpha")
    assert d.digest != a.digest


def test_local_node_from_uname(tmp_path: Path, files) -> None:
    me = os.uname().nodename
    text = make_base(*files).replace("[nodes.alpha]", f'[nodes."{me}"]')
    cfg = config.load(write(tmp_path, text))
    assert cfg.local.name == me
    assert [p.name for p in cfg.peers()] == ["beta"]


def test_local_node_from_argument(tmp_path: Path, base: str) -> None:
    path = write(tmp_path, base)
    assert config.load(path, node="alpha").local.name == "alpha"
    # beta's devices do not exist here: only loadable without the local checks
    assert config.load(path, node="beta", check_local=False).local.name == "beta"


def test_local_node_not_in_file_lists_names(tmp_path: Path, base: str) -> None:
    path = write(tmp_path, base)
    expect_error(path, line_of(base, "[nodes.alpha]"), None, "'gamma'", "alpha, beta", node="gamma")


def test_check_local_false_skips_file_checks(tmp_path: Path) -> None:
    text = make_base(tmp_path / "missing.vol", tmp_path / "missing.srl")
    cfg = config.load(write(tmp_path, text), node="alpha", check_local=False)
    assert cfg.local.volume == tmp_path / "missing.vol"


def test_node_lookup_unknown_is_config_error(tmp_path: Path, base: str) -> None:
    cfg = config.load(write(tmp_path, base), node="alpha")
    with pytest.raises(
        ConfigError, match=r"'delta' is not in resource 'r0' \(nodes: alpha, beta\)"
    ):
        cfg.node("delta")
    with pytest.raises(ConfigError):
        cfg.for_node("delta")
    with pytest.raises(ConfigError):
        cfg.runtime_dir("delta")


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REPLENGINE_CONFIG_DIR", raising=False)
    assert config.default_path("r0") == Path("/etc/replengine/r0.toml")
    monkeypatch.setenv("REPLENGINE_CONFIG_DIR", str(tmp_path))
    assert config.default_path("r0") == tmp_path / "r0.toml"
    with pytest.raises(ConfigError, match="not valid"):
        config.default_path("../etc/passwd")


def test_local_volume_and_srl_may_be_block_devices(tmp_path: Path, files) -> None:
    """Sizes come from lseek(SEEK_END), which is the only way that works for block devices."""
    vol, _ = files
    backing = tmp_path / "srl.img"
    os.truncate(_touch(backing), SRL_SIZE)
    dev = _losetup(backing)
    try:
        cfg = config.load(write(tmp_path, make_base(vol, Path(dev))), node="alpha")
        assert cfg.local.srl == Path(dev)
    finally:
        _losetup_detach(dev)


def _losetup(path: Path) -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["losetup", "-f", "--show", str(path)], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"losetup unavailable: {e}")
    if out.returncode != 0:
        pytest.skip(f"losetup failed (no loop device support here?): {out.stderr.strip()}")
    return out.stdout.strip()


def _losetup_detach(dev: str) -> None:
    import subprocess

    subprocess.run(["losetup", "-d", dev], check=False, timeout=30)


# --------------------------------------------------------------------------- bad configs

# (id, old, new, key, line needle in the edited text, fragments of the message)
BAD_CASES = [
    (
        "unknown-resource-key",
        'srl_full = "stall"',
        'srl_full = "stall"\nsrl_ful = "stall"',
        "resource.srl_ful",
        "srl_ful =",
        ["unknown key", "did you mean 'srl_full'"],
    ),
    (
        "unknown-node-key",
        'mode = "async"',
        'mode = "async"\ncontrol = "x"',
        "nodes.beta.control",
        "control =",
        ["unknown key"],
    ),
    (
        "unknown-top-table",
        "[nodes.alpha]",
        "[global]\nx = 1\n\n[nodes.alpha]",
        "global",
        "[global]",
        ["unknown key"],
    ),
    ("missing-resource-name", 'name = "r0"\n', "", "resource.name", "[resource]", ["missing"]),
    (
        "missing-node-srl",
        'srl = "/dev/vg0/r0-srl"\n',
        "",
        "nodes.beta.srl",
        "[nodes.beta]",
        ["missing"],
    ),
    (
        "missing-node-mode",
        'mode = "async"\n',
        "",
        "nodes.beta.mode",
        "[nodes.beta]",
        ["missing", '"sync" or "async"'],
    ),
    (
        "bad-mode",
        'mode = "async"',
        'mode = "fast"',
        "nodes.beta.mode",
        'mode = "fast"',
        ['expected "sync" or "async", got "fast"'],
    ),
    (
        "bad-srl-full",
        'srl_full = "stall"',
        'srl_full = "drop"',
        "resource.srl_full",
        "srl_full",
        ['expected "stall", "fail" or "dcm", got "drop"'],
    ),
    (
        "bad-on-sync-loss",
        'on_sync_loss = "degrade"',
        'on_sync_loss = "ignore"',
        "resource.on_sync_loss",
        "on_sync_loss",
        ['expected "degrade" or "block", got "ignore"'],
    ),
    (
        "enum-wrong-type",
        'mode = "async"',
        "mode = 1",
        "nodes.beta.mode",
        "mode = 1",
        ["got 1 (an integer)"],
    ),
    (
        "address-not-string",
        'address = "10.0.0.2:7790"',
        "address = 7790",
        "nodes.beta.address",
        "address = 7790",
        ["got 7790 (an integer)"],
    ),
    (
        "name-not-string",
        'name = "r0"',
        "name = true",
        "resource.name",
        "name = true",
        ["got true (a boolean)"],
    ),
    (
        "sync-timeout-string",
        'on_sync_loss = "degrade"',
        'on_sync_loss = "degrade"\nsync_timeout = "30"',
        "resource.sync_timeout",
        "sync_timeout",
        ['got "30" (a string)'],
    ),
    (
        "sync-timeout-zero",
        'on_sync_loss = "degrade"',
        'on_sync_loss = "degrade"\nsync_timeout = 0',
        "resource.sync_timeout",
        "sync_timeout",
        ["> 0"],
    ),
    (
        "heartbeat-bool",
        'on_sync_loss = "degrade"',
        'on_sync_loss = "degrade"\nheartbeat_ms = true',
        "resource.heartbeat_ms",
        "heartbeat_ms",
        ["got true (a boolean)"],
    ),
    (
        "dcm-not-power-of-two",
        'on_sync_loss = "degrade"',
        'on_sync_loss = "degrade"\ndcm_region_size = 5000',
        "resource.dcm_region_size",
        "dcm_region_size",
        ["power of two >= 4096", "got 5000"],
    ),
    (
        "dcm-too-small",
        'on_sync_loss = "degrade"',
        'on_sync_loss = "degrade"\ndcm_region_size = 2048',
        "resource.dcm_region_size",
        "dcm_region_size",
        ["power of two >= 4096"],
    ),
    (
        "resync-chunk-not-power-of-two",
        'on_sync_loss = "degrade"',
        'on_sync_loss = "degrade"\nresync_chunk_size = 100000',
        "resource.resync_chunk_size",
        "resync_chunk_size",
        ["power of two from 4096 to 8388608", "got 100000"],
    ),
    (
        "resync-chunk-too-large",
        'on_sync_loss = "degrade"',
        'on_sync_loss = "degrade"\nresync_chunk_size = 16777216',
        "resource.resync_chunk_size",
        "resync_chunk_size",
        ["power of two from 4096 to 8388608"],
    ),
    (
        "bad-uuid",
        'name = "r0"',
        'name = "r0"\nuuid = "not-a-uuid"',
        "resource.uuid",
        "uuid =",
        ['got "not-a-uuid"'],
    ),
    (
        "promote-min-peers-too-big",
        'name = "r0"',
        'name = "r0"\npromote_min_peers = 2',
        "resource.promote_min_peers",
        "promote_min_peers",
        ["expected 0-1", "got 2"],
    ),
    (
        "run-dir-relative",
        'name = "r0"',
        'name = "r0"\nrun_dir = "run"',
        "resource.run_dir",
        "run_dir",
        ["absolute path"],
    ),
    (
        "bad-resource-name",
        'name = "r0"',
        'name = "r0/x"',
        "resource.name",
        "name =",
        ['got "r0/x"'],
    ),
    ("bad-node-name", "[nodes.beta]", '[nodes."be ta"]', 'nodes."be ta"', "[nodes.", ["not valid"]),
    (
        "duplicate-address",
        'address = "10.0.0.2:7790"',
        'address = "10.0.0.1:7790"',
        "nodes.beta.address",
        '"10.0.0.1:7790"',
        ["also the address of node 'alpha'"],
    ),
    (
        "address-no-port",
        'address = "10.0.0.2:7790"',
        'address = "10.0.0.2"',
        "nodes.beta.address",
        'address = "10.0.0.2"',
        ["host:port"],
    ),
    (
        "address-port-zero",
        'address = "10.0.0.2:7790"',
        'address = "10.0.0.2:0"',
        "nodes.beta.address",
        'address = "10.0.0.2:0"',
        ["1-65535"],
    ),
    (
        "address-port-too-big",
        'address = "10.0.0.2:7790"',
        'address = "10.0.0.2:65536"',
        "nodes.beta.address",
        "65536",
        ["1-65535"],
    ),
    (
        "address-bad-ipv4",
        'address = "10.0.0.2:7790"',
        'address = "10.0.0.256:7790"',
        "nodes.beta.address",
        "10.0.0.256",
        ["not an IPv4 address"],
    ),
    (
        "address-v6-without-brackets",
        'address = "10.0.0.2:7790"',
        'address = "fd00::2:7790"',
        "nodes.beta.address",
        "fd00::2",
        ["brackets"],
    ),
    (
        "address-bad-v6",
        'address = "10.0.0.2:7790"',
        'address = "[fd00::zz]:7790"',
        "nodes.beta.address",
        "fd00::zz",
        ["not an IPv6 address"],
    ),
    (
        "address-unspecified",
        'address = "10.0.0.2:7790"',
        'address = "0.0.0.0:7790"',
        "nodes.beta.address",
        "0.0.0.0",
        ["peers can connect to"],
    ),
    (
        "address-bad-hostname",
        'address = "10.0.0.2:7790"',
        'address = "bad_host:7790"',
        "nodes.beta.address",
        "bad_host",
        ["not a valid host name"],
    ),
    (
        "srl-same-as-volume",
        'srl = "/dev/vg0/r0-srl"',
        'srl = "/dev/vg0/r0"',
        "nodes.beta.srl",
        'srl = "/dev/vg0/r0"',
        ["same path as the volume"],
    ),
    (
        "device-unknown-kind",
        'srl = "/dev/vg0/r0-srl"',
        'srl = "/dev/vg0/r0-srl"\ndevice = "/dev/replengine/r0"',
        "nodes.beta.device",
        'device = "/dev/replengine/r0"',
        ["fuse-loop", "none"],
    ),
    (
        "node-not-table",
        "[nodes.beta]",
        "[nodes]\ngamma = 3\n\n[nodes.beta]",
        "nodes.gamma",
        "gamma = 3",
        ["expected a table"],
    ),
    (
        "resource-not-table",
        "[resource]\n",
        'resource = "r0"\n[resourcex]\n',
        "resource",
        'resource = "r0"',
        ["expected a table"],
    ),
    (
        "dotted-key-style",
        'mode = "async"',
        'mode = "async"\n\n[nodes]\ngamma.address = 5',
        "nodes.gamma.address",
        "gamma.address",
        ["got 5 (an integer)"],
    ),
]


@pytest.mark.parametrize(
    "old,new,key,needle,fragments",
    [c[1:] for c in BAD_CASES],
    ids=[c[0] for c in BAD_CASES],
)
def test_bad_config(
    tmp_path: Path, base: str, old: str, new: str, key: str, needle: str, fragments: list[str]
) -> None:
    # edit the last occurrence so node-level edits hit [nodes.beta]
    idx = base.rindex(old)
    text = base[:idx] + new + base[idx + len(old) :]
    assert text != base
    path = write(tmp_path, text)
    line = _edited_line(text, idx, needle)
    expect_error(path, line, key, *fragments)


def _edited_line(text: str, idx: int, needle: str) -> int:
    """Line of the first occurrence of `needle` at or after the start of the edited line,
    or before it when the needle names a table header above the edit."""
    lines = text.splitlines()
    start_line = min(text.count("\n", 0, idx) + 1, len(lines))
    for i in range(start_line - 1, len(lines)):
        if needle in lines[i]:
            return i + 1
    for i in range(start_line - 1, -1, -1):
        if needle in lines[i]:
            return i + 1
    raise AssertionError(f"{needle!r} not found")


def test_duplicate_node_name_keeps_toml_line(tmp_path: Path, base: str) -> None:
    text = (
        base
        + '\n[nodes.beta]\naddress = "10.0.0.3:7790"\nvolume = "/v"\nsrl = "/s"\nmode = "sync"\n'
    )
    path = write(tmp_path, text)
    msg = expect_error(path, line_of(text, "[nodes.beta]", nth=2), None, "invalid TOML", "twice")
    assert "('nodes', 'beta')" in msg and "node names must be unique" in msg


def test_invalid_toml_syntax_reports_line(tmp_path: Path, base: str) -> None:
    text = base.replace('mode = "async"', 'mode = "async\n')
    path = write(tmp_path, text)
    expect_error(path, line_of(text, 'mode = "async'), None, "invalid TOML")


def test_duplicate_key_reports_line(tmp_path: Path, base: str) -> None:
    text = base.replace('mode = "async"', 'mode = "async"\nmode = "sync"')
    path = write(tmp_path, text)
    expect_error(path, line_of(text, 'mode = "sync"', nth=2), None, "invalid TOML")


def test_missing_resource_table(tmp_path: Path, base: str) -> None:
    text = base.replace("[resource]\n", "").replace(
        'name = "r0"\nsrl_full = "stall"\non_sync_loss = "degrade"\n', ""
    )
    path = write(tmp_path, text)
    expect_error(path, 1, None, "missing [resource] table")


def test_too_few_nodes(tmp_path: Path, base: str) -> None:
    text = base[: base.index("[nodes.beta]")]
    path = write(tmp_path, text)
    expect_error(path, line_of(text, "[nodes.alpha]"), "nodes.alpha", "needs 2-16 nodes", "has 1")


def test_no_nodes(tmp_path: Path, base: str) -> None:
    text = base[: base.index("[nodes.alpha]")]
    path = write(tmp_path, text)
    expect_error(path, 1, None, "[nodes.<name>]")


def test_too_many_nodes(tmp_path: Path, base: str) -> None:
    text = base + "".join(
        f'\n[nodes.n{i}]\naddress = "10.0.1.{i}:7790"\nvolume = "/v"\nsrl = "/s"\nmode = "async"\n'
        for i in range(15)
    )
    path = write(tmp_path, text)
    expect_error(path, line_of(text, "[nodes.n14]"), "nodes.n14", "at most 16 nodes", "has 17")


def test_config_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as ei:
        config.load(path, node="alpha")
    assert str(path) in str(ei.value)


def test_config_file_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "dir.toml"
    path.mkdir()
    with pytest.raises(ConfigError, match="is a directory") as ei:
        config.load(path, node="alpha")
    assert str(path) in str(ei.value)


def test_config_file_not_utf8(tmp_path: Path, base: str) -> None:
    path = tmp_path / "r0.toml"
    path.write_bytes(base.encode().replace(b"# resource r0", b"# r\xe9source r0"))
    expect_error(path, 1, None, "not valid UTF-8")


def test_local_volume_missing(tmp_path: Path, files) -> None:
    vol, srl = files
    vol.unlink()
    text = make_base(vol, srl)
    path = write(tmp_path, text)
    expect_error(path, line_of(text, f'volume = "{vol}"'), "nodes.alpha.volume", "does not exist")


def test_local_srl_missing(tmp_path: Path, files) -> None:
    vol, srl = files
    srl.unlink()
    text = make_base(vol, srl)
    path = write(tmp_path, text)
    expect_error(
        path, line_of(text, f'srl = "{srl}"'), "nodes.alpha.srl", "does not exist", str(srl)
    )


def test_local_volume_too_small(tmp_path: Path, files) -> None:
    vol, srl = files
    os.truncate(vol, 4095)
    text = make_base(vol, srl)
    path = write(tmp_path, text)
    expect_error(
        path, line_of(text, f'volume = "{vol}"'), "nodes.alpha.volume", "4095 bytes", "4096"
    )


def test_local_srl_too_small(tmp_path: Path, files) -> None:
    vol, srl = files
    os.truncate(srl, config.MIN_SRL_SIZE - 1)
    text = make_base(vol, srl)
    path = write(tmp_path, text)
    expect_error(path, line_of(text, f'srl = "{srl}"'), "nodes.alpha.srl", str(config.MIN_SRL_SIZE))


def test_local_volume_is_a_directory(tmp_path: Path, files) -> None:
    vol, srl = files
    vol.unlink()
    vol.mkdir()
    text = make_base(vol, srl)
    path = write(tmp_path, text)
    expect_error(
        path,
        line_of(text, f'volume = "{vol}"'),
        "nodes.alpha.volume",
        "not a regular file or block device",
    )


def test_local_srl_is_the_volume_via_symlink(tmp_path: Path, files) -> None:
    vol, srl = files
    os.truncate(vol, SRL_SIZE)
    link = tmp_path / "srl-link"
    link.symlink_to(vol)
    text = make_base(vol, link)
    path = write(tmp_path, text)
    expect_error(path, line_of(text, f'srl = "{link}"'), "nodes.alpha.srl", "same device or file")


def test_all_errors_are_reported_in_line_order(tmp_path: Path, base: str) -> None:
    text = base.replace('mode = "async"', 'mode = "fast"').replace('"stall"', '"drop"')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        config.load(path, node="alpha")
    lines = str(ei.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:{line_of(text, 'srl_full')}: key 'resource.srl_full'")
    assert lines[1].startswith(f"{path}:{line_of(text, 'fast')}: key 'nodes.beta.mode'")
    assert ei.value.line == line_of(text, "srl_full")  # type: ignore[attr-defined]
