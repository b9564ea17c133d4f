"""replctl's side of the control socket: a request to a daemon that dies before answering fails
once the daemon is gone, not at the end of its timeout.

Found by the fault campaign (seed 3702 round 8, docs/reliability.md): a node's disk failed,
its daemon stopped, and `promote` sent to it while it shut down waited out its whole 60 s
for an answer that could not come. A Pacemaker operation would wait out its own timeout the
same way, delaying the failover it is part of.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from replengine.demo.localcluster import LocalResource
from replengine.runtime import wait_gone
from replengine.wire.control import DaemonGone, NoAnswer


def test_a_request_fails_as_soon_as_the_daemon_is_gone_and_waits_while_it_lives(
    resource: Callable[..., LocalResource],
) -> None:
    r = resource({"alpha": "sync", "beta": "sync"})
    r.up("alpha")
    ctl = r.control("alpha", 60)
    try:
        r.freeze("alpha")  # alive, but it answers nothing
        with pytest.raises(NoAnswer, match="did not answer within 2s"):
            ctl.call("status", timeout_s=2)
        req = ctl.send("status")
        pid = r.pid("alpha")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        with pytest.raises(DaemonGone, match="stopped before answering"):
            ctl.wait(req)  # 60 s of timeout left: only the daemon's end cuts it short
    finally:
        ctl.close()
