"""The OCF resource agent's logic (ocf:replengine:replengine), thin over the package.

Pacemaker runs it as a promotable clone with notify=true (start and validate-all refuse other
setups when Pacemaker's meta variables say so; a run by hand, without them, is not checked).
Following the OCF 1.1 rules: `stop` always cleans up and never fails on a bad config (a failed
stop gets the node fenced) but still finds and stops a daemon it started; a probe never needs
the daemon; `notify` always returns 0. Every failure prints an exit reason
(``ocf-exit-reason:<text>`` on stderr, shown by crm_mon). Promotion scores come from
replengine.pacemaker.scores, are removed on stop and restored by the next monitor/probe.
Promote itself re-checks with live peers and pulls what it lacks, so a stale score can cost a
few records of transfer, never data.

Parameters and actions are declared once, in replengine.pacemaker.params. This module holds
the actions and the entry point; what they stand on is split by concern: ocf.py (exit codes
and exit reasons), context.py (environment, config, replctl, cluster attributes), clone.py
(Pacemaker's clone meta variables), process.py (finding and stopping the daemon by signal).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from replengine import config as configmod
from replengine.errors import ConfigError, ReplError
from replengine.pacemaker import params as paramsmod
from replengine.pacemaker.clone import MANUAL_META
from replengine.pacemaker.context import AgentContext, _last_line
from replengine.pacemaker.ocf import (
    EXIT_REASON_PREFIX,
    OCF_ERR_ARGS,
    OCF_ERR_CONFIGURED,
    OCF_ERR_GENERIC,
    OCF_ERR_INSTALLED,
    OCF_ERR_PERM,
    OCF_ERR_UNIMPLEMENTED,
    OCF_FAILED_PROMOTED,
    OCF_NOT_RUNNING,
    OCF_RUNNING_PROMOTED,
    OCF_SUCCESS,
    OCFError,
    exit_reason,
)
from replengine.pacemaker.scores import SCORE_BEST, promotion_score
from replengine.runtime import RuntimePaths

__all__ = [
    "EXIT_REASON_PREFIX",
    "MANUAL_META",
    "OCF_ERR_ARGS",
    "OCF_ERR_CONFIGURED",
    "OCF_ERR_GENERIC",
    "OCF_ERR_INSTALLED",
    "OCF_ERR_PERM",
    "OCF_ERR_UNIMPLEMENTED",
    "OCF_FAILED_PROMOTED",
    "OCF_NOT_RUNNING",
    "OCF_RUNNING_PROMOTED",
    "OCF_SUCCESS",
    "Agent",
    "OCFError",
    "exit_reason",
    "main",
]

log = logging.getLogger("replengine.agent")


class Agent(AgentContext):
    """The OCF actions, one method each, named after the action ('-' becomes '_')."""

    # ---- stop's fallback ------------------------------------------------------------------

    def stop_without_config(self, problem: str, deadline: float) -> int:
        """Stop with a config we cannot use: look for our daemon by the default run dir and by
        the config path it was started with, and make it go."""
        paths: list[RuntimePaths] = []
        config: Path | None = None
        try:
            config = self.config_path()
        except ConfigError:
            pass
        try:
            configmod.default_path(self.resource)  # a valid name: it can be a directory name
            paths.append(RuntimePaths(configmod.DEFAULT_RUN_DIR / self.resource / self.node))
        except ConfigError:
            pass
        if not paths and config is None:
            log.warning("stop: %s; no resource name nor config path to look for", problem)
            return OCF_SUCCESS
        procs = self.find_daemons(paths, config)
        if paths:  # a valid resource name: its 'promoted' flag may be there
            self.marker_path(self.resource, self.node).unlink(missing_ok=True)
        if not procs:
            log.warning("stop with a broken config (%s): no replengined of ours running", problem)
            return OCF_SUCCESS
        log.error(
            "stop with a broken config (%s): stopping replengined %s by signal",
            problem,
            ", ".join(str(p.pid) for p in procs),
        )
        self.terminate(procs, deadline)
        return OCF_SUCCESS

    # ---- actions --------------------------------------------------------------------------

    def meta_data(self) -> int:
        sys.stdout.write(paramsmod.metadata_xml())
        return OCF_SUCCESS

    def validate_all(self) -> int:
        self.params()
        cfg = self.load_or_fail(check_local=True)
        self.min_peers(cfg)
        self.check_clone_meta(cfg)
        return OCF_SUCCESS

    def start(self) -> int:
        auto_init = self.params()["auto_init"]
        cfg = self.load_or_fail(check_local=True)
        self.min_peers(cfg)
        self.check_clone_meta(cfg)
        from replengine.log.srl import SRL

        if not SRL.is_initialised(cfg.local.srl):
            if not auto_init:
                raise OCFError(
                    OCF_ERR_CONFIGURED,
                    f"SRL {cfg.local.srl} is not initialised and auto_init=false: run "
                    f"'replctl init --config {cfg.path}' on {cfg.local.name}, or set "
                    "auto_init=true",
                )
            proc = self.replctl("init")
            if proc.returncode != 0:
                raise OCFError(
                    OCF_ERR_GENERIC,
                    f"could not initialise SRL {cfg.local.srl}: {_last_line(proc)}",
                )
        proc = self.replctl("up", timeout=self.action_timeout("start"))
        if proc.returncode != 0:
            raise OCFError(
                OCF_ERR_GENERIC,
                f"replengined of {cfg.name} did not start on {cfg.local.name}: "
                f"{_last_line(proc)} (log {cfg.paths().log})",
            )
        st = self.status(cfg)
        if st is None:
            raise OCFError(
                OCF_ERR_GENERIC,
                f"replengined of {cfg.name} started but is not running any more; see "
                f"{cfg.paths().log}",
            )
        self.set_score(promotion_score(st))
        return OCF_SUCCESS

    def stop(self) -> int:
        """Never fails on a bad config: find the daemon anyway and make it go; fails only when
        a daemon of ours is still running (then Pacemaker fences the node)."""
        self.set_score(None)
        deadline = time.monotonic() + self.action_timeout("stop")
        try:
            cfg = self.load(check_local=False)
        except ConfigError as exc:
            return self.stop_without_config(str(exc), deadline)
        self.marker(cfg).unlink(missing_ok=True)
        if cfg.paths().running_pid() is not None:
            budget = max(1.0, deadline - time.monotonic())
            # Pacemaker stops what uses the device first (the Filesystem resource is ordered
            # after the Promoted role); whatever still holds it must not keep the node up
            proc = self.replctl(
                "down",
                "--force",
                "--timeout",
                str(max(1, int(budget * 0.7))),
                timeout=budget * 0.8,
            )
            if proc.returncode != 0:
                log.error(
                    "clean stop failed (%s); stopping replengined by signal", _last_line(proc)
                )
        procs = self.find_daemons([cfg.paths()], self.config_path())
        if procs:
            self.terminate(procs, deadline)
        self.remove_stale_device(cfg)
        return OCF_SUCCESS

    def remove_stale_device(self, cfg: configmod.ResourceConfig) -> None:
        """A daemon killed by signal leaves its loop device over a dead FUSE mount."""
        if cfg.local.device != "fuse-loop":
            return
        from replengine.frontend.fuseloop import FuseLoop

        try:
            FuseLoop(cfg.name, cfg.runtime_dir(), target=None).cleanup_stale()  # type: ignore[arg-type]
        except ReplError as exc:
            log.error("stop: %s", exc)

    def monitor(self) -> int:
        try:
            cfg = self.load(check_local=False)
        except ConfigError as exc:
            if self.is_probe():
                log.error("%s", exc)
                return OCF_NOT_RUNNING
            raise OCFError(OCF_ERR_CONFIGURED, str(exc)) from None
        marker = self.marker(cfg)
        try:
            st = self.status(cfg)
        except ReplError as exc:
            raise OCFError(
                OCF_FAILED_PROMOTED if marker.exists() else OCF_ERR_GENERIC,
                f"replengined of {cfg.name} is running but not answering on "
                f"{cfg.paths().socket}: {exc}",
            ) from None
        if st is None:
            if marker.exists():
                raise OCFError(
                    OCF_FAILED_PROMOTED,
                    f"this node was Promoted for {cfg.name} but its replengined is not running; "
                    f"see {cfg.paths().log}",
                )
            if not self.is_probe():
                exit_reason(
                    f"replengined of {cfg.name} is not running on {cfg.local.name}; see "
                    f"{cfg.paths().log}",
                    self.environ,
                )
            return OCF_NOT_RUNNING
        self.set_score(promotion_score(st))
        if st["role"] == "primary" and (
            st.get("device_lost") or (st.get("device_error") and not st.get("device"))
        ):
            # primary without the device applications use: let Pacemaker recover it
            raise OCFError(OCF_FAILED_PROMOTED, f"{cfg.name}: {st['device_error']}")
        return OCF_RUNNING_PROMOTED if st["role"] == "primary" else OCF_SUCCESS

    def promote(self) -> int:
        cfg = self.load_or_fail(check_local=False)
        min_peers = self.min_peers(cfg)
        args = ["promote", "--timeout", str(int(self.action_timeout("promote")))]
        if min_peers is not None:
            args += ["--min-peers", str(min_peers)]
        proc = self.replctl(*args, timeout=self.action_timeout("promote") + 2)
        if proc.returncode != 0:
            # refused (cannot see enough peers, or could not pull what it lacks): fail so
            # that Pacemaker picks another node rather than promote one that would lose data
            raise OCFError(
                OCF_ERR_GENERIC,
                f"promote of {cfg.name} on {cfg.local.name} refused: {_last_line(proc)}",
            )
        self.marker(cfg).touch()
        self.set_score(SCORE_BEST)
        return OCF_SUCCESS

    def demote(self) -> int:
        cfg = self.load_or_fail(check_local=False)
        if not cfg.paths().running_pid():
            self.marker(cfg).unlink(missing_ok=True)
            return OCF_SUCCESS
        timeout = self.action_timeout("demote")
        proc = self.replctl("demote", "--timeout", str(int(timeout)), timeout=timeout + 2)
        if proc.returncode != 0:
            raise OCFError(
                OCF_ERR_GENERIC,
                f"demote of {cfg.name} on {cfg.local.name} failed: {_last_line(proc)}",
            )
        self.marker(cfg).unlink(missing_ok=True)
        return OCF_SUCCESS

    def notify(self) -> int:
        """Always 0. pre-promote: refresh our score so it reflects our end LSN now;
        post-promote: nothing to do — secondaries follow the new primary's beacon."""
        kind = self.env("OCF_RESKEY_CRM_meta_notify_type")
        op = self.env("OCF_RESKEY_CRM_meta_notify_operation")
        promoting = self.env("OCF_RESKEY_CRM_meta_notify_promote_uname").split()
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
                self.set_score(promotion_score(st))
        except (ReplError, OSError) as exc:
            log.warning("notify: %s", exc)
        return OCF_SUCCESS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    action = argv[0] if argv else ""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"replengine({os.environ.get('OCF_RESOURCE_INSTANCE', '-')})[%(process)d]: "
        "%(levelname)s: %(message)s",
    )
    names = paramsmod.action_names()
    usage = f"usage: {Path(sys.argv[0]).name} {{{'|'.join(names)}}}"
    if action in ("usage", "help"):
        print(usage)
        return OCF_SUCCESS
    if action not in names:
        print(usage, file=sys.stderr)
        exit_reason(f"unknown action {action!r}: expected one of {', '.join(names)}")
        return OCF_ERR_UNIMPLEMENTED
    agent = Agent()
    t0 = time.monotonic()
    try:
        rc = getattr(agent, action.replace("-", "_"))()
    except OCFError as exc:
        log.error("%s", exc.reason)
        exit_reason(exc.reason)
        rc = exc.rc
    except Exception as exc:  # an agent must answer with an OCF code, never a traceback
        log.exception("%s failed: %s", action, exc)
        # notify must not fail; a stop that could not make sure must fail (so the node is
        # fenced) rather than claim the daemon is gone
        if action in ("notify", "meta-data"):
            rc = OCF_SUCCESS
        else:
            exit_reason(f"{action} failed unexpectedly: {type(exc).__name__}: {exc}")
            rc = OCF_ERR_GENERIC
    if action not in ("meta-data", "monitor"):
        log.info("%s -> %d (%.2fs)", action, rc, time.monotonic() - t0)
    return rc
