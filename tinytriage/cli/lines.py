"""Output for scripts: one JSON object per line on stdout, errors as plain lines on stderr.

Kept apart from ``tinytriage.cli.render`` so that ``predict --json`` never imports rich
(about 30 ms of a one-photo run); rich is loaded only to colour errors on a terminal.
JSON never contains NaN or Infinity (they become null).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from tinytriage.files import finite_json


def dumps(obj: Any, **kw) -> str:
    return json.dumps(finite_json(obj), allow_nan=False, ensure_ascii=False, **kw)


def write_json_line(obj: Any) -> None:
    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()


def error_line(message: str) -> None:
    if sys.stderr.isatty():
        from tinytriage.cli.consoles import err  # rich: only for a person at a terminal

        if err.is_terminal:
            err.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
            return
    print(f"tinytriage: error: {message}", file=sys.stderr)


def print_prediction_lines(results: Iterable) -> tuple[int, int]:
    """Each result as it arrives: a JSON line on stdout, or an error line on stderr.
    Returns (ok, failed)."""
    from tinytriage.inference.predict import PhotoFailure

    ok = failed = 0
    for r in results:
        if isinstance(r, PhotoFailure):
            failed += 1
            error_line(r.reason)
        else:
            ok += 1
            write_json_line(r.to_json())
    return ok, failed
