"""Memory layout and reused buffers: the two ideas behind the fast layers.

**Channels-last inside, NCHW at the API.** Every layer takes and returns arrays of shape
(N, C, H, W), as PyTorch does. How those numbers sit in memory is a separate choice: the fast
layers keep them *channels-last*, i.e. in an (N, H, W, C) buffer, and hand out the
(N, C, H, W) view ``buffer.transpose(0, 3, 1, 2)`` (PyTorch calls this
``torch.channels_last``). Why: a convolution's window at one position is then KW*C numbers in
a row of memory, and its output (N*H*W, O) comes straight out of one matrix multiply, with no
transpose afterwards. The next layer asks for ``channels_last(x)`` and gets that buffer back
for free; an ordinary C-contiguous NCHW array (a batch of photos, a user's input) costs one
copy.

**Reused buffers.** A training step of the CNN makes dozens of 10-40 MB arrays and frees them
again. glibc's malloc gives blocks that big back to the operating system when they are freed
(``mmap``/``munmap``), so the next step gets fresh pages and pays a page fault per 4 KiB the
first time it writes them: for the first stage's 38 MB maps that costs about as much as the
arithmetic on them. ``MALLOC_MMAP_THRESHOLD_`` and friends could change that for the whole
process; instead the fast layers take their big arrays from ``empty``, which keeps every
array it made and hands it out again once nothing refers to it any more:

* Nothing refers to it: no variable, no layer's saved forward pass, no view of it (a view
  keeps its base alive). CPython's reference count says so exactly, so an array you still
  hold is never handed out again: ``y1 = conv(x1); y2 = conv(x2)`` gives two arrays.
* Backward lets go of what forward saved (``take_cache``), so in a training step the
  gradients reuse the activations' memory, and the next step reuses all of it: after the
  first step, no big allocation at all.
* Kept arrays stay with the process (that is the point); the pool remembers the
  ``POOL_SHAPES`` shapes asked for most recently and lets older ones go.

Each layer's small private buffers (im2col columns, a padded copy whose border is written
once) live in its ``Workspace``.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np


def channels_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> the (N, H, W, C) C-contiguous array of the same numbers.

    A view (no copy) when ``x`` is already a channels-last view, as the fast layers return."""
    x_cl = x.transpose(0, 2, 3, 1)
    return x_cl if x_cl.flags.c_contiguous else np.ascontiguousarray(x_cl)


def nchw(x_cl: np.ndarray) -> np.ndarray:
    """(N, H, W, C) buffer -> its (N, C, H, W) view, the shape every layer hands out."""
    return x_cl.transpose(0, 3, 1, 2)


def layout(a: np.ndarray) -> str | None:
    """ "C" for a C-contiguous array, "channels-last" for a 4-D channels-last view, else None."""
    if a.flags.c_contiguous:
        return "C"
    if a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous:
        return "channels-last"
    return None


def memory_order(a: np.ndarray) -> np.ndarray:
    """The numbers of ``a`` as a 1-D view, in the order they lie in memory (see ``layout``)."""
    return (a if layout(a) == "C" else a.transpose(0, 2, 3, 1)).reshape(-1)


def channel_sums(x_cl: np.ndarray) -> np.ndarray:
    """Per-channel sums of a channels-last (N, H, W, C) array: (C,).

    Summed over (N*H, W*C) rows first, then folded: numpy adds the rows of a 2-D array one at a
    time, the whole row as one vectorised loop, so rows of W*C numbers run at memory speed
    where (N*H*W, C) rows of 16 would spend their time starting loops."""
    C = x_cl.shape[-1]
    return x_cl.reshape(-1, x_cl.shape[-2] * C).sum(axis=0).reshape(-1, C).sum(axis=0)


# -- the pool of reused arrays ------------------------------------------------------------
POOL_SHAPES = 32  # (shape, dtype) pairs remembered; a training step of the CNN uses about 12


def _refcount(arrays: list, i: int) -> int:
    return sys.getrefcount(arrays[i])


def _idle_refcount() -> int:
    """References to an array that only the pool holds, counted the way ``empty`` counts
    them (measured, not assumed: the number differs between Python versions)."""
    arrays = [np.empty(0)]
    return _refcount(arrays, 0)


_IDLE = _idle_refcount()
_pool: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()  # (shape, dtype) -> arrays, least recent first
_lock = threading.Lock()


def empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, but an array made earlier that nothing refers to any more
    when there is one (see the module docstring)."""
    key = (tuple(shape), np.dtype(dtype))
    with _lock:
        arrays = _pool.setdefault(key, [])
        _pool.move_to_end(key)
        for i in range(len(arrays)):
            if _refcount(arrays, i) == _IDLE:
                return arrays[i]
        a = np.empty(*key)
        arrays.append(a)
        while len(_pool) > POOL_SHAPES:
            _pool.popitem(last=False)  # the least recently used shape
        return a


def empty_like(x: np.ndarray, dtype=None) -> np.ndarray:
    """``empty`` with the shape of ``x`` and, for a channels-last (N, C, H, W) view, its
    layout too, so that elementwise work on the two runs through memory in order."""
    dtype = x.dtype if dtype is None else dtype
    if layout(x) == "channels-last":
        N, C, H, W = x.shape
        return nchw(empty((N, H, W, C), dtype))
    return empty(x.shape, dtype)


def release_pool() -> None:
    """Forget every kept array (each is freed once nothing else holds it): for tests and
    for measuring a fresh start."""
    with _lock:
        _pool.clear()


def pooled_bytes() -> int:
    """Memory the pool keeps, in use or not."""
    with _lock:
        return sum(a.nbytes for arrays in _pool.values() for a in arrays)


class Workspace:
    """One layer's private buffers, by name: the same array every call with the same
    shape. ``fill`` sets it only when it is made, for buffers whose border (zeros, or -inf
    for max pooling) the layer never writes."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def scratch(self, name: str, shape: tuple[int, ...], dtype, fill: float | None = None) -> np.ndarray:
        a = self._arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)
            self._arrays[name] = a
        return a
