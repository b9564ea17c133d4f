"""Serving a promoting peer's pull, against fakes: a bounded window paced by its ACKs, never
past this node's durable end, never from before its log's start without saying so."""

from __future__ import annotations

from replengine.log.record import Record
from replengine.node import pulls
from replengine.node.pulls import PullServer


def server(start=1, end=10_000, refuse_at=None):
    sent: list[int] = []

    def send(peer, rec):
        if refuse_at and rec.lsn == refuse_at[0]:
            refuse_at.pop(0)
            return False
        sent.append(rec.lsn)
        return True

    srv = PullServer(
        bounds=lambda: (start, end), read=lambda lsn: Record(lsn, 1, 0, b"r" * 16), send=send
    )
    return srv, sent


def test_window_then_acks_move_it_and_the_job_ends_at_its_end() -> None:
    srv, sent = server()
    srv.serve("gamma", 1, 3000)
    assert sent == list(range(1, 1 + pulls.PULL_WINDOW))
    srv.on_ack("gamma", 1 + pulls.PULL_WINDOW)
    srv.pump()
    assert sent[-1] == 2999
    srv.on_ack("gamma", 3000)
    assert "gamma" not in srv.jobs


def test_never_past_the_durable_end() -> None:
    srv, sent = server(end=50)
    srv.serve("gamma", 40, 100)
    assert sent == list(range(40, 50))


def test_a_refused_send_is_retried_in_order() -> None:
    srv, sent = server(refuse_at=[5])
    srv.serve("gamma", 1, 8)
    srv.pump()
    assert sent == [1, 2, 3, 4, 5, 6, 7]


def test_a_resend_asked_for_records_no_longer_in_the_log_ends_the_pull() -> None:
    """gamma served beta's pull, then was promoted itself and cleared its log; beta's late
    NACK asked for LSN 3704 again. Read, it crashed gamma's daemon (seed 11102 round 4):
    the pull ends instead, and the node goes on."""
    bounds = [1, 10_000]
    sent: list[int] = []
    srv = PullServer(
        bounds=lambda: tuple(bounds),
        read=lambda lsn: Record(lsn, 1, 0, b"r") if lsn >= bounds[0] else 1 / 0,
        send=lambda peer, rec: sent.append(rec.lsn) or True,
    )
    srv.serve("beta", 3700, 3706)
    bounds[0] = 3777  # cleared here since
    srv.resend_from("beta", 3704)
    assert "beta" not in srv.jobs and sent == list(range(3700, 3706))


def test_pulls_end_when_the_node_becomes_primary() -> None:
    srv, sent = server()
    srv.serve("beta", 1, 3000)
    srv.cancel_all("gamma is primary now")
    srv.on_ack("beta", 2)
    srv.pump()
    assert not srv.jobs and len(sent) == pulls.PULL_WINDOW
