"""The OCF resource agent's logic (ocf:replengine:replengine), thin over the package.

Pacemaker runs it as a promotable clone with notify=true. Following the OCF 1.1 rules:
`stop` always cleans up and never fails on a bad config (a failed stop gets the node fenced);
a probe never needs the daemon; `notify` always returns 0. Promotion scores follow how up to
date each secondary is relative to its peers (crm_attribute --promotion), are withheld while
the node's data must not be promoted (inconsistent during a rewind or dcm resync), removed on
stop and restored by the next monitor/probe. Promote itself re-checks with live peers and pulls
what it lacks, so a stale score can cost a few records of transfer, never data.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from replengine import config as configmod
from replengine.errors import ConfigError, ReplError
from replengine.runtime import wait_gone
from replengine.wire.control import ControlClient

OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_ARGS = 2
OCF_ERR_UNIMPLEMENTED = 3
OCF_ERR_PERM = 4
OCF_ERR_INSTALLED = 5
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7
OCF_RUNNING_PROMOTED = 8
OCF_FAILED_PROMOTED = 9

SCORE_BEST = 1000
SCORE_FLOOR = 5

log = logging.getLogger("replengine.agent")

META_DATA = """<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="replengine" version="0.1.0">
<version>1.1</version>
<longdesc lang="en">
Manages one replengine resource (a block volume replicated from one primary to several sync
and async secondaries, each node keeping a storage replication log) as a promotable clone.
Start brings the node's replengined up as a secondary that follows the current primary; promote
makes it primary after pulling any records it lacks from the most up-to-date peer (log-diff
failover: only the missing records move, never the whole volume); demote drains in-flight
writes. Promotion scores follow each node's end LSN relative to its peers, so Pacemaker
promotes the most up-to-date secondary. Create it with
pcs resource create r0 ocf:replengine:replengine resource=r0 promotable notify=true
</longdesc>
<shortdesc lang="en">Block-volume replication with log-diff fast failover</shortdesc>
<parameters>
<parameter name="resource" unique="1" required="1">
<longdesc lang="en">Name of the replengine resource, as in [resource] name of its config.</longdesc>
<shortdesc lang="en">resource name</shortdesc>
<content type="string"/>
</parameter>
<parameter name="config" unique="1" required="0">
<longdesc lang="en">Path of the resource's config file (the same file on every node).
Default: /etc/replengine/RESOURCE.toml.</longdesc>
<shortdesc lang="en">config file</shortdesc>
<content type="string" default=""/>
</parameter>
<parameter name="min_peers" unique="0" required="0">
<longdesc lang="en">Peers that must be reachable for promote to proceed. Empty: the config's
promote_min_peers (a majority of the other nodes by default). 0 lets a lone survivor promote.
</longdesc>
<shortdesc lang="en">minimum reachable peers to promote</shortdesc>
<content type="string" default=""/>
</parameter>
<parameter name="auto_init" unique="0" required="0">
<longdesc lang="en">Initialise this node's SRL on start when it has no replengine superblock
yet (an initialised SRL is never touched).</longdesc>
<shortdesc lang="en">initialise a blank SRL on start</shortdesc>
<content type="boolean" default="true"/>
</parameter>
</parameters>
<actions>
<action name="start" timeout="120s"/>
<action name="stop" timeout="120s"/>
<action name="promote" timeout="300s"/>
<action name="demote" timeout="120s"/>
<action name="notify" timeout="60s"/>
<action name="monitor" depth="0" timeout="30s" interval="10s" role="Promoted"/>
<action name="monitor" depth="0" timeout="30s" interval="11s" role="Unpromoted"/>
<action name="validate-all" timeout="30s"/>
<action name="meta-data" timeout="5s"/>
</actions>
</resource-agent>
"""


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def in_cluster() -> bool:
    """True when Pacemaker runs us as a clone instance (ocf-tester does not)."""
    return any(
        k in os.environ
        for k in ("OCF_RESKEY_CRM_meta_promoted_max", "OCF_RESKEY_CRM_meta_master_max")
    )


def action_timeout(default: float) -> float:
    """Pacemaker's timeout for this action in seconds, less a margin to report in time."""
    try:
        return max(5.0, int(env("OCF_RESKEY_CRM_meta_timeout")) / 1000.0 - 5.0)
    except ValueError:
        return default


class Agent:
    def __init__(self) -> None:
        self.resource = env("OCF_RESKEY_resource")
        self.config_path = Path(
            env("OCF_RESKEY_config")
            or (configmod.default_path(self.resource) if self.resource else "")
        )
        self.min_peers = env("OCF_RESKEY_min_peers")
        self.auto_init = env("OCF_RESKEY_auto_init", "true").lower() in ("1", "true", "yes", "on")

    # ---- helpers --------------------------------------------------------------------------

    def load(self, check_local: bool = True) -> configmod.ResourceConfig:
        if not self.resource:
            raise ConfigError("parameter 'resource' is required")
        cfg = configmod.load(self.config_path, check_local=check_local)
        if cfg.name != self.resource:
            raise ConfigError(
                f"{self.config_path}: resource name is {cfg.name!r}, the agent's "
                f"'resource' parameter says {self.resource!r}"
            )
        return cfg

    def replctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "-m",
            "replengine.cli",
            args[0],
            "--config",
            str(self.config_path),
            *args[1:],
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out = (proc.stdout + proc.stderr).strip()
        if out:
            log.info("replctl %s: %s", args[0], out)
        return proc

    def marker(self, cfg: configmod.ResourceConfig) -> Path:
        """'This node is promoted' flag, under HA_RSCTMP: cleared at boot, so a node that
        lost power comes back as stopped (7), not as a failed primary (9)."""
        base = Path(env("HA_RSCTMP") or "/run/resource-agents")
        base.mkdir(parents=True, exist_ok=True)
        return base / f"replengine-{cfg.name}-{cfg.local.name}.promoted"

    def status(self, cfg: configmod.ResourceConfig) -> dict | None:
        if not cfg.paths().running_pid():
            return None
        ctl = ControlClient(cfg.paths().socket, timeout_s=15)
        try:
            return ctl.call("status", timeout_s=15)[0]
        finally:
            ctl.close()

    def set_score(self, score: int | None) -> None:
        if not in_cluster():
            return
        args = ["crm_attribute", "--promotion", "-q"]
        args += ["-D"] if score is None else ["-v", str(score)]
        try:
            subprocess.run(args, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("crm_attribute failed: %s", exc)

    def score_from(self, st: dict) -> int | None:
        """How much Pacemaker should prefer promoting this node; None: never."""
        if st["role"] == "primary":
            return SCORE_BEST
        if not st["consistent"] or st.get("rewinding"):
            return None
        ends = [p.get("end_lsn") or 0 for p in st["peers"].values() if p["connected"]]
        mine = st["end_lsn"]
        lag = max([0] + [e - mine for e in ends])
        if lag <= 0:
            return SCORE_BEST
        return max(SCORE_FLOOR, SCORE_BEST - 10 - min(lag, SCORE_BEST))

    # ---- actions --------------------------------------------------------------------------

    def meta_data(self) -> int:
        sys.stdout.write(META_DATA)
        return OCF_SUCCESS

    def validate_all(self) -> int:
        try:
            self.load(check_local=True)
        except ConfigError as exc:
            log.error("%s", exc)
            return OCF_ERR_CONFIGURED
        except ReplError as exc:
            log.error("%s", exc)
            return OCF_ERR_GENERIC
        return OCF_SUCCESS

    def start(self) -> int:
        try:
            cfg = self.load(check_local=True)
        except ConfigError as exc:
            log.error("%s", exc)
            return OCF_ERR_CONFIGURED
        from replengine.log.srl import SRL

        if not SRL.is_initialised(cfg.local.srl):
            if not self.auto_init:
                log.error(
                    "SRL %s is not initialised: run 'replctl init --config %s'",
                    cfg.local.srl,
                    self.config_path,
                )
                return OCF_ERR_CONFIGURED
            proc = self.replctl("init")
            if proc.returncode != 0:
                return OCF_ERR_GENERIC
        proc = self.replctl("up", timeout=action_timeout(120))
        if proc.returncode != 0:
            return OCF_ERR_GENERIC
        st = self.status(cfg)
        if st is None:
            return OCF_ERR_GENERIC
        self.set_score(self.score_from(st))
        return OCF_SUCCESS

    def stop(self) -> int:
        """Never fails on a bad config: find the daemon by its pid file and make it go."""
        self.set_score(None)
        try:
            cfg = self.load(check_local=False)
        except ConfigError as exc:
            log.warning("stop with a broken config (%s): nothing of ours can be running", exc)
            return OCF_SUCCESS
        self.marker(cfg).unlink(missing_ok=True)
        pid = cfg.paths().running_pid()
        if pid is None:
            return OCF_SUCCESS
        proc = self.replctl(
            "down", "--timeout", str(int(action_timeout(120) * 0.7)), timeout=action_timeout(120)
        )
        if proc.returncode == 0:
            return OCF_SUCCESS
        log.error("clean stop failed; killing replengined pid %d", pid)
        try:
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 30)
        except ProcessLookupError:
            pass
        except ReplError:
            return OCF_ERR_GENERIC
        return OCF_SUCCESS

    def monitor(self) -> int:
        try:
            cfg = self.load(check_local=False)
        except ConfigError as exc:
            log.error("%s", exc)
            return (
                OCF_ERR_CONFIGURED
                if env("OCF_RESKEY_CRM_meta_interval", "0") != "0"
                else OCF_NOT_RUNNING
            )
        marker = self.marker(cfg)
        try:
            st = self.status(cfg)
        except ReplError as exc:
            log.error("daemon not answering: %s", exc)
            return OCF_FAILED_PROMOTED if marker.exists() else OCF_ERR_GENERIC
        if st is None:
            return OCF_FAILED_PROMOTED if marker.exists() else OCF_NOT_RUNNING
        self.set_score(self.score_from(st))
        return OCF_RUNNING_PROMOTED if st["role"] == "primary" else OCF_SUCCESS

    def promote(self) -> int:
        try:
            cfg = self.load(check_local=False)
        except ConfigError as exc:
            log.error("%s", exc)
            return OCF_ERR_CONFIGURED
        args = ["promote", "--timeout", str(int(action_timeout(300)))]
        if self.min_peers:
            args += ["--min-peers", self.min_peers]
        proc = self.replctl(*args, timeout=action_timeout(300) + 2)
        if proc.returncode != 0:
            # refused (cannot see enough peers, or could not pull what it lacks): fail so
            # that Pacemaker picks another node rather than promote one that would lose data
            return OCF_ERR_GENERIC
        self.marker(cfg).touch()
        self.set_score(SCORE_BEST)
        return OCF_SUCCESS

    def demote(self) -> int:
        try:
            cfg = self.load(check_local=False)
        except ConfigError as exc:
            log.error("%s", exc)
            return OCF_ERR_CONFIGURED

        if not cfg.paths().running_pid():
            self.marker(cfg).unlink(missing_ok=True)
            return OCF_SUCCESS
        proc = self.replctl(
            "demote", "--timeout", str(int(action_timeout(120))), timeout=action_timeout(120) + 2
        )
        if proc.returncode != 0:
            return OCF_ERR_GENERIC
        self.marker(cfg).unlink(missing_ok=True)
        return OCF_SUCCESS

    def notify(self) -> int:
        """Always 0. pre-promote: refresh our score so it reflects our end LSN now;
        post-promote: nothing to do — secondaries follow the new primary's beacon."""
        kind = env("OCF_RESKEY_CRM_meta_notify_type")
        op = env("OCF_RESKEY_CRM_meta_notify_operation")
        promoting = env("OCF_RESKEY_CRM_meta_notify_promote_uname").split()
        log.info("notify %s-%s (promote: %s)", kind, op, promoting)
        try:
            cfg = self.load(check_local=False)
            st = self.status(cfg)
            if st is not None:
                if kind == "pre" and op == "promote":
                    log.info(
                        "pre-promote: this node at epoch %d, end LSN %d", st["epoch"], st["end_lsn"]
                    )
                    self.publish_position(st)
                self.set_score(self.score_from(st))
        except (ReplError, OSError) as exc:
            log.warning("notify: %s", exc)
        return OCF_SUCCESS

    def publish_position(self, st: dict) -> None:
        """Each node's (epoch, end LSN) as a transient node attribute, for operators."""
        if not in_cluster():
            return
        subprocess.run(
            [
                "crm_attribute",
                "-t",
                "status",
                "-l",
                "reboot",
                "-n",
                f"replengine-{self.resource}-position",
                "-v",
                f"{st['epoch']}:{st['end_lsn']}",
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    action = argv[0] if argv else ""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"replengine({env('OCF_RESOURCE_INSTANCE', '-')})[%(process)d]: "
        "%(levelname)s: %(message)s",
    )
    agent = Agent()
    actions = {
        "meta-data": agent.meta_data,
        "validate-all": agent.validate_all,
        "start": agent.start,
        "stop": agent.stop,
        "monitor": agent.monitor,
        "promote": agent.promote,
        "demote": agent.demote,
        "notify": agent.notify,
    }
    if action in ("usage", "help"):
        print(f"usage: {Path(sys.argv[0]).name} {{{'|'.join(actions)}}}")
        return OCF_SUCCESS
    fn = actions.get(action)
    if fn is None:
        print(f"usage: {Path(sys.argv[0]).name} {{{'|'.join(actions)}}}", file=sys.stderr)
        return OCF_ERR_UNIMPLEMENTED
    t0 = time.monotonic()
    try:
        rc = fn()
    except Exception as exc:  # an agent must answer with an OCF code, never a traceback
        log.exception("%s failed: %s", action, exc)
        # notify must not fail; a stop that could not make sure must fail (so the node is
        # fenced) rather than claim the daemon is gone
        rc = OCF_SUCCESS if action in ("notify", "meta-data") else OCF_ERR_GENERIC
    if action not in ("meta-data", "monitor"):
        log.info("%s -> %d (%.2fs)", action, rc, time.monotonic() - t0)
    return rc
