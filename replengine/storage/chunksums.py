"""Chunk digests for block copies: a chunk the receiver already holds is not sent.

Both ends cut the ranges the same way (each range in ``chunk``-byte pieces from its start,
the last one shorter), so a list of digests needs no offsets.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator

#: bytes of one chunk digest (blake2b): a collision needs 2**64 work, not chance
DIGEST_SIZE = 16
#: the largest piece one digest may cover: each end reads (and holds) a piece at once
MAX_CHUNK = 8 << 20


def chunks(ranges: Iterable[tuple[int, int]], chunk: int) -> Iterator[tuple[int, int]]:
    for off, length in ranges:
        pos = 0
        while pos < length:
            n = min(chunk, length - pos)
            yield off + pos, n
            pos += n


def count(ranges: Iterable[tuple[int, int]], chunk: int) -> int:
    """How many pieces chunks() cuts these ranges into."""
    return sum(-(-length // chunk) for _, length in ranges if length > 0)


class ChunkDigests:
    """One peer's digests of the chunks of some ranges, looked up by (offset, length).

    Kept packed as they arrive (16 bytes per chunk, in chunks() order), with one row per
    range to find a chunk's place: a 1 TiB volume's digests are 16 MiB here, where a dict
    keyed by (offset, length) held 1 Mi entries and cost the copy's source ~216 MiB (twice
    that with the scan's own copy of it).

    ``get`` answers as such a dict would: the digest of exactly that piece, or None when
    the ranges have no such piece (the chunk is then copied, which is always safe).
    """

    def __init__(self, ranges: Iterable[tuple[int, int]], packed: bytes, chunk: int) -> None:
        rows: list[tuple[int, int, int]] = []  # (start, length, index of its first chunk)
        index = 0
        for off, length in ranges:
            if length > 0:
                rows.append((off, length, index))
                index += -(-length // chunk)
        if index * DIGEST_SIZE != len(packed):
            raise ValueError(f"{len(packed)} bytes of digests for {index} chunks")
        rows.sort()
        self._rows = rows
        self._starts = [r[0] for r in rows]
        self._packed = bytes(packed)
        self.chunk = chunk

    def __len__(self) -> int:
        return len(self._packed) // DIGEST_SIZE

    def get(self, offset: int, length: int) -> bytes | None:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0:
            return None
        start, size, first = self._rows[i]
        pos = offset - start
        if pos >= size or pos % self.chunk or length != min(self.chunk, size - pos):
            return None
        k = (first + pos // self.chunk) * DIGEST_SIZE
        return self._packed[k : k + DIGEST_SIZE]


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


__all__ = [
    "DIGEST_SIZE",
    "MAX_CHUNK",
    "ChunkDigests",
    "chunks",
    "count",
    "digest",
    "is_zero",
    "zero_digest",
]
