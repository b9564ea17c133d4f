"""`replctl events`: the node's state, then its state changes as they happen (like
`drbdsetup events2`), one line each, until interrupted or --timeout.

The daemon streams the events as replies to one request id (node.events). The subscription
is a lease this command renews every RENEW_S; the renewal's answer also tells that the daemon
is still there. When the daemon stops or restarts, this command says so and exits 1, so a
script running it in a loop notices and starts over (getting the new "exists" lines).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from replengine import config as configmod
from replengine.errors import ReplError
from replengine.node.events import format_event
from replengine.wire.control import ControlClient

#: the lease asked for, and how often it is renewed (three renewals may be lost in a lease)
LEASE_S = 10.0
RENEW_S = 3.0


def cmd_events(args: argparse.Namespace) -> int:
    if args.config:
        path = args.config
    elif args.resource:
        path = configmod.default_path(args.resource)
    else:
        raise ReplError("give --config FILE or --resource NAME")
    cfg = configmod.load(path, node=args.node, check_local=False)
    ctl = ControlClient(cfg.paths().socket, timeout_s=10)
    sub = ctl.send("events", lease=LEASE_S)
    t0 = time.monotonic()
    deadline = t0 + args.timeout if args.timeout is not None else float("inf")
    next_renew = t0 + RENEW_S
    answered = t0  # the daemon's latest answer (an event or a renewal)
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return 0
            if now >= next_renew:
                if now - answered > LEASE_S:
                    raise ReplError(
                        f"daemon of {cfg.name}/{cfg.local.name} stopped answering "
                        f"(no reply for {now - answered:.0f}s)"
                    )
                ctl.resend(sub, "events", renew=True)
                next_renew = now + RENEW_S
            doc = ctl.next_reply(min(next_renew, deadline) - now)
            if doc is None:
                if cfg.paths().daemon_pid() is None:
                    raise ReplError(f"daemon of {cfg.name}/{cfg.local.name} stopped")
                continue
            if doc.get("id") != sub:
                continue
            if not doc.get("ok"):
                raise ReplError(doc.get("error", "events subscription refused"))
            answered = time.monotonic()
            ev = doc.get("event")
            if ev is None:
                continue
            line = json.dumps(ev, sort_keys=False) if args.json else format_event(ev)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `replctl events | head`
        sys.stderr.close()
        return 0
    finally:
        try:
            ctl.resend(sub, "events", cancel=True)
        except Exception:
            pass
        ctl.close()


__all__ = ["cmd_events"]
