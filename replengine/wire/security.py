"""CurveZMQ keys between the nodes of a resource: key files, the keys a node runs with, and a
rate-limited log for refusals.

A node's secret key lives in a file of its own (``replctl keygen --out FILE`` writes it, mode
0600); every node's public key is in the config, so each node knows which keys may connect and
which node each one is. The transport authenticates with these (its ZAP handler) and binds
each connection to the node its key belongs to.

Key file format: comment lines starting with ``#`` (keygen writes the public key there, for
reference) and one line holding the 40-character Z85 secret key.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from replengine import config as configmod
from replengine.errors import ConfigError, ReplError
from replengine.storage.durable import fsync_dir, replace_durably

Z85_KEY_LEN = 40


@dataclass(frozen=True)
class CurveKeys:
    """What a node's transport needs for CURVE: its own key pair and every peer's public key
    (all Z85 bytes)."""

    public: bytes
    secret: bytes
    peers: dict[str, bytes] = field(hash=False)
    #: every node's public key -> its name, this node included
    names: dict[bytes, str] = field(hash=False)


def generate(out: Path, force: bool = False) -> str:
    """Write a new secret key to `out` (0600) and return its public key (Z85 text).

    Refuses an existing file unless `force`; with `force` the old file is replaced atomically
    (a new file renamed over it), so no reader ever sees half a key."""
    public, secret = zmq.curve_keypair()
    text = (
        "# replengine CURVE secret key: keep it on this node only (mode 0600)\n"
        f'# its public key, for this node\'s table in the config: public_key = "{public.decode()}"\n'
        f"{secret.decode()}\n"
    ).encode()
    out = Path(out)
    if out.is_dir():
        raise ReplError(f"{out} is a directory; give the path of the key file to write")
    if not force and (out.exists() or out.is_symlink()):
        raise ReplError(f"{out} already exists; pass --force to replace it with a new key")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp") if force else out
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ReplError(
            f"{out} already exists; pass --force to replace it with a new key"
        ) from None
    except OSError as exc:
        raise ReplError(f"cannot create {tmp}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)
    if force:
        replace_durably(tmp, out)
    else:
        fsync_dir(out.parent)  # the new name too, not only the bytes
    return public.decode()


def read_secret_key(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 bytes from a key file, or ReplError saying what to do."""
    try:
        st = os.stat(path)
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ReplError(
            f"CURVE secret key file {path} does not exist: create it on this node with "
            f"'replctl keygen --out {path}' and put the public key it prints in the config"
        ) from None
    except OSError as exc:
        raise ReplError(
            f"cannot read CURVE secret key file {path}: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ReplError(f"CURVE secret key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise ReplError(
            f"CURVE secret key file {path} is readable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): run 'chmod 600 {path}'"
        )
    lines = [
        ln.strip() for ln in raw.decode(errors="replace").splitlines() if ln.strip()[:1] not in "#"
    ]
    lines = [ln for ln in lines if ln]
    secret = lines[0].encode() if len(lines) == 1 else b""
    try:
        if len(secret) != Z85_KEY_LEN:
            raise ValueError
        public = zmq.curve_public(secret)
    except (ValueError, zmq.ZMQError):
        raise ReplError(
            f"{path} does not hold a CURVE secret key (one line of 40 Z85 characters, as "
            "'replctl keygen' writes)"
        ) from None
    return public, secret


def load_keys(cfg: configmod.ResourceConfig) -> CurveKeys | None:
    """The keys this node runs with, or None when the config has no public keys (plain).

    The secret key file must exist, be private (0600) and match the node's public_key in the
    config, so a copied or stale key is found at start, not by peers refusing it later."""
    if not cfg.curve:
        return None
    me = cfg.local
    assert me.secret_key_file is not None and me.public_key is not None
    public, secret = read_secret_key(me.secret_key_file)
    if public.decode() != me.public_key:
        raise ConfigError(
            f"{cfg.path}: key 'nodes.{me.name}.public_key' is {me.public_key} but the secret "
            f"key in {me.secret_key_file} belongs to {public.decode()}: put that one in the "
            "config, or point secret_key_file at this node's key"
        )
    return CurveKeys(
        public=public,
        secret=secret,
        peers={n.name: n.public_key.encode() for n in cfg.peers() if n.public_key},
        names={n.public_key.encode(): n.name for n in cfg.nodes.values() if n.public_key},
    )


class RateLog:
    """Log lines that outside input can trigger, at most one per key per `interval` seconds
    or per `every` occurrences, whichever comes first; the lines held back are counted and
    said in the next one ("... and 499 more like it in the last 2s").

    Keys are bounded (`max_keys`; past it the table starts over) since whoever sends the input
    chooses them. Thread-safe."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        max_keys: int = 1024,
        every: int = 500,
    ) -> None:
        self.log = logger
        self.interval = interval
        self.max_keys = max_keys
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self.total = 0

    def __call__(self, key: str, level: int, msg: str, *args: object) -> bool:
        """Log msg % args unless `key` was logged less than `interval` ago; True if logged."""
        now = time.monotonic()
        with self._lock:
            self.total += 1
            last, held = self._last.get(key, (-1e18, 0))
            if now - last < self.interval and held + 1 < self.every:
                self._last[key] = (last, held + 1)
                return False
            if key not in self._last and len(self._last) >= self.max_keys:
                self._last.clear()
            self._last[key] = (now, 0)
        if held:
            msg += " (and %d more like it in the last %.1fs)"
            args = (*args, held, now - last)
        self.log.log(level, msg, *args)
        return True


#: refusals of outside connections: one line per kind and address per 10 s, with counts
refusals = RateLog(logging.getLogger("replengined"))


def handshake_reason(event: int, value: int) -> str:
    """A handshake failure as words: the peer speaks no CURVE, has a wrong key, ..."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"authentication refused, ZAP status {value}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "it does not speak CURVE (mechanism mismatch): a node without keys?"
        if value in (
            zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC,
            zmq.PROTOCOL_ERROR_ZMTP_INVALID_METADATA,
        ):
            return "its CURVE handshake does not decrypt: a wrong public key for this node?"
        return f"the CURVE handshake failed (protocol error {value:#x})"
    # the other side gave up first (it saw the mismatch too): libzmq knows only the errno
    why = os.strerror(value) if 0 < value < 4096 else f"error {value}"
    return (
        f"the CURVE handshake failed ({why}): a peer without keys, or with a wrong public "
        "key for this node?"
    )
