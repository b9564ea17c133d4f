"""The always-on part of the fuzzers (tests/fuzz/targets.py): a few thousand parser
executions per run, derandomized so a run is repeatable; `python -m tests.fuzz.run` runs
the same targets for millions. Below them, the crashes the fuzzers found, as plain tests."""

from __future__ import annotations

import struct
import uuid

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings

from replengine.errors import SRLCorruptError
from replengine.log import srl_format as fmt
from replengine.log.srl import SRL
from tests.fuzz.targets import EXECUTIONS, SRL_SIZE, TARGETS

EXAMPLES = {
    "wire": 300,
    "srl-header": 300,
    "srl-superblock": 200,
    "srl-open": 60,
    "config": 150,
    "config-bytes": 60,
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fuzz_target(name: str) -> None:
    strategy, target = TARGETS[name]
    before = sum(EXECUTIONS.values())

    @settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def fuzz(inp: object) -> None:
        target(inp)

    fuzz()
    assert sum(EXECUTIONS.values()) - before >= EXAMPLES[name]


def _damage_resource_name(path, value: bytes) -> None:
    """Set the resource name of both superblock copies, CRCs fixed: a copy that checks out
    but names what no superblock can hold."""
    with open(path, "r+b") as f:
        for slot in range(fmt.SB_COPIES):
            f.seek(slot * fmt.SB_SIZE)
            sb = bytearray(f.read(fmt.SB_SIZE))
            sb[40:104] = value.ljust(64, b"\0")[:64]
            struct.pack_into("<I", sb, fmt.SB_SIZE - 4, crc32c.crc32c(bytes(sb[:-4])))
            f.seek(slot * fmt.SB_SIZE)
            f.write(sb)


@pytest.mark.parametrize("name", [b"", b"\xff" * 64], ids=["empty", "not-utf8"])
def test_superblock_with_unwritable_name_is_corrupt_not_a_crash(tmp_path, name: bytes) -> None:
    """Found by the srl-open fuzzer: a superblock copy whose CRC is right but whose resource
    name is empty (or decodes to more than 64 bytes) made SRL.open fail with ValueError
    when recovery wrote the superblock back. It is SRLCorruptError now, naming the file."""
    path = tmp_path / "srl"
    with open(path, "wb") as f:
        f.truncate(SRL_SIZE)
    SRL.create(path, resource="r0", uuid=uuid.uuid4(), node="alpha").close()
    _damage_resource_name(path, name)
    with pytest.raises(SRLCorruptError, match=f"{path}: superblock copy . is damaged"):
        SRL.open(path)
