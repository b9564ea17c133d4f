"""The Prometheus endpoint of real daemons, scraped over HTTP; promtool checks the exposition
and the example alert rules; the example dashboard queries only metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import THREE_NODES

from replengine.demo.localcluster import LocalResource, free_ports

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs/monitoring/grafana-replengine.json"
ALERTS = ROOT / "docs/monitoring/replengine-alerts.yml"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def with_metrics(r: LocalResource) -> dict[str, str]:
    """Give every node of ``r`` a metrics endpoint (a `metrics` key in its table)."""
    ports = dict(zip(r.nodes, free_ports(len(r.nodes)), strict=True))
    text = r.config.read_text()
    for name, port in ports.items():
        text = text.replace(
            f"[nodes.{name}]\n", f'[nodes.{name}]\nmetrics = "127.0.0.1:{port}"\n', 1
        )
    r.config.write_text(text)
    return {n: f"http://127.0.0.1:{p}/metrics" for n, p in ports.items()}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(s: dict, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, ls), v in s.items() if n == name and want <= ls]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool missing (Debian's prometheus: scripts/install-cluster-deps.sh)")
    return path


def test_live_scrape(resource: Callable[..., LocalResource]) -> None:
    """alpha primary of alpha/beta/gamma: every metric with its labels; the write counters
    and the latency histogram grow with writes; a SIGSTOPped secondary shows lag in records,
    bytes and seconds and its state leaves up-to-date; promtool finds nothing to say."""
    r = resource(THREE_NODES)
    urls = with_metrics(r)
    r.up()
    r.promote("alpha")
    r.wait_synced()
    lab = {"resource": "r0", "node": "alpha"}

    def fresh(pred: Callable[[dict], bool], what: str) -> dict:
        def once() -> dict | None:
            s = samples(scrape(urls["alpha"]))
            return s if pred(s) else None

        return r.wait_for(once, 20, what)

    def settled(s: dict) -> bool:
        # the gauges are a snapshot taken at most once a second: wait for one taken after
        # the first promotion's full syncs ended, not one from the middle of them
        return value(s, "replengine_role", role="primary", **lab) == 1.0 and all(
            value(s, "replengine_peer_state", state="up-to-date", **lab, peer=p) == 1.0
            and value(s, "replengine_peer_degraded", **lab, peer=p) == 0.0
            for p in ("beta", "gamma")
        )

    s0 = fresh(settled, "a snapshot with alpha primary and both peers up-to-date, synchronous")
    assert value(s0, "replengine_epoch", **lab) == 1.0
    assert value(s0, "replengine_promotions_total", **lab) == 1.0
    assert value(s0, "replengine_srl_capacity_bytes", **lab) > 0
    for peer in ("beta", "gamma"):
        pl = {**lab, "peer": peer}
        assert value(s0, "replengine_peer_connected", **pl) == 1.0
        assert value(s0, "replengine_peer_mode", mode="sync", **pl) == 1.0
        assert value(s0, "replengine_peer_mode", mode="async", **pl) == 0.0
        assert value(s0, "replengine_peer_degraded", **pl) == 0.0
        assert value(s0, "replengine_peer_state", state="up-to-date", **pl) == 1.0
        assert value(s0, "replengine_peer_state", state="disconnected", **pl) == 0.0
        assert value(s0, "replengine_peer_lag_records", **pl) == 0.0
    writes0 = value(s0, "replengine_writes_total", **lab) or 0.0
    vol = r.connect("alpha")
    try:
        for i in range(30):
            vol.write(i * 8192, bytes([i]) * 8192)
        s1 = fresh(
            lambda s: value(s, "replengine_writes_total", **lab) == writes0 + 30, "30 writes"
        )
        assert value(s1, "replengine_write_bytes_total", **lab) >= 30 * 8192
        assert value(s1, "replengine_write_latency_seconds_count", **lab) >= 30
        assert value(s1, "replengine_write_latency_seconds_bucket", le="+Inf", **lab) >= 30
        # the other nodes serve their own endpoints: secondaries, same resource
        sb = samples(scrape(urls["beta"]))
        assert value(sb, "replengine_role", resource="r0", node="beta", role="secondary") == 1
        r.freeze("gamma")
        try:
            for i in range(30):
                vol.write(i * 8192, b"z" * 8192)  # completes: gamma is degraded
            gl = {**lab, "peer": "gamma"}
            s2 = fresh(
                lambda s: (
                    (value(s, "replengine_peer_lag_records", **gl) or 0) >= 30
                    and (value(s, "replengine_peer_lag_seconds", **gl) or 0) > 0.5
                    and value(s, "replengine_peer_state", state="up-to-date", **gl) == 0.0
                ),
                "gamma's lag",
            )
            assert value(s2, "replengine_peer_lag_bytes", **gl) >= 30 * 8192
            assert value(s2, "replengine_peer_lag_records", **lab, peer="beta") == 0.0
            assert value(s2, "replengine_peer_degraded", **gl) == 1.0  # on_sync_loss=degrade
            text = scrape(urls["alpha"])
            check = subprocess.run(
                [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
            )
            assert check.returncode == 0 and not check.stdout.strip(), check.stdout
            assert not check.stderr.strip(), check.stderr
            check = subprocess.run(  # a secondary's exposition too
                [promtool(), "check", "metrics"],
                input=scrape(urls["beta"]),
                capture_output=True,
                text=True,
            )
            assert check.returncode == 0 and not check.stdout.strip(), check.stdout
        finally:
            r.signal("gamma", signal.SIGCONT)
        r.wait_for(
            lambda: value(samples(scrape(urls["alpha"])), "replengine_peer_lag_records", **gl) == 0,
            30,
            "gamma caught up",
        )
    finally:
        vol.close()
    # the dashboard asks only for what a primary's scrape has
    text = scrape(urls["alpha"])
    # a family without samples now (no resync running) still says its # TYPE
    names = {n for n, _ in samples(text)} | set(re.findall(r"^# TYPE (\S+)", text, re.M))
    for expr in dashboard_exprs():
        for used in re.findall(r"\breplengine_[a-z_]+", expr):
            assert used in names, f"the dashboard queries {used}, which no daemon exports"
    for used in re.findall(r"\breplengine_[a-z_]+", ALERTS.read_text()):
        assert used in names, f"the alert rules use {used}, which no daemon exports"


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert exprs and doc["title"] and doc["uid"], "dashboard without queries, title or uid"
    return exprs


def test_alert_rules_pass_promtool() -> None:
    """`promtool check rules` on the shipped rules, and `promtool test rules` on series shaped
    like a live scrape: a lost sync secondary, a lost async one, a filling SRL, no primary."""
    check = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout, check.stdout
    unit = subprocess.run(
        [promtool(), "test", "rules", str(ROOT / "tests/monitoring/alerts_test.yml")],
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_metrics_off_by_default(resource: Callable[..., LocalResource]) -> None:
    """Without the key nothing listens: the daemon opens only its peer port."""
    r = resource(THREE_NODES)
    r.up("alpha")
    assert "metrics on http" not in r.log("alpha")


def test_port_in_use_is_refused_naming_the_key(resource: Callable[..., LocalResource]) -> None:
    r = resource(THREE_NODES)
    urls = with_metrics(r)
    port = int(urls["alpha"].rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        proc = r.replctl("alpha", "up", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "key 'nodes.alpha.metrics'" in err and f"127.0.0.1:{port}" in err, err
    assert "in use" in err, err
    assert len(err.splitlines()) == 1, err
