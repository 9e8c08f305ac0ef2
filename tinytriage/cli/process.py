"""The process around the commands: exit codes, one-line errors, Ctrl-C, a reader that left.

Exit codes, the same rule for every command:

* 0: success;
* 1: a photo, model file or dataset could not be used (``TinyTriageError``), or any photo
  of a batch failed (the command still does its work with the others, then exits 1);
* 2: usage: an unknown option, a missing argument, or an option's value that cannot work
  (out of range, or naming a layer, class or channel the model does not have:
  ``ConfigError``, shown as click shows its own usage errors);
* 130: interrupted.

The commands (``tinytriage.cli.app``) raise ``ReaderLeft`` and ``Interrupted`` (each is
wrapped in ``ends_cleanly``) and say how the process should end (``show_tracebacks``,
``exit_quickly``); ``main(app)`` runs them and turns whatever comes back into a line on
stderr and an exit code. The app is handed in (``tinytriage.cli`` does it), so this
module imports no command and the dependency runs one way: app -> process.
"""

import functools
import os
import sys

import typer

from tinytriage.errors import ConfigError, TinyTriageError

_debug = False  # --debug or TINYTRIAGE_DEBUG: errors end with their traceback, not one line
_quick_exit = False  # set by predict: see entry()


class ReaderLeft(Exception):
    """stdout's reader went away (``| head -1``): the command ends quietly, exit code 0."""


class Interrupted(Exception):
    """Ctrl-C inside a command: ``main`` says so on stderr, exit code 130."""


def show_tracebacks(on: bool) -> None:
    """``--debug``: let errors raise, with their traceback."""
    global _debug
    _debug = on


def exit_quickly() -> None:
    """For ``predict``: once the command is done, ``entry`` takes the quickest way out."""
    global _quick_exit
    _quick_exit = True


def ends_cleanly(command):
    """The exit-code rule, inside each command (so it holds however the app is run, Typer's
    test runner included): a ``ConfigError`` becomes click's usage error (exit code 2), any
    other ``TinyTriageError`` one line on stderr and exit code 1 (``--debug``: raised, with
    its traceback). A broken pipe becomes ``ReaderLeft`` (as an OSError it would reach
    click, which makes it exit code 1) and Ctrl-C ``Interrupted`` (typer would turn it into
    a silent exit code 130)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            raise ReaderLeft from None
        except KeyboardInterrupt:
            raise Interrupted from None
        except ConfigError as err:
            if _debug:
                raise
            raise typer.BadParameter(str(err), param_hint=err.option) from None
        except TinyTriageError as err:
            if _debug:
                raise
            from tinytriage.cli.lines import error_line

            error_line(str(err))
            raise typer.Exit(1) from None

    return run


def entry(app: typer.Typer) -> None:
    """The ``tinytriage`` command and ``python -m tinytriage``: ``main(app)``, and after a
    ``predict``, the quickest way out of the process.

    A Python process that has loaded NumPy, Pillow and rich takes 30-50 ms to end on the
    2-core machine (finalizing every module and freeing every object), a fifth of a
    one-photo predict. predict writes nothing but stdout and stderr, so once both are
    flushed there is nothing left to finish: it leaves by ``os._exit`` with its exit code.
    Every other command, a run that loaded torch (its exit handlers stay), and ``main()``
    called from Python end as usual."""
    code: int | str | None = 0
    try:
        main(app)
    except SystemExit as done:
        code = done.code
    if not (_quick_exit and isinstance(code, int | None) and "torch" not in sys.modules):
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader left (| head), or the stream is closed
            pass
    os._exit(code or 0)


def main(app: typer.Typer) -> None:
    """Run the app, turn library errors into one line on stderr."""
    try:
        # standalone_mode=False: errors come back to us; typer.Exit(n) comes back as n
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            _flush_stdout()
            sys.exit(rc)
    except TinyTriageError as err:
        if _debug:
            raise
        print(f"tinytriage: error: {err}", file=sys.stderr)
        sys.exit(1)
    except (typer.Exit, SystemExit) as err:
        code = getattr(err, "exit_code", getattr(err, "code", 0))
        _flush_stdout()  # now, so that a reader gone away (| head) ends it quietly
        sys.exit(code if code is not None else 0)
    except typer.Abort:
        print("tinytriage: aborted", file=sys.stderr)
        sys.exit(130)
    except (KeyboardInterrupt, Interrupted):
        print("tinytriage: interrupted", file=sys.stderr)
        sys.exit(130)
    except (BrokenPipeError, ReaderLeft):
        # `tinytriage predict ... | head -1`: the reader left; end quietly.
        _silence_stdout()
        sys.exit(0)
    except Exception as err:
        # usage errors (click's, or the click vendored by newer Typer) arrive here in
        # standalone_mode=False: they know how to show themselves and their exit code (2)
        if hasattr(err, "show") and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            sys.exit(err.exit_code)
        if _debug:
            raise
        print(f"tinytriage: internal error: {type(err).__name__}: {err}", file=sys.stderr)
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
