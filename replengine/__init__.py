"""replengine: block-volume replication with log-diff fast failover."""

from __future__ import annotations

import importlib.metadata


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, the one version there is);
    from a bare source tree on PYTHONPATH, pyproject.toml itself."""
    try:
        return importlib.metadata.version("replengine")
    except importlib.metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        try:
            with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
                return str(tomllib.load(f)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


__version__ = _version()
