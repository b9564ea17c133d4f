"""replctl: the operator's command line.

Every verb takes --config F (default /etc/replengine/<resource>.toml from --resource) and
--node N (default `uname -n`); exit status 0 on success, non-zero with a one-line reason on
stderr otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import replengine
from replengine.cli.up import cmd_up, config_path
from replengine.errors import ReplError

if TYPE_CHECKING:
    from replengine import config as configmod
    from replengine.wire.control import ControlClient


def _cfg_path(args: argparse.Namespace) -> Path:
    return Path(config_path(args))


def _config() -> ModuleType:
    """replengine.config, imported by the commands that read the file here: `replctl up`
    leaves that to the daemon it starts (replengine.cli.up), and is waited for by every
    rejoin."""
    from replengine import config

    return config


def _control(socket: Path, timeout_s: float) -> ControlClient:
    """A client of the daemon's control socket. ZeroMQ is imported here, by the commands
    that talk to a daemon: `replctl up`, which starts one, is waited for by every rejoin."""
    from replengine.wire.control import ControlClient

    return ControlClient(socket, timeout_s)


def _ctl(args: argparse.Namespace, timeout_s: float = 30.0) -> ControlClient:
    cfg = _config().load(_cfg_path(args), node=args.node, check_local=False)
    return _control(cfg.paths().socket, timeout_s)


def daemon_running(cfg: configmod.ResourceConfig) -> int | None:
    """PID of this node's live daemon, or None."""
    return cfg.paths().running_pid()


def cmd_init(args: argparse.Namespace) -> int:
    from replengine.log.srl import SRL

    cfg = _config().load(_cfg_path(args), node=args.node)
    node = cfg.local
    if daemon_running(cfg):
        raise ReplError(f"node {node.name} of {cfg.name} is running; 'replctl down' first")
    srl = SRL.create(node.srl, resource=cfg.name, uuid=cfg.uuid, node=node.name, force=args.force)
    print(
        f"initialised SRL {node.srl} for resource {cfg.name} ({cfg.uuid}) node {node.name}: "
        f"{srl.capacity} bytes of log, LSNs start at {srl.end_lsn}"
    )
    srl.close()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cfg = _config().load(_cfg_path(args), node=args.node, check_local=False)
    pid = daemon_running(cfg)
    if not pid:
        print(f"{cfg.name}/{cfg.local.name} is not running")
        return 0
    from replengine.cli.progress import Progress, call_with_progress
    from replengine.cli.waits import DownView

    with Progress(f"stopping {cfg.name}/{cfg.local.name}", unit="writes") as bar:
        doc = call_with_progress(
            cfg.paths().socket,
            "down",
            args.timeout,
            DownView(bar, f"{cfg.name}/{cfg.local.name}"),
            force=args.force,
        )
    _wait_exit(pid, args.timeout)
    print(
        f"{cfg.name}/{cfg.local.name} down; volume complete up to LSN "
        f"{doc.get('applied_end', 1) - 1}"
    )
    return 0


def _wait_exit(pid: int, timeout: float) -> None:
    from replengine.runtime import wait_gone

    wait_gone(pid, timeout)


def cmd_status(args: argparse.Namespace) -> int:
    """The status document (docs/status-schema.md): a table, --json, or --watch of either."""
    from replengine.cli.status_cmd import Watch, show_once

    cfg = _config().load(_cfg_path(args), node=args.node, check_local=False)

    def fetch() -> dict:
        ctl = _control(cfg.paths().socket, 10)
        try:
            return ctl.call("status")[0]
        finally:
            ctl.close()

    if args.watch is None:
        show_once(fetch, args.json, sys.stdout)
        return 0
    if args.watch <= 0:
        raise ReplError(f"--watch {args.watch:g}: give a positive number of seconds")
    return Watch(fetch, args.watch, args.json, sys.stdout, sys.stdout.isatty()).run()


def cmd_promote(args: argparse.Namespace) -> int:
    from replengine.cli.progress import Progress, call_with_progress
    from replengine.cli.waits import promote_view

    cfg = _config().load(_cfg_path(args), node=args.node, check_local=False)
    fields = {"force": args.force}
    if args.min_peers is not None:
        fields["min_peers"] = args.min_peers
    name = f"{cfg.name}/{cfg.local.name}"
    with Progress(f"promote {name}", unit="records") as bar:
        doc = call_with_progress(
            cfg.paths().socket, "promote", args.timeout, promote_view(bar, name), **fields
        )
    device = f"; device {doc['device']}" if doc.get("device") else ""
    if doc.get("already"):
        print(f"already primary (epoch {doc['epoch']}){device}")
    else:
        pulled = (
            f", pulled {doc['pulled_records']} records from {doc['pulled_from']}"
            if doc.get("pulled_from")
            else ""
        )
        room = doc.get("made_room")
        cleared = (
            f"; cleared applied LSNs [{room['first_lsn']}, {room['end_lsn']}) from its full "
            "SRL to make room for the pull"
            if room
            else ""
        )
        print(
            f"promoted: epoch {doc['epoch']} starts at LSN {doc['first_lsn']}{pulled} "
            f"({doc['seconds']}s){cleared}{device}"
        )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from replengine.cli.progress import Progress
    from replengine.cli.waits import wait_peer_synced

    if not args.full:
        print("replctl sync: say --full (a full sync is the only kind asked for)", file=sys.stderr)
        return 2
    cfg = _config().load(_cfg_path(args), node=args.node, check_local=False)
    ctl = _control(cfg.paths().socket, 30)
    try:
        doc, _ = ctl.call("sync", peer=args.peer, full=True)
    finally:
        ctl.close()
    when = "copying now" if doc["started"] else f"copied when {args.peer} connects"
    print(f"full sync of {args.peer}: {doc['bytes']} bytes owed, {when}", flush=True)
    if not args.wait:
        return 0
    with Progress(f"full sync of {args.peer}", unit="bytes") as bar:
        wait_peer_synced(cfg.paths().socket, args.peer, args.timeout, bar)
    print(f"{args.peer} is up to date")
    return 0


def cmd_invalidate(args: argparse.Namespace) -> int:
    """This node's volume cannot be trusted (drbdadm invalidate): the whole volume is owed,
    durably, and fetched (digests first: only what differs travels) from the primary it
    follows, whichever that is by then. Online through the daemon, else written beside the
    SRL for the daemon's next start."""
    cfg = _config().load(_cfg_path(args), node=args.node)
    node = cfg.local
    if daemon_running(cfg):
        ctl = _control(cfg.paths().socket, 30)
        try:
            doc, _ = ctl.call("invalidate")
        finally:
            ctl.close()
        src = f"from {doc['source']}, now" if doc["source"] else "once it follows a primary"
        print(
            f"{cfg.name}/{node.name} invalidated: {doc['bytes']} bytes owed, fetched {src} "
            f"(chunks that differ only); inconsistent until then",
            flush=True,
        )
        return 0
    from replengine.log.srl import SRL
    from replengine.log.srl_io import open_locked
    from replengine.node.rewind import marker_path, write_marker
    from replengine.storage.volume import Volume

    if not SRL.is_initialised(node.srl):
        raise ReplError(
            f"SRL {node.srl} of {cfg.name}/{node.name} is not initialised: after `replctl "
            f"init` the node has no history in common with the primary and gets a full sync "
            f"by itself; invalidate is not needed"
        )
    lock = open_locked(Path(node.srl))  # a daemon starting meanwhile reads the marker after
    try:
        with Volume(node.volume, readonly=True) as vol:
            size = vol.size
        write_marker(marker_path(node.srl, cfg.name, node.name), [(0, size)], 0)
    finally:
        os.close(lock)
    print(
        f"{cfg.name}/{node.name} invalidated (offline): {size} bytes owed; at `replctl up` it "
        f"stays inconsistent until the primary it follows has sent every chunk that differs",
        flush=True,
    )
    return 0


def cmd_adjust(args: argparse.Namespace) -> int:
    """Apply the edited config file to this node's running daemon (drbdadm adjust)."""
    path = Path(_cfg_path(args)).resolve()
    _config().load(path, node=args.node)  # a broken file is reported here, changing nothing
    ctl = _ctl(args, timeout_s=30)
    try:
        doc, _ = ctl.call("adjust", config=str(path))
    finally:
        ctl.close()
    parts = [
        f"added {', '.join(doc['added'])}" if doc["added"] else "",
        f"removed {', '.join(doc['removed'])}" if doc["removed"] else "",
        f"re-addressed {', '.join(doc['readdressed'])}" if doc["readdressed"] else "",
        ", ".join(f"{n} {m}" for n, m in doc["modes"].items()),
    ]
    said = "; ".join(p for p in parts if p) or "no node or mode change"
    print(f"adjusted: {said}")
    return 0


def cmd_demote(args: argparse.Namespace) -> int:
    ctl = _ctl(args, timeout_s=args.timeout)
    ctl.call("demote", timeout_s=args.timeout)
    ctl.close()
    print("demoted: secondary")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from replengine.cli.events import cmd_events as events

    return events(args)


def cmd_verify(args: argparse.Namespace) -> int:
    from replengine.cli.verify import run

    # exit 2, not 1, when nothing could be compared: 1 means a region differs
    try:
        ctl = _ctl(args, timeout_s=30)
        try:
            return run(ctl, args.nodes, args.json, args.timeout)
        finally:
            ctl.close()
    except (ReplError, OSError) as exc:
        print(f"replctl verify: {exc}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    from replengine.demo.run import run_demo

    return run_demo(args)


def cmd_keygen(args: argparse.Namespace) -> int:
    from replengine.wire.security import generate

    public = generate(Path(args.out), force=args.force)
    print(f'public_key = "{public}"')
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, like every other failure of replctl."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


class _Version(argparse.Action):
    """--version, the version looked up only when asked for (it costs every replctl
    ~25 ms otherwise)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"replctl {replengine.__version__}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="replctl", description="replengine control")
    ap.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    common = _Parser(add_help=False)
    common.add_argument("--config", help="resource config (default /etc/replengine/R.toml)")
    common.add_argument("--resource", help="resource name, to find its default config")
    common.add_argument("--node", help="this node's name (default: uname -n)")
    sub = ap.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    p = sub.add_parser("init", parents=[common], help="write a fresh SRL superblock")
    p.add_argument("--force", action="store_true", help="overwrite an initialised SRL")
    p.set_defaults(fn=cmd_init)
    p = sub.add_parser("up", parents=[common], help="start the daemon (secondary)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="then wait until this node has caught up with its primary",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits at most")
    p.set_defaults(fn=cmd_up)
    p = sub.add_parser("down", parents=[common], help="stop the daemon cleanly")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument(
        "--force",
        action="store_true",
        help="stop even while the block device is mounted or open (its users get EIO)",
    )
    p.set_defaults(fn=cmd_down)
    p = sub.add_parser("status", parents=[common], help="role, log and peers")
    p.add_argument(
        "--json", action="store_true", help="the versioned document (docs/status-schema.md)"
    )
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=1.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 1) until Ctrl-C",
    )
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("promote", parents=[common], help="make this node primary")
    p.add_argument(
        "--force",
        action="store_true",
        help="promote even with fewer reachable peers than promote_min_peers",
    )
    p.add_argument("--min-peers", type=int, help="override promote_min_peers for this call")
    p.add_argument("--timeout", type=float, default=300)
    p.set_defaults(fn=cmd_promote)
    p = sub.add_parser("demote", parents=[common], help="make this primary a secondary")
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(fn=cmd_demote)
    p = sub.add_parser(
        "sync", parents=[common], help="on the primary: copy the whole volume to a secondary"
    )
    p.add_argument("--full", action="store_true", help="every block (drbdadm invalidate-remote)")
    p.add_argument("peer", help="the secondary whose volume is rebuilt")
    p.add_argument("--wait", action="store_true", help="wait until it is up to date")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(fn=cmd_sync)
    p = sub.add_parser(
        "invalidate",
        parents=[common],
        help="on a secondary: its volume is damaged; fetch every chunk that differs "
        "(drbdadm invalidate)",
    )
    p.set_defaults(fn=cmd_invalidate)
    p = sub.add_parser(
        "adjust",
        parents=[common],
        help="apply the edited config to the running daemon: add/remove nodes, change modes",
    )
    p.set_defaults(fn=cmd_adjust)
    p = sub.add_parser(
        "events", parents=[common], help="the state, then every state change as it happens"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.set_defaults(fn=cmd_events)
    p = sub.add_parser(
        "verify",
        parents=[common],
        help="on the primary: compare secondaries' volumes with its own, online and exact",
    )
    p.add_argument("nodes", nargs="*", help="secondaries to compare (default: all)")
    p.add_argument("--json", action="store_true", help="the result as JSON")
    p.add_argument("--timeout", type=float, default=86400, help="give up after this (s)")
    p.set_defaults(fn=cmd_verify)
    p = sub.add_parser(
        "keygen", help="write a node's CURVE secret key (0600), print its public key"
    )
    p.add_argument("--out", required=True, help="the secret key file to write")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(fn=cmd_keygen)
    p = sub.add_parser(
        "demo", help="3-node resource + async 4th on this machine, ext4 on its device, a failover"
    )
    p.add_argument("--dir", help="work directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="leave the nodes running")
    p.add_argument("--volume-mib", type=int, default=256)
    p.add_argument("--files", type=int, default=300, help="files per phase (fsynced each)")
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ReplError, OSError) as exc:
        print(f"replctl {args.verb}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C stops replctl waiting, not the daemon: a promote, down or sync goes on
        print(
            f"replctl {args.verb}: interrupted; the daemon carries on with what it was asked "
            "(see 'replctl status')",
            file=sys.stderr,
        )
        return 130
