"""What one run of the agent knows and can ask: its environment, the resource's config, the
daemon's status, replctl and the cluster's attributes.

Pacemaker starts the agent afresh for every action, so this is rebuilt each time from the
environment; the actions (agent.py) are written on top of it and never read OCF_* variables
or run commands themselves.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from replengine import config as configmod
from replengine.errors import ConfigError
from replengine.pacemaker import clone, process
from replengine.pacemaker import params as paramsmod
from replengine.pacemaker.ocf import OCF_ERR_CONFIGURED, OCFError
from replengine.runtime import RuntimePaths
from replengine.wire.control import ControlClient

log = logging.getLogger("replengine.agent")


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """replctl's one-line reason (stderr, else stdout), without its 'replctl VERB: ' prefix."""
    for text in (proc.stderr, proc.stdout):
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        if lines:
            line = lines[-1]
            if line.startswith("replctl ") and ": " in line:
                line = line.split(": ", 1)[1]
            return line
    return f"exit status {proc.returncode}, no output"


class AgentContext:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.resource = self.env("OCF_RESKEY_resource").strip()
        self.config_param = self.env("OCF_RESKEY_config").strip()
        self.node = os.uname().nodename

    # ---- environment ----------------------------------------------------------------------

    def env(self, name: str, default: str = "") -> str:
        return self.environ.get(name, default)

    def meta(self) -> dict[str, str]:
        """Pacemaker's meta variables (OCF_RESKEY_CRM_meta_*), by their short name."""
        return clone.clone_meta(self.environ)

    def in_cluster(self) -> bool:
        """True when Pacemaker runs us as a promotable clone instance (ocf-tester does not)."""
        return clone.is_promotable_instance(self.meta())

    def action_timeout(self, action: str) -> float:
        """Pacemaker's timeout for this action in seconds, less a margin to report in time."""
        try:
            return max(5.0, int(self.env("OCF_RESKEY_CRM_meta_timeout")) / 1000.0 - 5.0)
        except ValueError:
            return paramsmod.default_timeout(action)

    def is_probe(self) -> bool:
        return self.env("OCF_RESKEY_CRM_meta_interval", "0") in ("", "0")

    # ---- config and parameters ------------------------------------------------------------

    def config_path(self) -> Path:
        """The config file: the 'config' parameter, else /etc/replengine/<resource>.toml."""
        if self.config_param:
            return Path(self.config_param)
        if not self.resource:
            raise ConfigError(
                "parameter resource is required (the replengine resource name) but not set"
            )
        return configmod.default_path(self.resource)

    def load(self, check_local: bool = True) -> configmod.ResourceConfig:
        if not self.resource:
            raise ConfigError(
                "parameter resource is required (the replengine resource name) but not set"
            )
        path = self.config_path()
        cfg = configmod.load(path, check_local=check_local)
        if cfg.name != self.resource:
            raise ConfigError(
                f"{path}: resource name is {cfg.name!r}, the agent's "
                f"'resource' parameter says {self.resource!r}"
            )
        return cfg

    def load_or_fail(self, check_local: bool = True) -> configmod.ResourceConfig:
        try:
            return self.load(check_local=check_local)
        except ConfigError as exc:
            raise OCFError(OCF_ERR_CONFIGURED, str(exc)) from None

    def params(self) -> dict[str, Any]:
        """Every parameter, parsed and checked (the config-independent part)."""
        try:
            return paramsmod.read_parameters(self.environ)
        except ConfigError as exc:
            raise OCFError(OCF_ERR_CONFIGURED, str(exc)) from None

    def min_peers(self, cfg: configmod.ResourceConfig) -> int | None:
        """The min_peers parameter, checked against the config; None: the config's value."""
        value = self.params()["min_peers"]
        peers = len(cfg.peers())
        if value is not None and value > peers:
            raise OCFError(
                OCF_ERR_CONFIGURED,
                f"parameter min_peers={value} is more than the {peers} peer(s) of resource "
                f"{cfg.name} in {cfg.path}: promote could never go ahead; set it to 0-{peers} "
                f"or leave it empty for the config's promote_min_peers ({cfg.promote_min_peers})",
            )
        return value

    def check_clone_meta(self, cfg: configmod.ResourceConfig) -> None:
        """Refuse to run other than as a promotable clone with notify=true (see clone.py)."""
        clone.check_clone_meta(self.meta(), self.env("OCF_RESOURCE_INSTANCE", cfg.name), cfg)

    # ---- the daemon -----------------------------------------------------------------------

    def replctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "replengine.cli",
            args[0],
            "--config",
            str(self.config_path()),
            *args[1:],
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(
                cmd, 124, "", f"replctl {args[0]}: no answer within {timeout:.0f}s"
            )
        out = (proc.stdout + proc.stderr).strip()
        if out:
            log.info("replctl %s: %s", args[0], out)
        return proc

    def marker_path(self, resource: str, node: str) -> Path:
        """'This node is promoted' flag, under HA_RSCTMP: cleared at boot, so a node that
        lost power comes back as stopped (7), not as a failed primary (9)."""
        base = Path(self.env("HA_RSCTMP") or "/run/resource-agents")
        return base / f"replengine-{resource}-{node}.promoted"

    def marker(self, cfg: configmod.ResourceConfig) -> Path:
        path = self.marker_path(cfg.name, cfg.local.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def status(self, cfg: configmod.ResourceConfig) -> dict[str, Any] | None:
        if not cfg.paths().running_pid():
            return None
        ctl = ControlClient(cfg.paths().socket, timeout_s=15)
        try:
            return ctl.call("status", timeout_s=15)[0]
        finally:
            ctl.close()

    def find_daemons(self, paths: list[RuntimePaths], config: Path | None) -> list[psutil.Process]:
        """Our daemon's processes on this node, found without its socket (see process.py)."""
        return process.find_daemons(paths, config, self.node)

    def terminate(self, procs: list[psutil.Process], deadline: float) -> None:
        """Signal our daemon's processes away; OCFError when one survives (see process.py)."""
        process.terminate(procs, deadline, self.resource, self.node)

    # ---- cluster attributes ---------------------------------------------------------------

    def set_score(self, score: int | None) -> None:
        if not self.in_cluster():
            return
        args = ["crm_attribute", "--promotion", "-q"]
        args += ["-D"] if score is None else ["-v", str(score)]
        try:
            subprocess.run(args, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("crm_attribute failed: %s", exc)

    def publish_position(self, st: dict[str, Any]) -> None:
        """Each node's (epoch, end LSN) as a transient node attribute, for operators."""
        if not self.in_cluster():
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
