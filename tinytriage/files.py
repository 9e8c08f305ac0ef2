"""Files written safely, and JSON that any strict reader accepts.

``atomic_write_bytes`` is how every file tinytriage writes reaches the disk (model files,
checkpoints, metrics, plots): a crash, a full disk or a second Ctrl-C leaves the previous
file intact and no partial file under the final name.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from tinytriage.errors import ModelFileError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Temporary file in the same folder, write, flush, fsync, rename over ``path``.

    SIGINT is held back while the write runs (a second Ctrl-C then stops the program only
    after the file is whole); on any error the temporary file is removed and the previous
    file at ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with _sigint_deferred():
            # mkstemp makes the file private (0600); give it the usual mode for new files
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ModelFileError(
            f"{path}: could not write ({err.strerror or err}); the previous file is unchanged"
        ) from err
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


@contextlib.contextmanager
def _sigint_deferred():
    """Hold SIGINT until the block ends, then deliver it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def finite_json(obj: Any) -> Any:
    """Strict-JSON-safe copy: NaN/Inf floats -> None, tuples -> lists, NumPy -> Python.

    Used for model-file headers and for every ``--json`` output (``tinytriage.cli.lines``).
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars
        return finite_json(obj.tolist())
    return obj
