"""Chunk digests for block copies: a chunk the receiver already holds is not sent.

Both ends cut the ranges the same way (each range in ``chunk``-byte pieces from its start,
the last one shorter), so a list of digests needs no offsets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

#: bytes of one chunk digest (blake2b): a collision needs 2**64 work, not chance
DIGEST_SIZE = 16


def chunks(ranges: Iterable[tuple[int, int]], chunk: int) -> Iterator[tuple[int, int]]:
    for off, length in ranges:
        pos = 0
        while pos < length:
            n = min(chunk, length - pos)
            yield off + pos, n
            pos += n


def digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


__all__ = ["DIGEST_SIZE", "chunks", "digest"]
