"""The command line: parse arguments, call one library function, print its result.

Nothing here computes anything. Heavy modules (NumPy layers, PyTorch, Pillow) are
imported inside the commands that need them, so `tinytriage --help` stays instant and
torch is only ever imported when a torch backend is chosen.

Exit codes: 0 success, 1 a photo/model/dataset error (or any photo in a batch failed),
2 usage error, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from tinytriage import __version__
from tinytriage.errors import TinyTriageError

app = typer.Typer(
    name="tinytriage",
    help="Route support-ticket photos to the right queue with a from-scratch NumPy CNN.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_DEBUG = False


def _version(value: bool) -> None:
    if value:
        print(f"tinytriage {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks for errors."
    ),
    version: bool | None = typer.Option(
        None,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    global _DEBUG
    _DEBUG = debug or bool(os.environ.get("TINYTRIAGE_DEBUG"))


@app.command()
def explain(
    photo: Path | None = typer.Argument(None, help="Photo to explain."),
    demo: bool = typer.Option(
        False, "--demo", help="The worked example on a 4x4 patch, step by step."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print every number as JSON."),
) -> None:
    """Show how the network reaches its decision, from the first kernel to the route."""
    if demo:
        from tinytriage.demo import run_demo
        from tinytriage.render import print_demo

        result = run_demo()
        print_demo(result, as_json=as_json)
        return
    if photo is None:
        raise typer.BadParameter("give a PHOTO, or --demo for the worked example")
    raise TinyTriageError("explaining a photo needs a trained model; not available yet")


def main() -> None:
    """Entry point: run the app, turn library errors into one line on stderr."""
    try:
        app(standalone_mode=False)
    except TinyTriageError as err:
        if _DEBUG:
            raise
        print(f"tinytriage: error: {err}", file=sys.stderr)
        sys.exit(1)
    except (typer.Exit, SystemExit) as err:
        code = getattr(err, "exit_code", getattr(err, "code", 0))
        sys.exit(code if code is not None else 0)
    except typer.Abort:
        print("tinytriage: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("tinytriage: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `tinytriage predict ... | head -1`: the reader left; end quietly.
        _silence_stdout()
        sys.exit(0)
    except Exception as err:  # click usage errors arrive here in standalone_mode=False
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if _DEBUG:
            raise
        print(
            f"tinytriage: internal error: {type(err).__name__}: {err}", file=sys.stderr
        )
        print(
            "  (run with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        sys.exit(1)
    _flush_stdout()


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
