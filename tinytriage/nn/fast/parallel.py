"""Threads: how the fast layers use more than one core.

NumPy runs each elementwise operation (a copy, a ``maximum``, a BatchNorm pass) on one core,
and only BLAS (the matrix multiplies) starts threads of its own. But NumPy lets go of
Python's global lock while it works on a large array, so Python threads can run NumPy
operations at the same time. The fast layers cut their work into tasks (a few images of a
convolution, a band of rows of a BatchNorm pass) and share them out over
``get_num_threads()`` threads; ``set_num_threads(n)`` changes that number, as
``torch.set_num_threads`` does for PyTorch. The default follows the same rule as PyTorch's:
``OMP_NUM_THREADS`` if set, else the cores this process may use. (``OPENBLAS_NUM_THREADS``
is BLAS's own count, which these threads do not use: ``tinytriage predict`` sets it to 1
when it is unset.)

Inside those threads BLAS runs single-threaded: n workers each calling an n-thread BLAS
would ask for n*n threads, and BLAS threads wait for each other at the end of every call,
which on a busy machine costs more than the multiply (hundreds of small multiplies per
step: seconds). A call with a single task (one photo through a small layer), or with one
thread, runs on the calling thread with BLAS single-threaded too: a task holds a few MB,
too little for BLAS's threads to pay for waking up (one 96x96 photo's forward pass: 3 ms
instead of 8-15 ms). That switch is handed in by ``set_blas_limit`` (the NumPy engine
gives it ``threadpoolctl``'s; ``nn`` itself imports NumPy alone); without one, tasks that
multiply matrices run on the calling thread (BLAS then uses its own threads, as the
environment says), and only the elementwise work is shared out.

The results do not depend on the thread count: the tasks are cut by size alone, each
writes its own slice of the output, and partial sums are added in task order, not in the
order threads finish.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

TASK_BYTES = 2**22  # about 4 MB of input per task: enough work that handing it to a thread
# costs little next to it, few enough bytes that a 38 MB map makes several tasks

_threads: int | None = None  # None until first asked for (get_num_threads)
_pool: ThreadPoolExecutor | None = None
_blas_limit: Callable[[], AbstractContextManager] | None = None  # see set_blas_limit


def default_num_threads() -> int:
    """``OMP_NUM_THREADS`` if set, else the cores this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_num_threads(n: int) -> None:
    """Share the fast layers' work out over ``n`` threads (1: all on the calling thread)."""
    global _threads, _pool
    if n < 1:
        raise ValueError(f"set_num_threads: need at least 1 thread, got {n}")
    if _pool is not None:
        _pool.shutdown()
    _threads, _pool = n, (ThreadPoolExecutor(n, thread_name_prefix="tinytriage") if n > 1 else None)


def get_num_threads() -> int:
    if _threads is None:
        set_num_threads(default_num_threads())
    return _threads


def _forget_pool_after_fork() -> None:
    """A forked child has no threads: let it start its own pool."""
    global _threads, _pool
    _threads, _pool = None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def set_blas_limit(limit: Callable[[], AbstractContextManager] | None) -> None:
    """``limit()`` gives a context in which BLAS uses one thread (``threadpoolctl``'s
    ``ThreadpoolController().limit(limits=1, user_api="blas")``); None: no way to."""
    global _blas_limit
    _blas_limit = limit


def _blas_single_threaded():
    """Context in which BLAS uses one thread; None when that cannot be arranged."""
    return None if _blas_limit is None else _blas_limit()


def parallel_map(fn: Callable[[Any], Any], tasks: Iterable, *, blas: bool = False) -> list:
    """``[fn(t) for t in tasks]``, the tasks shared out over the threads (each thread takes
    the next task when it is done, so a thread slowed by other work on the machine holds
    nothing up). ``blas``: the tasks multiply matrices (see the module docstring)."""
    tasks = list(tasks)
    guard = _blas_single_threaded() if blas else nullcontext()
    if guard is None:  # no way to make BLAS single-threaded: stay on this thread
        return [fn(t) for t in tasks]
    with guard:
        if get_num_threads() == 1 or len(tasks) < 2:
            return [fn(t) for t in tasks]
        return list(_pool.map(fn, tasks))


def split(n: int, item_bytes: int, task_bytes: int | None = None) -> list[slice]:
    """``range(n)`` cut into consecutive slices of about ``task_bytes`` (default
    ``TASK_BYTES``; each item ``item_bytes``). The cut depends on the sizes only, never on
    the thread count."""
    step = max(1, (task_bytes or TASK_BYTES) // max(1, item_bytes))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]
