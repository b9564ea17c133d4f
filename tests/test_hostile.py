"""Hostile input to a live daemon (invariant 7: bad input gets a clear refusal and changes
nothing).

beta runs as a real replengined; the test plays its primary alpha over a raw DEALER framed
as the transport frames it (node name first): a HELLO makes beta follow it, a few valid
records are replicated, and then thousands of malformed, truncated, oversized, replayed and
wrong-epoch messages follow on the same connection -- plus messages from a configured node
that is not primary (gamma) and from strangers. beta must keep running with its status and
its SRL byte for byte unchanged, refuse each kind of message with a logged reason, and say
so in a few lines, not thousands.

Completion is awaited, not slept for: every connection's storm ends with a message of a
kind used nowhere else (a reversed PULL range), and messages on one connection are handled
in order, so once beta logs that refusal it has handled everything before it.

With keys (CURVE), the same storm comes over authenticated, encrypted connections: alpha's
own key pair (a stolen or buggy primary), and gamma's key pair lent to the strangers, whose
messages must be dropped as impostors (the key is gamma's, the name is not).
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import uuid as uuidlib

import pytest

from replengine import config as configmod
from replengine.wire import protocol as proto
from replengine.wire.security import read_secret_key
from tests.wire_peer import Peer, prefix

pytestmark = pytest.mark.slow

TWO_PLUS = {"alpha": "sync", "beta": "sync", "gamma": "async"}
RECORDS = 20
RECORD = 4096


def _srl_sha(r, node: str) -> str:
    return hashlib.sha256(r.srl_path(node).read_bytes()).hexdigest()


def storm(
    rng: random.Random, cfg: configmod.ResourceConfig, sender: str, valid: list[list[bytes]]
) -> dict[str, list[list[bytes]]]:
    """Bad messages by kind, each as frames. `valid` are messages beta already took (the
    records, encoded as sent): the replays, and the stuff truncations are cut from."""
    u, me = cfg.uuid, sender.encode()
    enc = lambda epoch, body, s=sender: [bytes(f) for f in proto.encode(u, epoch, s, body)]  # noqa: E731
    end = RECORDS + 1
    kinds: dict[str, list[list[bytes]]] = {}
    malformed = []
    for _ in range(600):  # random frames, and random bodies behind a right prefix
        n = rng.randrange(0, 4)
        malformed.append([rng.randbytes(rng.randrange(0, 80)) for _ in range(n)])
        t, size = rng.randrange(1, 20), rng.randrange(0, 60)
        if t in (4, 5, 6, 7, 11) and size in (8, 16):
            size += 1  # random bytes of a fixed-size body would be a valid ACK, CLEAR, ...
        malformed.append([prefix(t, 1, me, u) + rng.randbytes(size)])
    for t in range(256):  # every type byte, body of the wrong size
        malformed.append([prefix(t, 1, me, u) + bytes(t % 17)])
    malformed += [
        [b"XXXX" + prefix(4, 1, me, u)[4:] + bytes(16)],  # bad magic
        [prefix(4, 1, me, u, version=9) + bytes(16)],  # another protocol version
        [prefix(4, 1, me, uuidlib.uuid4()) + bytes(16)],  # another resource
        [prefix(4, 1, b"\xff\xfe", u) + bytes(16)],  # sender not UTF-8
        [prefix(4, 1, b"gamma", u) + bytes(16)],  # sender field is not the connection's
        [prefix(1, 1, me, u) + b'{"role": "primary"}'],  # HELLO with keys missing
        [prefix(1, 1, me, u) + b"[" * 100000],  # deep JSON
        [prefix(8, 1, me, u) + json.dumps({"ranges": [[-1, 5]], "tag": "t"}).encode()],
    ]
    for rec in valid[:5]:  # CRC mismatch, data frame gone, data on a type without
        head, data = rec
        malformed.append([head, bytes([data[0] ^ 1]) + data[1:]])
        malformed.append([head])
        malformed.append([head, data, data])
        malformed.append([enc(1, proto.Ack(1, 1))[0], data])
    kinds["malformed"] = malformed
    truncated = []
    for msg in [*valid[:3], enc(1, proto.Ack(5, 5)), enc(1, proto.Pull(1, 2))]:
        for cut in range(len(msg[0])):
            truncated.append([msg[0][:cut], *msg[1:]])
        if len(msg) == 2:
            for cut in range(0, len(msg[1]), 97):
                truncated.append([msg[0], msg[1][:cut]])
    kinds["truncated"] = truncated
    big = bytes(proto.MAX_DATA + 1)
    kinds["oversized"] = [
        [prefix(3, 1, me, u) + struct.pack("!QQQIIQ", end, 1, 0, len(big), 0, 0), big],
        [prefix(9, 1, me, u) + struct.pack("!QII", 0, len(big), 0), big],
        [prefix(2, 1, me, u) + b'{"reason": "' + b"x" * (proto.MAX_JSON + 10) + b'"}'],
        [prefix(3, 1, me, u) + struct.pack("!QQQIIQ", end, 1, 0, 0xFFFFFFFF, 0, 0), b"x"],
        [prefix(4, 1, me, u) + bytes(1 << 20)],
    ]
    # replays: each record beta holds, again, a few times over
    kinds["replayed"] = [m for m in valid for _ in range(40)]
    wrong = []
    for i in range(400):
        data = rng.randbytes(RECORD)
        off = rng.randrange(0, 100) * RECORD
        # header epoch 0, older than beta knows: fenced
        wrong.append(enc(0, proto.Update(end + i % 3, 1, off, data)))
        # the next LSN with a record epoch the primary's history does not have
        wrong.append(enc(1, proto.Update(end, rng.choice([2, 3, 7, 1 << 40]), off, data)))
        # the next LSN, right epoch, outside the volume
        wrong.append(enc(1, proto.Update(end, 1, (16 << 20) - 100 + i, data)))
        # a gap: a NACK at most, nothing logged
        wrong.append(enc(1, proto.Update(end + 5 + i, 1, off, data)))
    kinds["wrong-epoch"] = wrong
    return kinds


@pytest.mark.parametrize("keys", [False, True], ids=["plain", "curve"])
def test_hostile_messages_change_nothing(resource, keys: bool) -> None:
    r = resource(TWO_PLUS, keys=keys)
    r.up("beta")

    def curve(key_of: str) -> tuple[bytes, bytes, bytes] | None:
        if not keys:
            return None
        public, secret = read_secret_key(r.key_path(key_of))
        return public, secret, read_secret_key(r.key_path("beta"))[0]

    cfg = configmod.load(r.config, node="alpha", check_local=False)
    beta_addr = cfg.node("beta").address
    vol_size = cfg.node("beta").volume.stat().st_size
    hello = [
        bytes(f)
        for f in proto.encode(
            cfg.uuid,
            1,
            "alpha",
            proto.Hello(
                role="primary",
                session="fake-alpha",
                history=[[1, 1]],  # type: ignore[list-item]
                start_lsn=1,
                end_lsn=RECORDS + 1,
                applied_end=RECORDS + 1,
                digest=cfg.digest,
                volume_size=vol_size,
                primary="alpha",
            ),
        )
    ]
    rng = random.Random(16)
    alpha = Peer(beta_addr, "alpha", curve("alpha"))
    try:
        alpha.send(hello)
        r.wait_for(lambda: r.status("beta")["following"] == "alpha", 20, "beta to follow alpha")
        records = [
            [
                bytes(f)
                for f in proto.encode(
                    cfg.uuid, 1, "alpha", proto.Update(lsn, 1, lsn * RECORD, rng.randbytes(RECORD))
                )
            ]
            for lsn in range(1, RECORDS + 1)
        ]
        for rec in records:
            alpha.send(rec)
        r.wait_for(lambda: r.status("beta")["applied_end"] == RECORDS + 1, 30, "beta to apply them")
        alpha.send(hello)
        before = r.status("beta")
        sha_before = _srl_sha(r, "beta")
        log_before = len(r.log("beta").splitlines())
        assert before["end_lsn"] == RECORDS + 1 and before["peers"]["alpha"]["connected"]
        assert before["security"] == ("curve" if keys else "plain"), before["security"]

        kinds = storm(rng, cfg, "alpha", records)
        others = {
            name: Peer(beta_addr, name, curve("gamma"))
            for name in ("gamma", "mallory", "\u00e9ve-\u2603")
        }
        for name, p in others.items():
            for msgs in storm(random.Random(name), cfg, name, records).values():
                for m in msgs[:300]:
                    p.send(m)
        total = sum(p.sent for p in others.values())
        order = [m for msgs in kinds.values() for m in msgs]
        rng.shuffle(order)
        for i, m in enumerate(order):
            alpha.send(m)
            if i % 500 == 0:
                alpha.send(hello)  # the primary's beacon goes on through the storm
        total += len(order)
        marker = [bytes(f) for f in proto.encode(cfg.uuid, 1, "alpha", proto.Pull(1, 2))]
        marker[0] = marker[0][:-16] + struct.pack("!QQ", 9, 3)  # PULL [9, 3): reversed
        alpha.send(hello)
        alpha.send(marker)
        gamma_marker = list(marker)
        gamma_marker[0] = prefix(7, 1, b"gamma", cfg.uuid) + struct.pack("!QQ", 9, 3)
        others["gamma"].send(gamma_marker)
        for name in ("alpha", "gamma"):
            r.wait_for(
                lambda name=name: (
                    f"malformed message from {name} dropped: PULL range [9, 3)" in r.log("beta")
                ),
                120,
                f"beta to reach the end of {name}'s storm",
            )
        assert total > 3000, total

        after = r.status("beta")
        assert after["pid"] == before["pid"], "beta was restarted"
        assert after == before, "status changed:\n" + "\n".join(
            f"  {k}: {before.get(k)!r} -> {after.get(k)!r}"
            for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)
        )
        assert _srl_sha(r, "beta") == sha_before, "beta's SRL changed"
        # a valid record still goes through: the storm wedged nothing
        alpha.send(
            [
                bytes(f)
                for f in proto.encode(
                    cfg.uuid, 1, "alpha", proto.Update(RECORDS + 1, 1, 0, bytes(RECORD))
                )
            ]
        )
        r.wait_for(
            lambda: r.status("beta")["end_lsn"] == RECORDS + 2, 30, "the next record to be taken"
        )
    finally:
        alpha.close()
        for p in locals().get("others", {}).values():
            p.close()

    lines = r.log("beta").splitlines()[log_before:]
    text = "\n".join(lines)
    for reason in (
        "malformed message from alpha dropped: bad magic",
        "malformed message from alpha dropped: protocol version 9 not supported",
        "refused alpha: message for foreign resource",
        "malformed message from alpha dropped: sender field 'gamma' does not match",
        "data checksum mismatch",
        "is shorter than",  # truncated header
        "exceeds the 16777216 byte limit",  # oversized
        "body of 1048",  # oversized JSON
        "already logged (end 21): acknowledged again",  # replayed
        "its epoch 0 is older than the known epoch 1 (fenced)",  # wrong epoch
        "does not match its history",  # wrong record epoch
        "lie outside this node's volume",
        "refused UPDATE LSN 21 from gamma: this node follows 'alpha', not it",
        (
            "claims to be 'mallory' but its CURVE key is gamma's"
            if keys
            else "message from unknown peer 'mallory' refused"
        ),
        "more like it in the last",  # the rate limit's count of lines held back
    ):
        assert reason in text, f"no log line with {reason!r} in:\n{text[-3000:]}"
    assert len(lines) < 400, f"{len(lines)} log lines for {total} messages: not rate-limited"
    assert "Traceback" not in text
