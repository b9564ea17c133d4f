"""What the node's connections to its peers are doing, from ZeroMQ socket monitors on the
DEALERs.

The loop needs four things from them: the peers it just (re)connected to (a HELLO goes out
at once, not at the next beat), those whose connection dropped (judged gone now, not after
three silent heartbeats), those that refuse its connection attempts (nothing listens
there: a promotion need not wait for an answer that cannot come), and those it has had no
TCP connection to for a while (an attempt waiting out the kernel's SYN backoff: started
again). A monitor is read as soon as its file descriptor signals (the transport polls it as
a plain descriptor, which costs the zmq_poll nothing), and every SIDE_EVERY_S of the
transport as a safety net.
"""

from __future__ import annotations

import logging
import struct
import time

import zmq

from replengine.wire.security import handshake_reason, refusals

log = logging.getLogger(__name__)

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class PeerWatch:
    """The monitors of one node's DEALERs; owned by the loop thread, as the sockets are."""

    def __init__(self, me: str, curve: bool) -> None:
        self.me = me
        self.curve = curve
        self.monitors: dict[zmq.Socket, str] = {}
        #: a monitor's file descriptor (polled as a plain fd) -> the monitor
        self.fds: dict[int, zmq.Socket] = {}
        #: monitor -> when it was last read: what it says next happened after that
        self._read_at: dict[zmq.Socket, float] = {}
        #: peer -> when `attempting` last announced a connection attempt to it
        self._attempted: dict[str, float] = {}
        #: peer -> a monotonic time before which its latest failed connection attempt did
        #: not happen (refused: nothing listens there), until a connection succeeds
        self.refused: dict[str, float] = {}
        #: peer -> when its latest connection attempt closed, until libzmq says whether it
        #: will try again (it failed) or not (we closed it ourselves: a reconnect)
        self._closed: dict[str, float] = {}
        #: peers whose connection dropped since the last take_disconnected
        self.disconnected: list[str] = []
        #: peers our DEALER (re)connected to since the last take_connected
        self.connected: list[str] = []
        #: peers our DEALER holds a connection to now, as far as the monitors have said
        self.linked: set[str] = set()
        #: peer -> since when our DEALER to it has had no TCP connection (a connection
        #: attempt, or libzmq's wait between two), until one is made
        self.down_since: dict[str, float] = {}

    def watch(self, name: str, sock: zmq.Socket) -> int:
        """Monitor ``sock``, the DEALER to ``name``; returns the descriptor to poll."""
        mon = sock.get_monitor_socket(
            zmq.EVENT_CONNECTED
            | zmq.EVENT_DISCONNECTED
            | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | HANDSHAKE_FAILED
            | zmq.EVENT_CLOSED
            | zmq.EVENT_CONNECT_RETRIED
        )
        fd = mon.getsockopt(zmq.FD)
        self.monitors[mon] = name
        self.fds[fd] = mon
        self._read_at[mon] = time.monotonic()
        self.down_since[name] = time.monotonic()
        return fd

    def unwatch(self, name: str, sock: zmq.Socket) -> list[int]:
        """Stop monitoring the DEALER to ``name``; returns the descriptors no longer to poll."""
        gone = []
        for fd, mon in list(self.fds.items()):
            if self.monitors[mon] == name:
                del self.fds[fd], self.monitors[mon], self._read_at[mon]
                sock.disable_monitor()
                mon.close(0)
                gone.append(fd)
        self.refused.pop(name, None)
        self._attempted.pop(name, None)
        self._closed.pop(name, None)
        self.down_since.pop(name, None)
        self.linked.discard(name)
        return gone

    def read_ready(self, events: dict) -> None:
        """Read the monitors whose descriptors are among ``events`` (a poll's result)."""
        for fd, mon in self.fds.items():
            if fd in events:
                self._read(mon)

    def read_all(self) -> None:
        for mon in self.monitors:
            self._read(mon)

    def attempting(self, name: str) -> None:
        """A new connection attempt to ``name`` starts now: what its monitor reported
        before is read first, so a refusal read from now on is this attempt's."""
        self._read_peer(name)
        self._attempted[name] = time.monotonic()
        self.down_since[name] = self._attempted[name]

    def is_linked(self, name: str) -> bool:
        """Whether our DEALER to ``name`` is connected, its monitor read first."""
        self._read_peer(name)
        return name in self.linked

    def _read_peer(self, name: str) -> None:
        for mon, n in self.monitors.items():
            if n == name:
                self._read(mon)

    def stuck(self, after: float, now: float | None = None) -> list[str]:
        """Peers our DEALER has not had a TCP connection to for ``after`` seconds, since it
        lost one or since the last attempt we started. Such an attempt is waiting for an
        answer to its SYNs, which the kernel sends again at ever longer intervals (1, 2, 4
        ... 64 s): behind a link that drops packets (a firewall, a split) for a minute, the
        next one may go out half a minute after the link is back, and the peer stays
        unreachable that long (a sync secondary degraded, a promotion without it). A new
        attempt sends its SYN at once. As far as the monitors read so far have said."""
        now = time.monotonic() if now is None else now
        return sorted(n for n, t in self.down_since.items() if now - t >= after)

    def take_disconnected(self) -> list[str]:
        """Peers whose connection dropped since the last call."""
        out, self.disconnected = self.disconnected, []
        return out

    def take_connected(self) -> list[str]:
        """Peers our DEALER completed a (re)connection to since the last call: the
        moment a HELLO can reach them, rather than at the next heartbeat."""
        out, self.connected = self.connected, []
        return out

    def _read(self, mon: zmq.Socket) -> None:
        since, self._read_at[mon] = self._read_at[mon], time.monotonic()
        name = self.monitors[mon]
        while True:
            try:
                kind, value = monitor_event(mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if kind == zmq.EVENT_CONNECTED:
                # TCP is up; the ZMTP handshake follows (a stopped peer's kernel accepts
                # the connection and the handshake waits: nothing to try again)
                self.down_since.pop(name, None)
            elif kind == zmq.EVENT_DISCONNECTED:
                self.disconnected.append(name)
                self.linked.discard(name)
                self._closed.pop(name, None)
                self.down_since.setdefault(name, time.monotonic())
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected.append(name)
                self.linked.add(name)
                self.refused.pop(name, None)
                self._closed.pop(name, None)
            elif kind == zmq.EVENT_CLOSED:
                # a connection attempt closed before it was ever connected (an established
                # one that drops reports DISCONNECTED): failed, if libzmq now waits to try
                # again (CONNECT_RETRIED, next); or closed by our own reconnect, while it
                # was still waiting for the peer's answer, which says nothing of the peer
                self.linked.discard(name)
                self._closed[name] = max(since, self._attempted.get(name, 0.0))
                self.down_since.setdefault(name, time.monotonic())
            elif kind == zmq.EVENT_CONNECT_RETRIED and name in self._closed:
                # it failed: refused, or the host unreachable. A peer behind a cut link
                # drops our packets instead, and its attempts hang rather than fail.
                # (Taken for a refusal, the close of a pending attempt by a promotion's own
                # reconnect let it go ahead without a peer whose link had just healed and
                # that held acknowledged writes: fault campaign, seed 7603)
                self.refused[name] = self._closed.pop(name)
            elif kind & HANDSHAKE_FAILED and not self.curve:
                # no keys: a handshake times out when the peer is stopped (SIGSTOP, a VM
                # pause) or is not a replengine node; nothing to do with keys
                log.info("handshake with peer %s did not complete: %s", name, value)
            elif kind & HANDSHAKE_FAILED:
                refusals(
                    f"dealer:{name}",
                    logging.WARNING,
                    "peer %s refused this node's connection in the CURVE handshake (%s): check "
                    "that both configs list the same public keys and that %s runs with its key",
                    name,
                    handshake_reason(kind, value),
                    self.me,
                )


def monitor_event(frames: list[bytes]) -> tuple[int, int]:
    """A monitor message's event and value (zmq_socket_monitor(3): a 16-bit event id and a
    32-bit value, then the endpoint). Parsed here: pyzmq's recv_monitor_message lives in a
    module that imports asyncio, a tenth of the daemon's start-up."""
    return struct.unpack("=hi", frames[0])


__all__ = ["HANDSHAKE_FAILED", "PeerWatch", "monitor_event"]
