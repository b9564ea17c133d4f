"""replctl: the operator's command line."""

from replengine.cli.main import main

__all__ = ["main"]
