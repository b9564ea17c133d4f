"""`replctl status [--json] [--watch [SECONDS]]`: fetch the status document and show it.

`--watch` on a terminal redraws the table in place (cursor home, each line cleared to its end,
the rest of the screen cleared: no flicker, no scrollback flood); elsewhere (a pipe, a log
file) it prints a new block each interval after a separator line with the time, so the output
stays a readable log. With `--json` each interval is one compact JSON document per line.
Ctrl-C ends a watch with status 0: it is how one stops watching, not a failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from replengine.cli.status_view import render
from replengine.errors import ReplError

#: cursor home; clear to end of line; clear to end of screen
HOME, CLEAR_EOL, CLEAR_EOS = "\x1b[H", "\x1b[K", "\x1b[J"


def clean(doc: dict[str, Any]) -> dict[str, Any]:
    """The status document without the control socket's envelope (id, ok)."""
    return {k: v for k, v in doc.items() if k not in ("id", "ok")}


def show_once(fetch: Callable[[], dict[str, Any]], as_json: bool, out: TextIO) -> None:
    doc = clean(fetch())
    if as_json:
        out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        out.write(render(doc) + "\n")


@dataclass
class Watch:
    """One `--watch`: ``fetch`` returns a status document or raises ReplError (the daemon
    stopped, or is too busy to answer): that is shown in place of the table and the watch
    goes on, so it also shows a node coming back."""

    fetch: Callable[[], dict[str, Any]]
    interval: float
    as_json: bool
    out: TextIO
    tty: bool

    def block(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        try:
            doc = clean(self.fetch())
        except ReplError as exc:
            if self.as_json:
                return json.dumps({"error": str(exc), "time": stamp})
            return f"{stamp}: {exc}"
        if self.as_json:
            return json.dumps(doc, sort_keys=True)
        return render(doc)

    def frame(self, body: str) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        if self.as_json:
            return body + "\n"
        if self.tty:
            head = f"every {self.interval:g}s: replctl status    {stamp}    (Ctrl-C to stop)"
            lines = [head, "", *body.splitlines()]
            return HOME + "".join(line + CLEAR_EOL + "\n" for line in lines) + CLEAR_EOS
        return f"--- {stamp} ---\n{body}\n"

    def run(self) -> int:
        if self.tty and not self.as_json:
            self.out.write(HOME + "\x1b[2J")
        next_at = time.monotonic()
        try:
            while True:
                self.out.write(self.frame(self.block()))
                self.out.flush()
                next_at += self.interval
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at, time.monotonic())
        except KeyboardInterrupt:
            if self.tty and not self.as_json:
                self.out.write("\n")
            return 0
        except BrokenPipeError:  # `replctl status --watch | head`: the reader is gone
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


__all__ = ["Watch", "clean", "show_once"]
