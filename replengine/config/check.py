"""Validation machinery for resource configs (see loader.py for the rules themselves).

Everything here is generic: recovering line numbers from the TOML text (tomllib reports none
for semantic errors), the context that collects every error so the sysadmin sees them all at
once, per-key type/enum checks, ``host:port`` parsing and the size checks of local devices.
loader.py builds on these to validate a whole file.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replengine.config.defaults import Z85_ALPHABET, Z85_KEY_LEN
from replengine.errors import ConfigError

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_NAME = 64  # uname -n is at most 64 bytes on Linux
_HOSTNAME_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------- errors & lines


def _mkerr(path: Path, line: int | None, key: tuple[str, ...] | None, msg: str) -> ConfigError:
    where = f"{path}:{line}" if line is not None else f"{path}"
    keytxt = f"key '{_dotted(key)}': " if key else ""
    err = ConfigError(f"{where}: {keytxt}{msg}")
    # Structured copies for callers (CLI, agent) that want to point at the spot themselves.
    err.path = path  # type: ignore[attr-defined]
    err.line = line  # type: ignore[attr-defined]
    err.key = _dotted(key) if key else None  # type: ignore[attr-defined]
    return err


_TOML_POS_RE = re.compile(r"\(at line (\d+), column (\d+)\)")


def _toml_error(path: Path, e: tomllib.TOMLDecodeError) -> ConfigError:
    msg = str(e)
    m = _TOML_POS_RE.search(msg)
    line = int(m.group(1)) if m else None
    if "Cannot declare" in msg and "twice" in msg:
        hint = " (a table such as [nodes.<name>] appears twice: node names must be unique)"
    else:
        hint = ""
    return _mkerr(path, line, None, f"invalid TOML: {msg}{hint}")


def _dotted(key: tuple[str, ...]) -> str:
    return ".".join(k if _BARE_KEY_RE.fullmatch(k) else json.dumps(k) for k in key)


def _describe(v: Any) -> str:
    """A value as the sysadmin wrote it in TOML, for 'got ...' messages."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    return f"a {type(v).__name__} ({v})"


def _typename(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    return f"a {type(v).__name__}"


def _got(v: Any) -> str:
    d, t = _describe(v), _typename(v)
    return d if d in ("a table", "an array") else f"{d} ({t})"


def _parse_key(s: str, i: int) -> tuple[list[str], int] | None:
    """Parse a (dotted, possibly quoted) TOML key at s[i:]; returns parts and end index."""
    parts: list[str] = []
    n = len(s)
    while True:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            return None
        c = s[i]
        if c == '"':
            j = i + 1
            while j < n and s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            if j >= n:
                return None
            try:
                parts.append(json.loads(s[i : j + 1]))
            except ValueError:
                parts.append(s[i + 1 : j])
            i = j + 1
        elif c == "'":
            j = s.find("'", i + 1)
            if j < 0:
                return None
            parts.append(s[i + 1 : j])
            i = j + 1
        else:
            m = _BARE_KEY_RE.match(s, i)
            if not m:
                return None
            parts.append(m.group(0))
            i = m.end()
        while i < n and s[i] in " \t":
            i += 1
        if i < n and s[i] == ".":
            i += 1
            continue
        return parts, i


def _scan_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path defined in the text to its (first) line number.

    A best-effort scan, enough for error messages: table headers, ``[[arrays]]``, dotted keys
    and the keys they imply. Lines inside multi-line strings are skipped.
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_ml: str | None = None

    def record(path: tuple[str, ...], lineno: int) -> None:
        for k in range(1, len(path) + 1):
            lines.setdefault(path[:k], lineno)

    for lineno, line in enumerate(text.splitlines(), start=1):
        if in_ml is not None:
            if line.count(in_ml) % 2 == 1:
                in_ml = None
            continue
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            array = s.startswith("[[")
            parsed = _parse_key(s, 2 if array else 1)
            if parsed and s[parsed[1] :].startswith("]]" if array else "]"):
                table = tuple(parsed[0])
                record(table, lineno)
            continue
        parsed = _parse_key(s, 0)
        if parsed and s[parsed[1] :].startswith("="):
            record(table + tuple(parsed[0]), lineno)
            rest = s[parsed[1] + 1 :]
            for delim in ('"""', "'''"):
                if rest.count(delim) % 2 == 1:
                    in_ml = delim
                    break
    return lines


@dataclass
class _Ctx:
    """Validation context: collects every error so the sysadmin sees them all at once."""

    path: Path
    lines: dict[tuple[str, ...], int]
    errors: list[tuple[int, str]] = field(default_factory=list)

    def line(self, key: tuple[str, ...] | None) -> int:
        if key:
            for k in range(len(key), 0, -1):
                if key[:k] in self.lines:
                    return self.lines[key[:k]]
        return 1

    def error(self, key: tuple[str, ...] | None, msg: str) -> None:
        line = self.line(key)
        self.errors.append((line, str(_mkerr(self.path, line, key, msg))))

    def raise_if_any(self) -> None:
        if self.errors:
            self.errors.sort(key=lambda e: e[0])  # stable: same line keeps detection order
            err = ConfigError("\n".join(m for _, m in self.errors))
            err.path = self.path  # type: ignore[attr-defined]
            err.line = self.errors[0][0]  # type: ignore[attr-defined]
            err.errors = [m for _, m in self.errors]  # type: ignore[attr-defined]
            raise err


# --------------------------------------------------------------------------- validation


def _valid_name(s: str) -> bool:
    return (
        isinstance(s, str)
        and len(s) <= _MAX_NAME
        and bool(_NAME_RE.fullmatch(s))
        and s not in (".", "..")
    )


def _valid_key(s: str) -> bool:
    """A CurveZMQ public key in Z85: 40 characters of its alphabet, each group of 5 a 32-bit
    number (so it decodes to 32 bytes)."""
    if len(s) != Z85_KEY_LEN or not all(c in Z85_ALPHABET for c in s):
        return False
    for i in range(0, Z85_KEY_LEN, 5):
        value = 0
        for c in s[i : i + 5]:
            value = value * 85 + Z85_ALPHABET.index(c)
        if value >= 1 << 32:
            return False
    return True


def _check_unknown(
    ctx: _Ctx, table: dict[str, Any], prefix: tuple[str, ...], known: tuple[str, ...]
) -> None:
    for k in table:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            if prefix:
                allowed = f"allowed in [{_dotted(prefix)}]: {', '.join(known)}"
            else:
                allowed = "allowed at the top level: [resource] and [nodes.<name>] tables"
            ctx.error(prefix + (k,), f"unknown key{hint} ({allowed})")


def _get_str(
    ctx: _Ctx, table: dict[str, Any], key: tuple[str, ...], *, required: bool, what: str
) -> str | None:
    k = key[-1]
    if k not in table:
        if required:
            ctx.error(key, f"missing; set it to {what}")
        return None
    v = table[k]
    if not isinstance(v, str):
        ctx.error(key, f"expected {what}, got {_got(v)}")
        return None
    return v


def _choices(choices: tuple[str, ...]) -> str:
    q = [json.dumps(c) for c in choices]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " or " + q[-1]


def _get_enum(
    ctx: _Ctx,
    table: dict[str, Any],
    key: tuple[str, ...],
    choices: tuple[str, ...],
    *,
    required: bool = True,
) -> str | None:
    want = _choices(choices)
    k = key[-1]
    if k not in table:
        if required:
            ctx.error(key, f"missing; set it to {want}")
        return None
    v = table[k]
    if v not in choices or not isinstance(v, str):
        ctx.error(
            key, f"expected {want}, got {_got(v) if not isinstance(v, str) else _describe(v)}"
        )
        return None
    return v


def _get_int(
    ctx: _Ctx, table: dict[str, Any], key: tuple[str, ...], default: int, what: str
) -> int | None:
    k = key[-1]
    if k not in table:
        return default
    v = table[k]
    if isinstance(v, bool) or not isinstance(v, int):
        ctx.error(key, f"expected {what}, got {_got(v)}")
        return None
    return v


def _get_path(
    ctx: _Ctx,
    table: dict[str, Any],
    key: tuple[str, ...],
    *,
    required: bool,
    absolute: bool,
    what: str,
) -> Path | None:
    v = _get_str(ctx, table, key, required=required, what=what)
    if v is None:
        return None
    if not v or "\0" in v:
        ctx.error(key, f"expected {what}, got {_describe(v)}")
        return None
    p = Path(v)
    if absolute and not p.is_absolute():
        ctx.error(key, f"expected an absolute path, got {_describe(v)}")
        return None
    if not p.is_absolute():
        # Relative device paths are taken relative to the config file's directory, so a demo
        # directory holding the config and its files works wherever it is.
        p = ctx.path.parent / p
    return p


def _parse_address(s: str) -> tuple[str, int, str] | str:
    """(host, port, canonical address) or an error text."""
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or not s[end + 1 :].startswith(":"):
            return 'expected "[ipv6]:port" (e.g. "[fd00::1]:7790")'
        host, port_s = s[1:end], s[end + 2 :]
        try:
            ip6 = ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        if ip6.is_unspecified:
            return "'::' is not an address peers can connect to; use the node's own address"
        host = ip6.compressed
        canon_host = f"[{host}]"
    else:
        host, sep, port_s = s.rpartition(":")
        if not sep or not host:
            return 'expected "host:port" (e.g. "10.0.0.1:7790"; IPv6 as "[fd00::1]:7790")'
        if ":" in host:
            return 'an IPv6 address must be in brackets: "[fd00::1]:7790"'
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ip4 = ipaddress.IPv4Address(host)
            except ValueError:
                return f"{host!r} is not an IPv4 address"
            if ip4.is_unspecified:
                return (
                    "'0.0.0.0' is not an address peers can connect to; use the node's own address"
                )
            host = str(ip4)
        else:
            labels = host.rstrip(".").split(".")
            if len(host) > 253 or not all(_HOSTNAME_LABEL_RE.fullmatch(lb) for lb in labels):
                return f"{host!r} is not a valid host name or IPv4 address"
            host = host.rstrip(".").lower()
        canon_host = host
    if not port_s.isdigit() or not port_s.isascii():
        return f"port {port_s!r} is not a number (expected 1-65535)"
    port = int(port_s)
    if not 1 <= port <= 65535:
        return f"port {port} is out of range (expected 1-65535)"
    return host, port, f"{canon_host}:{port}"


def _get_metrics(ctx: _Ctx, table: dict[str, Any], key: tuple[str, ...]) -> str | None:
    """A node's ``metrics = "host:port"`` (its Prometheus endpoint), canonical, or None.

    Unlike a node's address it may be a wildcard ("0.0.0.0:9790", "[::]:9790"): it is
    where this node listens for scrapes, not where peers connect."""
    s = _get_str(
        ctx, table, key, required=False, what='a "host:port" string (where Prometheus scrapes)'
    )
    if s is None:
        return None
    wild = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}
    host, sep, port = s.rpartition(":")
    probe = f"{wild[host]}:{port}" if sep and host in wild else s
    parsed = _parse_address(probe)
    if isinstance(parsed, str):
        ctx.error(key, f"{parsed}, got {_describe(s)}")
        return None
    return f"{host}:{parsed[1]}" if sep and host in wild else parsed[2]


def _local_size(
    ctx: _Ctx, key: tuple[str, ...], p: Path, what: str, minimum: int
) -> os.stat_result | None:
    """Stat and size one local device; sizes via lseek(SEEK_END) so block devices work."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        ctx.error(
            key,
            f"{what} {p} does not exist on this node; create it (e.g. lvcreate, or truncate -s for a file)",
        )
        return None
    except OSError as e:
        ctx.error(key, f"cannot stat {what} {p}: {e.strerror or e}")
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        ctx.error(key, f"{what} {p} is not a regular file or block device")
        return None
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    except OSError as e:
        ctx.error(key, f"cannot open {what} {p}: {e.strerror or e}")
        return None
    if size < minimum:
        ctx.error(
            key, f"{what} {p} is {size} bytes, smaller than the minimum {minimum} bytes; grow it"
        )
        return None
    return st
