"""The command line: Typer commands (``app``), rich rendering, JSON lines, process handling.

``tinytriage`` (the console script) and ``python -m tinytriage`` run ``entry``."""

from tinytriage.cli.app import app, entry, main

__all__ = ["app", "entry", "main"]
