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
first time it writes them: for the first stage's 38 MB maps that costs as much as the
arithmetic. ``MALLOC_MMAP_THRESHOLD_`` and friends could change that for the whole process;
instead each fast layer owns a ``Workspace`` and writes into the same arrays every step.
"""

from __future__ import annotations

import sys

import numpy as np


def channels_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> the (N, H, W, C) C-contiguous array of the same numbers.

    A view (no copy) when ``x`` is already a channels-last view, as the fast layers return."""
    x_cl = x.transpose(0, 2, 3, 1)
    return x_cl if x_cl.flags.c_contiguous else np.ascontiguousarray(x_cl)


def nchw(x_cl: np.ndarray) -> np.ndarray:
    """(N, H, W, C) buffer -> its (N, C, H, W) view, the shape every layer hands out."""
    return x_cl.transpose(0, 3, 1, 2)


def channel_sums(x_cl: np.ndarray) -> np.ndarray:
    """Per-channel sums of a channels-last (N, H, W, C) array: (C,).

    Summed over (N*H, W*C) rows first, then folded: numpy adds the rows of a 2-D array one at a
    time, the whole row as one vectorised loop, so rows of W*C numbers run at memory speed
    where (N*H*W, C) rows of 16 would spend their time starting loops."""
    C = x_cl.shape[-1]
    return x_cl.reshape(-1, x_cl.shape[-2] * C).sum(axis=0).reshape(-1, C).sum(axis=0)


def _refcount(slots: list, i: int) -> int:
    return sys.getrefcount(slots[i])


def _idle_refcount() -> int:
    """References to an array that only a workspace slot holds, counted the way ``output``
    counts them (measured, not assumed: the number differs between Python versions)."""
    slots = [np.empty(0)]
    return _refcount(slots, 0)


_IDLE = _idle_refcount()
SLOTS = 2  # outputs kept per name: in eval mode the next layer still holds last call's output


class Workspace:
    """The arrays one layer reuses from call to call, by name.

    * ``scratch``: arrays that never leave the layer (im2col columns, padded copies). The
      same array every call with the same shape; ``fill`` sets it only when it is made,
      for buffers whose border (zeros, or -inf for max pooling) the layer never writes.
    * ``output``: arrays handed to the caller. A kept array is reused only when nothing
      outside the workspace refers to it any more (no variable, no cache, no view: CPython's
      reference count tells), so a result you keep is never overwritten: ``y1 = conv(x1);
      y2 = conv(x2)`` gives two arrays, while a training loop that has dropped last step's
      activations gets the same memory back.
    """

    def __init__(self) -> None:
        self._scratch: dict[str, np.ndarray] = {}
        self._outputs: dict[str, list[np.ndarray]] = {}

    def scratch(self, name: str, shape: tuple[int, ...], dtype, fill: float | None = None) -> np.ndarray:
        a = self._scratch.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)
            self._scratch[name] = a
        return a

    def output(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        slots = self._outputs.setdefault(name, [])
        slots[:] = [a for a in slots if a.shape == shape and a.dtype == dtype]  # a new shape: drop the old
        for i in range(len(slots)):
            if _refcount(slots, i) == _IDLE:
                return slots[i]
        a = np.empty(shape, dtype)
        if len(slots) < SLOTS:
            slots.append(a)
        return a

    def output_like(self, name: str, x: np.ndarray) -> np.ndarray:
        """``output`` with the shape of ``x`` and, for a channels-last (N, C, H, W) view,
        its layout too, so that elementwise work on the two runs through memory in order."""
        if x.ndim == 4 and not x.flags.c_contiguous and x.transpose(0, 2, 3, 1).flags.c_contiguous:
            N, C, H, W = x.shape
            return nchw(self.output(name, (N, H, W, C), x.dtype))
        return self.output(name, x.shape, x.dtype)

    def nbytes(self) -> int:
        """Memory the workspace keeps between calls."""
        kept = list(self._scratch.values()) + [a for slots in self._outputs.values() for a in slots]
        return sum(a.nbytes for a in kept)
