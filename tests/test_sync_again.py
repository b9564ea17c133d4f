"""A degraded sync secondary is synchronous again as soon as it has caught up.

README: under on_sync_loss = "degrade" a sync secondary that went away "is treated as async
… and becomes sync again once it has caught up". It used to become sync again only at the
primary's next heartbeat tick: for up to a heartbeat after its catching-up ACK, writes
completed without waiting for it although it was connected and up to date (invariant 1:
durable in every connected sync secondary). Found by the fault campaign in network
namespaces (python -m tests.faults.run --net netns): its first partition test saw a write
complete in 3 ms, while a sync secondary it was cut off from lacked it, right after a full
sync had left both secondaries degraded and up to date.

The heartbeat here is 4 s, so the old window is wide: the test would see it every time.
"""

from __future__ import annotations

import concurrent.futures as cf
import signal

import pytest
from conftest import peer

pytestmark = pytest.mark.slow

TWO_NODES = {"alpha": "sync", "beta": "sync"}


def test_degraded_sync_secondary_counts_again_once_caught_up(resource):
    r = resource(TWO_NODES, on_sync_loss="degrade", heartbeat_ms=4000)
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    vol.write(0, b"0" * 4096)
    r.wait_synced()
    r.kill("beta")  # its connection drops: degraded at once
    r.wait_for(lambda: peer(r, "alpha", "beta")["degraded"], 30, "beta to be degraded")
    for i in range(8):
        vol.write(4096 * i, bytes([i]) * 4096)  # alpha alone
    r.up("beta")

    def caught_up() -> dict | None:
        st = r.status("alpha")
        b = st["peers"]["beta"]
        return st if b["connected"] and b["acked_lsn"] == st["end_lsn"] - 1 else None

    st = r.wait_for(caught_up, 30, "beta to catch up")
    assert st["peers"]["beta"]["degraded"] is False, (
        f"beta caught up (acked {st['peers']['beta']['acked_lsn']}, end {st['end_lsn']}) "
        f"but is still degraded: writes complete without it until the next tick"
    )
    # and writes wait for it again: with beta stopped, a write does not complete (its
    # heartbeat has 3 x 4 s to run before it could be degraded again)
    r.signal("beta", signal.SIGSTOP)
    with cf.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(vol.write, 8192, b"w" * 4096)
        with pytest.raises(cf.TimeoutError):
            fut.result(timeout=2)
        r.signal("beta", signal.SIGCONT)
        lsn = fut.result(timeout=30)
    assert peer(r, "alpha", "beta")["acked_lsn"] >= lsn
    vol.close()
