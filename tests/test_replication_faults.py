"""Replication under faults: a paused or killed secondary, a full SRL, hostile messages.

Real daemons on 127.0.0.1 (heartbeat 300 ms: a silent peer is gone after ~0.9 s). Nothing
waits by sleeping: progress is awaited by polling status (`wait_for`) or by blocking client
calls; "this does not happen" is a bounded wait on an awaited event (Future.result(timeout=)).
"""

from __future__ import annotations

import concurrent.futures as cf
import random
import signal
import struct
import subprocess
import sys
import uuid as uuidlib

import pytest
import zmq
from conftest import FOUR_NODES, THREE_NODES, KiB, Ledger, MiB, Writer, peer, random_write

from replengine.demo.localcluster import LocalResource
from replengine.errors import ReplError
from replengine.wire import protocol
from replengine.wire.protocol import Hello, MsgType, Update, encode

pytestmark = pytest.mark.slow


def all_equal(sums: dict[str, str]) -> bool:
    return len(set(sums.values())) == 1


def write_in_thread(
    pool: cf.ThreadPoolExecutor, r: LocalResource, node: str, writes: list[tuple[int, bytes]]
) -> cf.Future:
    """Run writes (QD1) on their own client connection; the future gives their LSNs."""

    def run() -> list[int]:
        vol = r.connect(node)
        try:
            return [vol.write(off, data) for off, data in writes]
        finally:
            vol.close()

    return pool.submit(run)


# ---- a sync secondary goes silent ---------------------------------------------------------


def test_sync_secondary_stopped_degrade(resource):
    r = resource(THREE_NODES, on_sync_loss="degrade")
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    vol.write(0, b"0" * 4096)
    r.wait_synced()
    r.signal("beta", signal.SIGSTOP)
    ledger = Ledger()
    rng = random.Random(21)
    with cf.ThreadPoolExecutor(1) as pool:
        writes = [random_write(rng, hi=64 * KiB) for _ in range(20)]
        fut = write_in_thread(pool, r, "alpha", writes)
        lsns = fut.result(timeout=15)  # completes once beta is declared gone (~0.9 s)
    for lsn, (off, data) in zip(lsns, writes, strict=True):
        ledger.add(lsn, off, data)
    p = peer(r, "alpha", "beta")
    assert p["degraded"] is True, p
    assert p["lag_records"] >= 20 and not p["connected"], p
    assert peer(r, "alpha", "gamma")["acked_lsn"] == lsns[-1], "gamma (sync) missed writes"
    assert "SYNC SECONDARY beta LOST" in r.log("alpha"), r.log("alpha")[-2000:]
    r.signal("beta", signal.SIGCONT)
    r.wait_for(
        lambda: (
            lambda b: b["lag_records"] == 0 and not b["degraded"] and b["state"] == "up-to-date"
        )(peer(r, "alpha", "beta")),
        20,
        "beta to catch up and be synchronous again",
    )
    r.wait_synced()
    assert all_equal(r.checksums())
    ledger.check_reads(vol)
    vol.close()


def test_sync_secondary_stopped_block(resource):
    r = resource(THREE_NODES, on_sync_loss="block", extra={"sync_timeout": 3})
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    vol.write(0, b"0" * 4096)
    r.wait_synced()
    r.signal("beta", signal.SIGSTOP)
    with cf.ThreadPoolExecutor(1) as pool:
        fut = write_in_thread(pool, r, "alpha", [(8192, b"b" * 4096)])
        with pytest.raises(cf.TimeoutError):
            fut.result(timeout=2)  # pending while beta is stopped, well before sync_timeout
        st = r.status("alpha")
        assert st["writes_pending"] == 1, st
        with pytest.raises(ReplError) as err:
            fut.result(timeout=15)
    msg = str(err.value)
    assert "timed out" in msg and "beta" in msg, msg
    assert "gamma" not in msg, f"gamma acked, yet the error names it: {msg}"
    assert peer(r, "alpha", "beta")["degraded"] is False
    r.signal("beta", signal.SIGCONT)
    r.wait_for(
        lambda: (
            lambda b: b["lag_records"] == 0 and not b["degraded"] and b["state"] == "up-to-date"
        )(peer(r, "alpha", "beta")),
        20,
        "beta to catch up after SIGCONT",
    )
    # with beta back, writes complete again
    vol.write(12288, b"c" * 4096)
    r.wait_synced()
    assert all_equal(r.checksums())
    vol.close()


# ---- kill -9 a secondary while a writer runs ----------------------------------------------


@pytest.mark.parametrize("victim", ["beta", "delta"], ids=["sync", "async"])
def test_kill9_secondary_mid_stream_restarts_from_srl(resource, writers, victim):
    r = resource(FOUR_NODES)
    r.up()
    r.promote("alpha")
    ledger = Ledger()
    w = Writer(r, "alpha", ledger, seed=31, hi=128 * KiB)
    writers.append(w)
    w.start()
    r.wait_for(lambda: len(ledger) >= 30, 30, "30 writes")
    r.kill(victim)
    n = len(ledger)
    r.wait_for(lambda: len(ledger) >= n + 30, 30, f"30 more writes with {victim} killed")
    r.up(victim)
    r.wait_for(lambda: peer(r, "alpha", victim)["connected"], 10, f"{victim} reconnected")
    n = len(ledger)
    r.wait_for(lambda: len(ledger) >= n + 30, 30, f"30 more writes with {victim} back")
    w.stop()
    assert not w.errors, w.errors
    end = r.wait_synced()
    st_v, st_p = r.status(victim), r.status("alpha")
    assert st_v["end_lsn"] == st_p["end_lsn"] == end, (st_v, st_p)
    assert end == max(lsn for lsn, _, _ in ledger.entries) + 1
    sums = r.checksums()
    assert all_equal(sums), sums
    vol = r.connect("alpha")
    ledger.check_reads(vol)
    vol.close()
    assert "listening" in r.log(victim).split("listening", 1)[1], "no restart in the log"
    r.down()
    for node in r.nodes:
        ledger.check_file(r.volume_path(node), node)


# ---- SRL full -----------------------------------------------------------------------------

SMALL_SRL = 2 * MiB
REC = 64 * KiB


def _fill_writes(count: int, seed: int) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    return [(rng.randrange(0, 8 * MiB // REC) * REC, rng.randbytes(REC)) for _ in range(count)]


def _srl_full_resource(resource, policy: str) -> LocalResource:
    r = resource(
        THREE_NODES,
        srl_size=SMALL_SRL,
        srl_full=policy,
        on_sync_loss="degrade",
        extra={"dcm_region_size": 256 * KiB} if policy == "dcm" else {},
    )
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    vol.write(0, b"f" * 4096)
    vol.close()
    r.wait_synced()
    r.kill("gamma")
    r.wait_for(lambda: not peer(r, "alpha", "gamma")["connected"], 10, "gamma declared gone")
    return r


def test_srl_full_stall_blocks_until_secondary_returns(resource):
    r = _srl_full_resource(resource, "stall")
    writes = _fill_writes(48, seed=41)  # 3 MiB of records into a 2 MiB log
    with cf.ThreadPoolExecutor(1) as pool:
        fut = write_in_thread(pool, r, "alpha", writes)
        r.wait_for(lambda: r.status("alpha")["writes_stalled"] > 0, 20, "a stalled writer")
        with pytest.raises(cf.TimeoutError):
            fut.result(timeout=1.5)
        st = r.status("alpha")
        assert st["role"] == "primary" and st["writes_stalled"] >= 1, st
        assert st["start_lsn"] <= peer(r, "alpha", "gamma")["acked_lsn"] + 1, (
            "the primary cleared records the killed secondary never got"
        )
        assert "SRL full" in r.log("alpha")
        assert "held by gamma (sync, not connected, acknowledged up to LSN" in r.log("alpha")
        r.up("gamma")
        lsns = fut.result(timeout=60)
    ledger = Ledger()
    ledger.add(1, 0, b"f" * 4096)
    for lsn, (off, data) in zip(lsns, writes, strict=True):
        ledger.add(lsn, off, data)
    r.wait_synced()
    assert all_equal(r.checksums())
    vol = r.connect("alpha")
    ledger.check_reads(vol)
    vol.close()


@pytest.mark.parametrize("verb", ["demote", "down"])
def test_writes_stalled_on_a_full_srl_fail_at_once_when_the_primary_steps_down(resource, verb):
    """Writes stalled on a full SRL (srl_full = "stall") were never logged: a demote or a
    stop fails them at once, naming why. Before, a demote waited for room as long as gamma
    stayed away (for ever), and a stop for its minute's drain: the fault campaign's stop of
    a cut-off primary outlived its 30 s (seed 10803 round 9)."""
    r = _srl_full_resource(resource, "stall")
    ledger = Ledger()
    ledger.add(1, 0, b"f" * 4096)
    error: list[str] = []

    def run() -> None:
        vol = r.connect("alpha")
        try:
            for off, data in _fill_writes(48, seed=44):
                ledger.add(vol.write(off, data), off, data)
        except ReplError as exc:
            error.append(str(exc))
        finally:
            vol.close()

    with cf.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(run)
        r.wait_for(lambda: r.status("alpha")["writes_stalled"] > 0, 20, "a stalled writer")
        r.replctl("alpha", verb, timeout=20)
        fut.result(timeout=10)
    assert error and "not logged" in error[0] and "SRL" in error[0], error
    assert 20 <= len(ledger) < 48, len(ledger)
    if verb == "demote":
        assert r.status("alpha")["role"] == "secondary"
        r.down("alpha")
    r.down("beta")
    for n in ("alpha", "beta"):  # every completed write; the refused one nowhere in a log
        ledger.check_file(r.volume_path(n), n)


def test_srl_full_fail_refuses_write_and_stays_healthy(resource):
    r = resource(THREE_NODES, srl_size=SMALL_SRL, srl_full="fail", on_sync_loss="degrade")
    r.up()
    r.promote("alpha")
    r.kill("gamma")
    r.wait_for(lambda: not peer(r, "alpha", "gamma")["connected"], 10, "gamma declared gone")
    vol = r.connect("alpha")
    ledger = Ledger()
    error = ""
    for off, data in _fill_writes(48, seed=43):
        try:
            ledger.add(vol.write(off, data), off, data)
        except ReplError as exc:
            error = str(exc)
            break
    assert "SRL full" in error, f"no 'SRL full' error after {len(ledger)} writes: {error!r}"
    assert 20 <= len(ledger) < 48, len(ledger)
    st = r.status("alpha")
    assert st["role"] == "primary" and st["writes_pending"] == 0, st
    assert st["end_lsn"] == len(ledger) + 1, "the refused write was logged"
    ledger.check_reads(vol)  # the node still serves reads
    r.up("gamma")
    r.wait_synced()
    r.wait_for(
        lambda: r.status("alpha")["start_lsn"] == r.status("alpha")["end_lsn"],
        20,
        "the primary's SRL to be cleared once gamma has everything",
    )
    off, data = 0, b"after" * 1000
    ledger.add(vol.write(off, data), off, data)  # space again: writes succeed
    r.wait_synced()
    assert all_equal(r.checksums())
    ledger.check_reads(vol)
    vol.close()


def test_srl_full_dcm_keeps_writing_and_resyncs(resource):
    r = _srl_full_resource(resource, "dcm")
    writes = _fill_writes(64, seed=47)  # 4 MiB of records into a 2 MiB log
    with cf.ThreadPoolExecutor(1) as pool:
        lsns = write_in_thread(pool, r, "alpha", writes).result(timeout=60)
    ledger = Ledger()
    ledger.add(1, 0, b"f" * 4096)
    for lsn, (off, data) in zip(lsns, writes, strict=True):
        ledger.add(lsn, off, data)
    g = peer(r, "alpha", "gamma")
    assert g["state"] == "dcm", g
    assert r.status("alpha")["role"] == "primary"
    r.up("gamma")
    seen: set[str] = set()

    def resynced() -> bool:
        p = peer(r, "alpha", "gamma")
        seen.add(p["state"])
        return p["state"] == "up-to-date" and p["lag_records"] == 0

    r.wait_for(resynced, 60, "gamma to be resynced from the dirty-region map")
    # dcm-resync may be too short to catch by polling: then the log must show it
    log = r.log("alpha")
    assert "dcm-resync" in seen or ("dirty regions" in log and "dcm resync complete" in log), (
        f"no dcm resync seen (states {seen}); log tail:\n{log[-2000:]}"
    )
    r.wait_synced()
    sums = r.checksums()
    assert all_equal(sums), sums
    vol = r.connect("alpha")
    ledger.check_reads(vol)
    vol.close()


# ---- hostile messages ---------------------------------------------------------------------

PREFIX = protocol._PREFIX


def raw_header(
    uuid: uuidlib.UUID,
    sender: str,
    *,
    magic: bytes = protocol.MAGIC,
    version: int = protocol.VERSION,
    mtype: int = MsgType.ACK,
    epoch: int = 1,
    flags: int = 0,
) -> bytes:
    name = sender.encode()
    return PREFIX.pack(magic, version, mtype, flags, uuid.bytes, epoch, len(name)) + name


def snapshot(r: LocalResource, node: str) -> dict:
    st = r.status(node)
    return {
        k: st[k]
        for k in (
            "role",
            "epoch",
            "known_epoch",
            "start_lsn",
            "end_lsn",
            "applied_end",
            "following",
            "history",
        )
    }


@pytest.mark.parametrize(
    "target,spoof", [("beta", "alpha"), ("alpha", "beta")], ids=["secondary", "primary"]
)
def test_malformed_and_foreign_messages_are_refused(resource, target, spoof):
    """Garbage, bad headers, truncated bodies, a bad UPDATE crc, a foreign resource's HELLO,
    an unknown sender and an UPDATE with an LSN gap: the daemon stays up, its state and
    volume are unchanged, and its log names each reason."""
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    for i in range(5):
        vol.write(i * 4096, bytes([i + 1]) * 4096)
    end = r.wait_synced()
    r.wait_for(
        lambda: all(r.status(n)["start_lsn"] == end for n in r.nodes), 10, "idle CLEARs to settle"
    )
    before = snapshot(r, target)
    before_sum = r.checksums([target])[target]
    pid = r.pid(target)

    from replengine import config as configmod

    cfg = configmod.load(r.config, node=target, check_local=False)
    uuid, addr = cfg.uuid, cfg.nodes[target].address
    epoch = before["epoch"] or before["known_epoch"]
    good_update = encode(uuid, epoch, spoof, Update(end, epoch, 0, b"x" * 4096))
    u_head = bytes(good_update[0])
    bad_crc = bytearray(u_head)
    struct.pack_into("!I", bad_crc, len(bad_crc) - 12, 0xDEADBEEF)  # the crc field
    hello = Hello(
        role="primary",
        session="evil",
        history=[[epoch + 5, 1]],
        start_lsn=1,
        end_lsn=end + 100,
        applied_end=end + 100,
        digest=cfg.digest,
        volume_size=r.volume_size,
        primary=spoof,
        consistent=True,
        following="",
    )
    foreign = encode(uuidlib.uuid4(), epoch + 5, spoof, hello)
    gap = encode(uuid, epoch, spoof, Update(end + 7, epoch, 0, b"g" * 4096))
    messages = {
        "garbage": [b"\x00garbage\xff" * 3],
        "empty frame": [b""],
        "three frames": [raw_header(uuid, spoof), b"a", b"b"],
        "bad magic": [raw_header(uuid, spoof, magic=b"XXXX") + b"\0" * 16],
        "bad version": [raw_header(uuid, spoof, version=99) + b"\0" * 16],
        "bad type": [raw_header(uuid, spoof, mtype=200) + b"\0" * 16],
        "truncated header": [raw_header(uuid, spoof)[:20]],
        "truncated ACK": [raw_header(uuid, spoof, mtype=MsgType.ACK) + b"\0" * 5],
        "truncated UPDATE": [u_head[:-3], good_update[1]],
        "short UPDATE data": [u_head, b"x" * 100],
        "UPDATE without data": [u_head],
        "UPDATE bad crc": [bytes(bad_crc), good_update[1]],
        "sender mismatch": encode(uuid, epoch, "gamma", Update(end, epoch, 0, b"m" * 4096)),
        "foreign HELLO": foreign,
        "HELLO bad JSON": [raw_header(uuid, spoof, mtype=MsgType.HELLO) + b"{not json"],
        "UPDATE gap": gap,
    }
    ctx = zmq.Context.instance()
    socks = []
    try:
        for ident in (spoof, "mallory"):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.ROUTING_ID, ident.encode())
            s.setsockopt(zmq.LINGER, 0)
            s.connect(f"tcp://{addr}")
            socks.append(s)
        for frames in messages.values():
            socks[0].send_multipart([bytes(f) for f in frames])
        socks[1].send_multipart([bytes(f) for f in encode(uuid, epoch, "mallory", hello)])
        reasons = [
            "bad magic",
            "version 99",
            "unknown message type",
            "shorter than",
            "checksum mismatch",
            "foreign resource",
            "unknown peer",
            "'mallory'",
            "not valid JSON",
            "does not match",
            "without its data frame",
            "expected 1 or 2 frames",
            "ACK body is 5 bytes",
            "UPDATE body is",
            "data frame is 100 bytes",
        ]
        r.wait_for(
            lambda: all(x in r.log(target) for x in reasons),
            10,
            f"{target}'s log to name every reason; missing: "
            f"{[x for x in reasons if x not in r.log(target)]}",
        )
        # a valid message sent after all the bad ones: once it is handled, they all were
        socks[0].send_multipart(
            [bytes(f) for f in encode(uuid, epoch, spoof, protocol.Reject("probe-9z"))]
        )
        r.wait_for(lambda: "probe-9z" in r.log(target), 10, "the probe message to be handled")
    finally:
        for s in socks:
            s.close(0)
    assert r.pid(target) == pid and r.status(target)["pid"] == pid, "the daemon restarted"
    assert "Traceback" not in r.log(target), r.log(target)[-3000:]
    assert snapshot(r, target) == before
    assert r.checksums([target])[target] == before_sum
    # the real peers still see it (writes after a spoofed connection: see the next test)
    r.wait_for(lambda: peer(r, spoof, target)["connected"], 10, f"{spoof} to see {target}")
    vol.close()


def test_update_lost_in_transit_is_resent(resource):
    """An UPDATE the secondary never receives must be sent again, or a sync write hangs.

    Here it is lost by a DEALER that connects to beta with the routing id "alpha": beta's
    ROUTER (ROUTER_HANDOVER) hands the identity to it, so whatever the real alpha sends on its
    old connection is dropped until ZMTP heartbeats replace that connection. Both nodes stay
    alive in each other's eyes throughout (beta's beacons and ACKs reach alpha on another
    connection), so on_sync_loss=degrade does not release the write: only a resend does. The
    same loss happens whenever a TCP connection is replaced with messages queued in it."""
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    vol.write(0, b"a" * 4096)
    r.wait_synced()
    from replengine import config as configmod

    cfg = configmod.load(r.config, node="beta", check_local=False)
    ctx = zmq.Context.instance()
    pool = cf.ThreadPoolExecutor(1)  # not joined on failure: a hung write ends with its client
    try:
        for round_ in range(3):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.ROUTING_ID, b"alpha")
            s.setsockopt(zmq.LINGER, 0)
            s.connect(f"tcp://{cfg.nodes['beta'].address}")
            try:
                tag = f"probe-r{round_}x"
                s.send_multipart(
                    [bytes(f) for f in encode(cfg.uuid, 1, "alpha", protocol.Reject(tag))]
                )
                r.wait_for(lambda t=tag: t in r.log("beta"), 10, "the spoofed connection")
                fut = write_in_thread(pool, r, "alpha", [((round_ + 1) * 4096, b"w" * 4096)])
            finally:
                s.close(0)
            try:
                fut.result(timeout=8)
            except cf.TimeoutError:
                st = r.status("alpha")
                pytest.fail(
                    f"round {round_}: a write has waited 8 s for beta, which is alive "
                    f"and connected (peers.beta = {st['peers']['beta']}); beta has "
                    f"end_lsn {r.status('beta')['end_lsn']}, the primary "
                    f"{st['end_lsn']}: the lost UPDATE was never resent"
                )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    r.wait_synced()
    assert all_equal(r.checksums())
    vol.close()


def test_config_digest_mismatch_peer_is_refused(resource, tmp_path):
    """A node started from a config that differs (another mode for a peer) is refused by the
    others with a reason naming the digest, and nothing is replicated to it."""
    r = resource(THREE_NODES)
    text = r.config.read_text()
    bad = r.workdir / "r0-gamma.toml"
    bad.write_text(text.replace('mode = "sync"', 'mode = "async"', 1))
    r.up("alpha", "beta")
    r.promote("alpha")
    proc = subprocess.run(
        [sys.executable, "-m", "replengine.cli", "up", "--config", str(bad), "--node", "gamma"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # alpha's log also names the digest when gamma's REJECT arrives first: wait for alpha's
    # own refusal, which is what its status shows
    r.wait_for(
        lambda: r.status("alpha")["peers"]["gamma"]["rejected"],
        10,
        "alpha to refuse gamma's config",
    )
    assert "config digest mismatch" in r.status("alpha")["peers"]["gamma"]["rejected"]
    vol = r.connect("alpha")
    vol.write(0, b"d" * 4096)
    vol.close()
    st = r.status("alpha")
    assert st["peers"]["gamma"]["rejected"], st["peers"]["gamma"]
    assert r.status("gamma")["end_lsn"] == 1, "gamma logged data despite being refused"


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"role": ' + b"9" * 5000 + b"}"],
    ids=["deeply-nested-json", "5000-digit-int"],
)
def test_json_bomb_hello_does_not_kill_the_daemon(resource, body):
    """A HELLO whose JSON body makes json.loads raise something other than JSONDecodeError
    (RecursionError, ValueError for a huge integer) must be refused like any malformed
    message -- not take the node down."""
    r = resource(THREE_NODES)
    r.up()
    r.promote("alpha")
    vol = r.connect("alpha")
    vol.write(0, b"j" * 4096)
    end = r.wait_synced()
    r.wait_for(
        lambda: all(r.status(n)["start_lsn"] == end for n in r.nodes), 10, "idle CLEARs to settle"
    )
    before = snapshot(r, "beta")
    pid = r.pid("beta")
    from replengine import config as configmod

    cfg = configmod.load(r.config, node="beta", check_local=False)
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.ROUTING_ID, b"gamma")
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://{cfg.nodes['beta'].address}")
    try:
        s.send_multipart([raw_header(cfg.uuid, "gamma", mtype=MsgType.HELLO) + body])
        s.send_multipart(
            [bytes(f) for f in encode(cfg.uuid, 1, "gamma", protocol.Reject("probe-7q"))]
        )
        r.wait_for(
            lambda: "probe-7q" in r.log("beta") or r.pid("beta") is None or not _alive(pid),
            10,
            "beta to handle the probe after the bomb",
        )
    finally:
        s.close(0)
    log = r.log("beta")
    assert _alive(pid), f"beta died on a malformed HELLO; log tail:\n{log[-1500:]}"
    assert "probe-7q" in log
    assert "malformed message" in log, log[-1500:]
    assert snapshot(r, "beta") == before
    vol.write(4096, b"k" * 4096)
    r.wait_synced()
    vol.close()


def _alive(pid: int | None) -> bool:
    from replengine.demo.localcluster import is_alive

    return pid is not None and is_alive(pid)
