"""ZeroMQ plumbing for one node: a ROUTER it listens on, a DEALER to each peer.

Every node sends only through its DEALERs (routing id = its node name) and receives only on its
ROUTER, so each direction between two nodes is one ordered pipe. The ROUTER can also answer a
sender it does not know (to tell it why it is refused). Sends never block the daemon's loop:
DEALERs use ZMQ_IMMEDIATE, so nothing queues for a peer that is not connected, and a full pipe
shows up as `False` from send(); the replication code keeps its own window and resends from the
SRL. ZMTP heartbeats drop dead TCP connections so reconnects happen by themselves, and a
socket monitor on each DEALER reports a lost connection at once (a killed peer's TCP reset),
so the daemon need not wait three missed heartbeats to know.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)


def tcp_endpoint(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"tcp://{host}:{port}"


@dataclass
class Incoming:
    identity: bytes
    frames: list[zmq.Frame]


class Transport:
    """Sockets of one node; owned by the daemon's loop thread only (zmq sockets are not
    thread-safe). Other threads wake the loop through `wake_fd`."""

    def __init__(
        self,
        me: str,
        address: str,
        peers: dict[str, str],
        control_path: str,
        heartbeat_ms: int = 1000,
    ) -> None:
        self.ctx = zmq.Context.instance()
        self.me = me
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        self.router.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms * 3)
        self.router.bind(tcp_endpoint(address))
        self.dealers: dict[str, zmq.Socket] = {}
        self.monitors: dict[zmq.Socket, str] = {}
        for name, addr in peers.items():
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.ROUTING_ID, me.encode())
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.LINGER, 0)
            # retry every 100 ms without backoff: a promotion probes its peers for only 1.5
            # heartbeats, and a backed-off reconnect to a restarted peer could outlast that
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
            sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms * 3)
            mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            self.monitors[mon] = name
            sock.connect(tcp_endpoint(addr))
            self.dealers[name] = sock
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        if os.path.exists(control_path):
            os.unlink(control_path)
        old = os.umask(0o177)
        try:
            self.control.bind(f"ipc://{control_path}")
        finally:
            os.umask(old)
        os.chmod(control_path, 0o600)
        self.control_path = control_path
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        for mon in self.monitors:
            self.poller.register(mon, zmq.POLLIN)
        self.disconnected: list[str] = []

    def wake(self) -> None:
        """Called from any thread: make the loop's poll return."""
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def poll(self, timeout_ms: int) -> tuple[bool, bool, bool]:
        events = dict(self.poller.poll(timeout_ms))
        for mon, name in self.monitors.items():
            if mon in events:
                self._drain_monitor(mon, name)
        woke = self._wake_r in events
        if woke:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        return self.router in events, self.control in events, woke

    def _drain_monitor(self, mon: zmq.Socket, name: str) -> None:
        while True:
            try:
                event = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.disconnected.append(name)

    def take_disconnected(self) -> list[str]:
        """Peers whose connection dropped since the last call."""
        out, self.disconnected = self.disconnected, []
        return out

    def recv_peer(self) -> Incoming | None:
        try:
            frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        return Incoming(frames[0].bytes, frames[1:])

    def recv_control(self) -> Incoming | None:
        try:
            frames = self.control.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        return Incoming(frames[0].bytes, frames[1:])

    def send(self, peer: str, frames: list) -> bool:
        """Queue frames to a peer; False when not connected or its pipe is full."""
        try:
            self.dealers[peer].send_multipart(frames, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def reply_router(self, identity: bytes, frames: list) -> None:
        """Answer whoever sent to our ROUTER (used for refusing unknown peers)."""
        try:
            self.router.send_multipart([identity, *frames], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            pass

    def reply_control(self, identity: bytes, frames: list) -> None:
        try:
            self.control.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
        except (zmq.Again, zmq.ZMQError) as exc:
            log.warning("control reply dropped: %s", exc)

    def close(self) -> None:
        for sock in self.dealers.values():
            sock.disable_monitor()
        for sock in [self.router, self.control, *self.dealers.values(), *self.monitors]:
            sock.close(0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
