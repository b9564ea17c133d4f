"""Wire protocol: every message type round-trips; every malformation is a ProtocolError that
names the problem (invariant 7); random or mutated bytes never raise anything else."""

from __future__ import annotations

import dataclasses
import json
import struct
import uuid as uuidlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replengine.errors import ProtocolError
from replengine.log.record import Record
from replengine.wire import protocol
from replengine.wire.protocol import (
    MAGIC,
    VERSION,
    Ack,
    Block,
    BlockReq,
    Clear,
    Flag,
    Hello,
    MsgType,
    Nack,
    Pull,
    Reject,
    SumReq,
    Sums,
    Update,
    Updates,
    VerifyReq,
    VerifySums,
    decode,
    encode,
)

U = uuidlib.UUID("6f1c2a9e-3d4b-4c5d-8e6f-7a8b9c0d1e2f")
OTHER = uuidlib.UUID("11111111-2222-3333-4444-555555555555")
PREFIX = protocol._PREFIX

HELLO = Hello(
    role="secondary",
    session="0123456789abcdef",
    history=[(1, 1), (2, 40)],
    start_lsn=3,
    end_lsn=57,
    applied_end=50,
    digest="ab" * 32,
    volume_size=1 << 30,
    primary="alpha",
    consistent=True,
    following="alpha",
)

SAMPLES: dict[type, object] = {
    Update: Update(lsn=41, rec_epoch=2, offset=1 << 20, data=b"\x01\x02" * 2048, clear_end=30),
    Ack: Ack(durable_end=42, applied_end=40),
    Clear: Clear(clear_end=39),
    Nack: Nack(expected=17),
    Pull: Pull(first=5, end=90),
    Block: Block(offset=4096, data=b"\xee" * 8192),
    Hello: HELLO,
    Reject: Reject(reason="config digest mismatch"),
    BlockReq: BlockReq(ranges=[(0, 4096), (1 << 20, 65536)], tag="rw-1"),
    SumReq: SumReq(tag="dcm-0123456789", ranges=[(0, 3 << 20)], chunk=1 << 20),
    Sums: Sums(tag="dcm-0123456789", digests=bytes(range(48))),
    Updates: Updates(
        [
            Record(lsn=41, epoch=2, offset=4096, data=b"\x01" * 4096),
            Record(lsn=42, epoch=2, offset=0, data=b""),
            Record(lsn=43, epoch=3, offset=1 << 30, data=b"\x07" * 100),
        ],
        clear_end=30,
    ),
    VerifyReq: VerifyReq(tag="verify-1", lsn=77, offset=8 << 20, count=8, chunk=1 << 20),
    VerifySums: VerifySums(tag="verify-1", lsn=77, digests="ab" * 32, error=""),
}


def sample(cls: type) -> object:
    """A sample body: the hand-written one, else one filled from the field annotations (so
    a message type added later is covered without editing this file)."""
    if cls in SAMPLES:
        return SAMPLES[cls]
    vals = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        ann = str(f.type)
        if "bytes" in ann:
            vals[f.name] = bytes(range(256)) * 4
        elif ann.startswith("list"):
            vals[f.name] = [(i, i + 1)]
        elif ann == "str":
            vals[f.name] = f"s{i}"
        elif ann == "bool":
            vals[f.name] = True
        else:
            vals[f.name] = 1000 + i
    return cls(**vals)


ALL_BODIES = sorted(protocol._BODY_TYPE, key=lambda c: protocol._BODY_TYPE[c])


def norm(body: object) -> dict:
    out = {}
    for f in dataclasses.fields(body):  # type: ignore[arg-type]
        if not f.compare:
            continue  # a cache of what the other fields say (Update.crc)
        v = getattr(body, f.name)
        if isinstance(v, memoryview | bytearray):
            v = bytes(v)
        if isinstance(v, list):
            v = [tuple(x) if isinstance(x, list) else x for x in v]
        out[f.name] = v
    return out


def frames_of(body: object, **kw) -> list[bytes]:
    return [
        bytes(f)
        for f in encode(kw.pop("uuid", U), kw.pop("epoch", 7), kw.pop("sender", "beta"), body, **kw)
    ]


def head(
    mtype: int,
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
    uuid=U,
    epoch: int = 7,
    sender: bytes = b"beta",
    nlen: int | None = None,
    flags: int = 0,
) -> bytes:
    n = len(sender) if nlen is None else nlen
    return PREFIX.pack(magic, version, mtype, flags, uuid.bytes, epoch, n) + sender


# ---- round trips ------------------------------------------------------------------------


def test_every_message_type_has_a_body_class():
    assert set(protocol._BODY_TYPE.values()) == set(MsgType), (
        "a MsgType without a body class (or the reverse)"
    )


@pytest.mark.parametrize("cls", ALL_BODIES, ids=lambda c: c.__name__)
def test_round_trip(cls):
    body = sample(cls)
    frames = frames_of(body, epoch=123456789, sender="node-with.dots_1", flags=Flag.PULLED)
    msg = decode(frames, U)
    assert msg.header.type is protocol._BODY_TYPE[cls]
    assert msg.header.uuid == U and msg.header.epoch == 123456789
    assert msg.header.sender == "node-with.dots_1" and msg.header.flags == Flag.PULLED
    assert type(msg.body) is cls
    assert norm(msg.body) == norm(body)
    # without an expected uuid too (replctl tools decode without one)
    assert norm(decode(frames).body) == norm(body)


def test_round_trip_extremes():
    big = Update(lsn=2**64 - 1, rec_epoch=2**64 - 1, offset=2**64 - 1, data=b"", clear_end=0)
    assert norm(decode(frames_of(big, epoch=2**64 - 1), U).body) == norm(big)
    name = "n" * protocol.MAX_NAME
    assert decode(frames_of(Ack(1, 1), sender=name), U).header.sender == name
    uni = "nœud-ß"
    assert decode(frames_of(Nack(3), sender=uni), U).header.sender == uni
    h = dataclasses.replace(HELLO, history=[], consistent=False, primary="", following="")
    assert norm(decode(frames_of(h), U).body) == norm(h)


def test_update_data_is_not_copied_on_encode():
    data = memoryview(bytearray(b"z" * 65536))
    frames = encode(U, 1, "alpha", Update(1, 1, 0, data))
    assert frames[1] is data


def test_encode_refuses_long_sender():
    with pytest.raises(ProtocolError, match="longer than"):
        encode(U, 1, "x" * (protocol.MAX_NAME + 1), Ack(1, 1))


# ---- each rejection names the problem ---------------------------------------------------


def _upd_head(length: int = 4096, crc: int | None = None, lsn: int = 5) -> bytes:
    data = b"q" * length
    c = protocol.crc32c(data) if crc is None else crc
    return head(MsgType.UPDATE) + struct.pack("!QQQIIQ", lsn, 1, 0, length, c, 0)


def _hello_doc(**changes) -> bytes:
    doc = json.loads(frames_of(HELLO)[0][PREFIX.size + 4 :])
    doc.update(changes)
    for k in [k for k, v in changes.items() if v is ...]:
        del doc[k]
    return head(MsgType.HELLO) + json.dumps(doc).encode()


REJECTIONS = {
    "no frames": ([], "expected 1 or 2 frames"),
    "three frames": ([head(MsgType.ACK) + b"\0" * 16, b"a", b"b"], "expected 1 or 2 frames"),
    "empty header": ([b""], "shorter than"),
    "short header": ([head(MsgType.ACK)[:10]], "shorter than"),
    "bad magic": ([head(MsgType.ACK, magic=b"DRBD") + b"\0" * 16], "bad magic"),
    "bad version": ([head(MsgType.ACK, version=2) + b"\0" * 16], "version 2"),
    "unknown type": ([head(250) + b"\0" * 16], "unknown message type 250"),
    "type zero": ([head(0) + b"\0" * 16], "unknown message type 0"),
    "empty sender": ([head(MsgType.ACK, sender=b"", nlen=0) + b"\0" * 16], "sender name"),
    "sender past end": ([head(MsgType.ACK, sender=b"bet", nlen=40)], "sender name length"),
    "sender too long": ([head(MsgType.ACK, sender=b"x" * 65) + b"\0" * 16], "sender name"),
    "sender not utf8": ([head(MsgType.ACK, sender=b"\xff\xfe") + b"\0" * 16], "UTF-8"),
    "short ACK": ([head(MsgType.ACK) + b"\0" * 15], "ACK body is 15 bytes"),
    "long CLEAR": ([head(MsgType.CLEAR) + b"\0" * 9], "CLEAR body is 9 bytes"),
    "empty NACK": ([head(MsgType.NACK)], "NACK body is 0 bytes"),
    "ACK with data": ([head(MsgType.ACK) + b"\0" * 16, b"data"], "must not carry a data"),
    "reversed PULL": ([head(MsgType.PULL) + struct.pack("!QQ", 9, 3)], "reversed"),
    "UPDATE no data": ([_upd_head()], "without its data frame"),
    "UPDATE short data": ([_upd_head(), b"q" * 4095], "data frame is 4095 bytes"),
    "UPDATE bad crc": ([_upd_head(crc=1), b"q" * 4096], "checksum mismatch"),
    "UPDATE LSN 0": ([_upd_head(lsn=0), b"q" * 4096], "LSN 0"),
    "UPDATE truncated": ([_upd_head()[:-1], b"q" * 4096], "UPDATE body is"),
    "UPDATE too long": (
        [head(MsgType.UPDATE) + struct.pack("!QQQIIQ", 1, 1, 0, protocol.MAX_DATA + 1, 0, 0), b"q"],
        "exceeds",
    ),
    "BLOCK bad crc": (
        [head(MsgType.BLOCK) + struct.pack("!QII", 0, 3, 0), b"abc"],
        "checksum mismatch",
    ),
    "HELLO not JSON": ([head(MsgType.HELLO) + b"{nope"], "not valid JSON"),
    "HELLO not UTF-8": ([head(MsgType.HELLO) + b"\xff\xfe{}"], "HELLO"),
    "HELLO array": ([head(MsgType.HELLO) + b"[]"], "keys"),
    "HELLO missing key": ([_hello_doc(digest=...)], "keys"),
    "HELLO extra key": ([_hello_doc(evil=1)], "keys"),
    "HELLO wrong type": ([_hello_doc(end_lsn="57")], "HELLO.end_lsn"),
    "HELLO bool as int": ([_hello_doc(end_lsn=True)], "HELLO.end_lsn"),
    "HELLO negative": ([_hello_doc(start_lsn=-1)], "negative"),
    "HELLO bad role": ([_hello_doc(role="king")], "HELLO.role"),
    "HELLO bad history": ([_hello_doc(history=[[1, 2, 3]])], "HELLO.history"),
    "HELLO history neg": ([_hello_doc(history=[[1, -2]])], "HELLO.history"),
    "REJECT wrong type": ([head(MsgType.REJECT) + b'{"reason": 5}'], "REJECT.reason"),
    "BLOCK_REQ bad ranges": (
        [head(MsgType.BLOCK_REQ) + b'{"ranges": [5], "tag": "t"}'],
        "BLOCK_REQ.ranges",
    ),
    "SUM_REQ chunk too large": (
        [head(MsgType.SUM_REQ) + b'{"tag": "t", "ranges": [[0, 4096]], "chunk": 16777216}'],
        "SUM_REQ.chunk 16777216 is not a multiple of 4096 from 4096 to 8388608",
    ),
    "SUM_REQ chunk unaligned": (
        [head(MsgType.SUM_REQ) + b'{"tag": "t", "ranges": [[0, 4096]], "chunk": 1000}'],
        "SUM_REQ.chunk 1000",
    ),
    "HELLO too large": ([head(MsgType.HELLO) + b" " * (protocol.MAX_JSON + 1)], "too large"),
    "HELLO deep nesting": ([head(MsgType.HELLO) + b"[" * 100_000], "HELLO"),
    "HELLO 5000-digit int": ([head(MsgType.HELLO) + b'{"end_lsn": ' + b"9" * 5000 + b"}"], "HELLO"),
    "HELLO NaN": ([_hello_doc()[:-1] + b', "x": NaN}'], "keys"),
}


@pytest.mark.parametrize("frames,needle", list(REJECTIONS.values()), ids=list(REJECTIONS))
def test_rejection_names_the_problem(frames, needle):
    with pytest.raises(ProtocolError) as err:
        decode(frames, U)
    assert needle in str(err.value), f"{err.value!r} does not mention {needle!r}"


def test_foreign_resource_refused():
    frames = frames_of(HELLO, uuid=OTHER)
    with pytest.raises(ProtocolError, match="foreign resource") as err:
        decode(frames, U)
    assert str(OTHER) in str(err.value) and str(U) in str(err.value)
    assert decode(frames).header.uuid == OTHER  # fine when no uuid is expected


# ---- fuzzing ----------------------------------------------------------------------------


def _decode_only_protocol_errors(frames: list[bytes]) -> None:
    try:
        decode(frames, U)
    except ProtocolError:
        pass


FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=3))
def test_fuzz_random_frames(frames):
    _decode_only_protocol_errors(frames)


@FUZZ
@given(
    mtype=st.integers(0, 255),
    sender=st.binary(min_size=0, max_size=70),
    nlen=st.integers(0, 255),
    rest=st.binary(max_size=200),
    data=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_fuzz_valid_prefix_random_body(mtype, sender, nlen, rest, data):
    frames = [PREFIX.pack(MAGIC, VERSION, mtype, 0, U.bytes, 1, nlen) + sender + rest]
    if data is not None:
        frames.append(data)
    _decode_only_protocol_errors(frames)


@FUZZ
@given(
    mtype=st.sampled_from([MsgType.HELLO, MsgType.REJECT, MsgType.BLOCK_REQ, MsgType.BLOCK_DONE]),
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=6),
        max_leaves=20,
    ),
)
def test_fuzz_json_bodies(mtype, doc):
    _decode_only_protocol_errors([head(mtype) + json.dumps(doc).encode()])


@FUZZ
@given(
    cls=st.sampled_from(ALL_BODIES),
    pos=st.integers(0, 10_000),
    val=st.integers(0, 255),
    cut=st.integers(0, 10_000),
    data=st.data(),
)
def test_fuzz_mutated_valid_messages(cls, pos, val, cut, data):
    frames = [bytearray(f) for f in frames_of(sample(cls))]
    which = data.draw(st.integers(0, len(frames) - 1))
    f = frames[which]
    if data.draw(st.booleans()) and f:
        f[pos % len(f)] = val
    else:
        del f[cut % (len(f) + 1) :]
    _decode_only_protocol_errors([bytes(x) for x in frames])


def test_updates_decode_refuses_what_is_not_a_run_of_records() -> None:
    """A batch must hold consecutive LSNs whose data frame holds exactly their bytes, each
    with its checksum: anything else is refused whole, naming the record."""
    recs = [Record(lsn=7 + i, epoch=1, offset=0, data=bytes([i]) * 512) for i in range(3)]
    head, data = encode(U, 1, "alpha", Updates(recs))
    msg = decode([head, data], U)
    assert [bytes(u.data) for u in msg.body.records] == [r.data for r in recs]
    gap = encode(U, 1, "alpha", Updates([recs[0], recs[2]]))
    with pytest.raises(ProtocolError, match="not consecutive"):
        decode(gap, U)
    bad = bytearray(data)
    bad[600] ^= 1  # inside the second record
    with pytest.raises(ProtocolError, match="record LSN 8: data checksum mismatch"):
        decode([head, bytes(bad)], U)
    with pytest.raises(ProtocolError, match="after the records"):
        decode([head, data + b"x"], U)
    with pytest.raises(ProtocolError, match="ends inside record LSN 9"):
        decode([head, data[:-1]], U)
    with pytest.raises(ProtocolError, match="without its data frame"):
        decode([head], U)
