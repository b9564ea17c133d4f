"""ZeroMQ plumbing for one node: a ROUTER it listens on, a DEALER to each peer.

Every node sends only through its DEALERs and receives only on its ROUTER, so each direction
between two nodes is one ordered pipe. Every message a DEALER sends starts with a frame naming
the sending node; the ROUTER gives each connection its own routing id, and `recv_peer` reports
the node name from that first frame. The ROUTER can also answer a sender it does not know (to
tell it why it is refused). Sends never block the daemon's loop: DEALERs use ZMQ_IMMEDIATE, so
nothing queues for a peer that is not connected, and a full pipe shows up as `False` from
send(); the replication code keeps its own window and resends from the SRL. ZMTP heartbeats
drop dead TCP connections so reconnects happen by themselves, and a socket monitor on each
DEALER reports a lost connection at once (a killed peer's TCP reset), so the daemon need not
wait three missed heartbeats to know.

Why the DEALERs do not use their node name as routing id (with ROUTER_HANDOVER on the
ROUTER): when a peer reconnects while its old connection is still open here (this node was
stopped: SIGSTOP, a VM pause), handover terminates the old connection's pipe under an engine
that is still reading it. That engine stops its input, a TCP reset from the peer then marks it
failed without destroying it, and its next ZMTP heartbeat aborts the whole process in libzmq
4.3.x ("Assertion failed: !_io_error (src/stream_engine_base.cpp:310)", zeromq/libzmq#4841,
#4364). Without handover a duplicate routing id is not attached at all, so the reconnected peer
would stay mute. With a routing id per connection no pipe is ever terminated under a live
engine. The "newest connection wins" of handover is kept here instead: once a node's newer
connection has delivered a message, what its older connection still delivers is dropped.

"Newer" is the ROUTER's numbering, the order in which connections finished their handshake
here, and that is not always the order in which the peer made them. A connection the peer
abandoned (its `reconnect` while the handshake was still under way, on a link that drops
packets) still has its handshake and a first message in the peer's kernel, which goes on
sending them after the close; they can arrive after the connection that replaced it was
numbered. The abandoned one is then "newest" for its one message, and the live one was
dropped as its leftover for good: a node deaf to one peer while the peer heard it (fault
campaign, seed 11301). So an older connection that goes on delivering for ADOPT_AFTER_BEATS
heartbeats, while the newest says nothing (every node sends a HELLO each heartbeat), is the
live one and is taken again. Leftovers come as one burst, read within a turn or two of the
loop, and are still dropped.

A peer that sets its own routing id (an older replengine, a test speaking the wire format)
is still taken by it, without a name frame. The wire format changed: a node running this
module and one running the version with named DEALERs do not understand each other's messages.

The other way an engine stops its input is a full receive pipe; so the replies a peer's ROUTER
sends to our DEALERs (refusals) are read and dropped rather than left to pile up.

With keys (`curve`, docs/protocol.md "Security"), every socket between nodes runs CurveZMQ:
the ROUTER is a CURVE server with this node's key pair, each DEALER a CURVE client that knows
its peer's public key, so everything on the wire is encrypted and each side proves its key.
The transport answers ZAP itself (its own REP socket on its own context, polled by the loop):
a client key that is not a node's is refused, with the address it came from, and an accepted
one is given its node's name as User-Id. `recv_peer` then takes a message only when the name
it claims is the name its key belongs to, so the key of beta cannot speak as gamma. A peer
that fails the handshake before ZAP is asked (no CURVE at all, or a wrong public key for this
node) is reported by a monitor thread watching the ROUTER's connections, with the address
the connection came from when it can still be read (libzmq does not report it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

import zmq
from zmq.utils import z85

from replengine.wire.peerwatch import HANDSHAKE_FAILED, PeerWatch, monitor_event
from replengine.wire.security import CurveKeys, handshake_reason, refusals
from replengine.wire.zmqio import recv_frames, send_frames

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"replengine"
#: at most this many node names are remembered with their newest connection (names are
#: chosen by whoever connects; past the cap the table starts over, which only loses the
#: dropping of an old connection's leftovers for a moment)
MAX_ROUTES = 1024
#: how often the DEALERs' inbound queues (and, as a safety net, their monitors) are read
#: (see Transport.poll)
SIDE_EVERY_S = 0.02
#: a connection attempt to a peer unanswered this long is started again (its SYN sent now,
#: not after the kernel's backoff): a peer back after a long cut is reached within about a
#: second, not half a minute later. Two of the kernel's SYNs go out before (at 0 and 1 s),
#: so a slow link's answer has time to come
RETRY_CONNECT_S = 2.0
#: an older connection of a node that delivers for this many heartbeats while its newest
#: one delivers nothing is the live one (see the module docstring)
ADOPT_AFTER_BEATS = 2


def tcp_endpoint(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"tcp://{host}:{port}"


@dataclass
class Incoming:
    """A message from a peer (`identity`: the node name it sent, for recv_peer) or from a
    local client (`identity`: its routing id, for recv_control)."""

    identity: bytes
    frames: list[zmq.Frame]


def _numbered(route: bytes) -> bool:
    """Whether the ROUTER numbered this connection itself (the peer set no routing id): it
    does so as b"\\0" + a 32-bit counter, from a random start and wrapping."""
    return len(route) == 5 and route[0] == 0


def _newer(route: bytes, than: bytes) -> bool:
    """Whether ROUTER routing id `route` was given to a later connection than `than`; an id a
    peer chose itself counts as the newer one."""
    if not (_numbered(route) and _numbered(than)):
        return True
    diff = (int.from_bytes(route[1:], "big") - int.from_bytes(than[1:], "big")) % (1 << 32)
    return 0 < diff < (1 << 31)


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
        curve: CurveKeys | None = None,
    ) -> None:
        self.curve = curve
        # a ZAP handler is one per context: a keyed transport has a context of its own
        self.ctx = zmq.Context() if curve else zmq.Context.instance()
        self.me = me
        self._me_frame = me.encode()
        self.zap: zmq.Socket | None = None
        if curve:
            self.zap = self.ctx.socket(zmq.REP)
            self.zap.setsockopt(zmq.LINGER, 0)
            self.zap.bind(ZAP_ENDPOINT)  # before the ROUTER accepts anyone
        self.router = self.ctx.socket(zmq.ROUTER)
        # no ROUTER_HANDOVER, no routing ids set by the DEALERs: see the module docstring
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        self.router.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms * 3)
        self._router_watch: threading.Thread | None = None
        if curve:
            self.router.curve_server = True
            self.router.curve_publickey = curve.public
            self.router.curve_secretkey = curve.secret
            self.router.zap_domain = ZAP_DOMAIN
            self.router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler: nobody gets in
            # MONITOR_STOPPED too: libzmq sends it at disable_monitor() only when asked for,
            # and the watcher ends on it (close() waited 5 s for it, every keyed stop)
            self._router_mon = self.router.get_monitor_socket(
                zmq.EVENT_ACCEPTED
                | zmq.EVENT_DISCONNECTED
                | HANDSHAKE_FAILED
                | zmq.EVENT_MONITOR_STOPPED
            )
            self._router_watch = threading.Thread(
                target=_watch_handshakes,
                args=(self._router_mon, address),
                name="handshake-watch",
                daemon=True,
            )
            self._router_watch.start()
        self.router.bind(tcp_endpoint(address))
        self.heartbeat_ms = heartbeat_ms
        self.dealers: dict[str, zmq.Socket] = {}
        self._endpoints: dict[str, str] = {}
        self.watch = PeerWatch(me, curve is not None)
        self._dealer_names: dict[zmq.Socket, str] = {}
        self.poller = zmq.Poller()
        self._side_due = 0.0
        for name, addr in peers.items():
            self.add_peer(name, addr)
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
        self._wake_pending = False
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        if self.zap is not None:
            self.poller.register(self.zap, zmq.POLLIN)
        #: node name -> routing id of its newest connection to our ROUTER
        self._routes: dict[bytes, bytes] = {}
        #: node name -> when its newest connection last delivered a message
        self._heard: dict[bytes, float] = {}
        #: node name -> {routing id of an older connection: when the run of its messages
        #: dropped since the newest last spoke began}
        self._muted: dict[bytes, dict[bytes, float]] = {}

    def add_peer(self, name: str, addr: str, key: bytes | None = None) -> None:
        """Connect to a peer (at start, or a node added by `replctl adjust`); with CURVE,
        ``key`` is its public key (Z85) when it is not in the keys loaded at start."""
        curve = self.curve
        if curve is not None and key is not None:
            curve.peers[name] = key
            curve.names[key] = name
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.LINGER, 0)
        # retry every 100 ms without backoff: a promotion probes its peers for only 1.5
        # heartbeats, and a backed-off reconnect to a restarted peer could outlast that
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
        sock.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.heartbeat_ms * 3)
        if curve is not None:
            sock.curve_serverkey = curve.peers[name]
            sock.curve_publickey = curve.public
            sock.curve_secretkey = curve.secret
        self.poller.register(self.watch.watch(name, sock), zmq.POLLIN)
        self._endpoints[name] = tcp_endpoint(addr)
        sock.connect(self._endpoints[name])
        self.dealers[name] = sock
        self._dealer_names[sock] = name

    def remove_peer(self, name: str) -> None:
        """Disconnect from a peer removed by `replctl adjust`; with CURVE its key no longer
        gets in."""
        sock = self.dealers.pop(name, None)
        if sock is None:
            return
        del self._dealer_names[sock]
        self._endpoints.pop(name, None)
        for fd in self.watch.unwatch(name, sock):
            self.poller.unregister(fd)
        sock.close(0)
        self._forget_routes(name.encode())
        if self.curve is not None:
            key = self.curve.peers.pop(name, None)
            if key is not None:
                self.curve.names.pop(key, None)

    def wake(self) -> None:
        """Called from any thread: make the loop's poll return. Once per turn of the loop:
        the applier calls this for every record it applies, and a write to the pipe each
        time was a syscall per record in a catch-up (and a loop turn per record)."""
        if self._wake_pending:
            return  # the loop has not yet drained the last one: it will look anyway
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # a wake-up is already pending

    @property
    def security(self) -> str:
        """ "curve" when the ROUTER authenticates and encrypts, else "plain"."""
        return "curve" if self.router.getsockopt(zmq.MECHANISM) == zmq.CURVE else "plain"

    def poll(self, timeout_ms: int) -> tuple[bool, bool, bool]:
        """Wait for the ROUTER, the control socket or a wake-up, and read the DEALERs'
        monitors (connection events) when their file descriptors say so. Only the ROUTER
        and the control socket are zmq sockets in the zmq_poll: each costs a poll(2) and a
        getpid(2) or more, twice per call, and the loop polls twice per write (strace of a
        4 KiB QD1 run, 2 nodes: 33 poll(2) and 39 getpid(2) per write on the primary). A
        monitor's ZMQ_FD is polled as a plain descriptor, which costs nothing more; the
        DEALERs (only refusals come back on them) and, to be safe, every monitor are read
        every SIDE_EVERY_S; then an attempt to a peer stuck for RETRY_CONNECT_S (the
        kernel's SYN backoff, PeerWatch.stuck) is started again."""
        events = dict(self.poller.poll(timeout_ms))
        if self.zap is not None and self.zap in events:
            self._answer_zap()
        self.watch.read_ready(events)
        now = time.monotonic()
        if now >= self._side_due:
            self._side_due = now + SIDE_EVERY_S
            self.watch.read_all()
            for sock, name in self._dealer_names.items():
                self._drain_dealer(sock, name)
            for name in self.watch.stuck(RETRY_CONNECT_S, now):
                self.reconnect(name)
        woke = self._wake_r in events
        if woke:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            # after draining: a wake from now on writes again; one skipped before this was
            # for a change made before it, which the loop's turn after this poll sees
            self._wake_pending = False
        return self.router in events, self.control in events, woke

    def _answer_zap(self) -> None:
        """Answer the ZAP requests of the ROUTER's handshakes: a key of one of the resource's
        nodes is let in as that node (User-Id), anything else is refused and logged."""
        assert self.zap is not None and self.curve is not None
        while True:
            try:
                req = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(req) < 6:  # not a ZAP request: keep the REP socket's turn-taking
                self.zap.send_multipart([b"1.0", b"", b"500", b"bad ZAP request", b"", b""])
                continue
            version, req_id, _domain, address, _routing, mechanism = req[:6]
            creds = req[6:]
            name = None
            if mechanism == b"CURVE" and len(creds) == 1 and len(creds[0]) == 32:
                key = z85.encode(creds[0])
                name = self.curve.names.get(key)
            else:
                key = b""
            if name is None or name == self.me:
                why = (
                    "its key is this node's own"
                    if name == self.me
                    else f"its CURVE key {key.decode() or '(none)'} is not a node of this resource"
                )
                refusals(
                    f"zap:{address!r}:{key!r}",
                    logging.WARNING,
                    "refused a connection from %s: %s",
                    address.decode(errors="replace"),
                    why,
                )
                self.zap.send_multipart([version, req_id, b"400", b"unknown key", b"", b""])
            else:
                self.zap.send_multipart([version, req_id, b"200", b"OK", name.encode(), b""])

    def _drain_dealer(self, sock: zmq.Socket, name: str) -> None:
        """Drop what a peer's ROUTER sent back on our connection (only refusals, which the
        peer logs too): left unread, they would fill the pipe and stop the engine's input."""
        dropped = 0
        while True:
            try:
                sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            dropped += 1
        if dropped:
            log.debug("dropped %d replies from %s", dropped, name)

    def reconnect_all(self) -> None:
        """Reconnect every DEALER now. After this process was stopped for longer than the
        ZMTP heartbeat timeout, its peers have dropped its connections; libzmq would notice
        on its own and retry after RECONNECT_IVL plus jitter (100-200 ms), during which
        nothing this node sends gets anywhere. Messages still queued are stale by then."""
        for name in self.dealers:
            self.reconnect(name)

    def reconnect(self, name: str) -> None:
        """Try the connection to ``name`` again now, not after the reconnect interval
        (100-200 ms): a promotion learns at once that a dead peer refuses it. What is
        queued for that peer is dropped."""
        sock, endpoint = self.dealers[name], self._endpoints[name]
        self.watch.attempting(name)
        try:
            sock.disconnect(endpoint)
        except zmq.ZMQError:
            pass  # not connected: connect below is all it needs
        sock.connect(endpoint)
        log.debug("reconnecting to %s (%s)", name, endpoint)

    def hasten(self, name: str) -> None:
        """``name`` just spoke to us (restarted, or back after a cut): if our DEALER to it
        is between two attempts, try now rather than after the reconnect interval. Until it
        connects, what we send it is dropped (IMMEDIATE), and a restarted secondary would
        wait up to 100 ms for the primary's HELLO; the connection's HELLO goes at once."""
        if name in self.dealers and not self.watch.is_linked(name):
            self.reconnect(name)

    def recv_peer(self) -> Incoming | None:
        """The next message from a peer, `identity` being the node name its first frame
        carries; None when there is none. Leftovers of a node's older connection, once a
        newer one has spoken, are skipped, as are messages without a name frame.

        A peer that set its own routing id (a replengine before per-connection routing ids, a
        test speaking the wire format) is taken by that id, as before, and sends no name
        frame; two connections with the same such id are not handed over (the ROUTER ignores
        the second one until the first is gone)."""
        while True:
            frames = recv_frames(self.router)
            if frames is None:
                return None
            route = frames[0].bytes
            if not _numbered(route):
                name, payload = route, frames[1:]
            elif len(frames) >= 2:
                name, payload = frames[1].bytes, frames[2:]
            else:
                continue
            if self.curve is not None and not self._authentic(name, frames[-1]):
                continue
            newest = self._routes.get(name)
            now = time.monotonic()
            if newest is not None and newest != route and not _newer(route, newest):
                if not self._outlived(name, route, now):
                    continue  # sent before the peer reconnected: a newer pipe replaced it
            if newest != route:
                if newest is None and len(self._routes) >= MAX_ROUTES:
                    self._routes.clear()
                    self._heard.clear()
                    self._muted.clear()
                self._routes[name] = route
                self._muted.pop(name, None)
            self._heard[name] = now
            return Incoming(name, payload)

    def _outlived(self, name: bytes, route: bytes, now: float) -> bool:
        """Whether ``route``, an older connection of ``name`` than its newest, has been
        delivering for ADOPT_AFTER_BEATS heartbeats while the newest said nothing: the
        newest was a connection the peer abandoned, whose handshake arrived late (see the
        module docstring), and this one is live."""
        muted = self._muted.setdefault(name, {})
        since = muted.get(route)
        if since is None or since < self._heard.get(name, 0.0):
            muted[route] = since = now  # a run of drops begins (the newest spoke since)
        if now - since < ADOPT_AFTER_BEATS * self.heartbeat_ms / 1000:
            return False
        log.warning(
            "peer %s: its newest connection here has said nothing for %.1fs while an older "
            "one went on delivering: taking the older one as its connection (the newest was "
            "one it had abandoned, whose handshake arrived late)",
            name.decode(errors="replace")[:64],
            now - self._heard.get(name, since),
        )
        return True

    def _forget_routes(self, name: bytes) -> None:
        self._routes.pop(name, None)
        self._heard.pop(name, None)
        self._muted.pop(name, None)

    def _authentic(self, name: bytes, frame: zmq.Frame) -> bool:
        """Whether the node name a message claims is the one its connection's key belongs
        to (the User-Id our ZAP handler gave it); refused and logged otherwise."""
        try:
            user = frame.get("User-Id")
        except zmq.ZMQError:
            user = ""
        if user.encode() == name:
            return True
        try:
            address = frame.get("Peer-Address")
        except zmq.ZMQError:
            address = "?"
        refusals(
            f"impostor:{address}:{user}",
            logging.WARNING,
            "dropped a message from %s: it claims to be %r but its CURVE key is %s's",
            address,
            name.decode(errors="replace")[:64],
            user or "nobody",
        )
        return False

    def recv_control(self) -> Incoming | None:
        frames = recv_frames(self.control)
        if frames is None:
            return None
        return Incoming(frames[0].bytes, frames[1:])

    def send(self, peer: str, frames: list) -> bool:
        """Queue frames to a peer; False when not connected or its pipe is full."""
        sock = self.dealers[peer]
        try:
            send_frames(sock, [self._me_frame, *frames])
            return True
        except zmq.Again:
            pass
        # a connection the I/O thread just made (its monitor may have said so already) is
        # handed to the socket as a command that a send processes only every few ms: asking
        # for the socket's events processes it now, so the HELLO to a peer that just came
        # up is not lost until the next beat
        if not sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
            return False
        try:
            send_frames(sock, [self._me_frame, *frames])
            return True
        except zmq.Again:
            return False

    def reply_router(self, identity: bytes, frames: list) -> None:
        """Answer whoever sent to our ROUTER (used for refusing unknown peers); `identity` is
        the name from recv_peer, the answer goes to that name's newest connection."""
        route = self._routes.get(identity)
        if route is None:
            return
        try:
            self.router.send_multipart([route, *frames], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            pass

    def reply_control(self, identity: bytes, frames: list) -> None:
        try:
            send_frames(self.control, [identity, *frames])
        except (zmq.Again, zmq.ZMQError) as exc:
            log.warning("control reply dropped: %s", exc)

    def close(self) -> None:
        for sock in self.dealers.values():
            sock.disable_monitor()
        watching = False
        if self._router_watch is not None:
            self.router.disable_monitor()  # the watcher sees MONITOR_STOPPED and ends
            self._router_watch.join(5)
            watching = self._router_watch.is_alive()
        for sock in [self.router, self.control, *self.dealers.values(), *self.watch.monitors]:
            sock.close(0)
        if self.zap is not None:
            self.zap.close(0)
            if not watching:  # (term would wait for the watcher's socket)
                self.ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass


def _peer_address(fd: int) -> str | None:
    """host:port of the remote end of a socket fd libzmq just accepted, if still open."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        host, port = sock.getpeername()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    except (OSError, ValueError, TypeError):
        return None
    finally:
        sock.detach()  # the fd is libzmq's: never close it


def _watch_handshakes(mon: zmq.Socket, address: str) -> None:
    """Thread: log connections to the ROUTER that fail their handshake before ZAP is asked
    (a plain peer, a wrong server key). libzmq reports these without the peer's address, so
    it is read from the accepted fd as soon as the connection is announced, and the failure
    is matched to the fd by the DISCONNECTED that follows it."""
    addrs: dict[int, str | None] = {}
    failed: tuple[int, int] | None = None
    try:
        while True:
            try:
                kind, value = monitor_event(mon.recv_multipart())
            except zmq.ZMQError:
                return
            if kind == zmq.EVENT_MONITOR_STOPPED:
                return
            if kind == zmq.EVENT_ACCEPTED:
                if len(addrs) > 4096:
                    addrs.clear()
                addrs[value] = _peer_address(value)
            elif kind & HANDSHAKE_FAILED:
                failed = (kind, value)
            elif kind == zmq.EVENT_DISCONNECTED:
                peer = addrs.pop(value, None)
                if failed is not None and failed[0] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    # (a refused key was logged by the ZAP handler, with its address)
                    refusals(
                        f"handshake:{peer}:{failed[1]}",
                        logging.WARNING,
                        "refused a connection to %s from %s: %s",
                        address,
                        peer or "an address already gone (libzmq does not report it)",
                        handshake_reason(*failed),
                    )
                failed = None
    finally:
        mon.close(0)
