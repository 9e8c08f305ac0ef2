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
    for the CLI to end on quietly with exit code 0 (rich itself would exit with 1), and
    that into a file or a pipe a printed line stays one line (``train ... 2> log``: rich
    would fold it at 80 columns, in the middle of a figure)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError

    def print(self, *objects, soft_wrap: bool | None = None, **kwargs) -> None:
        if soft_wrap is None and not self.is_terminal:
            soft_wrap = True
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


out = PipeConsole(soft_wrap=True, highlight=False)
err = PipeConsole(stderr=True, highlight=False)
