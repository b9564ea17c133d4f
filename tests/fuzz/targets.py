"""Fuzz targets for what outside input reaches: the wire decoder, the SRL's on-disk parsers
(record header, superblock, recovery of a whole log) and the config loader.

Each target is a hypothesis strategy of inputs and a function that feeds one input, and a
set of mutants derived from it, to the parser under test. A parser may only return or raise
its module's documented error (ProtocolError for the wire, None / SRLError for the SRL,
ConfigError for the config); any other exception propagates and hypothesis reports it as a
crash with the smallest input it finds. ``EXECUTIONS`` counts every call of a parser.

The strategies are structure-aware: they build valid messages, headers, superblocks and
config files (checksums fixed up, so the parser gets past its CRC) and then damage them --
truncation, bit flips, a changed type, wrong frame counts, absurd field values -- since
random bytes alone would rarely get past a magic number.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import struct
import tempfile
import uuid as uuidlib
from collections import Counter
from pathlib import Path

import crc32c
from hypothesis import strategies as st

from replengine import config as configmod
from replengine.config.loader import _NODE_KEYS, _RESOURCE_KEYS
from replengine.errors import ConfigError, ProtocolError, SRLError
from replengine.log import srl_format as fmt
from replengine.log.record import Record
from replengine.log.srl import SRL
from replengine.wire import protocol as proto

EXECUTIONS: Counter[str] = Counter()

U64 = st.integers(0, (1 << 64) - 1)
U32 = st.integers(0, (1 << 32) - 1)
SMALL = st.integers(0, 1 << 20)
ANY_INT = st.one_of(SMALL, U64, st.integers(-(1 << 70), 1 << 70))
UUID = uuidlib.UUID("6f1c2a9e-3d4b-4c5d-8e6f-7a8b9c0d1e2f")

# ---- the wire ----------------------------------------------------------------------------------

_json_scalar = st.one_of(
    st.none(), st.booleans(), ANY_INT, st.floats(allow_nan=True), st.text(max_size=20)
)
JSON = st.recursive(
    _json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)
_pairs = st.lists(st.lists(ANY_INT, min_size=0, max_size=3), max_size=4)
_tag = st.text(max_size=40)

BODIES = st.one_of(
    st.builds(proto.Update, st.integers(1, (1 << 64) - 1), U64, U64, st.binary(max_size=64), U64),
    st.builds(proto.Ack, U64, U64),
    st.builds(proto.Clear, U64),
    st.builds(proto.Nack, U64),
    st.builds(proto.Pull, U64, U64),
    st.builds(proto.BlockAck, U64),
    st.builds(proto.Block, U64, st.binary(max_size=64)),
    st.builds(proto.Sums, st.text(max_size=12), st.binary(max_size=4).map(lambda b: b * 16)),
    st.builds(
        proto.Hello,
        role=st.sampled_from(["primary", "secondary", "", "arbiter"]),
        session=st.text(max_size=16),
        history=_pairs,
        start_lsn=ANY_INT,
        end_lsn=ANY_INT,
        applied_end=ANY_INT,
        digest=st.text(max_size=64),
        volume_size=ANY_INT,
        primary=st.text(max_size=8),
        consistent=st.one_of(st.booleans(), st.integers(0, 2)),
        following=st.text(max_size=8),
    ),
    st.builds(proto.Reject, st.text(max_size=64)),
    st.builds(proto.BlockReq, _pairs, _tag),
    st.builds(proto.BlockDone, _tag, ANY_INT, ANY_INT, ANY_INT),
    st.builds(proto.SumReq, _tag, _pairs, st.one_of(st.just(1 << 20), ANY_INT)),
    # a run of consecutive records (UPDATES): first LSN, then each record's epoch/offset/data
    st.builds(
        lambda first, recs, clear: proto.Updates(
            [Record(first + i, e, o, d) for i, (e, o, d) in enumerate(recs)], clear
        ),
        st.integers(1, 1 << 62),
        st.lists(st.tuples(U64, U64, st.binary(max_size=48)), min_size=1, max_size=6),
        U64,
    ),
    st.builds(
        proto.VerifyReq, _tag, ANY_INT, ANY_INT, ANY_INT, st.one_of(st.just(1 << 20), ANY_INT)
    ),
    st.builds(
        proto.VerifySums,
        _tag,
        ANY_INT,
        st.one_of(
            st.just(""), st.binary(max_size=3).map(lambda b: (b * 16).hex()), st.text(max_size=40)
        ),
        st.text(max_size=40),
    ),
)


@st.composite
def wire_inputs(draw: st.DrawFn) -> tuple[list[bytes], list[tuple[int, int]]]:
    """A message as frames (valid, a JSON body of any shape, or raw bytes) and the mutations
    to try on it: (kind, argument) pairs applied by ``wire_target``."""
    kind = draw(st.sampled_from(["valid", "json", "raw"]))
    if kind == "valid":
        body = draw(BODIES)
        sender = draw(st.sampled_from(["alpha", "beta", "x" * 64]))
        flags = draw(st.integers(0, 0xFFFF))
        frames = [bytes(f) for f in proto.encode(UUID, draw(U64), sender, body, flags)]
    elif kind == "json":
        mtype = draw(st.sampled_from([1, 2, 8, 10, 12, *range(14, 20)]))
        name = draw(st.sampled_from([b"alpha", b"", b"\xff\xfe", b"b" * 65]))
        head = struct.pack(
            "!4sBBH16sQB", proto.MAGIC, proto.VERSION, mtype, 0, UUID.bytes, 1, len(name) & 0xFF
        )
        doc = draw(JSON)
        try:
            text = json.dumps(doc).encode()
        except (ValueError, OverflowError):
            text = b"{"
        frames = [head + name + text]
    else:
        frames = draw(st.lists(st.binary(max_size=120), max_size=4))
    n = len(frames[0]) if frames else 0
    muts = draw(
        st.lists(
            st.tuples(st.integers(0, 6), st.integers(0, max(n * 8, 1))), min_size=8, max_size=40
        )
    )
    return frames, muts


def _decode(frames: list[bytes], expect: uuidlib.UUID | None) -> None:
    EXECUTIONS["wire decode"] += 1
    try:
        proto.decode([memoryview(f) for f in frames], expect)
    except ProtocolError:
        pass


def wire_target(inp: tuple[list[bytes], list[tuple[int, int]]]) -> None:
    frames, muts = inp
    _decode(frames, UUID)
    _decode(frames, None)
    if not frames:
        return
    head = frames[0]
    for op, arg in muts:
        f = list(frames)
        if op == 0:  # truncated
            f[0] = head[: arg % (len(head) + 1)]
        elif op == 1 and head:  # one bit flipped
            b = bytearray(head)
            b[(arg // 8) % len(b)] ^= 1 << (arg % 8)
            f[0] = bytes(b)
        elif op == 2 and len(head) > 5:  # another message type
            f[0] = head[:5] + bytes([arg % 256]) + head[6:]
        elif op == 3:  # a frame more, or the data frame gone
            f = f + [head[: arg % 40]] if arg % 2 else f[:1]
        elif op == 4 and len(f) == 2:  # data frame resized
            f[1] = f[1][: arg % (len(f[1]) + 1)] + b"\0" * (arg % 3)
        elif op == 5 and len(head) >= 33:  # sender length byte changed
            f[0] = head[:32] + bytes([arg % 256]) + head[33:]
        elif op == 6:  # bytes appended to the header
            f[0] = head + bytes(arg % 50)
        _decode(f, UUID)


# ---- the SRL's parsers ------------------------------------------------------------------------


@st.composite
def header_inputs(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[int, int]]]:
    """A record header with valid CRCs over random fields (or raw bytes), its data, and
    mutations (bit flips / truncations, each tried with the header CRC fixed up again)."""
    data = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        head = fmt.pack_header(
            draw(st.integers(0, 0xFFFF)),
            draw(U64),
            draw(U64),
            draw(U64),
            draw(st.one_of(st.just(len(data)), U32)),
            draw(U64),
            draw(U64),
            crc32c.crc32c(data),
        )
    else:
        head = draw(st.binary(min_size=0, max_size=80))
    muts = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 12)), max_size=30))
    return head, data, muts


def _fix_hcrc(b: bytes) -> bytes:
    if len(b) < fmt.HEADER_SIZE:
        return b
    return b[:60] + struct.pack("<I", crc32c.crc32c(b[:60])) + b[64:]


def _parse_header(head: bytes, data: bytes) -> None:
    EXECUTIONS["SRL record header"] += 1
    hdr = fmt.parse_header(head)
    if hdr is not None:
        assert hdr.size >= fmt.REC_ALIGN
        fmt.data_matches(hdr, head, data)


def header_target(inp: tuple[bytes, bytes, list[tuple[int, int]]]) -> None:
    head, data, muts = inp
    _parse_header(head, data)
    _parse_header(memoryview(head), data)  # type: ignore[arg-type]
    for op, arg in muts:
        b = bytearray(head)
        if op == 0 and b:
            b[(arg // 8) % len(b)] ^= 1 << (arg % 8)
        elif op == 1:
            b = b[: arg % (len(b) + 1)]
        else:
            b[4:6] = struct.pack("<H", arg % 4)  # type, then the CRC made to match
        _parse_header(bytes(b), data)
        _parse_header(_fix_hcrc(bytes(b)), data)


_NAME = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=20
)


@st.composite
def superblock_inputs(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]]]:
    sb = fmt.Superblock(
        resource=draw(_NAME),
        uuid=UUID,
        node=draw(_NAME),
        area_offset=draw(st.one_of(st.just(fmt.AREA_OFFSET), U64)),
        area_size=draw(st.one_of(st.just(fmt.MIN_AREA_SIZE), U64)),
        log_id=draw(U64),
        start_lsn=draw(U64),
        start_pos=draw(U64),
        end_lsn=draw(U64),
        end_pos=draw(U64),
        history=draw(st.lists(st.tuples(U64, U64), max_size=6)),
        trunc_lsn=draw(U64),
        trunc_end_pos=draw(U64),
        generation=draw(U64),
        version=draw(st.one_of(st.just(fmt.FORMAT_VERSION), U32)),
    )
    try:
        raw = sb.pack()
    except (ValueError, UnicodeEncodeError):
        raw = bytes(fmt.SB_SIZE)
    muts = draw(
        st.lists(st.tuples(st.integers(0, 2), st.integers(0, fmt.SB_SIZE * 8)), max_size=20)
    )
    return raw, muts


def _sb_fix(b: bytes) -> bytes:
    if len(b) < fmt.SB_SIZE:
        return b
    crc_off = fmt.SB_SIZE - 4
    return b[:crc_off] + struct.pack("<I", crc32c.crc32c(b[:crc_off])) + b[fmt.SB_SIZE :]


def _unpack_sb(b: bytes) -> None:
    EXECUTIONS["SRL superblock"] += 1
    fmt.unpack_superblock(b)


def superblock_target(inp: tuple[bytes, list[tuple[int, int]]]) -> None:
    raw, muts = inp
    _unpack_sb(raw)
    for op, arg in muts:
        b = bytearray(raw)
        if op == 0:
            b[(arg // 8) % len(b)] ^= 1 << (arg % 8)
        elif op == 1:
            b = b[: arg % (len(b) + 1)]
        else:  # the history count, past the limit
            struct.pack_into("<I", b, fmt._SB_HIST_OFF - 8, arg)
        _unpack_sb(bytes(b))
        _unpack_sb(_sb_fix(bytes(b)))


# ---- a whole SRL at open (recovery) -------------------------------------------------------------

_SRL_DIR = Path(
    tempfile.mkdtemp(
        prefix="replengine-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
)
atexit.register(shutil.rmtree, _SRL_DIR, ignore_errors=True)
_TEMPLATE: bytes | None = None
SRL_SIZE = fmt.AREA_OFFSET + fmt.MIN_AREA_SIZE


def _template() -> bytes:
    """An SRL with a few records of two epochs, as the daemon would leave it."""
    global _TEMPLATE
    if _TEMPLATE is None:
        path = _SRL_DIR / "template.srl"
        with open(path, "wb") as f:
            f.truncate(SRL_SIZE)
        srl = SRL.create(path, resource="r0", uuid=UUID, node="alpha")
        srl.set_history([(1, 1)])
        for i in range(6):
            srl.append(1, i * 4096, bytes([i + 1]) * (512 * (i + 1)))
        srl.set_history([(1, 1), (2, 7)])
        for i in range(3):
            srl.append(2, i * 8192, bytes([0x40 + i]) * 5000)
        srl.advance_start(3)
        srl.close()
        _TEMPLATE = path.read_bytes()
        path.unlink()
    return _TEMPLATE


@st.composite
def srl_inputs(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """Damage to an SRL image: (where, what, value) -- a field of a superblock copy or of a
    record header set to a value (CRCs fixed up, so recovery has to judge the values), or a
    raw bit flip anywhere in the used part."""
    return draw(
        st.lists(
            st.tuples(st.integers(0, 4), st.integers(0, 1 << 20), st.one_of(U64, SMALL)),
            min_size=1,
            max_size=4,
        )
    )


def _damage(img: bytearray, where: int, what: int, value: int) -> None:
    if where <= 1:  # a superblock copy: one 8-byte field of the fixed part
        base = where * fmt.SB_SIZE
        off = base + 24 + 16 * 0 + (what % 28) * 8
        if off + 8 <= base + fmt._SB_HIST_OFF + 6 * 16:
            struct.pack_into("<Q", img, off, value)
        crc_off = base + fmt.SB_SIZE - 4
        struct.pack_into("<I", img, crc_off, crc32c.crc32c(bytes(img[base:crc_off])))
    elif where <= 3:  # a record header: a field set, header CRC fixed (record CRC not)
        pos = fmt.AREA_OFFSET + (what % 16) * fmt.REC_ALIGN
        field_off = [8, 16, 24, 32, 40, 48][(what >> 4) % 6]
        fmtc = "<Q" if field_off in (8, 16, 24, 40, 48) else "<I"
        struct.pack_into(fmtc, img, pos + field_off, value & (0xFFFFFFFF if fmtc == "<I" else -1))
        struct.pack_into("<I", img, pos + 60, crc32c.crc32c(bytes(img[pos : pos + 60])))
    else:  # a bit anywhere in the superblocks and the first records
        bit = what % ((fmt.AREA_OFFSET + 16 * fmt.BLOCK) * 8)
        img[bit // 8] ^= 1 << (bit % 8)


def srl_target(damage: list[tuple[int, int, int]]) -> None:
    img = bytearray(_template())
    for d in damage:
        _damage(img, *d)
    path = _SRL_DIR / f"fuzz-{os.getpid()}.srl"
    path.write_bytes(img)
    EXECUTIONS["SRL open (recovery)"] += 1
    try:
        srl = SRL.open(path)
    except SRLError:
        return
    try:  # what recovery accepted must read back
        for _ in srl.read(srl.start_lsn, srl.end_lsn):
            pass
    except SRLError:
        pass
    finally:
        srl.close()


# ---- the config loader ------------------------------------------------------------------------

# every key the loader knows (so new keys are fuzzed too), and one it does not
_KEYS_RES = [*_RESOURCE_KEYS, "bogus"]
_KEYS_NODE = [*_NODE_KEYS, "x"]
_GOOD = {
    "name": '"r0"',
    "srl_full": '"stall"',
    "on_sync_loss": '"degrade"',
    "uuid": f'"{UUID}"',
    "sync_timeout": "30",
    "promote_min_peers": "1",
    "dcm_region_size": "1048576",
    "run_dir": '"/run/replengine"',
    "heartbeat_ms": "1000",
    "device": '"none"',
    "secret_key_file": '"/etc/replengine/r0.key"',
    "address": '"127.0.0.1:7790"',
    "volume": '"/dev/vg0/r0"',
    "srl": '"/dev/vg0/r0-srl"',
    "mode": '"sync"',
    "public_key": '"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"',
}
_TOML_VALUES = st.one_of(
    st.sampled_from(list(_GOOD.values())),
    st.integers(-(1 << 63), (1 << 63) - 1).map(str),
    st.floats(allow_nan=True).map(lambda f: repr(f).replace("inf", "inf").replace("nan", "nan")),
    st.text(max_size=30).map(json.dumps),
    st.sampled_from(
        [
            "true",
            "[]",
            "[1, 2]",
            "{}",
            "{a = 1}",
            "1979-05-27T07:32:00Z",
            '"0.0.0.0:1"',
            '"[::]:7790"',
            '"[fd00::1]:0"',
            '"host:99999"',
            '"a:b:c"',
            '"."',
            '"\\u0000"',
            '"x"',
            '"sync "',
            "1e400",
            "-0",
            "0x10",
            '"relative/path"',
        ]
    ),
)


@st.composite
def config_inputs(draw: st.DrawFn) -> tuple[str, list[tuple[int, int, str]]]:
    lines = ["[resource]"]
    for key in draw(st.lists(st.sampled_from(_KEYS_RES), max_size=12)):
        val = draw(st.one_of(st.just(_GOOD.get(key, "1")), _TOML_VALUES))
        lines.append(f"{key} = {val}")
    names = draw(
        st.lists(st.sampled_from(["alpha", "beta", "gamma", "a.b", '"x y"', "δ"]), max_size=4)
    )
    for i, name in enumerate(names):
        lines.append(f"[nodes.{name}]")
        for key in draw(st.lists(st.sampled_from(_KEYS_NODE), max_size=8)):
            val = _GOOD.get(key, "1")
            if key == "address":
                val = f'"127.0.0.{i + 1}:7790"'
            val = draw(st.one_of(st.just(val), _TOML_VALUES))
            lines.append(f"{key} = {val}")
    text = "\n".join(lines) + "\n"
    muts = draw(
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.text(max_size=3)), max_size=10
        )
    )
    return text, muts


def _loads(text: str) -> None:
    EXECUTIONS["config loader"] += 1
    for node in ("alpha", None):
        try:
            configmod.loads(text, path="/etc/replengine/fuzz.toml", node=node, check_local=False)
        except ConfigError:
            pass


def config_target(inp: tuple[str, list[tuple[int, int, str]]]) -> None:
    text, muts = inp
    _loads(text)
    for op, arg, s in muts:
        i = arg % (len(text) + 1)
        if op == 0:
            t = text[:i] + s + text[i:]
        elif op == 1:
            t = text[:i] + text[i + 1 + arg % 5 :]
        elif op == 2:  # a line duplicated (duplicate keys and tables)
            lines = text.splitlines()
            j = arg % max(len(lines), 1)
            t = "\n".join(lines[: j + 1] + lines[j:]) if lines else s
        else:
            t = text[:i]
        _loads(t)


def config_bytes_target(raw: bytes) -> None:
    """load() from a file of any bytes (not UTF-8, NULs, ...)."""
    path = _SRL_DIR / f"fuzz-{os.getpid()}.toml"
    path.write_bytes(raw)
    EXECUTIONS["config loader"] += 1
    try:
        configmod.load(path, node="alpha", check_local=False)
    except ConfigError:
        pass


TARGETS = {
    "wire": (wire_inputs(), wire_target),
    "srl-header": (header_inputs(), header_target),
    "srl-superblock": (superblock_inputs(), superblock_target),
    "srl-open": (srl_inputs(), srl_target),
    "config": (config_inputs(), config_target),
    "config-bytes": (st.binary(max_size=300), config_bytes_target),
}
