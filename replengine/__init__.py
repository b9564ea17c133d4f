"""replengine: block-volume replication with log-diff fast failover."""

from __future__ import annotations


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, the one version there is);
    from a bare source tree on PYTHONPATH, pyproject.toml itself."""
    import importlib.metadata

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


def __getattr__(name: str) -> str:
    # looked up on first use: importlib.metadata costs ~25 ms, paid by every replctl and
    # daemon start (and every Pacemaker monitor call) that never prints a version
    if name == "__version__":
        version = _version()
        globals()["__version__"] = version
        return version
    raise AttributeError(f"module 'replengine' has no attribute {name!r}")
