"""Starting a file's writeback early, without waiting for it.

The applier writes records to the volume through the page cache and makes them durable
only when it clears the log (one fdatasync per clear, not per write). While clears wait,
for a secondary that is away or a lag being caught up, the dirty pages pile up, and the
next clear's fdatasync writes them all in one burst: on a node whose SRL shares the disk,
the log's own fdatasyncs wait behind it (measured: a 20 000-record catch-up took 0.40 to
0.54 s with the primary's and the sync secondary's flushes of 80 MiB each running, 0.27 s
once those were written beforehand). sync_file_range(2) with SYNC_FILE_RANGE_WRITE starts
that writing as the pages are made, so the disk takes it at its pace and the fdatasync
finds little left. It gives no durability: only fdatasync does (flush()).

Python's os module has no sync_file_range; glibc does, reached through ctypes (a foreign
call that releases the GIL). Where it is missing, writeback is left to the kernel, as
before.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

__all__ = ["start_writeback"]

SYNC_FILE_RANGE_WRITE = 2


@functools.lru_cache(maxsize=1)
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int) -> bool:
    """Start writing ``fd``'s dirty pages (the whole file); False if it could not be asked
    (no sync_file_range here, or the call failed: flush() reports a real I/O error)."""
    fn = _sync_file_range()
    return fn is not None and fn(fd, 0, 0, SYNC_FILE_RANGE_WRITE) == 0
