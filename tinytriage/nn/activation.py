"""Activations. ReLU(x) = max(x, 0), so d relu / dx = 1[x > 0] (0 at x = 0, as PyTorch)."""

from __future__ import annotations

import numpy as np

from tinytriage.nn.module import Module


class ReLU(Module):
    """``torch.nn.ReLU()``."""

    def __init__(self) -> None:
        super().__init__()
        self._positive: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._positive = x > 0
        return np.maximum(x, 0)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out * self._positive  # d relu/dx = 1[x > 0]
