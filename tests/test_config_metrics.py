"""The `metrics` key of a node's table: off by default, "host:port" (a wildcard host allowed:
it is where this node listens for scrapes), anything else a file:line error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import base, expect_error, files, line_of, write  # noqa: F401

from replengine import config


def with_metrics(base: str, value: str) -> str:  # noqa: F811
    return base.replace('mode = "sync"\n', f'mode = "sync"\nmetrics = {value}\n', 1)


def test_off_by_default(tmp_path: Path, base: str) -> None:  # noqa: F811
    cfg = config.load(write(tmp_path, base), node="alpha")
    assert cfg.local.metrics is None and cfg.nodes["beta"].metrics is None


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ('"127.0.0.1:9790"', "127.0.0.1:9790"),
        ('"0.0.0.0:9790"', "0.0.0.0:9790"),
        ('"[::]:9790"', "[::]:9790"),
        ('"[fd00::0:1]:9790"', "[fd00::1]:9790"),
        ('"Node-A.example.:9790"', "node-a.example:9790"),
    ],
)
def test_accepted(tmp_path: Path, base: str, value: str, canonical: str) -> None:  # noqa: F811
    cfg = config.load(write(tmp_path, with_metrics(base, value)), node="alpha")
    assert cfg.local.metrics == canonical


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('"9790"', 'expected "host:port"'),
        ('"127.0.0.1:"', "is not a number"),
        ('"127.0.0.1:70000"', "out of range"),
        ('"fd00::1:9790"', "must be in brackets"),
        ('"bad host:9790"', "not a valid host name"),
        ("9790", 'expected a "host:port" string'),
    ],
)
def test_refused(tmp_path: Path, base: str, value: str, fragment: str) -> None:  # noqa: F811
    text = with_metrics(base, value)
    path = write(tmp_path, text)
    msg = expect_error(path, line_of(text, "metrics ="), "nodes.alpha.metrics", fragment)
    assert len(msg.splitlines()) == 1, msg


def test_not_in_the_digest(tmp_path: Path, base: str) -> None:  # noqa: F811
    """Where a node serves its metrics is its own business: nodes agree without it."""
    plain = config.load(write(tmp_path, base, "a.toml"), node="alpha")
    metered = config.load(
        write(tmp_path, with_metrics(base, '"127.0.0.1:9790"'), "b.toml"), node="alpha"
    )
    assert plain.digest == metered.digest
