"""The control socket's client side: JSON requests, optional data frame, matched by id."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import zmq

from replengine.errors import ReplError
from replengine.runtime import RuntimePaths
from replengine.wire.zmqio import recv_frames, send_frames

#: how long a wait for a reply goes without checking that the daemon is still there
LIVENESS_CHECK_MS = 1000


class NoAnswer(ReplError):
    """No reply within the timeout; the daemon is still running (busy, or stopped)."""


class DaemonGone(ReplError):
    """The daemon exited (or was killed) while a request waited for its reply."""


class ControlClient:
    """Request/response over the daemon's control socket (mode 0600: root only)."""

    def __init__(self, sock_path: Path, timeout_s: float = 30.0) -> None:
        self.sock_path = sock_path
        # a socket file left by a killed daemon must not make callers wait for a timeout
        if not sock_path.exists() or RuntimePaths(sock_path.parent).daemon_pid() is None:
            raise ReplError(f"no daemon listening at {sock_path} (is it up? 'replctl up')")
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{sock_path}")
        self.timeout_ms = int(timeout_s * 1000)
        self._ids = itertools.count(1)
        self._done: dict[int, tuple[dict, bytes | None]] = {}
        self._rcvtimeo = -1

    def send(self, op: str, data: Any = None, **fields: Any) -> int:
        req_id = next(self._ids)
        head = json.dumps({"op": op, "id": req_id, **fields}).encode()
        send_frames(self.sock, [head] if data is None else [head, data], wait=True)
        return req_id

    def _recv(self, timeout_ms: int) -> list[bytes] | None:
        """The next reply's frames, or None after ``timeout_ms``. A receive with a timeout
        set on the socket, not a poll and then a receive: a writer at queue depth 1 waits
        for every reply, and pyzmq's poll builds a Poller per call."""
        if timeout_ms != self._rcvtimeo:
            self.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._rcvtimeo = timeout_ms
        frames = recv_frames(self.sock, wait=True)
        return None if frames is None else [f.bytes for f in frames]

    def wait(self, req_id: int, timeout_s: float | None = None) -> tuple[dict, bytes | None]:
        """The reply to ``req_id``. Received in slices of at most LIVENESS_CHECK_MS: a
        daemon that dies (or stops on a failed disk) before answering is noticed within one,
        not at the end of a timeout that may be a Pacemaker operation's whole budget."""
        timeout = self.timeout_ms if timeout_s is None else int(timeout_s * 1000)
        deadline = time.monotonic() + timeout / 1000
        while req_id not in self._done:
            left = int((deadline - time.monotonic()) * 1000)
            frames = self._recv(min(LIVENESS_CHECK_MS, max(0, left)))
            if frames is None:
                if left <= LIVENESS_CHECK_MS:
                    raise NoAnswer(
                        f"daemon at {self.sock_path} did not answer within {timeout / 1000:.0f}s"
                    )
                self.check_alive()
                continue
            doc = json.loads(frames[0])
            self._done[doc.get("id")] = (doc, frames[1] if len(frames) > 1 else None)
        return self._done.pop(req_id)

    def check_alive(self) -> None:
        """DaemonGone if the daemon behind this socket is no longer running."""
        if RuntimePaths(self.sock_path.parent).daemon_pid() is None:
            raise DaemonGone(
                f"the daemon at {self.sock_path} stopped before answering (its log says why)"
            )

    def call(
        self, op: str, data: Any = None, timeout_s: float | None = None, **fields: Any
    ) -> tuple[dict, bytes | None]:
        doc, payload = self.wait(self.send(op, data, **fields), timeout_s)
        if not doc.get("ok"):
            raise ReplError(doc.get("error", "unknown error"))
        return doc, payload

    def resend(self, req_id: int, op: str, **fields: Any) -> None:
        """Send another request under an existing id (renewing a subscription)."""
        self.sock.send_multipart([json.dumps({"op": op, "id": req_id, **fields}).encode()])

    def next_reply(self, timeout_s: float) -> dict | None:
        """The next reply of any id within ``timeout_s`` (streams: `events`), else None."""
        frames = self._recv(max(0, int(timeout_s * 1000)))
        return None if frames is None else json.loads(frames[0])

    def close(self) -> None:
        self.sock.close(0)
