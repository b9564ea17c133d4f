"""The OCF contract's vocabulary: exit codes, the error an action raises, the exit reason.

Every module of the agent answers Pacemaker in these terms, so they live below all of them;
the values are fixed by the OCF 1.1 standard, not by us.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

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
