"""replengined: the process that runs one node of one resource.

Parses arguments, sets up logging, writes the pid file and hands over to the node's loop
(replengine.node.core.Node); everything that decides lives below.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from replengine import config as configmod
from replengine.errors import ReplError
from replengine.frontend import make_frontend
from replengine.node.core import Node

log = logging.getLogger("replengined")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="replengined", description="replengine node daemon")
    ap.add_argument("--config", required=True)
    ap.add_argument("--node")
    ap.add_argument("--ready-fd", type=int, help="write 'ok' or an error here once listening")
    ap.add_argument("--log-file")
    args = ap.parse_args(argv)
    # the loop and the applier share the GIL: with the default 5 ms switch interval the loop,
    # woken by a returning fdatasync or a socket, can wait that long for the applier's turn
    # to end, which is the whole latency budget of a sync write
    sys.setswitchinterval(0.0002)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if args.log_file:
        handlers = [logging.FileHandler(args.log_file)]
    logging.basicConfig(
        level=logging.INFO,
        handlers=handlers,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
    )
    ready = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None
    try:
        cfg = configmod.load(args.config, node=args.node)
        node = Node(cfg)
        node.device = make_frontend(cfg, node.device_io)
        if node.device is not None:
            node.device.cleanup_stale()  # a killed daemon's loop device and dead FUSE mount
    except (ReplError, OSError) as exc:
        log.error("%s", exc)
        if ready:
            ready.write(f"error: {exc}\n")
            ready.close()
        return 1
    node.paths.pid.write_text(f"{os.getpid()}\n")
    # a signal stops even with the device in use: its users get EIO, never a hang
    signal.signal(signal.SIGTERM, lambda *_: node.ops.request_down())
    signal.signal(signal.SIGINT, lambda *_: node.ops.request_down())
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
    if ready:
        ready.write("ok\n")
        ready.close()
    return node.run()


__all__ = ["main"]
