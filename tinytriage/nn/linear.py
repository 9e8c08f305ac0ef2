"""Linear (fully connected) layer and Flatten.

    y = x W^T + b            x (..., in), W (out, in), b (out,)

and by the chain rule, with the leading axes folded into one batch axis:

    dx = dy W        dW = dy^T x        db = sum over the batch of dy
"""

from __future__ import annotations

import math

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.module import Module


class Linear(Module):
    """``torch.nn.Linear(in_features, out_features, bias=True)`` on (..., in_features) arrays."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # PyTorch's init: kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        rng = np.random.default_rng(0) if rng is None else rng
        bound = 1 / math.sqrt(in_features)
        self._params["weight"] = rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype)
        if bias:
            self._params["bias"] = rng.uniform(-bound, bound, out_features).astype(dtype)
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ShapeError(f"Linear: expected (..., {self.in_features}) input, got shape {tuple(x.shape)}")
        self._x = x
        out = x @ self._params["weight"].T  # (..., in) @ (in, out) -> (..., out)
        if "bias" in self._params:
            out += self._params["bias"]
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        x2 = self._x.reshape(-1, self.in_features)  # (B, in), every leading axis is batch
        dy = grad_out.reshape(-1, self.out_features)  # (B, out)
        self._grads = {"weight": dy.T @ x2}  # (out, B) @ (B, in) -> (out, in)
        if "bias" in self._params:
            self._grads["bias"] = dy.sum(axis=0)  # (out,)
        return grad_out @ self._params["weight"]  # (..., out) @ (out, in) -> (..., in)

    def extra_repr(self) -> str:
        bias = "" if "bias" in self._params else ", bias=False"
        return f"in_features={self.in_features}, out_features={self.out_features}{bias}"


class Flatten(Module):
    """``torch.nn.Flatten(start_dim=1, end_dim=-1)``: (N, C, H, W) -> (N, C*H*W)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim
        self._x_shape: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x_shape = x.shape
        start, end = self.start_dim % x.ndim, self.end_dim % x.ndim
        if start > end:
            raise ShapeError(
                f"Flatten: start_dim {self.start_dim} comes after end_dim {self.end_dim} for shape {tuple(x.shape)}"
            )
        return x.reshape(*x.shape[:start], -1, *x.shape[end + 1 :])

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out.reshape(self._x_shape)  # flattening only renames the axes

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
