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


#: digests of all-zero chunks by length: a blank or sparse volume is mostly zeros, and
#: comparing with zeros (memcmp) is an order of magnitude cheaper than hashing them
_ZEROS: dict[int, tuple[bytes, bytes]] = {}


def _zero(n: int) -> tuple[bytes, bytes]:
    zero = _ZEROS.get(n)
    if zero is None:
        z = bytes(n)
        zero = _ZEROS[n] = (z, hashlib.blake2b(z, digest_size=DIGEST_SIZE).digest())
    return zero


def zero_digest(n: int) -> bytes:
    """The digest of ``n`` zero bytes."""
    return _zero(n)[1]


def is_zero(data: bytes | memoryview) -> bool:
    # (a memoryview compares item by item: compare its bytes)
    return (data if isinstance(data, bytes) else bytes(data)) == _zero(len(data))[0]


def digest(data: bytes | memoryview) -> bytes:
    if len(data) <= 4 << 20 and is_zero(data):
        return zero_digest(len(data))
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


__all__ = ["DIGEST_SIZE", "chunks", "digest", "is_zero", "zero_digest"]
