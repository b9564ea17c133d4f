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
_MORE = int(zmq.SNDMORE)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
#: frames at least this long go without a copy (pyzmq's own threshold: below it a zero-copy
#: send costs more than the copy it saves)
COPY_THRESHOLD = 65536


def recv_frames(sock: zmq.Socket, wait: bool = False) -> list[zmq.Frame] | None:
    """The next whole message on ``sock`` as Frames, or None when none is waiting; with
    ``wait``, None only once the socket's RCVTIMEO has passed (a client awaiting a reply)."""
    if not wait and not sock.get(_EVENTS) & _POLLIN:
        return None
    flags = 0 if wait else _NOBLOCK
    try:
        frame = sock.recv(flags, copy=False)
    except zmq.Again:
        return None
    frames = [frame]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame)
    return frames


def send_frames(sock: zmq.Socket, frames: list[Any], wait: bool = False) -> None:
    """Queue one message; without ``wait``, ``zmq.Again`` when the pipe takes none of it."""
    send = sock.send
    more, end = (_MORE, 0) if wait else (_MORE_NOBLOCK, _NOBLOCK)
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(frame, more if i < last else end, copy=len(frame) < COPY_THRESHOLD)
