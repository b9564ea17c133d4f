"""The Prometheus endpoint of one node (`metrics = "host:port"` in its [nodes.NAME] table).

Off by default: without the key nothing is counted and no port is opened.

Two kinds of numbers, kept apart so the HTTP thread never touches the node's state:

- *Counters and the latency histogram* are prometheus_client objects (thread-safe), bumped
  by the loop where a write is logged and where it completes, and by promotion events.
- *Gauges* (role, epoch, SRL fill, per-peer lag and state, resync progress) come from a
  snapshot the loop builds from ``node.status.status(node)`` at most once a second and hands
  over by replacing one reference; a scrape reads whichever snapshot is current.

Lag in seconds needs the time of the oldest write a peer has not acknowledged. Remembering
every write's time would cost memory per write; instead the completion times are sampled
(one every SAMPLE_S at most) and, past MAX_SAMPLES, every other sample is dropped, so the
resolution coarsens for old writes and the memory stays a few KiB. The answer is the age of
the first sample at or after the peer's acknowledged end: a lower bound, off by at most the
spacing of the samples there.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import TYPE_CHECKING, Any

from replengine.errors import ConfigError
from replengine.node.states import PeerState, Role

if TYPE_CHECKING:
    from replengine.node.core import Node

log = logging.getLogger("replengined")

REFRESH_S = 1.0
SAMPLE_S = 0.01
MAX_SAMPLES = 4096
#: write latency buckets (seconds): a sync write on a LAN is a few ms, a stalled one seconds
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
PEER_STATES = [str(s) for s in PeerState]
ROLES = [str(r) for r in Role]


class Metrics:
    """Counters, write times and the gauge snapshot of one node; ``enabled`` False makes
    every hook return at once."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.address: str | None = getattr(node.cfg.local, "metrics", None)
        self.enabled = self.address is not None
        self.snapshot: dict | None = None
        self._next_refresh = 0.0
        self._lsns: list[int] = []
        self._times: list[float] = []
        if not self.enabled:
            return
        # imported only when on: it is a fifth of the daemon's start-up imports, and every
        # start counts (a secondary rejoining is consistent once its daemon is up)
        from prometheus_client import CollectorRegistry, Counter, Histogram

        labels = {"resource": node.cfg.name, "node": node.me}
        self.labels = labels
        reg = self.registry = CollectorRegistry(auto_describe=True)
        names = list(labels)
        self.writes = Counter(
            "replengine_writes", "Writes logged by this node as primary", names, registry=reg
        ).labels(**labels)
        self.write_bytes = Counter(
            "replengine_write_bytes", "Bytes of writes logged as primary", names, registry=reg
        ).labels(**labels)
        self.latency = Histogram(
            "replengine_write_latency_seconds",
            "Time from a write's arrival to its completion (durable where the policy says)",
            names,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ).labels(**labels)
        self.promotions = Counter(
            "replengine_promotions", "Promotions of this node to primary", names, registry=reg
        ).labels(**labels)
        self.logdiff = Counter(
            "replengine_logdiff_records",
            "Records moved by log-diff sync in promotions: pulled by this node, or served "
            "by it to a promoting peer",
            names + ["direction"],
            registry=reg,
        )
        for d in ("pulled", "served"):
            self.logdiff.labels(**labels, direction=d)
        reg.register(_SnapshotCollector(self))
        node.events.listeners.append(self.on_event)

    # ---- the loop's hooks -----------------------------------------------------------------

    def note_append(self, nbytes: int) -> None:
        """A write was logged (primary): counted here, its latency at completion."""
        if self.enabled:
            self.writes.inc()
            self.write_bytes.inc(nbytes)

    def note_write(self, lsn: int, t0: float, now: float) -> None:
        """A write completed: its latency, and (sampled) when it arrived, for lag seconds."""
        if not self.enabled:
            return
        self.latency.observe(now - t0)
        if not self._times or t0 - self._times[-1] >= SAMPLE_S:
            self._lsns.append(lsn)
            self._times.append(t0)
            if len(self._lsns) > MAX_SAMPLES:
                self._lsns, self._times = self._lsns[1::2], self._times[1::2]

    def note_served(self, records: int) -> None:
        if self.enabled and records:
            self.logdiff.labels(**self.labels, direction="served").inc(records)

    def on_event(self, ev: dict) -> None:
        if ev["kind"] == "promotion" and ev.get("chosen") == self.node.me:
            self.promotions.inc()
            pulled = int(ev.get("pulled_records") or 0)
            if pulled:
                self.logdiff.labels(**self.labels, direction="pulled").inc(pulled)

    def turn(self) -> None:
        """Called every loop turn: a fresh gauge snapshot at most once a second."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_S
        try:
            self.snapshot = self._build(now)  # one reference replaced: atomic for readers
        except Exception:  # a fault here must cost the metrics, not the node
            log.exception("metrics snapshot failed")

    def lag_seconds(self, acked_end: int, now: float) -> float | None:
        """Age of the oldest write a peer has not acknowledged (primary only)."""
        primary = self.node.primary
        if primary is None:
            return None
        if acked_end >= primary.assigned_end:
            return 0.0
        i = bisect.bisect_left(self._lsns, acked_end)
        if i < len(self._lsns):
            return max(0.0, now - self._times[i])
        if primary.pending:
            return max(0.0, now - primary.pending[0].t0)
        return 0.0

    def _build(self, now: float) -> dict:
        from replengine.node.status import status

        node = self.node
        st = status(node)
        for name, p in (st.get("peers") or {}).items():
            if p.get("lag_seconds") is not None:
                continue  # status measures it itself (its own write clock)
            peer = node.peers.get(name)
            p["lag_seconds"] = (
                self.lag_seconds(peer.acked_end, now)
                if peer is not None and node.primary is not None
                else None
            )
        return st

    # ---- the HTTP side --------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the configured address; a port in use is a ConfigError naming the key."""
        if not self.enabled or self.address is None:
            return
        from prometheus_client import start_http_server

        host, _, port = self.address.rpartition(":")
        host = host.strip("[]")
        cfg = self.node.cfg
        try:
            start_http_server(int(port), addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"{cfg.path}: key 'nodes.{cfg.local.name}.metrics': cannot listen on "
                f"{self.address}: {exc.strerror or exc}; choose a free port"
            ) from exc
        log.info("metrics on http://%s/metrics", self.address)


class _SnapshotCollector:
    """Gauges from the latest snapshot; runs in the HTTP thread and reads only that."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.m.snapshot
        if st is None:
            return
        base = self.m.labels
        ln, lv = list(base), list(base.values())

        def gauge(name: str, doc: str, value: Any, extra: dict | None = None) -> Any:
            g = GaugeMetricFamily(name, doc, labels=ln + list(extra or {}))
            if value is not None:
                g.add_metric(lv + [str(v) for v in (extra or {}).values()], float(value))
            return g

        role = GaugeMetricFamily(
            "replengine_role", "1 for the node's current role", labels=ln + ["role"]
        )
        for r in ROLES:
            role.add_metric(lv + [r], 1.0 if st.get("role") == r else 0.0)
        yield role
        yield gauge(
            "replengine_epoch", "Epoch this node knows (raised by every promotion)", st.get("epoch")
        )
        yield gauge("replengine_end_lsn", "Next LSN this node's log will hold", st.get("end_lsn"))
        srl = st.get("srl") or {}
        yield gauge("replengine_srl_used_bytes", "Bytes of the SRL in use", srl.get("used_bytes"))
        yield gauge(
            "replengine_srl_capacity_bytes", "Bytes of the SRL's record area", srl.get("capacity")
        )
        pl = ln + ["peer"]
        fam = {
            "connected": GaugeMetricFamily(
                "replengine_peer_connected", "1 while the peer's beacons arrive", labels=pl
            ),
            "mode": GaugeMetricFamily(
                "replengine_peer_mode",
                "1 for how a primary on this node replicates to the peer (sync or async)",
                labels=pl + ["mode"],
            ),
            "degraded": GaugeMetricFamily(
                "replengine_peer_degraded",
                "1 while a sync peer is treated as async (lost or catching up: on_sync_loss)",
                labels=pl,
            ),
            "state": GaugeMetricFamily(
                "replengine_peer_state",
                "1 for the peer's current replication state as this node sees it",
                labels=pl + ["state"],
            ),
            "lag_records": GaugeMetricFamily(
                "replengine_peer_lag_records", "Records the peer has not acknowledged", labels=pl
            ),
            "lag_bytes": GaugeMetricFamily(
                "replengine_peer_lag_bytes", "SRL bytes the peer has not acknowledged", labels=pl
            ),
            "lag_seconds": GaugeMetricFamily(
                "replengine_peer_lag_seconds",
                "Age of the oldest write the peer has not acknowledged (primary only)",
                labels=pl,
            ),
            "resync_done": GaugeMetricFamily(
                "replengine_resync_done_bytes",
                "Bytes of a running full sync / dcm resync done (copied or found there)",
                labels=pl,
            ),
            "resync_size": GaugeMetricFamily(
                "replengine_resync_size_bytes", "Bytes a running resync owes", labels=pl
            ),
        }
        shipped = CounterMetricFamily(
            "replengine_peer_shipped_records",
            "Records sent to the peer since this node became primary (live and catch-up)",
            labels=pl,
        )
        for name, p in sorted((st.get("peers") or {}).items()):
            v = lv + [name]
            fam["connected"].add_metric(v, 1.0 if p.get("connected") else 0.0)
            for mode in ("sync", "async"):
                fam["mode"].add_metric(v + [mode], 1.0 if p.get("mode") == mode else 0.0)
            fam["degraded"].add_metric(v, 1.0 if p.get("degraded") else 0.0)
            for s in PEER_STATES:
                fam["state"].add_metric(v + [s], 1.0 if p.get("state") == s else 0.0)
            for key in ("lag_records", "lag_bytes", "lag_seconds"):
                if p.get(key) is not None:
                    fam[key].add_metric(v, float(p[key]))
            rs = p.get("resync")
            if rs:
                fam["resync_done"].add_metric(v, float(rs.get("bytes_done", 0)))
                fam["resync_size"].add_metric(v, float(rs.get("bytes_total", 0)))
            if st.get("role") == "primary":
                shipped.add_metric(v, float(p.get("shipped_records") or 0))
        yield from fam.values()
        yield shipped


__all__ = ["Metrics"]
