"""The rich consoles every printer shares: ``out`` for results (stdout), ``err`` for
progress, warnings and errors (stderr).

Apart from ``render`` so that ``lines`` (JSON lines, which ``render`` imports) can colour
an error on a terminal without importing the renderers: the imports run one way,
render -> lines -> consoles.
"""

from __future__ import annotations

from rich.console import Console


class PipeConsole(Console):
    """rich's Console, except that a broken pipe (``| head -1``) stays a BrokenPipeError
    for the CLI to end on quietly with exit code 0; rich itself would exit with 1."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


out = PipeConsole(soft_wrap=True, highlight=False)
err = PipeConsole(stderr=True, highlight=False)
