"""Receiving and sending multipart messages on the hot path, without pyzmq's conveniences.

A replicated 4 KiB write crosses four sockets (client to primary, primary to secondary and
back, primary to client), and cProfile of the daemons during QD1 writes (2 nodes, pyzmq 27)
put a fifth of their Python time per write in pyzmq's own Python layer, not in libzmq:

- ``recv_multipart`` asks the socket for RCVMORE after every frame; ``getsockopt`` turns
  the option number into an enum each time. A frame received with ``copy=False`` already
  carries that bit (``Frame.more``).
- Draining a socket until ``zmq.Again`` builds an exception once per drain: about 9 us in
  the daemon (ZMQError's constructor looks up the error text and imports). Asking the
  socket's EVENTS first is one getsockopt.
- ``send_multipart`` ORs enum flags and checks every part's type per frame, and
  ``copy=False`` below pyzmq's copy threshold still builds a Frame to copy the bytes into;
  ``copy=True`` copies them without one.

Semantics are pyzmq's: a message is all frames or none (libzmq takes the remaining frames
of a message whose first frame it accepted), and a full or unconnected pipe raises
``zmq.Again`` on the first frame.
"""

from __future__ import annotations

from typing import Any

import zmq

_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
#: frames at least this long go without a copy (pyzmq's own threshold: below it a zero-copy
#: send costs more than the copy it saves)
COPY_THRESHOLD = 65536


def recv_frames(sock: zmq.Socket) -> list[zmq.Frame] | None:
    """The next whole message on ``sock`` as Frames, or None when none is waiting."""
    if not sock.get(_EVENTS) & _POLLIN:
        return None
    frame = sock.recv(_NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def send_frames(sock: zmq.Socket, frames: list[Any]) -> None:
    """Queue one message without blocking; ``zmq.Again`` when the pipe takes none of it."""
    send = sock.send
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(
            frame,
            _MORE_NOBLOCK if i < last else _NOBLOCK,
            copy=len(frame) < COPY_THRESHOLD,
        )
