"""CURVE between nodes (docs/protocol.md, "Security"): keygen, the config's keys, and real
daemons refusing a wrong key, a key speaking for another node and a peer without CURVE.

The refusals are awaited through what can be observed: the stranger's own socket monitor
(its handshake fails) and the daemon's log line naming the address; nothing here sleeps to
let time pass.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from replengine import config as configmod
from replengine.errors import ConfigError, ReplError
from replengine.wire.protocol import Hello, encode
from replengine.wire.security import generate, load_keys, read_secret_key
from replengine.wire.transport import Transport

TWO = {"alpha": "sync", "beta": "sync"}
THREE = {"alpha": "sync", "beta": "sync", "gamma": "async"}


def replctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "replengine.cli", *args], capture_output=True, text=True, timeout=60
    )


# ---- keygen ---------------------------------------------------------------------------------


def test_keygen_writes_0600_and_prints_public_key(tmp_path: Path) -> None:
    out = tmp_path / "alpha.key"
    old = os.umask(0)  # a permissive umask must not leak into the key's mode
    try:
        proc = replctl("keygen", "--out", str(out))
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith('public_key = "') and line.endswith('"'), line
    public = line.split('"')[1]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert read_secret_key(out)[0].decode() == public  # the file holds that key's secret

    again = replctl("keygen", "--out", str(out))
    assert again.returncode != 0
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr, again.stderr
    assert "--force" in again.stderr
    assert read_secret_key(out)[0].decode() == public, "refused keygen changed the key file"

    forced = replctl("keygen", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.split('"')[1] != public
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["alpha.key"], "a temporary file was left"


def test_keygen_errors_are_one_line(tmp_path: Path) -> None:
    for out in (tmp_path / "missing-dir" / "k", tmp_path):
        proc = replctl("keygen", "--out", str(out))
        assert proc.returncode != 0
        assert proc.stderr.startswith("replctl keygen: ") and proc.stderr.count("\n") == 1, (
            proc.stderr
        )


def test_secret_key_file_checks(tmp_path: Path) -> None:
    key = tmp_path / "k"
    generate(key)
    os.chmod(key, 0o644)
    with pytest.raises(ReplError, match=r"readable by others \(mode 0644\): run 'chmod 600"):
        read_secret_key(key)
    os.chmod(key, 0o600)
    key.write_text("# nothing here\nnot-a-key\n")
    with pytest.raises(ReplError, match="does not hold a CURVE secret key"):
        read_secret_key(key)
    with pytest.raises(ReplError, match="does not exist: create it .*replctl keygen --out"):
        read_secret_key(tmp_path / "absent")


# ---- config ---------------------------------------------------------------------------------


def _config(tmp_path: Path, keys: dict[str, str | None], extra: str = "") -> Path:
    """A 3-node config whose nodes have the given public keys (None: no key line)."""
    vol, srl = tmp_path / "vol", tmp_path / "srl"
    for f, size in ((vol, 1 << 20), (srl, configmod.MIN_SRL_SIZE)):
        with open(f, "wb") as fh:
            fh.truncate(size)
    lines = ["[resource]", 'name = "r0"', 'srl_full = "stall"', 'on_sync_loss = "degrade"', extra]
    for i, (name, key) in enumerate(keys.items()):
        lines += [
            f"[nodes.{name}]",
            f'address = "127.0.0.1:{7790 + i}"',
            f'volume = "{vol}"',
            f'srl = "{srl}"',
            'mode = "sync"',
        ]
        if key is not None:
            lines.append(f'public_key = "{key}"')
    path = tmp_path / "r0.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _pub() -> str:
    return zmq.curve_keypair()[0].decode()


def test_keys_for_some_nodes_only_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, {"alpha": _pub(), "beta": None, "gamma": None})
    with pytest.raises(ConfigError) as err:
        configmod.load(path, node="alpha")
    msg = str(err.value)
    assert msg.count("\n") == 0, msg
    assert "nodes.beta.public_key" in msg and "missing for beta, gamma while alpha has one" in msg


def test_bad_and_duplicate_keys_are_refused(tmp_path: Path) -> None:
    k = _pub()
    path = _config(tmp_path, {"alpha": k, "beta": "not-a-z85-key", "gamma": k})
    with pytest.raises(ConfigError) as err:
        configmod.load(path, node="alpha")
    msg = str(err.value)
    assert "nodes.beta.public_key': expected a CURVE public key: 40 Z85" in msg, msg
    assert "nodes.gamma.public_key': is also the key of node 'alpha'" in msg, msg


def test_key_file_defaults_and_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLENGINE_CONFIG_DIR", str(tmp_path / "etc"))
    keys = {"alpha": _pub(), "beta": _pub(), "gamma": _pub()}
    cfg = configmod.load(_config(tmp_path, keys), node="alpha")
    assert cfg.curve and cfg.local.public_key == keys["alpha"]
    assert cfg.local.secret_key_file == tmp_path / "etc" / "r0.key"
    cfg2 = configmod.load(
        _config(tmp_path, keys, extra='secret_key_file = "/srv/r0.key"'), node="alpha"
    )
    assert cfg2.local.secret_key_file == Path("/srv/r0.key")
    plain = configmod.load(_config(tmp_path, dict.fromkeys(keys)), node="alpha")
    assert not plain.curve and plain.local.secret_key_file is None
    assert plain.digest != cfg.digest, "the public keys are part of what nodes must agree on"
    other = configmod.load(_config(tmp_path, {**keys, "gamma": _pub()}), node="alpha")
    assert other.digest != cfg.digest


def test_load_keys_refuses_a_key_file_of_another_node(tmp_path: Path) -> None:
    ka, kb = tmp_path / "a.key", tmp_path / "b.key"
    pa, pb = generate(ka), generate(kb)
    path = _config(
        tmp_path, {"alpha": pa, "beta": pb, "gamma": _pub()}, extra=f'secret_key_file = "{kb}"'
    )
    with pytest.raises(ConfigError) as err:
        load_keys(configmod.load(path, node="alpha"))
    assert f"nodes.alpha.public_key' is {pa} but the secret key in {kb} belongs to {pb}" in str(
        err.value
    )
    keys = load_keys(configmod.load(path, node="beta"))
    assert keys is not None and keys.public.decode() == pb
    assert set(keys.peers) == {"alpha", "gamma"} and keys.names[pa.encode()] == "alpha"


# ---- the transport ----------------------------------------------------------------------------


def test_transports_with_keys_talk_curve(tmp_path: Path) -> None:
    """Two keyed transports in one process: every peer socket runs CURVE, messages arrive
    under the sender's name, and the name is the one its key was given."""
    from replengine.demo.localcluster import free_ports

    pairs = {n: zmq.curve_keypair() for n in ("alpha", "beta")}
    names = {pub: n for n, (pub, _) in pairs.items()}
    pa, pb = free_ports(2)
    addr = {"alpha": f"127.0.0.1:{pa}", "beta": f"127.0.0.1:{pb}"}
    from replengine.wire.security import CurveKeys

    def make(me: str, other: str) -> Transport:
        pub, sec = pairs[me]
        keys = CurveKeys(pub, sec, {other: pairs[other][0]}, names)
        return Transport(
            me, addr[me], {other: addr[other]}, str(tmp_path / f"{me}.sock"), 200, keys
        )

    a, b = make("alpha", "beta"), make("beta", "alpha")
    try:
        assert a.security == b.security == "curve"
        for t in (a, b):
            assert t.router.getsockopt(zmq.MECHANISM) == zmq.CURVE
            assert all(s.getsockopt(zmq.MECHANISM) == zmq.CURVE for s in t.dealers.values())
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            b.send("alpha", [b"hello alpha"])
            a.poll(50)
            b.poll(0)
            got = a.recv_peer()
        assert got is not None, "no message over CURVE within 10 s"
        assert got.identity == b"beta" and got.frames[0].bytes == b"hello alpha"
        assert got.frames[0].get("User-Id") == "beta"
    finally:
        a.close()
        b.close()
    # closed, the thread watching the ROUTER's handshakes has ended: it waited for a
    # MONITOR_STOPPED its monitor was not asked for, and close() gave up on it after 5 s,
    # so every keyed daemon took 5 s more to stop (found by the keyed fault campaign)
    for t in (a, b):
        assert t._router_watch is not None and not t._router_watch.is_alive()


# ---- real daemons -----------------------------------------------------------------------------


class Stranger:
    """A raw DEALER speaking the wire format to one node, as the transport frames it (the
    node name first), with or without CURVE, and a monitor of its own handshakes."""

    def __init__(
        self,
        address: str,
        server_key: bytes | None = None,
        keypair: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if server_key is not None:
            pub, sec = keypair or zmq.curve_keypair()
            self.sock.curve_serverkey = server_key
            self.sock.curve_publickey = pub
            self.sock.curve_secretkey = sec
        self.mon = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        self.sock.connect(f"tcp://{address}")

    def send(self, name: str, frames: list) -> None:
        self.sock.send_multipart([name.encode(), *frames])

    def handshake(self, timeout: float = 20) -> int:
        """The first handshake event of this connection (HANDSHAKE_SUCCEEDED or a failure)."""
        if not self.mon.poll(int(timeout * 1000)):
            raise AssertionError(f"no handshake result within {timeout} s")
        return recv_monitor_message(self.mon)["event"]

    def replies(self) -> list:
        out = []
        while self.sock.poll(0):
            out.append(self.sock.recv_multipart())
        return out

    def close(self) -> None:
        self.sock.disable_monitor()
        self.mon.close(0)
        self.sock.close(0)
        self.ctx.term()


def _hello(cfg: configmod.ResourceConfig, sender: str) -> list[bytes]:
    body = Hello(
        role="secondary",
        session="stranger",
        history=[],
        start_lsn=1,
        end_lsn=1,
        applied_end=1,
        digest=cfg.digest,
        volume_size=16 << 20,
    )
    return encode(cfg.uuid, 0, sender, body)  # type: ignore[return-value]


def _public(r, node: str) -> bytes:
    return read_secret_key(r.key_path(node))[0]


def _keypair(r, node: str) -> tuple[bytes, bytes]:
    return read_secret_key(r.key_path(node))


def _address(r, node: str) -> str:
    return configmod.load(r.config, node=node, check_local=False).local.address


@pytest.mark.slow
def test_replication_with_keys(resource) -> None:
    """A keyed resource replicates (equal checksums), every node runs CURVE, and the daemon
    says so at start; a resource without keys warns at start."""
    r = resource(THREE, keys=True)
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    for i in range(50):
        vol.write(i * 8192, bytes([i]) * 8192)
    vol.close()
    r.wait_synced()
    sums = r.checksums()
    assert len(set(sums.values())) == 1, sums
    for n in r.nodes:
        st = r.status(n)
        assert st["security"] == "curve", (n, st["security"])
        assert "authenticated and encrypted with CURVE" in r.log(n)
        assert "no public keys" not in r.log(n)
    assert all(p["connected"] for p in r.status("alpha")["peers"].values())
    # the control socket is root's alone (and so is the run dir holding it)
    paths = r.paths("alpha")
    sock = os.stat(paths.socket)
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
    assert sock.st_uid == os.geteuid() == 0
    assert stat.S_IMODE(os.stat(paths.dir).st_mode) == 0o700

    plain = resource(TWO)
    plain.up()
    assert plain.status("alpha")["security"] == "plain"
    line = [ln for ln in plain.log("alpha").splitlines() if "no public keys" in ln]
    assert line and "WARNING" in line[0] and "neither authenticated nor encrypted" in line[0]


def _wait_log(r, node: str, needle: str, timeout: float = 20) -> str:
    def find() -> str | None:
        return next((ln for ln in r.log(node).splitlines() if needle in ln), None)

    return r.wait_for(find, timeout, f"log line with {needle!r} on {node}")


@pytest.mark.slow
def test_wrong_key_is_refused_and_logged_with_its_address(resource) -> None:
    r = resource(TWO, keys=True)
    r.up("alpha")
    cfg = configmod.load(r.config, node="beta", check_local=False)
    s = Stranger(_address(r, "alpha"), server_key=_public(r, "alpha"))  # a key of its own
    try:
        s.send("beta", _hello(cfg, "beta"))
        assert s.handshake() == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        line = _wait_log(r, "alpha", "refused a connection from 127.0.0.1: its CURVE key")
        assert "is not a node of this resource" in line
        assert s.replies() == []
        assert not r.status("alpha")["peers"]["beta"]["connected"]
    finally:
        s.close()
    # the right key for the wrong server: the handshake does not decrypt
    wrong_server = Stranger(
        _address(r, "alpha"), server_key=zmq.curve_keypair()[0], keypair=_keypair(r, "beta")
    )
    try:
        wrong_server.send("beta", _hello(cfg, "beta"))
        assert wrong_server.handshake() != zmq.EVENT_HANDSHAKE_SUCCEEDED
        line = _wait_log(r, "alpha", f"refused a connection to {_address(r, 'alpha')} from ")
        assert "does not decrypt" in line or "CURVE handshake failed" in line, line
        assert wrong_server.replies() == []
    finally:
        wrong_server.close()


@pytest.mark.slow
def test_key_of_beta_cannot_speak_as_gamma(resource) -> None:
    """beta's key pair, claiming to be gamma (name frame and header): the handshake succeeds
    (it is beta's key) but the message is dropped and logged; the same connection speaking
    as beta is taken, so only the name binding refused the first."""
    r = resource(THREE, keys=True)
    r.up("alpha")
    s = Stranger(_address(r, "alpha"), server_key=_public(r, "alpha"), keypair=_keypair(r, "beta"))
    try:
        cfg = configmod.load(r.config, node="gamma", check_local=False)
        s.send("gamma", _hello(cfg, "gamma"))
        assert s.handshake() == zmq.EVENT_HANDSHAKE_SUCCEEDED
        line = _wait_log(r, "alpha", "claims to be 'gamma' but its CURVE key is beta's")
        assert "from 127.0.0.1" in line
        assert not r.status("alpha")["peers"]["gamma"]["connected"]
        s.send("beta", _hello(cfg, "beta"))
        r.wait_for(
            lambda: r.status("alpha")["peers"]["beta"]["connected"], 20, "beta's HELLO taken"
        )
        assert not r.status("alpha")["peers"]["gamma"]["connected"]
    finally:
        s.close()


@pytest.mark.slow
def test_plain_peer_gets_nothing_from_a_keyed_node(resource) -> None:
    """A peer without CURVE: its handshake fails (mechanism mismatch), the node logs the
    refusal, and nothing it sends is answered or taken."""
    r = resource(TWO, keys=True)
    r.up("alpha")
    cfg = configmod.load(r.config, node="beta", check_local=False)
    s = Stranger(_address(r, "alpha"))
    try:
        s.send("beta", _hello(cfg, "beta"))
        # PROTOCOL (mechanism mismatch) or NO_DETAIL when the node hung up first
        assert s.handshake() in (
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        )
        line = _wait_log(r, "alpha", f"refused a connection to {_address(r, 'alpha')} from ")
        # (which side noticed first decides whether libzmq names the mismatch)
        assert "does not speak CURVE" in line or "CURVE handshake failed" in line, line
        assert s.replies() == []
        assert not r.status("alpha")["peers"]["beta"]["connected"]
    finally:
        s.close()
