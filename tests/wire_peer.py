"""A node's peer played by a test: a raw DEALER speaking the wire format to a real daemon
(tests/test_hostile.py, tests/test_follow_race.py). Messages on one connection are handled
in the order sent; the node name each one claims is its first frame, so one connection can
speak as several nodes when no keys are configured."""

from __future__ import annotations

import struct
import uuid as uuidlib

import zmq

from replengine.wire import protocol as proto


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


def prefix(mtype: int, epoch: int, sender: bytes, u: uuidlib.UUID, version: int = 1) -> bytes:
    """A message's fixed header, for frames the encoder would refuse to build."""
    return (
        struct.pack("!4sBBH16sQB", proto.MAGIC, version, mtype, 0, u.bytes, epoch, len(sender))
        + sender
    )
