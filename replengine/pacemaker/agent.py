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

Parameters and actions are declared once, in replengine.pacemaker.params.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

from replengine import config as configmod
from replengine.errors import ConfigError, ReplError
from replengine.pacemaker import params as paramsmod
from replengine.pacemaker.scores import SCORE_BEST, promotion_score
from replengine.runtime import RuntimePaths
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

EXIT_REASON_PREFIX = "ocf-exit-reason:"
#: meta variables ocf-tester and crm_resource also set on a run by hand
MANUAL_META = frozenset({"timeout", "interval"})
#: after SIGKILL, how long a daemon may take to be gone before stop gives up
KILL_WAIT_S = 10.0

log = logging.getLogger("replengine.agent")


class OCFError(Exception):
    """An action's failure: the OCF exit code and a reason a sysadmin can act on."""

    def __init__(self, rc: int, reason: str) -> None:
        super().__init__(reason)
        self.rc = rc
        self.reason = reason


def exit_reason(msg: str, environ: Mapping[str, str] | None = None) -> None:
    """Print the exit reason the way ocf-shellfuncs' ocf_exit_reason does: one line on stderr,
    after $OCF_EXIT_REASON_PREFIX (default 'ocf-exit-reason:'); Pacemaker shows it."""
    environ = os.environ if environ is None else environ
    cookie = environ.get("OCF_EXIT_REASON_PREFIX") or EXIT_REASON_PREFIX
    line = " ".join(msg.split())
    sys.stderr.write(f"{cookie}{line}\n")
    sys.stderr.flush()


def _last_line(proc: subprocess.CompletedProcess) -> str:
    """replctl's one-line reason (stderr, else stdout), without its 'replctl VERB: ' prefix."""
    for text in (proc.stderr, proc.stdout):
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        if lines:
            line = lines[-1]
            if line.startswith("replctl ") and ": " in line:
                line = line.split(": ", 1)[1]
            return line
    return f"exit status {proc.returncode}, no output"


def _arg(cmd: list[str], flag: str) -> str | None:
    try:
        return cmd[cmd.index(flag) + 1]
    except (ValueError, IndexError):
        return None


class Agent:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.resource = self.env("OCF_RESKEY_resource").strip()
        self.config_param = self.env("OCF_RESKEY_config").strip()
        self.node = os.uname().nodename

    # ---- helpers --------------------------------------------------------------------------

    def env(self, name: str, default: str = "") -> str:
        return self.environ.get(name, default)

    def meta(self) -> dict[str, str]:
        """Pacemaker's meta variables (OCF_RESKEY_CRM_meta_*), by their short name."""
        pre = "OCF_RESKEY_CRM_meta_"
        return {k[len(pre) :]: v for k, v in self.environ.items() if k.startswith(pre)}

    def in_cluster(self) -> bool:
        """True when Pacemaker runs us as a promotable clone instance (ocf-tester does not)."""
        meta = self.meta()
        return "promoted_max" in meta or "master_max" in meta

    def action_timeout(self, action: str) -> float:
        """Pacemaker's timeout for this action in seconds, less a margin to report in time."""
        try:
            return max(5.0, int(self.env("OCF_RESKEY_CRM_meta_timeout")) / 1000.0 - 5.0)
        except ValueError:
            return paramsmod.default_timeout(action)

    def is_probe(self) -> bool:
        return self.env("OCF_RESKEY_CRM_meta_interval", "0") in ("", "0")

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

    def params(self) -> dict:
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
        """Refuse to run other than as a promotable clone with notify=true, when Pacemaker's
        meta variables are there to say how we run (a run by hand has none)."""
        meta = self.meta()
        if not set(meta) - MANUAL_META:
            return
        create = (
            f"pcs resource create {self.env('OCF_RESOURCE_INSTANCE', cfg.name).split(':')[0]} "
            f"ocf:replengine:replengine resource={cfg.name} promotable notify=true"
        )

        def number(*names: str) -> int | None:
            for n in names:
                try:
                    return int(meta[n])
                except (KeyError, ValueError):
                    continue
            return None

        promoted_max = number("promoted_max", "master_max")
        promotable = meta.get("promotable", "").lower() in paramsmod.TRUE_WORDS or (
            promoted_max is not None and promoted_max > 0
        )
        if not promotable:
            raise OCFError(
                OCF_ERR_CONFIGURED,
                f"not run as a promotable clone: replengine needs Pacemaker to choose its "
                f"primary; create it with '{create}'",
            )
        notify = meta.get("notify", "").lower() in paramsmod.TRUE_WORDS
        if not notify and "notify_start_uname" not in meta:
            raise OCFError(
                OCF_ERR_CONFIGURED,
                "the clone runs without notifications: set the clone's meta attribute "
                "notify=true (pcs resource meta <clone> notify=true)",
            )
        if promoted_max is not None and promoted_max > 1:
            raise OCFError(
                OCF_ERR_CONFIGURED,
                f"promoted-max={promoted_max}, but a replengine resource has one primary: set "
                "the clone's meta attribute promoted-max=1",
            )
        clone_node_max = number("clone_node_max")
        if clone_node_max is not None and clone_node_max > 1:
            raise OCFError(
                OCF_ERR_CONFIGURED,
                f"clone-node-max={clone_node_max}, but a node runs one replengined per "
                "resource: set the clone's meta attribute clone-node-max=1",
            )
        clone_max = number("clone_max")
        if clone_max is not None and clone_max > len(cfg.nodes):
            log.warning(
                "clone-max=%d but %s has %d nodes: instances on nodes not in %s will not start",
                clone_max,
                cfg.name,
                len(cfg.nodes),
                cfg.path,
            )

    def replctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
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

    def status(self, cfg: configmod.ResourceConfig) -> dict | None:
        if not cfg.paths().running_pid():
            return None
        ctl = ControlClient(cfg.paths().socket, timeout_s=15)
        try:
            return ctl.call("status", timeout_s=15)[0]
        finally:
            ctl.close()

    def set_score(self, score: int | None) -> None:
        if not self.in_cluster():
            return
        args = ["crm_attribute", "--promotion", "-q"]
        args += ["-D"] if score is None else ["-v", str(score)]
        try:
            subprocess.run(args, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("crm_attribute failed: %s", exc)

    # ---- finding and stopping our daemon without the config --------------------------------

    def find_daemons(self, paths: list[RuntimePaths], config: Path | None) -> list[psutil.Process]:
        """Live replengined processes of this resource on this node: the pid files under
        `paths` (checked to be a replengined of this node), and every process running
        `replengine.daemon --config <config>` for this node."""
        found: dict[int, psutil.Process] = {}
        for p in paths:
            pid = p.daemon_pid()
            if pid is not None:
                try:
                    found[pid] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    pass
        want = os.path.realpath(config) if config is not None else None
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmd = proc.info.get("cmdline") or []
            if proc.pid == os.getpid() or proc.info.get("status") == psutil.STATUS_ZOMBIE:
                continue
            if "replengine.daemon" not in cmd and not any(c.endswith("replengined") for c in cmd):
                continue
            node = _arg(cmd, "--node")
            arg = _arg(cmd, "--config")
            if want is None or arg is None or node not in (None, self.node):
                continue
            if not os.path.isabs(arg):
                try:
                    arg = os.path.join(proc.cwd(), arg)
                except psutil.Error:
                    continue
            if os.path.realpath(arg) == want:
                found[proc.pid] = proc
        return list(found.values())

    def terminate(self, procs: list[psutil.Process], deadline: float) -> None:
        """SIGTERM (the daemon drains and applies its log), then SIGKILL when it is not gone
        in time; OCFError when a process survives both."""
        for proc in procs:
            log.warning("stopping replengined pid %d with SIGTERM", proc.pid)
            _signal(proc, signal.SIGTERM)
        term_wait = max(1.0, deadline - time.monotonic() - KILL_WAIT_S)
        alive = _wait_gone(procs, term_wait)
        if not alive:
            return
        for proc in alive:
            log.error("replengined pid %d still running after SIGTERM: SIGKILL", proc.pid)
            _signal(proc, signal.SIGKILL)
        alive = _wait_gone(alive, KILL_WAIT_S)
        if alive:
            pids = ", ".join(str(p.pid) for p in alive)
            raise OCFError(
                OCF_ERR_GENERIC,
                f"replengined of {self.resource or '?'} on {self.node} (pid {pids}) is still "
                f"running after SIGTERM and SIGKILL (stuck in the kernel? see "
                f"'ps -o pid,stat,wchan -p {pids}'); the node must be fenced to recover",
            )

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
            proc = self.replctl(
                "down", "--timeout", str(max(1, int(budget * 0.7))), timeout=budget * 0.8
            )
            if proc.returncode != 0:
                log.error(
                    "clean stop failed (%s); stopping replengined by signal", _last_line(proc)
                )
        procs = self.find_daemons([cfg.paths()], self.config_path())
        if procs:
            self.terminate(procs, deadline)
        return OCF_SUCCESS

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

    def publish_position(self, st: dict) -> None:
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


def _signal(proc: psutil.Process, sig: int) -> None:
    """Send `sig` unless the process is gone (psutil refuses a pid reused since we found it)."""
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait for the processes to be gone; those still alive after `timeout`. A zombie counts
    as gone: the daemon is not our child, whoever reaps it is not up to us."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not _gone(p)]
    return alive


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
