"""Batch normalisation (Ioffe & Szegedy, 2015) over (N, C, H, W), per channel c:

    x_hat = (x - mean_c) / sqrt(var_c + eps)        y = weight_c * x_hat + bias_c

In training, mean and var are the batch's (var biased: divided by M = N*H*W), and the
running statistics move towards them: running = (1 - momentum) * running + momentum * batch,
where running_var takes the *unbiased* batch variance (times M / (M - 1)), exactly as
PyTorch. In eval the running statistics are used instead.

Backward (training): mean and var depend on every x of the channel, and the chain rule
through them gives, with the M values of a channel and mean() over them,

    dx = weight / sqrt(var + eps) * (dy - mean(dy) - x_hat * mean(dy * x_hat))

where mean(dy) = dbias / M and mean(dy * x_hat) = dweight / M. In eval mean and var are
constants and dx = weight / sqrt(var + eps) * dy.

``batch_norm_reference`` and ``batch_norm_backward_reference`` are these formulas, one NumPy
expression each. ``batch_norm_forward`` and ``batch_norm_backward`` compute the same numbers
in as few passes over memory as they can (the first stage's maps are 38 MB each; they live
in ``tinytriage.nn.fast.norm``) and are what the layer uses. Tests hold the two equal.
"""

from __future__ import annotations

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.fast.memory import Workspace
from tinytriage.nn.fast.norm import batch_norm_backward, batch_norm_forward
from tinytriage.nn.module import Module, check_ndim, take_cache


# -- (a) the reference: the formulas as written ---------------------------------------------
def batch_norm_reference(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Training-mode batch norm of (N, C, H, W): ``(y, mean, var, cache)``, var biased."""
    N, C, H, W = x.shape
    M = N * H * W  # values per channel
    mean = x.mean(axis=(0, 2, 3))  # (C,)
    x_centered = x - mean.reshape(1, C, 1, 1)  # (N, C, H, W)
    var = np.einsum("nchw,nchw->c", x_centered, x_centered) / M  # (C,) biased, used to normalise
    inv_std = 1 / np.sqrt(var + eps)  # (C,)
    x_hat = x_centered * inv_std.reshape(1, C, 1, 1)  # (N, C, H, W)
    y = x_hat * weight.reshape(1, C, 1, 1) + bias.reshape(1, C, 1, 1)
    return y, mean, var, (x_hat, inv_std, weight)


def batch_norm_backward_reference(dy: np.ndarray, cache: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dweight, dbias) of the training-mode batch norm."""
    x_hat, inv_std, weight = cache
    N, C, H, W = dy.shape
    M = N * H * W
    dbias = dy.sum(axis=(0, 2, 3))  # (C,)  d y / d bias = 1
    dweight = np.einsum("nchw,nchw->c", dy, x_hat)  # (C,)  d y / d weight = x_hat
    scale = (weight * inv_std).reshape(1, C, 1, 1)  # d y / d x at fixed statistics
    mean_dy = (dbias / M).reshape(1, C, 1, 1)  # mean(dy)
    mean_dy_xhat = (dweight / M).reshape(1, C, 1, 1)  # mean(dy * x_hat)
    return scale * (dy - mean_dy - x_hat * mean_dy_xhat), dweight, dbias


# -- the layer ------------------------------------------------------------------------------
class BatchNorm2d(Module):
    """``torch.nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True)``.

    ``momentum=None`` gives PyTorch's cumulative average (factor 1 / num_batches_tracked)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: type = np.float32,
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self._params["weight"] = np.ones(num_features, dtype=dtype)
            self._params["bias"] = np.zeros(num_features, dtype=dtype)
        if track_running_stats:
            self._buffers["running_mean"] = np.zeros(num_features, dtype=dtype)
            self._buffers["running_var"] = np.ones(num_features, dtype=dtype)
            self._buffers["num_batches_tracked"] = np.array(0, dtype=np.int64)
        self._cache: tuple | None = None
        self._workspace = Workspace()  # a cache-sized block per thread, kept between steps

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_ndim(x, 4, "BatchNorm2d", "(N, C, H, W)")
        N, C, H, W = x.shape
        if C != self.num_features:
            raise ShapeError(
                f"BatchNorm2d: expected {self.num_features} channels, got {C} (input shape {tuple(x.shape)})"
            )
        batch_stats = self.training or not self.track_running_stats
        M = N * H * W  # values per channel
        if batch_stats and self.training and M == 1:
            raise ShapeError(
                f"BatchNorm2d: training needs more than 1 value per channel, got input shape {tuple(x.shape)}"
            )
        stats = None if batch_stats else (self._buffers["running_mean"], self._buffers["running_var"])
        if self.affine:
            weight, bias = self._params["weight"], self._params["bias"]
        else:
            weight, bias = np.ones(C, x.dtype), np.zeros(C, x.dtype)
        y, mean, var, self._cache = batch_norm_forward(x, weight, bias, self.eps, stats, self._workspace)
        if batch_stats and self.training and self.track_running_stats:
            self._update_running_stats(mean, var * (M / (M - 1)))  # unbiased
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        cache, self._cache = take_cache(self._cache, "BatchNorm2d")
        dx, dweight, dbias = batch_norm_backward(grad_out, cache, self._workspace)
        if self.affine:
            self._grads = {"weight": dweight, "bias": dbias}
        return dx

    def _update_running_stats(self, mean: np.ndarray, unbiased_var: np.ndarray) -> None:
        self._buffers["num_batches_tracked"] += 1
        if self.momentum is None:  # cumulative moving average
            factor = 1.0 / float(self._buffers["num_batches_tracked"])
        else:
            factor = self.momentum
        running_mean, running_var = self._buffers["running_mean"], self._buffers["running_var"]
        running_mean *= 1 - factor
        running_mean += factor * mean
        running_var *= 1 - factor
        running_var += factor * unbiased_var

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )
