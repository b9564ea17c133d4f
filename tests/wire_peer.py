"""A node's peer played by a test: a raw DEALER speaking the wire format to a real daemon
(tests/test_hostile.py, tests/test_follow_race.py, tests/test_late_blocks.py,
tests/test_resync_end.py), a ROUTER in a node's place for what the daemon sends (Listener),
and the frames of fake primaries for a real secondary (Primaries). Messages on one connection are
handled in the order sent; the node name each one claims is its first frame, so one
connection can speak as several nodes when no keys are configured."""

from __future__ import annotations

import random
import struct
import time
import uuid as uuidlib

import zmq

from replengine import config as configmod
from replengine.wire import protocol as proto

RECORD = 4096


class Peer:
    """A DEALER speaking as `name` to a node at `address`."""

    def __init__(
        self, address: str, name: str, curve: tuple[bytes, bytes, bytes] | None = None
    ) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        if curve is not None:  # (our public key, our secret key, the node's public key)
            self.sock.curve_publickey, self.sock.curve_secretkey = curve[0], curve[1]
            self.sock.curve_serverkey = curve[2]
        self.sock.connect(f"tcp://{address}")
        self.name = name.encode()
        self.sent = 0

    def send(self, frames: list) -> None:
        self.sock.send_multipart([self.name, *frames])
        self.sent += 1

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


class Listener:
    """A ROUTER bound at a node's address, standing in for that node: what a real daemon
    sends it (the daemon's DEALERs connect to the addresses in the config)."""

    def __init__(self, address: str, uuid: uuidlib.UUID) -> None:
        self.uuid = uuid
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://{address}")

    def expect(self, kind: type, timeout: float = 30) -> tuple[object, list[object]]:
        """The next message of this kind, and the Blocks that came before it (every other
        message is skipped)."""
        deadline = time.monotonic() + timeout
        blocks: list[object] = []
        while time.monotonic() < deadline:
            if not self.sock.poll(100):
                continue
            frames = self.sock.recv_multipart()
            body = proto.decode(frames[2:], self.uuid).body  # [routing id, sender, ...]
            if isinstance(body, kind):
                return body, blocks
            if isinstance(body, proto.Block):
                blocks.append(body)
        raise AssertionError(f"no {kind.__name__} within {timeout} s")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def prefix(mtype: int, epoch: int, sender: bytes, u: uuidlib.UUID, version: int = 1) -> bytes:
    """A message's fixed header, for frames the encoder would refuse to build."""
    return (
        struct.pack("!4sBBH16sQB", proto.MAGIC, version, mtype, 0, u.bytes, epoch, len(sender))
        + sender
    )


class Primaries:
    """Frames of the fake primaries, for beta of resource ``r``."""

    def __init__(self, r) -> None:
        self.r = r
        self.cfg = configmod.load(r.config, node="alpha", check_local=False)
        self.size = self.cfg.node("beta").volume.stat().st_size
        self.rng = random.Random(1700)

    def frames(self, epoch: int, sender: str, body: object) -> list[bytes]:
        return [bytes(f) for f in proto.encode(self.cfg.uuid, epoch, sender, body)]

    def hello(self, epoch: int, sender: str, history: list[list[int]], end: int) -> list[bytes]:
        h = proto.Hello(
            role="primary",
            session=f"fake-{sender}-{epoch}",
            history=history,  # type: ignore[arg-type]
            start_lsn=1,
            end_lsn=end,
            applied_end=end,
            digest=self.cfg.digest,
            volume_size=self.size,
            primary=sender,
        )
        return self.frames(epoch, sender, h)

    def update(self, epoch: int, sender: str, lsn: int) -> list[bytes]:
        data = self.rng.randbytes(RECORD)
        return self.frames(epoch, sender, proto.Update(lsn, epoch, lsn * RECORD, data))

    def marker(self, epoch: int, sender: str) -> list[bytes]:
        """A reversed PULL, refused with a line of its own in beta's log: once it is there,
        beta has handled every message sent before it on the connection."""
        m = self.frames(epoch, sender, proto.Pull(1, 2))
        m[0] = prefix(7, epoch, sender.encode(), self.cfg.uuid) + struct.pack("!QQ", 9, 3)
        return m

    def play_alpha(self) -> tuple[Listener, Peer, list[bytes]]:
        """alpha, primary in epoch 1 with an empty log, followed by beta: a ROUTER at alpha's
        address for what beta sends, a DEALER speaking as alpha, and alpha's HELLO."""
        r = self.r
        inbox = Listener(self.cfg.node("alpha").address, self.cfg.uuid)
        peer = Peer(self.cfg.node("beta").address, "alpha")
        hello = self.hello(1, "alpha", [[1, 1]], 1)
        try:
            peer.send(hello)
            r.wait_for(lambda: r.status("beta")["following"] == "alpha", 20, "beta to follow alpha")
        except BaseException:
            peer.close()
            inbox.close()
            raise
        return inbox, peer, hello

    def follow_alpha(self, peer: Peer) -> None:
        """alpha, primary in epoch 1: LSNs 1..10, applied on beta."""
        r = self.r
        peer.send(self.hello(1, "alpha", [[1, 1]], 11))
        r.wait_for(lambda: r.status("beta")["following"] == "alpha", 20, "beta to follow alpha")
        for lsn in range(1, 11):
            peer.send(self.update(1, "alpha", lsn))
        r.wait_for(lambda: r.status("beta")["applied_end"] == 11, 30, "beta to apply them")
