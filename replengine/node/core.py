"""replengined: one process per resource per node, one loop that decides.

The loop owns every ZeroMQ socket and every role decision. It also leads the SRL's group
commit: it queues the records of everything it has drained, writes and fdatasyncs them in one
batch, and acknowledges right after (LocalSync). The applier thread writes the volume behind
it and wakes the loop through a pipe. Peers are known from their HELLO beacons (sent every heartbeat); a node follows the
primary with the highest epoch it hears of and steps down when it learns of a higher epoch
than its own (invariant 4).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

from replengine import config as configmod
from replengine.errors import ReplError
from replengine.log.history import divergence_point
from replengine.log.record import Record
from replengine.log.srl import SRL
from replengine.node import handshake, inbox
from replengine.node.applier import Applier, LocalSync
from replengine.node.copier import BlockCopier
from replengine.node.dcm import DcmTracker
from replengine.node.dcm_receiver import DcmReceiver
from replengine.node.device_io import DEVICE_CLIENT, DeviceIO
from replengine.node.events import EventHub
from replengine.node.liveness import Liveness
from replengine.node.metrics import Metrics
from replengine.node.ops import Operations
from replengine.node.pacing import Pacer
from replengine.node.peers import Peer
from replengine.node.primary import Primary
from replengine.node.reads import consistent_read
from replengine.node.rewind import Rewinder, load_marker, marker_path, owe_whole_volume
from replengine.node.secondary import Secondary
from replengine.node.states import Role
from replengine.node.sums import ChunkSummer, offered_skip
from replengine.node.verifier import Verifier, VerifyAnswers
from replengine.storage.volume import Volume
from replengine.wire.protocol import (
    Ack,
    Block,
    BlockAck,
    BlockDone,
    BlockReq,
    Clear,
    Flag,
    Hello,
    Message,
    Nack,
    Pull,
    Reject,
    SumReq,
    Sums,
    Update,
    Updates,
    VerifyReq,
    VerifySums,
    encode,
)
from replengine.wire.security import load_keys
from replengine.wire.transport import Transport

if TYPE_CHECKING:
    from replengine.node.context import DeviceHooks

log = logging.getLogger("replengined")

TICK_S = 0.05
#: longest a turn of the loop spends reading peers' messages
DRAIN_BUDGET_S = 0.05


class Node:
    def __init__(self, cfg: configmod.ResourceConfig) -> None:
        self.cfg = cfg
        self.me = cfg.local.name
        self.heartbeat_s = cfg.heartbeat_ms / 1000.0
        self.srl = SRL.open(cfg.local.srl)
        self._check_srl_identity()
        self.volume = Volume(cfg.local.volume)
        self.known_epoch = self.srl.epoch
        self.role = Role.SECONDARY
        self.following = ""
        self.consistent = True
        self.session = uuidlib.uuid4().hex[:16]
        self.peers = {n.name: Peer(n.name, n.mode) for n in cfg.peers()}
        self.paths = cfg.paths()
        self.rundir = self.paths.dir
        self.rundir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.transport = Transport(
            self.me,
            cfg.local.address,
            {n.name: n.address for n in cfg.peers()},
            str(self.paths.socket),
            cfg.heartbeat_ms,
            curve=load_keys(cfg),
        )
        self.applier = Applier(self.srl, self.volume, self.srl.start_lsn, self.transport.wake)
        self.watcher = LocalSync(self.applier, self.srl.end_lsn)
        self.applier.replay(self.srl.start_lsn, self.srl.end_lsn)
        self.secondary = Secondary(self)
        self.primary: Primary | None = None
        self.rewinder: Rewinder | None = None
        self.copier = BlockCopier(
            read=lambda off, n: consistent_read(self, off, n, once=True),
            end=lambda: self.watcher.durable_end,
            send=self.send,
            volume_size=self.volume.size,
            pacer=Pacer.from_config(cfg.resync_rate, cfg.resync_adaptive),
            wake=self.transport.wake,
        )
        self.rewind_marker = marker_path(cfg.local.srl, cfg.name, self.me)
        owed = load_marker(self.rewind_marker)
        if owed is not None:
            self.rewinder = Rewinder.resume(self, self.rewind_marker, owed)
        self.dcm = DcmTracker(self)
        self.dcm_rx: DcmReceiver | None = None
        self.summer = ChunkSummer(self)
        #: the config digest before the last `replctl adjust` (node.adjust)
        self.prev_digest = ""
        #: chunk digests a peer sent ahead of its request for blocks (node.rewind)
        self.offered_sums: dict[str, Sums] = {}
        self.ops = Operations(self)
        self.events = EventHub(self)  # replctl events; metrics (below) listen to it too
        self.metrics = Metrics(self)
        self.verifier = Verifier(self)
        self.verify_answers = VerifyAnswers(self)
        self.device_io = DeviceIO(self)
        #: the block device frontend (set by the daemon; None for device = "none")
        self.device: DeviceHooks | None = None
        self.stop_requested = False
        self.fatal = ""
        self.exit_code = 0
        self.last_divergent: dict[str, Any] = {}
        self._warned: dict[str, float] = {}
        self.liveness = Liveness(self)
        #: the primary whose digests request (a resync starting) this node last answered
        self.resync_announced_by = ""

    @property
    def epoch(self) -> int:
        return self.srl.epoch

    def _check_srl_identity(self) -> None:
        srl, cfg = self.srl, self.cfg
        if srl.uuid != cfg.uuid or srl.resource != cfg.name or srl.node != self.me:
            raise ReplError(
                f"SRL {cfg.local.srl} belongs to resource {srl.resource} ({srl.uuid}) node "
                f"{srl.node}, not to {cfg.name} ({cfg.uuid}) node {self.me}: run "
                f"'replctl init --config {cfg.path} --node {self.me} --force' to reinitialise"
            )

    # ---- replies to local clients ---------------------------------------------------------

    def reply(self, client: bytes, doc: dict, data: Any = None) -> None:
        if client == DEVICE_CLIENT:
            self.device_io.on_reply(doc)
            return
        frames: list = [json.dumps(doc).encode()]
        if data is not None:
            frames.append(data)
        self.transport.reply_control(client, frames)

    def reply_ok(self, client: bytes, req_id: Any, doc: dict | None = None) -> None:
        self.reply(client, {"id": req_id, "ok": True, **(doc or {})})

    def reply_error(self, client: bytes, req_id: Any, error: str) -> None:
        self.reply(client, {"id": req_id, "ok": False, "error": error})

    # ---- sending to peers -----------------------------------------------------------------

    def send(self, peer: str, body: Any, flags: int = 0) -> bool:
        return self.transport.send(
            peer,
            encode(
                self.cfg.uuid,
                self.known_epoch if self.role == Role.SECONDARY else self.epoch,
                self.me,
                body,
                flags,
            ),
        )

    def send_pulled(self, peer: str, rec: Record) -> bool:
        """A record for a peer being promoted (it pulls what it lacks from us)."""
        body = Update(rec.lsn, rec.epoch, rec.offset, rec.data)
        return self.transport.send(
            peer, encode(self.cfg.uuid, self.known_epoch, self.me, body, Flag.PULLED)
        )

    def hello(self) -> Hello:
        return Hello(
            role=self.role,
            session=self.session,
            history=[list(h) for h in self.srl.history],  # type: ignore[misc]
            start_lsn=self.srl.start_lsn,
            end_lsn=self.watcher.durable_end,
            applied_end=self.applier.applied_end,
            digest=self.cfg.digest,
            volume_size=self.volume.size,
            primary=self.me if self.role == Role.PRIMARY else self.following,
            consistent=self.consistent,
            # records must not flow before a rewind's blocks are in
            following=self.following if self.rewinder is None or self.rewinder.streaming else "",
            prev_digest=self.prev_digest,
        )

    def beacon(self, flags: int = 0) -> None:
        hello = self.hello()
        for name in self.peers:
            handshake.hello_to(self, name, hello, flags)

    def warn_once(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) > 30:
            self._warned[key] = now
            log.warning(msg, *args)

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        self.applier.start()
        self.watcher.start()
        next_beat = 0.0
        last_turn = time.monotonic()
        while True:
            now = time.monotonic()
            self.liveness.turn(now - last_turn)
            last_turn = now
            if now >= next_beat:
                self.beacon()
                self.on_tick()
                next_beat = now + self.heartbeat_s
            timeout = max(0.0, min(next_beat - now, TICK_S))
            peer_in, ctl_in, _ = self.transport.poll(int(timeout * 1000) + 1)
            for name in self.transport.watch.take_disconnected():
                self.liveness.on_disconnect(name)
            for name in self.transport.watch.take_connected():
                # a HELLO now, not at the next beat: the peer learns of us (restarted,
                # back from a stall or a cut link) and resumes streaming at once
                handshake.hello_to(self, name)
            if peer_in:
                self.drain_peers()
            if ctl_in:
                self.drain_control()
            self.device_io.drain()
            if self.primary is not None and not self.watcher.idle:
                # new writes go to the secondaries before this loop runs their local
                # fdatasync: the two syncs overlap instead of adding up
                self.primary.pump()
            self.watcher.sync()
            if self.watcher.error or self.applier.error or self.fatal:
                err = self.watcher.error or self.applier.error or self.fatal
                log.error("node failed: %s", err)
                if self.primary:
                    self.primary.fail_all(f"node failed: {err}")
                self.exit_code = 1
                break
            self.progress()
            self.applier.notify_applied = self.rewinder is not None or self.dcm_rx is not None
            self.events.turn()
            self.metrics.turn()
            if self.ops.finished():
                break
        self.shutdown()
        return self.exit_code

    def on_tick(self) -> None:
        now = time.monotonic()
        for p in self.peers.values():
            self.liveness.check(p, now)
        if self.primary:
            self.primary.check_sync_peers()
            self.primary.send_idle_clears()
            if self.device is not None and self.device.lost:
                self.warn_once("device-lost", "%s", self.device.error)
        self.ops.tick()

    def progress(self) -> None:
        if self.primary is not None:
            self.dcm.flush()
            self.dcm.pump()
            self.primary.retry_stalled()
            self.primary.complete()
            self.primary.update_clear()
            self.primary.pump()
            self.ops.serve_flushes()
            self.verifier.pump()
        else:
            self.secondary.ack()
            self.secondary.after_clear()
            self.summer.pump()
            if self.dcm_rx and self.dcm_rx.progress():
                self.dcm_rx = None
        if self.rewinder:
            self.rewinder.progress()
        self.copier.pump()
        self.verify_answers.pump()
        self.ops.progress()

    # ---- peer messages --------------------------------------------------------------------

    def drain_peers(self) -> None:
        # bounded in time too: a fast block copy keeps the socket busy for as long as it
        # lasts, and the control socket (status, the agent's monitor), the group commit and
        # the ticks must still get their turn
        deadline = time.monotonic() + DRAIN_BUDGET_S
        for _ in range(2000):
            if time.monotonic() > deadline:
                return
            inc = self.transport.recv_peer()
            if inc is None:
                return
            admitted = inbox.admit(self, inc)
            if admitted is None:
                continue
            peer, msg = admitted
            sender = peer.name
            try:
                self.dispatch(peer, msg)
            except Exception as exc:
                # the message was well-formed, so this is a fault in a role: its state may be
                # half changed, and carrying on could hide that (a node "rewinding" for ever,
                # or consistent when it is not). Stop loudly; a restart recovers from disk.
                log.critical(
                    "handling %s from %s failed; stopping this node: %s",
                    msg.header.type.name,
                    sender,
                    exc,
                    exc_info=True,
                )
                self.fatal = f"handling {msg.header.type.name} from {sender} failed: {exc}"
                return

    def dispatch(self, peer: Peer, msg: Message) -> None:
        body, header = msg.body, msg.header
        if isinstance(body, Hello):
            handshake.on_hello(self, peer, header.epoch, body, header.flags)
            return
        if isinstance(body, Reject):
            log.error("peer %s refused this node: %s", peer.name, body.reason)
            return
        if peer.rejected:
            return
        peer.last_seen = time.monotonic()
        if isinstance(body, Update):
            if self.role == Role.SECONDARY:
                self.secondary.on_update(header, body)
        elif isinstance(body, Updates):
            if self.role == Role.SECONDARY:
                self.secondary.on_updates(header, body)
        elif isinstance(body, Ack):
            peer.on_ack(body.durable_end, body.applied_end)
            if self.primary is not None and peer.degraded:
                # caught up: synchronous again now, not at the next tick (writes completing
                # meanwhile would not wait for a connected, up-to-date sync secondary)
                self.primary.check_sync_peers()
            self.ops.pulls.on_ack(peer.name, body.durable_end)
        elif isinstance(body, Clear):
            if self.role == Role.SECONDARY and header.sender == self.following:
                self.applier.clear(body.clear_end)
        elif isinstance(body, Nack):
            if self.primary and peer.streaming and body.expected < peer.next_lsn:
                peer.restart_stream(max(body.expected, peer.acked_end))
            else:
                self.ops.pulls.resend_from(peer.name, body.expected)
        elif isinstance(body, Pull):
            self.events.emit("pull-served", peer=peer.name, first_lsn=body.first, end_lsn=body.end)
            self.ops.pulls.serve(peer.name, body.first, body.end)
        elif isinstance(body, BlockReq):
            ranges = [(int(o), int(n)) for o, n in body.ranges]
            skip = offered_skip(self.offered_sums.pop(peer.name, None), body.tag, ranges)
            if self.primary and peer.name in self.dcm.maps:
                # it fell off our log while away: its rewind rides on the dcm resync, which
                # copies the blocks it asks for with every region it missed
                self.dcm.resync_for_rewind(peer, ranges, body.tag, skip)
            else:
                self.copier.start(peer.name, body.tag, ranges, skip=skip)
        elif isinstance(body, BlockAck):
            self.copier.on_ack(peer.name, body.received)
            if self.primary:
                self.dcm.on_block_ack(peer)
        elif isinstance(body, SumReq):
            self.summer.on_request(peer.name, header.sender, body)
        elif isinstance(body, Sums):
            if not (self.primary and self.dcm.on_sums(peer, body)):
                # offered with a rewinder's request for blocks, which follows it
                self.offered_sums[peer.name] = body
        elif isinstance(body, VerifyReq):
            self.verify_answers.ask(header.sender, body)
        elif isinstance(body, VerifySums):
            if self.primary:
                self.verifier.on_sums(peer.name, body)
        elif isinstance(body, (Block, BlockDone)):
            if self.rewinder and self.rewinder.copying:
                self.rewinder.on_message(peer.name, body)
            elif self.rewinder and self.rewinder.preparing:
                # the rest of a copy cut short, late: the rewind asks for all it owes (taken
                # as a dcm resync, a receive no one finishes: docs/reliability.md, seed 3104)
                self.warn_once(
                    "late-blocks",
                    "blocks of a copy from %s cut short arrive late: dropped (the rewind "
                    "fetches what is owed)",
                    peer.name,
                )
            elif self.role == Role.SECONDARY and header.sender == self.following:
                self.on_dcm_message(peer, body)

    def follow(self, peer: Peer, h: Hello) -> None:
        # records still on their way to the SRL (the primary followed until now sent them
        # this very turn) are part of this log: durable first, so the divergence check
        # below sees them. Left out, a tail of the old primary's line escaped it, and the
        # new one's records at those LSNs were taken for resends of ours and acknowledged
        self.watcher.sync()
        end = self.watcher.durable_end
        d = divergence_point(self.srl.history, h.history, end)
        cut_short = self.dcm_rx is not None and (
            self.dcm_rx.source != peer.name or not self.dcm_rx.done
        )
        # a resync announced by another primary's digests request (answered: this node went
        # inconsistent) whose first block never came: that primary died or was replaced in
        # between, and the one followed now may have nothing to resync here (one that asked
        # goes on with its own copy)
        announced = (
            self.dcm_rx is None
            and self.rewinder is None
            and not self.consistent
            and self.resync_announced_by != peer.name
        )
        if cut_short or announced:
            # a dcm resync was cut short (its source died or restarted, another primary took
            # over, the link): this volume is a mix of its blocks and older data, so every
            # block is owed to the primary followed now -- the digests of what we hold go with
            # the request, so only what is still missing travels
            log.error(
                "dcm resync from %s did not finish; fetching what is still missing from %s",
                self.dcm_rx.source if self.dcm_rx is not None else self.resync_announced_by,
                peer.name,
            )
            self.dcm_rx = None
            owe_whole_volume(self)
        if d < end or self.rewinder is not None:
            if self.rewinder is None:
                self.rewinder = Rewinder(self, peer.name, d, self.rewind_marker)
            self.rewinder.retarget(peer.name, d)
            self.following = peer.name
            self.consistent = False
            self.secondary.acked_sent = (0, 0)
            return
        log.info("following primary %s (epoch %d) from LSN %d", peer.name, peer.epoch, end)
        self.following = peer.name
        self.secondary.acked_sent = (0, 0)
        self.send(peer.name, self.hello())

    def drop_log_from(self, lsn: int) -> None:
        """Cut this node's log back to ``lsn`` (a divergent tail), or make it empty there
        when ``lsn`` is below its start. The applier must be done with what goes."""
        with self.applier.clears_held():
            if lsn >= self.srl.start_lsn:
                self.srl.truncate(lsn)
            else:
                self.srl.reset(lsn)
            self.applier.forget_from(lsn)
        self.watcher.durable_end = lsn
        self.secondary.assigned_end = lsn

    def restart_log_at(self, lsn: int, source: str) -> None:
        """A block copy brought the volume to the primary's state as of ``lsn`` (dcm resync):
        the log restarts empty there, on the primary's line of history."""
        with self.applier.clears_held():
            self.srl.reset(lsn)
            self.applier.restart_at(lsn)
        peer = self.peers.get(source)
        if peer is not None and peer.hello is not None:
            self.srl.set_history(peer.hello.history)
        self.watcher.durable_end = lsn
        self.secondary.assigned_end = lsn

    def copy_ended(self, source: str) -> None:
        """A block copy from ``source`` is on our volume: say so (our end, in a hello), and
        ask again for the records refused while it came in."""
        self.send(source, self.hello())
        self.secondary.copy_ended(source)

    def step_down(self, why: str) -> None:
        log.error("FENCED: stepping down from primary: %s; pending writes fail", why)
        self.device_io.fence()
        if self.primary:
            self.primary.fail_all(f"this node was fenced: {why}")
        self.withdraw_device(f"stepped down: {why}")
        self.become_secondary()

    def withdraw_device(self, why: str) -> None:
        """Take the block device away (fenced first, so nothing new reaches the pipeline).
        Whoever still has it mounted or open gets EIO from now on."""
        self.device_io.fence()
        dev = self.device
        if dev is None or (dev.path is None and dev.kernel_device is None):
            return
        holders = dev.holders()
        if holders:
            log.error(
                "DEVICE %s taken away while in use (%s): %s; its users get I/O errors",
                dev.path,
                why,
                "; ".join(holders),
            )
        dev.withdraw()

    def become_secondary(self) -> None:
        self.verifier.abort(f"{self.me} stopped being the primary")
        self.device_io.fence()
        self.role = Role.SECONDARY
        self.primary = None
        self.following = ""
        self.secondary = Secondary(self)
        for p in self.peers.values():
            p.streaming = False

    def become_primary(self, new_epoch: int) -> None:
        # records taken this turn (from a primary that can still reach us though we no
        # longer reach it) are durable first: the new epoch starts after them, not under
        # them (as in follow)
        self.watcher.sync()
        first = self.watcher.durable_end
        self.srl.add_epoch(new_epoch, first)
        self.known_epoch = new_epoch
        self.role = Role.PRIMARY
        self.following = ""
        self.primary = Primary(self)
        self.dcm = DcmTracker(self)
        for p in self.peers.values():
            p.streaming = False
            p.degraded = False
            p.shipped_records = p.shipped_bytes = 0
            # a peer not heard from yet has at most what was common before this epoch
            p.acked_end = 0
            if (
                p.hello
                and divergence_point(p.hello.history, self.srl.history, p.hello.end_lsn)
                >= p.hello.end_lsn
            ):
                p.acked_end = p.hello.end_lsn
        self.dcm.load(self.primary)
        self.ops.pulls.cancel_all(f"{self.me} is primary now")
        log.warning("PROMOTED to primary: epoch %d starts at LSN %d", new_epoch, first)
        self.beacon()

    # ---- DCM (dirty-region tracking for a secondary that fell off the log) ------------------

    def dcm_release(self, primary: Primary) -> bool:
        return self.dcm.release_laggards(primary)

    def on_dcm_message(self, peer: Peer, body: Block | BlockDone) -> None:
        if self.dcm_rx is None or self.dcm_rx.done:
            self.dcm_rx = DcmReceiver(self, peer.name)
        if isinstance(body, Block):
            self.dcm_rx.on_block(body)
            return
        self.dcm_rx.on_done(body)

    # ---- control socket -------------------------------------------------------------------

    def drain_control(self) -> None:
        for _ in range(2000):
            inc = self.transport.recv_control()
            if inc is None:
                return
            self.ops.handle(inc.identity, inc.frames)

    def shutdown(self) -> None:
        self.device_io.fence()
        if self.primary:
            self.primary.fail_all("daemon stopping")
        self.withdraw_device("daemon stopping")
        self.watcher.stop()
        self.watcher.join(timeout=30)
        self.applier.stop()
        self.ops.join_answering(self.applier, 120, f"the last writes to {self.cfg.local.volume}")
        self.ops.final_replies()
        self.transport.close()
        self.volume.close()
        self.srl.close()
        pid = self.paths.pid
        try:
            if pid.read_text().strip() == str(os.getpid()):
                pid.unlink()
        except FileNotFoundError:
            pass
        log.info("stopped")


__all__ = ["Node"]
