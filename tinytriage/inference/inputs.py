"""Inputs: what ``predict`` is asked to look at, as a stream of paths.

Each argument is a file, a folder (its images, ``recursive`` for subfolders), a glob, or
``-`` for paths read from stdin (one per line, or NUL-separated). Paths are produced
lazily, in a stable order; an argument that names nothing (a missing file, a glob that
matches nothing, a folder without photos) becomes a ``PhotoFailure`` in its place, so one
bad argument never stops a batch and is never silent.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tinytriage.errors import TinyTriageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class PhotoFailure:
    """A photo that could not be predicted, and why."""

    path: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.reason}


def expand_inputs(
    args: list[str], *, recursive: bool = False, null: bool = False, stdin: TextIO | None = None
) -> Iterator[str | PhotoFailure]:
    """Each argument is a file, a folder (its images; ``recursive`` for subfolders), a glob,
    or ``-`` for paths read from stdin (one per line, or NUL-separated with ``null``)."""
    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin
            empty = True
            for path in _read_paths(stream, null):
                empty = False
                yield path
            if empty:  # e.g. a `find` upstream that found nothing: said, as an empty folder is
                yield PhotoFailure(arg, "no photo paths on stdin" + (" (NUL-separated, -0)" if null else ""))
            continue
        p = Path(arg)
        if p.is_dir():
            yield from _photos_in(p, arg, recursive)
        elif p.exists() or p.is_symlink():
            yield arg
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=recursive))
            if not matches:
                yield PhotoFailure(arg, f"{arg}: no file matches this pattern")
            for m in matches:
                if Path(m).is_dir():
                    yield from _walk(Path(m), recursive)
                else:
                    yield m
        else:
            yield PhotoFailure(arg, f"{arg}: file not found")


def _read_paths(stream: TextIO, null: bool) -> Iterator[str]:
    if null:
        data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
        if isinstance(data, bytes):
            data = os.fsdecode(data)
        yield from (p for p in data.split("\0") if p)
        return
    for line in stream:
        line = line.rstrip("\r\n")
        if line:
            yield line


def _photos_in(folder: Path, arg: str, recursive: bool) -> Iterator[str | PhotoFailure]:
    """The photos of a folder; none: a failure that says so, and where they may be instead."""
    empty = True
    for path in _walk(folder, recursive):
        empty = False
        yield path
    if empty:
        deeper = not recursive and next(_walk(folder, True), None) is not None
        yield PhotoFailure(arg, f"no photos found in {arg}" + (" (photos in subfolders: add -r)" if deeper else ""))


def _walk(root: Path, recursive: bool) -> Iterator[str]:
    """Images under a folder, sorted; never follows folder symlinks (no symlink loops)."""
    if not recursive:
        for p in sorted(root.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
                yield str(p)
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                yield os.path.join(dirpath, name)


def load_routes(path: str | os.PathLike) -> dict[str, str]:
    """A routes TOML file: ``[routes]`` table (or top-level keys) mapping class -> queue."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise TinyTriageError(f"{path}: routes file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise TinyTriageError(f"{path}: not valid TOML ({err})") from None
    table = data.get("routes", data)
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise TinyTriageError(f'{path}: expected a [routes] table of class = "queue" strings')
    return {str(k): v for k, v in table.items()}
