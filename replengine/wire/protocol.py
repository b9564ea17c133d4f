"""Wire messages between nodes, and between replctl/clients and their daemon.

A message is a header frame followed by at most one raw data frame. The header is a fixed
binary prefix (magic, version, type, flags, resource UUID, sender epoch, sender name) and a
type-specific body: fixed structs on the hot path (UPDATE, ACK), JSON checked against a small
schema for the rare control messages. Decoding is strict: anything unexpected raises
ProtocolError naming what was wrong, so the daemon can log it and drop the message without
changing state (invariant 7).
"""

from __future__ import annotations

import json
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from replengine.errors import ForeignResourceError, ProtocolError
from replengine.log.crc import crc32c
from replengine.log.record import Record
from replengine.storage.chunksums import DIGEST_SIZE, MAX_CHUNK

MAGIC = b"RPLE"
VERSION = 1
MAX_DATA = 16 << 20
MAX_NAME = 64
MAX_JSON = 1 << 20

# magic, version, type, flags, uuid, epoch, sender length
_PREFIX = struct.Struct("!4sBBH16sQB")


class MsgType(IntEnum):
    HELLO = 1  # handshake + status beacon (JSON)
    REJECT = 2  # handshake refused, reason (JSON)
    UPDATE = 3  # one record (binary + data frame)
    ACK = 4  # cumulative durable/applied LSNs (binary)
    CLEAR = 5  # all secondaries have everything < clear_end (binary)
    NACK = 6  # gap detected: resend from expected (binary)
    PULL = 7  # send me records [first, end) (binary)
    BLOCK_REQ = 8  # send me these volume ranges (JSON)
    BLOCK = 9  # one volume range (binary + data frame)
    BLOCK_DONE = 10  # end of a block rewrite (JSON)
    BLOCK_ACK = 11  # bytes of blocks received so far (binary): flow control of resyncs
    SUM_REQ = 12  # digests of these volume ranges, please (JSON): before a block resync
    SUMS = 13  # the digests (binary + data frame): identical chunks are not copied
    VERIFY_REQ = 14  # digests of these chunks as of LSN lsn, please (JSON): online verify
    VERIFY_SUMS = 15  # those digests, or why there are none (JSON)
    UPDATES = 16  # consecutive records in one message (binary + one data frame): catch-up


#: the types by number: MsgType(n) costs an enum lookup per message (cProfile)
_MSG_TYPES: dict[int, MsgType] = {int(t): t for t in MsgType}


class Flag:
    PULLED = 1  # UPDATE is a reply to PULL, not the primary's live stream
    ANSWER = 2  # HELLO that asks for a HELLO back at once (a promotion probing its peers)
    ANSWERED = 4  # HELLO sent in reply to an ANSWER: the sender's state after the probe began


@dataclass(frozen=True, slots=True)
class Header:
    type: MsgType
    uuid: uuidlib.UUID
    epoch: int
    sender: str
    flags: int = 0


_UPDATE = struct.Struct("!QQQIIQ")  # lsn, rec_epoch, offset, length, crc, clear_end
_UPDATES = struct.Struct("!IQ")  # count, clear_end
_UPDATES_ENTRY = struct.Struct("!QQQII")  # lsn, rec_epoch, offset, length, crc
#: records one UPDATES message may carry
MAX_BATCH = 1024
_ACK = struct.Struct("!QQ")  # durable_end, applied_end
_ONE = struct.Struct("!Q")
_PULL = struct.Struct("!QQ")
_BLOCK = struct.Struct("!QII")  # offset, length, crc
_SUMS = struct.Struct("!32sII")  # tag, count, crc


@dataclass(frozen=True, slots=True)
class Update:
    lsn: int
    rec_epoch: int
    offset: int
    data: bytes | memoryview
    clear_end: int = 0
    #: CRC32C of ``data`` if known (see Record.crc); the encoder computes it otherwise
    crc: int | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, rec: Record, clear_end: int) -> Update:
        return cls(rec.lsn, rec.epoch, rec.offset, rec.data, clear_end, rec.crc)


@dataclass(frozen=True, slots=True)
class Updates:
    """Consecutive records (LSNs ascending by one) in one message: a peer that is behind
    gets its records at the cost of one receive, decode and dispatch per batch instead of
    per record. ``clear_end`` is the batch's, as an UPDATE carries one.

    The records are the log's own Record objects on both sides: the sender's, as read from
    its SRL, are encoded as they are, and the receiver's go into its SRL as decoded (an
    Update per record made and unmade on each side was an eighth of a catch-up's CPU on
    the sending primary, py-spy)."""

    records: list[Record]
    clear_end: int = 0


@dataclass(frozen=True, slots=True)
class Ack:
    durable_end: int
    applied_end: int


@dataclass(frozen=True, slots=True)
class Clear:
    clear_end: int


@dataclass(frozen=True, slots=True)
class Nack:
    expected: int


@dataclass(frozen=True, slots=True)
class Pull:
    first: int
    end: int


@dataclass(frozen=True, slots=True)
class Block:
    offset: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Hello:
    """Who a node is and where its log stands; sent on connect and as a heartbeat."""

    role: str
    session: str
    history: list[tuple[int, int]]
    start_lsn: int
    end_lsn: int
    applied_end: int
    digest: str
    volume_size: int
    primary: str = ""
    consistent: bool = True
    following: str = ""
    #: the digest of the config this node ran before its last `replctl adjust` ("" if none):
    #: during a rollout, nodes on the old and the new file still accept each other
    prev_digest: str = ""


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str


@dataclass(frozen=True, slots=True)
class BlockReq:
    ranges: list[tuple[int, int]]
    tag: str


@dataclass(frozen=True, slots=True)
class BlockDone:
    """End of a block copy. The receiver is consistent again once it has applied records
    up to primary_end; resume_lsn (0 = unchanged) is where its log restarts."""

    tag: str
    primary_end: int
    resume_lsn: int = 0
    total: int = 0  # bytes of BLOCKs sent for this copy: the receiver checks it got them all


@dataclass(frozen=True, slots=True)
class BlockAck:
    received: int


@dataclass(frozen=True, slots=True)
class SumReq:
    """Before copying ``ranges`` to a secondary, the source asks for its digests of them,
    chunk by chunk (each range cut in ``chunk``-byte pieces from its start, the last one
    shorter): a chunk the secondary already holds is then not sent."""

    tag: str
    ranges: list[tuple[int, int]]
    chunk: int


@dataclass(frozen=True, slots=True)
class Sums:
    """The digests asked for by the SUM_REQ ``tag``, DIGEST_SIZE bytes each, in order."""

    tag: str
    digests: bytes | memoryview


@dataclass(frozen=True, slots=True)
class VerifyReq:
    """`replctl verify`: the digests of ``count`` chunks of ``chunk`` bytes from ``offset``,
    taken when every record below ``lsn`` is applied and none at or past it: every node then
    hashes the same state of the volume, however many writes go on meanwhile."""

    tag: str
    lsn: int
    offset: int
    count: int
    chunk: int


@dataclass(frozen=True, slots=True)
class VerifySums:
    """The answer to VERIFY_REQ ``tag``: hex digests in order, or ``error`` saying why this
    node cannot answer (then no digests)."""

    tag: str
    lsn: int
    digests: str
    error: str = ""


Body = (
    Update
    | Updates
    | Ack
    | Clear
    | Nack
    | Pull
    | Block
    | Hello
    | Reject
    | BlockReq
    | BlockDone
    | BlockAck
    | SumReq
    | Sums
    | VerifyReq
    | VerifySums
)


@dataclass(frozen=True, slots=True)
class Message:
    header: Header
    body: Body = field(default=None)  # type: ignore[assignment]


_HELLO_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "role": str,
    "session": str,
    "history": list,
    "start_lsn": int,
    "end_lsn": int,
    "applied_end": int,
    "digest": str,
    "volume_size": int,
    "primary": str,
    "consistent": bool,
    "following": str,
    "prev_digest": str,
}
_JSON_SCHEMAS: dict[MsgType, dict[str, type | tuple[type, ...]]] = {
    MsgType.HELLO: _HELLO_SCHEMA,
    MsgType.REJECT: {"reason": str},
    MsgType.BLOCK_REQ: {"ranges": list, "tag": str},
    MsgType.BLOCK_DONE: {"tag": str, "primary_end": int, "resume_lsn": int, "total": int},
    MsgType.SUM_REQ: {"tag": str, "ranges": list, "chunk": int},
    MsgType.VERIFY_REQ: {"tag": str, "lsn": int, "offset": int, "count": int, "chunk": int},
    MsgType.VERIFY_SUMS: {"tag": str, "lsn": int, "digests": str, "error": str},
}
#: chunks one VERIFY_REQ may ask for (its answer stays a small JSON document)
MAX_VERIFY_CHUNKS = 1024
_BODY_TYPE: dict[type, MsgType] = {
    Update: MsgType.UPDATE,
    Updates: MsgType.UPDATES,
    Ack: MsgType.ACK,
    Clear: MsgType.CLEAR,
    Nack: MsgType.NACK,
    Pull: MsgType.PULL,
    Block: MsgType.BLOCK,
    Hello: MsgType.HELLO,
    Reject: MsgType.REJECT,
    BlockReq: MsgType.BLOCK_REQ,
    BlockDone: MsgType.BLOCK_DONE,
    BlockAck: MsgType.BLOCK_ACK,
    SumReq: MsgType.SUM_REQ,
    Sums: MsgType.SUMS,
    VerifyReq: MsgType.VERIFY_REQ,
    VerifySums: MsgType.VERIFY_SUMS,
}


def encode(
    uuid: uuidlib.UUID, epoch: int, sender: str, body: Body, flags: int = 0
) -> list[bytes | memoryview]:
    """Frames for `body`; the data of UPDATE/BLOCK is passed through without a copy."""
    mtype = _BODY_TYPE[type(body)]
    name = sender.encode()
    if len(name) > MAX_NAME:
        raise ProtocolError(f"sender name {sender!r} longer than {MAX_NAME} bytes")
    prefix = _PREFIX.pack(MAGIC, VERSION, mtype, flags, uuid.bytes, epoch, len(name)) + name
    if isinstance(body, Update):
        crc = crc32c(body.data) if body.crc is None else body.crc
        return [
            prefix
            + _UPDATE.pack(
                body.lsn, body.rec_epoch, body.offset, len(body.data), crc, body.clear_end
            ),
            body.data,
        ]
    if isinstance(body, Updates):
        return _encode_updates(prefix, body)
    if isinstance(body, Block):
        crc = crc32c(body.data)
        return [prefix + _BLOCK.pack(body.offset, len(body.data), crc), body.data]
    if isinstance(body, Sums):
        tag = body.tag.encode()
        if len(tag) > _SUMS.size - 8 or len(body.digests) % DIGEST_SIZE:
            raise ProtocolError(f"SUMS tag {body.tag!r} too long or digests not whole")
        crc = crc32c(body.digests)
        count = len(body.digests) // DIGEST_SIZE
        return [prefix + _SUMS.pack(tag, count, crc), body.digests]
    if isinstance(body, Ack):
        return [prefix + _ACK.pack(body.durable_end, body.applied_end)]
    if isinstance(body, Clear):
        return [prefix + _ONE.pack(body.clear_end)]
    if isinstance(body, Nack):
        return [prefix + _ONE.pack(body.expected)]
    if isinstance(body, BlockAck):
        return [prefix + _ONE.pack(body.received)]
    if isinstance(body, Pull):
        return [prefix + _PULL.pack(body.first, body.end)]
    doc = {k: getattr(body, k) for k in _JSON_SCHEMAS[mtype]}
    return [prefix + json.dumps(doc, separators=(",", ":")).encode()]


def _encode_updates(prefix: bytes, body: Updates) -> list[bytes | memoryview]:
    recs = body.records
    if not 0 < len(recs) <= MAX_BATCH:
        raise ProtocolError(f"UPDATES of {len(recs)} records (1..{MAX_BATCH})")
    entries = [_UPDATES.pack(len(recs), body.clear_end)]
    pack = _UPDATES_ENTRY.pack
    for r in recs:
        crc = crc32c(r.data) if r.crc is None else r.crc
        entries.append(pack(r.lsn, r.epoch, r.offset, len(r.data), crc))
    return [prefix + b"".join(entries), b"".join([r.data for r in recs])]


def _decode_updates(rest: bytes, data: Any) -> Updates:
    if len(rest) < _UPDATES.size:
        raise ProtocolError(f"UPDATES body is {len(rest)} bytes, shorter than {_UPDATES.size}")
    count, clear_end = _UPDATES.unpack_from(rest)
    if not 0 < count <= MAX_BATCH:
        raise ProtocolError(f"UPDATES count {count} is not 1..{MAX_BATCH}")
    if len(rest) != _UPDATES.size + count * _UPDATES_ENTRY.size:
        raise ProtocolError(f"UPDATES body is {len(rest)} bytes, not right for {count} records")
    if data is None:
        raise ProtocolError("UPDATES without its data frame")
    if len(data) > MAX_DATA:
        raise ProtocolError(f"UPDATES data of {len(data)} bytes exceeds {MAX_DATA}")
    view = memoryview(data)
    records = []
    pos = 0
    prev = 0
    for i in range(count):
        lsn, rec_epoch, offset, length, crc = _UPDATES_ENTRY.unpack_from(
            rest, _UPDATES.size + i * _UPDATES_ENTRY.size
        )
        if lsn == 0 or (prev and lsn != prev + 1):
            raise ProtocolError(f"UPDATES record {i} has LSN {lsn} after {prev} (not consecutive)")
        if pos + length > len(view):
            raise ProtocolError(f"UPDATES data frame ends inside record LSN {lsn}")
        chunk = view[pos : pos + length]
        if crc32c(chunk) != crc:
            raise ProtocolError(f"UPDATES record LSN {lsn}: data checksum mismatch")
        records.append(Record(lsn, rec_epoch, offset, chunk, crc))
        pos += length
        prev = lsn
    if pos != len(view):
        raise ProtocolError(f"UPDATES data frame has {len(view) - pos} bytes after the records")
    return Updates(records, clear_end)


def decode(
    frames: list[bytes] | list[memoryview],
    expect_uuid: uuidlib.UUID | None = None,
) -> Message:
    """Parse frames into a Message, or raise ProtocolError saying what is wrong."""
    if not frames or len(frames) > 2:
        raise ProtocolError(f"expected 1 or 2 frames, got {len(frames)}")
    head = bytes(frames[0])
    if len(head) < _PREFIX.size:
        raise ProtocolError(f"header frame of {len(head)} bytes is shorter than {_PREFIX.size}")
    magic, version, mtype, flags, ubytes, epoch, nlen = _PREFIX.unpack_from(head)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not a replengine message")
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version} not supported (this node speaks {VERSION})"
        )
    known = _MSG_TYPES.get(mtype)
    if known is None:
        raise ProtocolError(f"unknown message type {mtype}")
    mtype = known
    if expect_uuid is None:
        uuid = uuidlib.UUID(bytes=ubytes)
    elif ubytes == expect_uuid.bytes:
        uuid = expect_uuid  # (a UUID made per message was a tenth of a secondary's decode)
    else:
        raise ForeignResourceError(
            f"message for foreign resource {uuidlib.UUID(bytes=ubytes)} "
            f"(this resource is {expect_uuid})"
        )
    off = _PREFIX.size
    if nlen == 0 or nlen > MAX_NAME or len(head) < off + nlen:
        raise ProtocolError(f"bad sender name length {nlen}")
    try:
        sender = head[off : off + nlen].decode()
    except UnicodeDecodeError:
        raise ProtocolError("sender name is not UTF-8") from None
    off += nlen
    header = Header(mtype, uuid, epoch, sender, flags)
    rest = head[off:]
    data = frames[1] if len(frames) == 2 else None
    return Message(header, _decode_body(mtype, rest, data))


def _fixed(st: struct.Struct, rest: bytes, mtype: MsgType) -> tuple[int, ...]:
    if len(rest) != st.size:
        raise ProtocolError(f"{mtype.name} body is {len(rest)} bytes, expected {st.size}")
    return st.unpack(rest)


def _need_data(mtype: MsgType, data: Any, length: int, crc: int) -> bytes | memoryview:
    if data is None:
        raise ProtocolError(f"{mtype.name} without its data frame")
    if length > MAX_DATA:
        raise ProtocolError(f"{mtype.name} length {length} exceeds the {MAX_DATA} byte limit")
    if len(data) != length:
        raise ProtocolError(f"{mtype.name} data frame is {len(data)} bytes, header says {length}")
    if crc32c(data) != crc:
        raise ProtocolError(f"{mtype.name} data checksum mismatch (corrupted in transit)")
    return data


def _decode_body(mtype: MsgType, rest: bytes, data: Any) -> Body:
    if (
        mtype not in (MsgType.UPDATE, MsgType.UPDATES, MsgType.BLOCK, MsgType.SUMS)
        and data is not None
    ):
        raise ProtocolError(f"{mtype.name} must not carry a data frame")
    if mtype is MsgType.UPDATES:
        return _decode_updates(rest, data)
    if mtype is MsgType.UPDATE:
        lsn, rec_epoch, offset, length, crc, clear_end = _fixed(_UPDATE, rest, mtype)
        if lsn == 0:
            raise ProtocolError("UPDATE with LSN 0 (LSNs start at 1)")
        return Update(lsn, rec_epoch, offset, _need_data(mtype, data, length, crc), clear_end, crc)
    if mtype is MsgType.BLOCK:
        offset, length, crc = _fixed(_BLOCK, rest, mtype)
        return Block(offset, _need_data(mtype, data, length, crc))
    if mtype is MsgType.SUMS:
        tag, count, crc = _fixed(_SUMS, rest, mtype)
        try:
            name = tag.rstrip(b"\0").decode()
        except UnicodeDecodeError:
            raise ProtocolError("SUMS tag is not UTF-8") from None
        return Sums(name, _need_data(mtype, data, count * DIGEST_SIZE, crc))
    if mtype is MsgType.ACK:
        return Ack(*_fixed(_ACK, rest, mtype))
    if mtype is MsgType.CLEAR:
        return Clear(*_fixed(_ONE, rest, mtype))
    if mtype is MsgType.NACK:
        return Nack(*_fixed(_ONE, rest, mtype))
    if mtype is MsgType.BLOCK_ACK:
        return BlockAck(*_fixed(_ONE, rest, mtype))
    if mtype is MsgType.PULL:
        first, end = _fixed(_PULL, rest, mtype)
        if end < first:
            raise ProtocolError(f"PULL range [{first}, {end}) is reversed")
        return Pull(first, end)
    return _decode_json(mtype, rest)


def _decode_json(mtype: MsgType, rest: bytes) -> Body:
    if len(rest) > MAX_JSON:
        raise ProtocolError(f"{mtype.name} body of {len(rest)} bytes is too large")
    try:
        doc = json.loads(rest)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and over-long integers; RecursionError deep nesting
        raise ProtocolError(f"{mtype.name} body is not valid JSON: {str(exc)[:200]}") from None
    schema = _JSON_SCHEMAS[mtype]
    if not isinstance(doc, dict) or set(doc) != set(schema):
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ProtocolError(f"{mtype.name} body has keys {keys}, expected {sorted(schema)}")
    for key, typ in schema.items():
        val = doc[key]
        if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
            raise ProtocolError(f"{mtype.name}.{key} has type {type(val).__name__}")
        if typ is int and val < 0:
            raise ProtocolError(f"{mtype.name}.{key} is negative")
    if mtype is MsgType.HELLO:
        doc["history"] = _pairs(doc["history"], "HELLO.history")
        if doc["role"] not in ("primary", "secondary"):
            raise ProtocolError(f"HELLO.role {doc['role']!r} is not primary or secondary")
        return Hello(**doc)
    if mtype is MsgType.REJECT:
        return Reject(doc["reason"][:1000])
    if mtype is MsgType.BLOCK_REQ:
        return BlockReq(_pairs(doc["ranges"], "BLOCK_REQ.ranges"), doc["tag"])
    if mtype is MsgType.SUM_REQ:
        if doc["chunk"] <= 0 or doc["chunk"] % 4096 or doc["chunk"] > MAX_CHUNK:
            raise ProtocolError(
                f"SUM_REQ.chunk {doc['chunk']} is not a multiple of 4096 from 4096 to {MAX_CHUNK}"
            )
        return SumReq(doc["tag"], _pairs(doc["ranges"], "SUM_REQ.ranges"), doc["chunk"])
    if mtype is MsgType.VERIFY_REQ:
        if doc["chunk"] <= 0 or doc["chunk"] % 4096:
            raise ProtocolError(
                f"VERIFY_REQ.chunk {doc['chunk']} is not a positive multiple of 4096"
            )
        if not 0 < doc["count"] <= MAX_VERIFY_CHUNKS:
            raise ProtocolError(f"VERIFY_REQ.count {doc['count']} is not 1..{MAX_VERIFY_CHUNKS}")
        if doc["lsn"] == 0:
            raise ProtocolError("VERIFY_REQ with LSN 0 (LSNs start at 1)")
        return VerifyReq(**doc)
    if mtype is MsgType.VERIFY_SUMS:
        digests = doc["digests"]
        if len(digests) % (2 * DIGEST_SIZE) or len(digests) > 2 * DIGEST_SIZE * MAX_VERIFY_CHUNKS:
            raise ProtocolError(f"VERIFY_SUMS.digests of {len(digests)} characters is not whole")
        try:
            bytes.fromhex(digests)
        except ValueError:
            raise ProtocolError("VERIFY_SUMS.digests is not hexadecimal") from None
        return VerifySums(doc["tag"], doc["lsn"], digests, doc["error"][:1000])
    return BlockDone(doc["tag"], doc["primary_end"], doc["resume_lsn"], doc["total"])


def _pairs(value: list, what: str) -> list[tuple[int, int]]:
    out = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in item)
        ):
            raise ProtocolError(f"{what} entry {item!r} is not a pair of non-negative integers")
        out.append((item[0], item[1]))
    return out
