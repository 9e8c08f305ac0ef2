"""Inverted dropout (Srivastava et al., 2014): in training, zero each value with
probability p and scale the survivors by 1/(1-p), so eval needs no rescaling:

    y = x * m / (1 - p),  m ~ Bernoulli(1 - p)        dx = dy * m / (1 - p)

In eval mode it is the identity.
"""

from __future__ import annotations

import numpy as np

from tinytriage.nn.module import Module


class Dropout(Module):
    """``torch.nn.Dropout(p=0.5)``; draws its masks from ``rng`` (default seed 0)."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be between 0 and 1, got {p}")
        self.p = p
        self.rng = np.random.default_rng(0) if rng is None else rng
        self._scale: np.ndarray | None = None  # m / (1 - p) from the last forward, or None

    def sample_keep(self, shape: tuple[int, ...]) -> np.ndarray:
        """Boolean mask of the values to keep, each True with probability 1 - p."""
        return self.rng.random(shape, dtype=np.float32) >= self.p

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        if self.p == 1.0:
            self._scale = np.zeros_like(x)  # everything dropped (1/(1-p) would be inf)
        else:
            self._scale = self.sample_keep(x.shape).astype(x.dtype) / x.dtype.type(1 - self.p)
        return x * self._scale

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._scale is None:
            return grad_out
        return grad_out * self._scale  # the same mask and scale as the forward pass

    def extra_repr(self) -> str:
        return f"p={self.p}"
