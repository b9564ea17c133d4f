"""node.device_io alone: when a device flush may complete without crossing into the loop.

The promise (docs/device.md): a flush completes once every write submitted before it has
completed. A write completes only once durable, so a flush with no write in flight is done at
once in the frontend's thread; one with a write in flight must wait for it, in the loop.
The node here is a stand-in that records what the loop is handed (a unit test of this one
module; tests/test_device.py runs the real device).
"""

from __future__ import annotations

from types import SimpleNamespace

from replengine.node.device_io import DeviceIO


class Ops:
    def __init__(self) -> None:
        self.writes: list[int] = []
        self.flushes: list[int] = []

    def op_write(self, req, doc, data) -> None:  # type: ignore[no-untyped-def]
        self.writes.append(req.req_id)

    def op_flush(self, req, doc, data) -> None:  # type: ignore[no-untyped-def]
        self.flushes.append(req.req_id)


def device() -> tuple[DeviceIO, Ops]:
    ops = Ops()
    node = SimpleNamespace(
        ops=ops,
        transport=SimpleNamespace(wake=lambda: None),
        cfg=SimpleNamespace(name="r0"),
        me="alpha",
    )
    d = DeviceIO(node)  # type: ignore[arg-type]
    d.open()
    return d, ops


def test_a_flush_waits_for_a_write_in_flight_and_not_after_it_is_answered() -> None:
    d, ops = device()
    assert d.flushed(), "nothing written: a flush has nothing to wait for"

    answers: list[str | None] = []
    d.submit_write(0, b"x" * 4096, answers.append)
    assert not d.flushed(), "a write handed in and not answered: the flush must wait"
    d.drain()  # the loop takes it into the pipeline
    assert ops.writes == [1] and not d.flushed()

    flushed: list[str | None] = []
    d.submit_flush(flushed.append)  # so the frontend hands the flush to the loop
    d.drain()
    assert ops.flushes == [2] and flushed == []

    d.on_reply({"id": 1, "ok": True})  # the write is durable: answered
    assert answers == [None]
    assert d.flushed()
    d.on_reply({"id": 2, "ok": True})
    assert flushed == [None]


def test_a_failed_write_is_answered_too_and_a_fenced_device_never_flushes_at_once() -> None:
    d, _ = device()
    answers: list[str | None] = []
    d.submit_write(0, b"x" * 4096, answers.append)
    d.drain()
    d.on_reply({"id": 1, "ok": False, "error": "SRL full"})
    assert answers == ["SRL full"]
    assert d.flushed(), "a failed write is answered: nothing is in flight"

    d.submit_write(4096, b"y" * 4096, answers.append)
    d.fence()  # queued, not yet in the pipeline: failed at once
    assert answers[-1] is not None and "fenced" in answers[-1]
    assert not d.flushed(), "fenced: a flush goes to submit_flush, which refuses it"
    refused: list[str | None] = []
    d.submit_flush(refused.append)
    assert refused and refused[0] is not None and "fenced" in refused[0]
