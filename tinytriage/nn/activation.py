"""Activations. ReLU(x) = max(x, 0), so d relu / dx = 1[x > 0] (0 at x = 0, as PyTorch).

ReLU6(x) = min(max(x, 0), 6), the ReLU of MobileNets (its output fits a fixed range, for
low-precision arithmetic), so d relu6 / dx = 1[0 < x < 6] (0 at both ends, as PyTorch's
hardtanh)."""

from __future__ import annotations

import numpy as np

from tinytriage.nn.fast.memory import empty_like, layout, memory_order
from tinytriage.nn.fast.parallel import parallel_map, split
from tinytriage.nn.module import Module, take_cache


def _elementwise(fn, *arrays: np.ndarray) -> None:
    """``fn(*arrays)`` for arrays of one shape and layout (the last is written), split into
    slices of memory for the threads; in one piece when their layouts differ."""
    layouts = {layout(a) for a in arrays}
    if len(layouts) > 1 or None in layouts:
        fn(*arrays)
        return
    flat = [memory_order(a) for a in arrays]
    parallel_map(lambda part: fn(*(f[part] for f in flat)), split(flat[0].size, flat[0].itemsize))


class ReLU(Module):
    """``torch.nn.ReLU()``."""

    def __init__(self) -> None:
        super().__init__()
        self._positive: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        positive, out = empty_like(x, bool), empty_like(x)  # in x's layout

        def relu(x: np.ndarray, positive: np.ndarray, out: np.ndarray) -> None:
            np.greater(x, 0, out=positive)
            np.maximum(x, 0, out=out)

        _elementwise(relu, x, positive, out)
        self._positive = positive
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        positive, self._positive = take_cache(self._positive, "ReLU")
        dx = empty_like(grad_out)
        _elementwise(lambda g, p, dx: np.multiply(g, p, out=dx), grad_out, positive, dx)  # d relu/dx = 1[x > 0]
        return dx


class ReLU6(Module):
    """``torch.nn.ReLU6()``."""

    def __init__(self) -> None:
        super().__init__()
        self._inside: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        inside, out = empty_like(x, bool), empty_like(x)  # in x's layout

        def relu6(x: np.ndarray, inside: np.ndarray, out: np.ndarray) -> None:
            np.greater(x, 0, out=inside)
            np.logical_and(inside, x < 6, out=inside)
            np.clip(x, 0, 6, out=out)

        _elementwise(relu6, x, inside, out)
        self._inside = inside
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        inside, self._inside = take_cache(self._inside, "ReLU6")
        dx = empty_like(grad_out)
        _elementwise(lambda g, i, dx: np.multiply(g, i, out=dx), grad_out, inside, dx)  # d relu6/dx = 1[0 < x < 6]
        return dx
