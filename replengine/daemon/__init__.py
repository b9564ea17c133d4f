"""replengined: the process that runs one node of one resource.

Parses arguments, sets up logging, writes the pid file and hands over to the node's loop
(replengine.node.core.Node); everything that decides lives below.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from replengine import config as configmod
from replengine.errors import ReplError
from replengine.frontend import make_frontend
from replengine.node.core import Node

log = logging.getLogger("replengined")

FILE_FORMAT = "%(asctime)s %(resource)s %(name)s[%(process)d] %(levelname)s %(message)s"
#: syslog adds time and host itself; the tag comes first ("replengined[pid]: ")
SYSLOG_FORMAT = "replengined[%(process)d]: %(resource)s %(levelname)s %(name)s: %(message)s"


class ResourceTag(logging.Filter):
    """Puts "resource/node" in every record (``%(resource)s``): several resources' daemons
    share one syslog, and an operator greps for one. Until the config is read it is the
    config file's name, which is the resource's by convention."""

    def __init__(self, resource: str) -> None:
        super().__init__()
        self.resource = resource

    def filter(self, record: logging.LogRecord) -> bool:
        record.resource = self.resource
        return True


def _thread_died(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.critical(
        "thread %s died: %s",
        name,
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def setup_logging(args: argparse.Namespace) -> tuple[ResourceTag, str]:
    """Syslog when asked or run by Pacemaker (its agent starts us through `replctl up`, with
    OCF_RESOURCE_INSTANCE in the environment), falling back to the file when the syslog
    socket is missing; else the log file, reopened when logrotate renames it
    (WatchedFileHandler: lines go to the old file until the rename is seen, none are lost);
    else stderr. Returns why syslog was not taken when it was asked for, to be said once
    the log is where it stays (redirect_output)."""
    tag = ResourceTag(os.path.splitext(os.path.basename(args.config))[0])
    handler: logging.Handler | None = None
    fmt = FILE_FORMAT
    why = ""
    address = args.syslog or ("/dev/log" if os.environ.get("OCF_RESOURCE_INSTANCE") else None)
    if address and not os.path.exists(address):
        why = f"no syslog at {address} (no such socket): logging to the file instead"
    elif address:
        try:
            handler = logging.handlers.SysLogHandler(
                address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
            fmt = SYSLOG_FORMAT
        except OSError as exc:
            why = f"no syslog at {address} ({exc.strerror or exc}): logging to the file instead"
    if handler is None:
        handler = (
            logging.handlers.WatchedFileHandler(args.log_file)
            if args.log_file
            else logging.StreamHandler(sys.stderr)
        )
    handler.addFilter(tag)
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # what would otherwise reach stderr raw (and so the file without the resource, or not
    # syslog at all): Python's warnings and a thread's uncaught exception
    logging.captureWarnings(True)
    threading.excepthook = _thread_died
    return tag, why


def redirect_output(args: argparse.Namespace, cfg: configmod.ResourceConfig) -> None:
    """With ``--log-file``: standard output and error go to the log file from here on (a
    crash's traceback lands beside the log lines), and so do the log lines that went to
    standard error until the config named the node's file (a bare ``--log-file``).
    `replctl up` starts us before it has read the config itself, with its own output as
    ours: every caller that waits for that output to close (the agent, a script's pipe)
    is released here, before we answer on the ready fd."""
    if args.log_file is None:
        return
    path = Path(args.log_file or cfg.paths().log)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    root = logging.getLogger()
    for old in list(root.handlers):
        if type(old) is logging.StreamHandler:  # not a subclass: the file's, syslog's
            new = logging.handlers.WatchedFileHandler(path)
            new.setFormatter(old.formatter)
            for f in old.filters:
                new.addFilter(f)
            root.removeHandler(old)
            root.addHandler(new)


def _to_stderr() -> bool:
    return any(type(h) is logging.StreamHandler for h in logging.getLogger().handlers)


def _answer(ready: TextIO | None, line: str) -> None:
    if ready is not None:
        ready.write(f"{line}\n")
        ready.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="replengined", description="replengine node daemon")
    ap.add_argument("--config", required=True)
    ap.add_argument("--node")
    ap.add_argument("--ready-fd", type=int, help="write 'ok' or an error here once listening")
    ap.add_argument(
        "--log-file",
        nargs="?",
        const="",
        help="log there, standard output and error too; without a FILE, to replengined.log "
        "in the node's run directory",
    )
    ap.add_argument(
        "--syslog",
        nargs="?",
        const="/dev/log",
        help="log to syslog at this socket (default /dev/log); the default when run by "
        "Pacemaker (OCF_RESOURCE_INSTANCE set)",
    )
    args = ap.parse_args(argv)
    # the loop and the applier share the GIL: with the default 5 ms switch interval the loop,
    # woken by a returning fdatasync or a socket, can wait that long for the applier's turn
    # to end, which is the whole latency budget of a sync write
    sys.setswitchinterval(0.0002)
    where, why = setup_logging(args)
    ready = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None
    try:
        cfg = configmod.load(args.config, node=args.node)
        where.resource = f"{cfg.name}/{cfg.local.name}"
        running = cfg.paths().running_pid()
        if running is not None and ready is not None:
            # `replctl up` of a node that is up: said before anything is opened or logged
            _answer(ready, f"running {running}")
            return 0
        if running is not None:
            raise ReplError(f"{where.resource} is running already (pid {running})")
        redirect_output(args, cfg)
        if why:
            log.warning("%s", why)
        node = Node(cfg)
        node.metrics.start()  # a port in use stops the start here, naming the key
        node.device = make_frontend(cfg, node.device_io)
        if node.device is not None:
            node.device.cleanup_stale()  # a killed daemon's loop device and dead FUSE mount
    except (ReplError, OSError) as exc:
        if ready is None or not _to_stderr():
            log.error("%s", exc)  # else it would reach the caller twice: the answer says it
        _answer(ready, f"error: {exc}")
        return 1
    node.paths.pid.write_text(f"{os.getpid()}\n")
    # a signal stops even with the device in use: its users get EIO, never a hang
    signal.signal(signal.SIGTERM, lambda *_: node.ops.request_down())
    signal.signal(signal.SIGINT, lambda *_: node.ops.request_down())
    # continued after SIGSTOP: the loop's next turn knows this gap was a stop, not a slow turn
    signal.signal(signal.SIGCONT, lambda *_: setattr(node.liveness, "continued", True))
    log.info(
        "node %s of %s listening on %s (SRL %s: start %d end %d epoch %d)",
        node.me,
        cfg.name,
        cfg.local.address,
        cfg.local.srl,
        node.srl.start_lsn,
        node.srl.end_lsn,
        node.epoch,
    )
    if cfg.curve:
        log.info("peers authenticated and encrypted with CURVE (%d keys)", len(cfg.nodes))
    else:
        log.warning(
            "%s has no public keys: peers are neither authenticated nor encrypted, anyone who "
            "can reach %s can speak as a node; give every node a key (replctl keygen, "
            "docs/config.md)",
            cfg.path,
            cfg.local.address,
        )
    _answer(ready, "ok")
    return node.run()


__all__ = ["main"]
