"""Progress of replctl's long waits: a bar on a terminal, plain lines anywhere else.

On a terminal (stderr is a tty, TERM is not "dumb") a rich progress bar is drawn on stderr and
erased when the wait ends, so what stays on the screen -- and what scripts read on stdout --
is the command's usual final line. Anywhere else (Pacemaker's agent, a pipe, cron, a log) the
same facts are printed as plain lines on stdout, without escape sequences: one once the wait
has lasted PLAIN_AFTER_S, then one every PLAIN_EVERY_S and at each change of phase. stderr
keeps only the one-line reason of a failure.

The numbers come from the daemon's status document (docs/status-schema.md), polled beside
the long request on a second control connection (``call_with_progress``), so the daemon
needs no streaming protocol and a status that does not answer only delays a redraw.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from replengine.cli.status_view import duration, size
from replengine.errors import ReplError
from replengine.wire.control import ControlClient

PLAIN_AFTER_S = 1.0
PLAIN_EVERY_S = 2.0
POLL_S = 0.25


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether a bar can be drawn on ``stream`` (stderr by default)."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


@dataclass
class Progress:
    """One wait: ``update()`` it as often as you like; it draws or prints at its own pace.

    ``unit`` is "bytes" (sizes in KiB/MiB/…) or a word counted as integers ("records",
    "writes"); ``total`` None draws an indeterminate bar (a phase with no count yet)."""

    what: str
    unit: str = "bytes"
    tty: bool | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    started: float = field(default_factory=lambda: time.monotonic())
    _last_plain: float = 0.0
    _last_phase: str = ""
    _bar: Any = None
    _task: Any = None

    def __post_init__(self) -> None:
        if self.tty is None:
            self.tty = on_terminal(self.err)

    def _format(self, what: str, done: float | None, total: float | None, detail: str) -> str:
        if done is None:
            amount = ""
        elif self.unit == "bytes":
            amount = size(done) + (f" of {size(total)}" if total else "")
        else:
            amount = f"{int(done)}" + (f" of {int(total)}" if total else "") + f" {self.unit}"
        pct = f" ({100 * done / total:.0f}%)" if total and done is not None else ""
        parts = [p for p in (amount + pct, detail) if p]
        return f"{what}: {', '.join(parts)}" if parts else what

    def update(
        self,
        done: float | None = None,
        total: float | None = None,
        detail: str = "",
        phase: str | None = None,
    ) -> None:
        """The wait now stands at ``done`` of ``total``; ``phase`` (default: what) names
        the step it is in; ``detail`` is shown after the numbers (a rate, an ETA)."""
        phase = phase or self.what
        if self.tty:
            self._draw(phase, done, total, detail)
            return
        now = time.monotonic()
        changed = phase != self._last_phase
        if now - self.started < PLAIN_AFTER_S:
            return
        if not changed and now - self._last_plain < PLAIN_EVERY_S:
            return
        self._last_plain, self._last_phase = now, phase
        self.out.write(self._format(phase, done, total, detail) + "\n")
        self.out.flush()

    def _draw(self, phase: str, done: float | None, total: float | None, detail: str) -> None:
        if self._bar is None:
            self._start_bar()
        self._bar.update(
            self._task,
            description=phase,
            completed=done or 0,
            total=total,
            detail=detail,
        )

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        amount = DownloadColumn(binary_units=True) if self.unit == "bytes" else MofNCompleteColumn()
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=None),  # what the words leave of the line: no wrap at 80
            TaskProgressColumn(),
            amount,
            TextColumn("{task.fields[detail]}"),
            console=Console(file=self.err),
            transient=True,
            refresh_per_second=8,
        )
        self._task = self._bar.add_task(self.what, total=None, detail="")
        self._bar.start()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rate_eta(rate: float | None, eta: float | None) -> str:
    """ ", 8.0 MiB/s, ETA 6.0s" from a status document's rate and ETA (either may be None)."""
    parts = []
    if rate:
        parts.append(f"{size(rate)}/s")
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return ", ".join(parts)


def call_with_progress(
    socket_path: os.PathLike[str],
    op: str,
    timeout_s: float,
    show: Callable[[dict[str, Any]], None],
    **fields: Any,
) -> dict[str, Any]:
    """Send one long control request and, until its answer comes, hand the node's status
    to ``show`` every POLL_S. Returns the answer; raises ReplError with the daemon's reason
    when it refuses, or when no answer comes within ``timeout_s`` (as ControlClient.call)."""
    ctl = ControlClient(socket_path, timeout_s)  # type: ignore[arg-type]
    try:
        req = ctl.send(op, **fields)
        deadline = time.monotonic() + timeout_s
        while not ctl.sock.poll(int(POLL_S * 1000)):
            if time.monotonic() >= deadline:
                raise ReplError(f"daemon at {socket_path} did not answer within {timeout_s:.0f}s")
            ctl.check_alive()
            st = poll_status(socket_path)
            if st is not None:
                show(st)
        doc, _ = ctl.wait(req, timeout_s=max(1.0, deadline - time.monotonic()))
    finally:
        ctl.close()
    if not doc.get("ok"):
        raise ReplError(doc.get("error", "unknown error"))
    return doc


def poll_status(socket_path: os.PathLike[str], timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The node's status, or None when it does not answer in time (busy, or stopping): the
    bar then waits for the next poll."""
    try:
        ctl = ControlClient(socket_path, timeout_s)  # type: ignore[arg-type]
    except ReplError:
        return None
    try:
        return ctl.call("status")[0]
    except ReplError:
        return None
    finally:
        ctl.close()


__all__ = ["Progress", "call_with_progress", "on_terminal", "poll_status", "rate_eta"]
