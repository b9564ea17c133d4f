"""CRC32C (Castagnoli), the checksum of every SRL record, dirty map and wire frame.

The function is the `crc32c` package's C implementation. Why not just ``import crc32c``:
from version 2.4 on, that package's ``__init__`` asks ``importlib.metadata`` for its own
version, which imports zipfile, email and more: about 50 ms of a daemon start with a cold
page cache (a node booting, `replctl up` after a failover), a sixth of the time from
`replctl up` to a secondary back in sync after a short absence. So the package's compiled
module is loaded by itself when the package is laid out that way, and the package is
imported as usual otherwise (Debian 12's python3-crc32c 2.3 is a single compiled module,
which imports nothing).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from collections.abc import Callable

__all__ = ["crc32c"]


def _compiled() -> Callable[..., int] | None:
    """The package's ``_crc32c`` extension, loaded without running the package's __init__."""
    spec = importlib.util.find_spec("crc32c")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_crc32c" + suffix)
            if not os.path.exists(path):
                continue
            loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", path)
            sub = importlib.util.spec_from_loader("crc32c._crc32c", loader)
            if sub is None:
                return None
            module = importlib.util.module_from_spec(sub)
            loader.exec_module(module)
            return module.crc32c
    return None


def _load() -> Callable[..., int]:
    found = _compiled()
    if found is not None:
        return found
    import crc32c as package

    return package.crc32c


crc32c: Callable[..., int] = _load()
"""``crc32c(data, value=0) -> int`` over any bytes-like ``data``, as the package's."""
