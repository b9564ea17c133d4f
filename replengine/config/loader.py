"""Reading a resource's TOML file into a ResourceConfig, refusing anything doubtful.

The file is the one place a sysadmin describes a resource, so loading is strict: every
unknown key, missing key, wrong type or inconsistent value is refused with a ConfigError that
names ``file:line``, the dotted key and what is wrong (invariant 7: a wrong config changes
nothing). Errors are collected rather than raised one by one so a sysadmin fixes a file in one
pass; the generic checks that collect them live in check.py, the rules of this file format
here.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
import uuid as uuidlib
from pathlib import Path
from typing import Any

from replengine.config.check import (
    _MAX_NAME,
    _check_unknown,
    _Ctx,
    _describe,
    _get_enum,
    _get_int,
    _get_metrics,
    _get_path,
    _get_str,
    _got,
    _local_size,
    _mkerr,
    _parse_address,
    _scan_lines,
    _toml_error,
    _valid_key,
    _valid_name,
)
from replengine.config.defaults import (
    DEFAULT_DCM_REGION_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_HEARTBEAT_MS,
    DEFAULT_RESYNC_CHUNK_SIZE,
    DEFAULT_RUN_DIR,
    DEFAULT_SYNC_TIMEOUT,
    DEVICES,
    MAX_NODES,
    MAX_RESYNC_CHUNK_SIZE,
    MIN_NODES,
    MIN_RESYNC_CHUNK_SIZE,
    MIN_SRL_SIZE,
    MIN_VOLUME_SIZE,
    MODES,
    ON_SYNC_LOSS,
    SRL_FULL,
)
from replengine.config.helpers import compute_digest, default_key_path, derive_uuid
from replengine.config.model import NodeConfig, ResourceConfig

_TOP_KEYS = ("resource", "nodes")
_RESOURCE_KEYS = (
    "name",
    "srl_full",
    "on_sync_loss",
    "uuid",
    "sync_timeout",
    "promote_min_peers",
    "dcm_region_size",
    "run_dir",
    "heartbeat_ms",
    "device",
    "secret_key_file",
    "resync_rate",
    "resync_adaptive",
    "resync_chunk_size",
)
_RESOURCE_REQUIRED = ("name", "srl_full", "on_sync_loss")
_NODE_KEYS = (
    "address",
    "volume",
    "srl",
    "mode",
    "device",
    "public_key",
    "secret_key_file",
    "metrics",
)
_KEY_FILE_WHAT = "the path of this node's CURVE secret key file (replctl keygen --out FILE)"


def load(
    path: str | os.PathLike[str], *, node: str | None = None, check_local: bool = True
) -> ResourceConfig:
    """Read, parse and validate the resource config at ``path`` as seen from ``node``.

    ``node`` defaults to ``os.uname().nodename`` (what Pacemaker calls the node). With
    ``check_local`` the local volume and SRL must exist and be large enough; the OCF stop and
    meta-data actions pass False so a broken disk never blocks stopping the resource.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise _mkerr(p, None, None, "config file does not exist") from None
    except IsADirectoryError:
        raise _mkerr(p, None, None, "is a directory, expected a TOML config file") from None
    except OSError as e:
        raise _mkerr(p, None, None, f"cannot read config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise _mkerr(p, line, None, f"not valid UTF-8 at byte {e.start}") from None
    return loads(text, path=p, node=node, check_local=check_local)


def loads(
    text: str,
    *,
    path: str | os.PathLike[str] = "<string>",
    node: str | None = None,
    check_local: bool = True,
) -> ResourceConfig:
    """Like load() but from a string; ``path`` is used in messages and for relative paths."""
    p = Path(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(p, e) from None
    ctx = _Ctx(p, _scan_lines(text))
    cfg = _build(ctx, doc, node)
    if check_local:
        _check_local(ctx, cfg)
    return cfg


def _build(ctx: _Ctx, doc: dict[str, Any], node: str | None) -> ResourceConfig:
    _check_unknown(ctx, doc, (), _TOP_KEYS)

    res = doc.get("resource")
    res_ok = isinstance(res, dict)  # if not, one error says so; no follow-on "missing" noise
    if res is None:
        ctx.error(None, "missing [resource] table (with name, srl_full, on_sync_loss)")
        res = {}
    elif not isinstance(res, dict):
        ctx.error(("resource",), f"expected a table [resource], got {_got(res)}")
        res = {}
    R = ("resource",)
    _check_unknown(ctx, res, R, _RESOURCE_KEYS)

    name = _get_str(ctx, res, R + ("name",), required=res_ok, what='the resource name (e.g. "r0")')
    if name is not None and not _valid_name(name):
        ctx.error(
            R + ("name",),
            f"expected 1-{_MAX_NAME} of A-Z a-z 0-9 _ . - (it becomes a file and device name), got {_describe(name)}",
        )
        name = None
    srl_full = _get_enum(ctx, res, R + ("srl_full",), SRL_FULL, required=res_ok)
    on_sync_loss = _get_enum(ctx, res, R + ("on_sync_loss",), ON_SYNC_LOSS, required=res_ok)

    sync_timeout: float | None = DEFAULT_SYNC_TIMEOUT
    if "sync_timeout" in res:
        v = res["sync_timeout"]
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not v > 0
            or v != v
            or v == float("inf")
        ):
            ctx.error(R + ("sync_timeout",), f"expected a number of seconds > 0, got {_got(v)}")
            sync_timeout = None
        else:
            sync_timeout = float(v)

    dcm = _get_int(ctx, res, R + ("dcm_region_size",), DEFAULT_DCM_REGION_SIZE, "a size in bytes")
    if dcm is not None and (dcm < 4096 or dcm & (dcm - 1)):
        ctx.error(
            R + ("dcm_region_size",),
            f"expected a power of two >= 4096 (bytes per dirty-region bit, e.g. 1048576), got {dcm}",
        )
        dcm = None

    resync_rate = 0.0
    if "resync_rate" in res:
        v = res["resync_rate"]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1e6 or v != v:
            ctx.error(
                R + ("resync_rate",),
                f"expected MiB/s as a number >= 0 (0: no cap), got {_got(v)}",
            )
        else:
            resync_rate = float(v)
    chunk = _get_int(
        ctx, res, R + ("resync_chunk_size",), DEFAULT_RESYNC_CHUNK_SIZE, "a size in bytes"
    )
    if chunk is not None and (
        not MIN_RESYNC_CHUNK_SIZE <= chunk <= MAX_RESYNC_CHUNK_SIZE or chunk & (chunk - 1)
    ):
        ctx.error(
            R + ("resync_chunk_size",),
            f"expected a power of two from {MIN_RESYNC_CHUNK_SIZE} to {MAX_RESYNC_CHUNK_SIZE} "
            f"(bytes per chunk digest of a checksummed resync, e.g. 1048576), got {chunk}",
        )
        chunk = None
    resync_adaptive = res.get("resync_adaptive", True)
    if not isinstance(resync_adaptive, bool):
        ctx.error(R + ("resync_adaptive",), f"expected true or false, got {_got(resync_adaptive)}")
        resync_adaptive = True

    hb = _get_int(
        ctx, res, R + ("heartbeat_ms",), DEFAULT_HEARTBEAT_MS, "milliseconds as an integer"
    )
    if hb is not None and not 10 <= hb <= 600_000:
        ctx.error(R + ("heartbeat_ms",), f"expected 10-600000 milliseconds, got {hb}")
        hb = None

    run_dir = _get_path(
        ctx, res, R + ("run_dir",), required=False, absolute=True, what="an absolute directory path"
    )
    if run_dir is None and "run_dir" not in res:
        run_dir = DEFAULT_RUN_DIR
    device = _get_enum(ctx, res, R + ("device",), DEVICES, required=False)
    if device is None and "device" not in res:
        device = DEFAULT_DEVICE
    res_key_file = _get_path(
        ctx, res, R + ("secret_key_file",), required=False, absolute=False, what=_KEY_FILE_WHAT
    )

    res_uuid: uuidlib.UUID | None = None
    uuid_given = "uuid" in res
    if uuid_given:
        v = res["uuid"]
        if not isinstance(v, str):
            ctx.error(R + ("uuid",), f"expected a UUID string, got {_got(v)}")
        else:
            try:
                res_uuid = uuidlib.UUID(v)
            except ValueError:
                ctx.error(
                    R + ("uuid",),
                    f'expected a UUID such as "{uuidlib.uuid4()}", got {_describe(v)}',
                )

    # ---- nodes
    nodes: dict[str, NodeConfig] = {}
    raw_nodes = doc.get("nodes")
    N = ("nodes",)
    if raw_nodes is None:
        ctx.error(None, f"missing node tables: add {MIN_NODES}-{MAX_NODES} [nodes.<name>] tables")
        raw_nodes = {}
    elif not isinstance(raw_nodes, dict):
        ctx.error(N, f"expected [nodes.<name>] tables, got {_got(raw_nodes)}")
        raw_nodes = {}
    seen_addr: dict[str, str] = {}
    keyed: dict[str, str] = {}  # node name -> public key, for the nodes that have one
    unkeyed: list[str] = []
    for nname, ntab in raw_nodes.items():
        K = N + (nname,)
        if not _valid_name(nname):
            ctx.error(
                K,
                f"node name {nname!r} is not valid: use 1-{_MAX_NAME} of A-Z a-z 0-9 _ . - (the cluster node name, uname -n)",
            )
            continue
        if not isinstance(ntab, dict):
            ctx.error(K, f"expected a table [nodes.{nname}], got {_got(ntab)}")
            continue
        _check_unknown(ctx, ntab, K, _NODE_KEYS)
        addr_s = _get_str(
            ctx,
            ntab,
            K + ("address",),
            required=True,
            what='a "host:port" string (the address this node listens on)',
        )
        volume = _get_path(
            ctx,
            ntab,
            K + ("volume",),
            required=True,
            absolute=False,
            what="a block device or file path",
        )
        srl = _get_path(
            ctx,
            ntab,
            K + ("srl",),
            required=True,
            absolute=False,
            what="a block device or file path",
        )
        mode = _get_enum(ctx, ntab, K + ("mode",), MODES)
        ndev = _get_enum(ctx, ntab, K + ("device",), DEVICES, required=False)
        pub = _node_key(ctx, ntab, K, keyed, unkeyed)
        key_file = _get_path(
            ctx, ntab, K + ("secret_key_file",), required=False, absolute=False, what=_KEY_FILE_WHAT
        )
        metrics = _get_metrics(ctx, ntab, K + ("metrics",))
        parsed = None
        if addr_s is not None:
            parsed = _parse_address(addr_s)
            if isinstance(parsed, str):
                ctx.error(K + ("address",), f"{parsed}, got {_describe(addr_s)}")
                parsed = None
            elif parsed[2] in seen_addr:
                ctx.error(
                    K + ("address",),
                    f"{parsed[2]} is also the address of node '{seen_addr[parsed[2]]}'; every node needs its own host:port",
                )
                parsed = None
            else:
                seen_addr[parsed[2]] = nname
        if (
            volume is not None
            and srl is not None
            and os.path.normpath(volume) == os.path.normpath(srl)
        ):
            ctx.error(
                K + ("srl",),
                f"is the same path as the volume ({volume}); the SRL must be a separate device or file",
            )
            srl = None
        if parsed is None or volume is None or srl is None or mode is None:
            continue
        if ndev is None and "device" in ntab:
            continue
        host, port, address = parsed
        nodes[nname] = NodeConfig(
            nname,
            host,
            port,
            address,
            volume,
            srl,
            mode,
            ndev or device or DEFAULT_DEVICE,
            public_key=pub,
            secret_key_file=key_file,
            metrics=metrics,
        )
    if keyed and unkeyed:
        ctx.error(
            N + (unkeyed[0], "public_key"),
            f"missing for {', '.join(unkeyed)} while {', '.join(keyed)} "
            f"{'has' if len(keyed) == 1 else 'have'} one: give every node its key "
            "(replctl keygen --out FILE prints it) or remove them all",
        )

    count = len(raw_nodes) if isinstance(raw_nodes, dict) else 0
    if isinstance(raw_nodes, dict) and raw_nodes and count < MIN_NODES:
        ctx.error(
            N + (next(iter(raw_nodes)),),
            f"a resource needs {MIN_NODES}-{MAX_NODES} nodes, this file has {count}; add a [nodes.<name>] table per node",
        )
    elif count > MAX_NODES:
        extra = list(raw_nodes)[MAX_NODES]
        ctx.error(N + (extra,), f"a resource has at most {MAX_NODES} nodes, this file has {count}")

    pmp = _get_int(ctx, res, R + ("promote_min_peers",), count // 2, "an integer number of peers")
    if pmp is not None and "promote_min_peers" in res and not 0 <= pmp <= max(count - 1, 0):
        ctx.error(
            R + ("promote_min_peers",),
            f"expected 0-{max(count - 1, 0)} (peers other than the node being promoted), got {pmp}",
        )
        pmp = None

    ctx.raise_if_any()
    assert name is not None and srl_full is not None and on_sync_loss is not None
    assert sync_timeout is not None and dcm is not None and hb is not None and pmp is not None
    assert run_dir is not None and device is not None

    if keyed:
        # each node reads its own secret key from its table's file, else the resource's,
        # else <config dir>/<resource>.key
        default_key = res_key_file or default_key_path(name)
        nodes = {
            n: dataclasses.replace(nc, secret_key_file=nc.secret_key_file or default_key)
            for n, nc in nodes.items()
        }

    derived = res_uuid is None
    if res_uuid is None:
        res_uuid = derive_uuid(name, [n.address for n in nodes.values()])

    local_name = node if node is not None else os.uname().nodename
    if local_name not in nodes:
        short = local_name.split(".", 1)[0]
        hint = (
            f"; did you mean node={short!r} (--node {short})?"
            if short in nodes and short != local_name
            else ("; pass the node name explicitly (--node) or add a [nodes.<name>] table for it")
        )
        raise _mkerr(
            ctx.path,
            ctx.line(N + (next(iter(nodes)),)),
            None,
            f"this node {local_name!r} is not in the config (nodes: {', '.join(nodes)}){hint}",
        )

    return ResourceConfig(
        path=ctx.path,
        name=name,
        uuid=res_uuid,
        srl_full=srl_full,
        on_sync_loss=on_sync_loss,
        sync_timeout=sync_timeout,
        promote_min_peers=pmp,
        dcm_region_size=dcm,
        run_dir=run_dir,
        heartbeat_ms=hb,
        resync_rate=resync_rate,
        resync_adaptive=resync_adaptive,
        resync_chunk_size=chunk,
        nodes=nodes,
        local=nodes[local_name],
        digest=compute_digest(name, res_uuid, srl_full, on_sync_loss, dcm, nodes),
        uuid_derived=derived,
    )


def _node_key(
    ctx: _Ctx, ntab: dict[str, Any], K: tuple[str, ...], keyed: dict[str, str], unkeyed: list[str]
) -> str | None:
    """The node's public_key, checked (Z85, not another node's), noted in keyed/unkeyed."""
    nname = K[-1]
    pub = _get_str(
        ctx, ntab, K + ("public_key",), required=False, what="a CURVE public key (40 Z85 chars)"
    )
    if pub is None:
        if "public_key" not in ntab:
            unkeyed.append(nname)
        return None
    if not _valid_key(pub):
        ctx.error(
            K + ("public_key",),
            f"expected a CURVE public key: 40 Z85 characters as 'replctl keygen' prints, "
            f"got {_describe(pub)}",
        )
        return None
    twin = next((n for n, k in keyed.items() if k == pub), None)
    if twin is not None:
        ctx.error(
            K + ("public_key",),
            f"is also the key of node '{twin}'; every node needs its own key pair "
            "(replctl keygen on each node)",
        )
        return None
    keyed[nname] = pub
    return pub


def _check_local(ctx: _Ctx, cfg: ResourceConfig) -> None:
    K = ("nodes", cfg.local.name)
    vst = _local_size(ctx, K + ("volume",), cfg.local.volume, "volume", MIN_VOLUME_SIZE)
    sst = _local_size(ctx, K + ("srl",), cfg.local.srl, "SRL", MIN_SRL_SIZE)
    if vst is not None and sst is not None:

        def ident(st: os.stat_result) -> tuple[int, ...]:
            return (st.st_rdev,) if stat.S_ISBLK(st.st_mode) else (st.st_dev, st.st_ino)

        if stat.S_IFMT(vst.st_mode) == stat.S_IFMT(sst.st_mode) and ident(vst) == ident(sst):
            ctx.error(
                K + ("srl",),
                f"{cfg.local.srl} is the same device or file as the volume {cfg.local.volume}; the SRL must be separate",
            )
    ctx.raise_if_any()
