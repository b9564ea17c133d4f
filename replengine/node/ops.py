"""Control-socket operations of the daemon: dispatch, status, promote, demote, down (client
I/O is in node.client_io).

Long operations (promotion pulling records, demotion draining writes, shutdown) are small
state machines advanced by the loop, so the daemon keeps replicating while they run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replengine import config as configmod
from replengine.errors import ReplError
from replengine.failover.promotion import Promotion, PromotionRefused
from replengine.node import adjust
from replengine.node.client_io import ClientIO, Request
from replengine.node.promote import NodePromotionContext
from replengine.node.pulls import PullServer
from replengine.node.rewind import owe_whole_volume, write_marker
from replengine.node.states import Role
from replengine.node.status import status

if TYPE_CHECKING:
    from replengine.node.core import Node

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0
#: how often a stopping daemon reads its control socket while it waits for its threads
STOPPING_POLL_S = 0.02
#: a wait longer than this is logged (a slow or hung volume makes a stop take that long)
STOPPING_TELL_S = 1.0


@dataclass
class Operations(ClientIO):
    node: Node
    flushes: list[tuple[Request, int]] = field(default_factory=list)
    promotion: Promotion | None = None
    promotion_req: Request | None = None
    demotion: Request | None = None
    down: list[Request] = field(default_factory=list)
    down_since: float = 0.0
    pull_source: str = ""
    finished_jobs: list = field(default_factory=list)
    last_promotion: dict | None = None
    pulled_bytes: int = 0

    def __post_init__(self) -> None:
        node = self.node
        self.pulls = PullServer(
            bounds=lambda: (node.srl.start_lsn, node.watcher.durable_end),
            read=node.srl.get,
            send=node.send_pulled,
        )

    # ---- dispatch -------------------------------------------------------------------------

    def _parse(self, client: bytes, frames: list) -> tuple[str, Request, dict] | None:
        """The request's operation, id and document; None (answered) when malformed."""
        try:
            doc = json.loads(frames[0].bytes)
            return doc["op"], Request(client, doc.get("id")), doc
        except (ValueError, KeyError, TypeError, IndexError):
            msg = {"id": None, "ok": False, "error": "malformed control request"}
            self.node.reply(client, msg)
            return None

    def handle(self, client: bytes, frames: list) -> None:
        node = self.node
        parsed = self._parse(client, frames)
        if parsed is None:
            return
        op, req, doc = parsed
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            node.reply_error(client, req.req_id, f"unknown operation {op!r}")
            return
        try:
            handler(req, doc, frames[1].buffer if len(frames) > 1 else None)
        except (KeyError, TypeError, ValueError) as exc:
            node.reply_error(client, req.req_id, f"bad {op} request: {exc}")
        except Exception as exc:  # a bug in one request must not take the node down
            log.exception("control operation %s failed", op)
            node.reply_error(client, req.req_id, f"{op} failed: {exc}")

    def op_status(self, req: Request, doc: dict, data: Any) -> None:
        self.node.reply_ok(req.client, req.req_id, status(self.node))

    def op_events(self, req: Request, doc: dict, data: Any) -> None:
        """`replctl events`: a subscription streamed with this request's id (node.events)."""
        self.node.events.subscribe(req.client, req.req_id, doc)

    def op_down(self, req: Request, doc: dict, data: Any) -> None:
        if not doc.get("force") and self._device_busy(req, "stop"):
            return
        self.request_down(req)

    def _device_busy(self, req: Request, what: str) -> bool:
        """Refuse ``what`` while the device is mounted or open, naming who holds it, as
        umount(8) would; nothing changes."""
        node = self.node
        dev = node.device
        if dev is None or node.primary is None or dev.kernel_device is None:
            return False
        holders = dev.holders()
        if not holders:
            return False
        node.reply_error(
            req.client,
            req.req_id,
            f"cannot {what} {node.cfg.name} on {node.me}: device {dev.path} is in use "
            f"({'; '.join(holders)}); unmount it and close it first"
            + (" (or stop with --force)" if what == "stop" else ""),
        )
        return True

    def request_down(self, req: Request | None = None) -> None:
        if req:
            self.down.append(req)
        if not self.down_since:
            self.down_since = time.monotonic()
            log.info("shutting down: draining writes, applying the log")
            self.node.events.emit("stopping", role=str(self.node.role))
            self.node.device_io.fence()
            if self.node.primary:
                self.node.primary.stop_accepting("stopping")

    def finished(self) -> bool:
        if not self.down_since:
            return False
        node = self.node
        if node.primary and not node.primary.drained():
            if time.monotonic() - self.down_since < DRAIN_TIMEOUT_S:
                return False
            node.primary.fail_all("daemon stopping: write not replicated in time")
        return True

    def join_answering(self, thread: threading.Thread, timeout_s: float, what: str) -> None:
        """Wait for ``thread`` (the applier writing the rest of the log to the volume, the
        SRL's last sync) while still reading the control socket: a request asked meanwhile
        (a status, an application's write) gets "stopping" at once instead of a silence
        that lasts as long as the volume is slow; another `down` is answered with the
        first, once stopped."""
        start = time.monotonic()
        deadline, told = start + timeout_s, False
        while thread.is_alive():
            thread.join(min(STOPPING_POLL_S, max(0.0, deadline - time.monotonic())))
            self.answer_stopping()
            now = time.monotonic()
            if not told and thread.is_alive() and now - start >= STOPPING_TELL_S:
                told = True
                log.info("stopping: still waiting for %s", what)
            if now >= deadline:
                log.error("stopping: gave up waiting for %s after %.0f s", what, timeout_s)
                return

    def answer_stopping(self) -> None:
        node = self.node
        while (inc := node.transport.recv_control()) is not None:
            parsed = self._parse(inc.identity, inc.frames)
            if parsed is None:
                continue
            op, req, _ = parsed
            if op == "down":
                self.down.append(req)
                continue
            node.reply_error(
                req.client,
                req.req_id,
                f"{node.cfg.name} on {node.me} is stopping (the rest of its log is being "
                f"applied to {node.cfg.local.volume}): {op} refused; ask again once it is "
                "down and up again",
            )

    def final_replies(self) -> None:
        self.answer_stopping()
        for req in self.down:
            self.node.reply_ok(
                req.client, req.req_id, {"applied_end": self.node.applier.applied_end}
            )

    # ---- demote ---------------------------------------------------------------------------

    def op_demote(self, req: Request, doc: dict, data: Any) -> None:
        node = self.node
        if node.primary is None:
            node.reply_ok(req.client, req.req_id, {"role": Role.SECONDARY})
            return
        if self._device_busy(req, "demote"):
            return
        node.device_io.fence()
        node.primary.stop_accepting("demoting")
        self.demotion = req

    def progress(self) -> None:
        node = self.node
        if self.demotion and node.primary and node.primary.drained():
            req, self.demotion = self.demotion, None
            node.withdraw_device("demoted")
            node.become_secondary()
            node.beacon()
            log.warning("DEMOTED to secondary at LSN %d", node.watcher.durable_end)
            node.reply_ok(req.client, req.req_id, {"role": Role.SECONDARY})
        self._promotion_progress()
        self.pulls.pump()
        self._reply_jobs()

    # ---- sync --full: copy the whole volume to a secondary -----------------------------------

    def op_sync(self, req: Request, doc: dict, data: Any) -> None:
        """`replctl sync --full NODE` on the primary (drbdadm invalidate-remote): the node's
        volume is rebuilt from this one, block by block, while writes go on; it stays
        inconsistent (no promotion score, promote refuses) until the copy is done."""
        node = self.node
        name = str(doc.get("peer", ""))

        def refuse(why: str) -> None:
            node.reply_error(req.client, req.req_id, f"sync --full {name}: {why}")

        if not doc.get("full"):
            refuse("only a full sync can be asked for (replctl sync --full NODE)")
        elif node.primary is None:
            where = f"; the primary is {node.following}" if node.following else ""
            refuse(f"{node.me} is not the primary of {node.cfg.name}: run it there{where}")
        elif self.promotion is not None:
            refuse("a promotion is running on this node; try again once it is done")
        elif self.down or self.demotion:
            refuse(f"{node.me} is stopping or demoting")
        elif name == node.me:
            refuse(f"{node.me} is the primary: its volume is the source; name a secondary")
        elif name not in node.peers:
            refuse(f"unknown node (nodes of {node.cfg.name}: {', '.join(node.cfg.nodes)})")
        elif name in node.dcm.resyncs:
            job = node.dcm.resyncs[name]
            refuse(f"a block resync to it is running ({job.sent} of {job.dirty_bytes} bytes sent)")
        else:
            peer = node.peers[name]
            owed = node.dcm.full_sync(peer, node.primary)
            started = name in node.dcm.resyncs
            log.warning(
                "FULL SYNC of %s asked for: %d bytes owed, %s",
                name,
                owed,
                "copying now" if started else "copied when it connects",
            )
            node.reply_ok(req.client, req.req_id, {"peer": name, "bytes": owed, "started": started})

    # ---- invalidate: this secondary's volume cannot be trusted ------------------------------

    def op_invalidate(self, req: Request, doc: dict, data: Any) -> None:
        """`replctl invalidate` on a secondary (drbdadm invalidate): its volume was damaged
        or restored behind the log's back. The whole volume is owed, durably, before the
        reply: the node stays inconsistent (no promotion score) and fetches, digests first,
        every chunk that differs from the primary it follows, now or from whichever primary
        it follows next (a failover, a restart). Unlike `sync --full` on the primary, nothing
        is forgotten when that primary is replaced before the copy starts."""
        node = self.node

        def refuse(why: str) -> None:
            node.reply_error(req.client, req.req_id, f"invalidate {node.me}: {why}")

        rx = node.dcm_rx
        if node.primary is not None:
            refuse(
                f"{node.me} is the primary of {node.cfg.name}: its volume is every other "
                f"node's source; demote it and promote a node whose volume is sound first"
            )
        elif self.promotion is not None:
            refuse("a promotion is running on this node")
        elif self.down:
            refuse("the node is stopping; invalidate it once it is down (offline)")
        elif rx is not None and not rx.done and not rx.handed_over:
            refuse(
                f"a block resync from {rx.source} is running; invalidate once it has ended "
                f"(replctl status shows it)"
            )
        else:
            write_marker(node.rewind_marker, [(0, node.volume.size)], node.watcher.durable_end)
            node.summer.cancel()  # a resync announced by the primary: the rewind covers it
            rewinder = owe_whole_volume(node)
            if node.following:
                rewinder.retarget(node.following, node.watcher.durable_end)
            node.consistent = False
            log.warning(
                "INVALIDATED: the whole volume (%d bytes) is owed; inconsistent until %s "
                "has sent every chunk that differs",
                node.volume.size,
                node.following or "the next primary followed",
            )
            node.events.emit("invalidated", bytes=node.volume.size, source=node.following)
            node.reply_ok(
                req.client, req.req_id, {"bytes": node.volume.size, "source": node.following}
            )

    def op_verify(self, req: Request, doc: dict, data: Any) -> None:
        """`replctl verify [NODE...]` on the primary: online, exact (node.verifier); the
        answer comes when every chunk is compared."""
        names = doc.get("nodes") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("nodes must be a list of node names")
        why = self.node.verifier.start(req, names)
        if why:
            self.node.reply_error(req.client, req.req_id, f"verify: {why}")

    def op_adjust(self, req: Request, doc: dict, data: Any) -> None:
        """`replctl adjust`: re-read the config file and apply what changed (node.adjust)."""
        node = self.node
        path = str(doc.get("config") or node.cfg.path)
        try:
            new = configmod.load(path, node=node.me)
            summary = adjust.apply(node, new)
        except ReplError as exc:
            node.reply_error(req.client, req.req_id, str(exc))
            return
        node.reply_ok(req.client, req.req_id, summary)

    # ---- promote: probe peers, pull what we lack, raise the epoch ----------------------------

    def op_promote(self, req: Request, doc: dict, data: Any) -> None:
        node = self.node
        if node.primary is not None:
            result = {"role": Role.PRIMARY, "epoch": node.epoch, "already": True}
            if node.device is not None and node.device.path is None:
                self._expose(req, result)  # an earlier attempt failed: try again
                return
            node.reply_ok(req.client, req.req_id, {**result, **self._device_doc()})
            return
        if self.promotion:
            node.reply_error(req.client, req.req_id, "a promotion is already running")
            return
        min_peers = doc.get("min_peers")
        self.pulled_bytes = 0
        try:
            self.promotion = Promotion(
                NodePromotionContext(node),
                force=bool(doc.get("force", False)),
                min_peers=node.cfg.promote_min_peers if min_peers is None else int(min_peers),
            )
            self.promotion_req = req
        except PromotionRefused as exc:
            log.error("promotion refused: %s", exc)
            node.events.emit("promotion-refused", reason=str(exc))
            node.reply_error(req.client, req.req_id, str(exc))

    def _promotion_progress(self) -> None:
        if self.promotion is None or self.promotion_req is None:
            return
        req = self.promotion_req
        try:
            result = self.promotion.step()
        except PromotionRefused as exc:
            self.node.events.emit("promotion-refused", reason=str(exc), **self.promotion.decision)
            self.promotion = self.promotion_req = None
            log.error("promotion refused: %s", exc)
            self.node.reply_error(req.client, req.req_id, str(exc))
            return
        if result is not None:
            # the answer repeats a field of the decision (made_room): one dict, not two
            fields = {**self.promotion.decision, **result}
            self.node.events.emit("promotion", chosen=self.node.me, **fields)
            self.promotion = self.promotion_req = None
            self.last_promotion = result
            if self.node.device is not None:
                self._expose(req, result)
                return
            self.node.reply_ok(req.client, req.req_id, result)

    def _device_doc(self) -> dict:
        dev = self.node.device
        return {"device": dev.path} if dev is not None else {}

    def _expose(self, req: Request, result: dict) -> None:
        """Open the device's I/O path and expose it; the promote is answered once the device
        is there (or with what stopped it: the node stays primary, the agent's promote fails
        and Pacemaker decides)."""
        node = self.node
        assert node.device is not None
        node.device_io.open()
        resource, me = node.cfg.name, node.me

        def done(path: str | None, error: str | None) -> None:
            if path is not None:
                self.finished_jobs.append((req, {**result, "device": path}))
            else:
                self.finished_jobs.append(
                    (
                        req,
                        {
                            "error": f"{me} is primary of {resource} (epoch {result.get('epoch')})"
                            f" but its device could not be exposed: {error}"
                        },
                    )
                )
            node.transport.wake()

        node.device.expose(done)

    def tick(self) -> None:
        self._promotion_progress()
