"""The command line: Typer commands (``app``), rich rendering, JSON lines, process handling.

``tinytriage`` (the console script) and ``python -m tinytriage`` run ``entry``: the app,
run by ``process`` (exit codes, one-line errors, Ctrl-C, a reader that left)."""

from tinytriage.cli import process
from tinytriage.cli.app import app


def main() -> None:
    """Run the app, turn library errors into one line on stderr (``process.main``)."""
    process.main(app)


def entry() -> None:
    """The ``tinytriage`` command and ``python -m tinytriage`` (``process.entry``)."""
    process.entry(app)


__all__ = ["app", "entry", "main"]
