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
in as few passes over memory as they can (the first stage's maps are 38 MB each) and are
what the layer uses. Tests hold the two equal.
"""

from __future__ import annotations

import threading

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.memory import Workspace, channels_last, empty, nchw
from tinytriage.nn.module import Module, check_ndim, take_cache
from tinytriage.nn.parallel import parallel_map, split


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


# -- (b) the fast pair: channels-last, two passes each way -----------------------------------
# Memory, not arithmetic, sets the pace here: a few additions per number read. So both passes
# read the (N, H, W, C) array as (N*H, W*C) rows, with the per-channel vectors tiled W times
# to match (long rows keep NumPy's loops running; rows of C = 16 would spend their time
# starting them), and walk the rows a block at a time: a block's temporaries (x - mean, ...)
# stay in the CPU's cache, so each pass costs one read of its inputs from main memory.
# Tasks of several blocks go to the threads (``set_num_threads``); their partial sums are
# float64 and added in task order.
BLOCK_BYTES = 2**20


def _tile(v: np.ndarray, W: int, dtype) -> np.ndarray:
    """A per-channel vector (C,) repeated W times, (W*C,): one value per number of a row."""
    return np.tile(np.asarray(v).astype(dtype, copy=False), W)


def _row_passes(rows: np.ndarray, ws: Workspace):
    """``(tasks, blocks_of, tmp_of)``: the row ranges handed to threads, the cache-sized
    blocks of one range, and the calling thread's scratch block (``rows``' dtype)."""
    R, L = rows.shape
    row_bytes = L * rows.dtype.itemsize
    tasks = split(R, row_bytes)
    block_rows = split(R, row_bytes, BLOCK_BYTES)[0].stop

    def blocks_of(task: slice) -> list[slice]:
        return [
            slice(task.start + b.start, task.start + b.stop)
            for b in split(task.stop - task.start, row_bytes, BLOCK_BYTES)
        ]

    def tmp_of(b: slice) -> np.ndarray:
        return ws.scratch(f"tmp {threading.get_ident()}", (block_rows, L), rows.dtype)[: b.stop - b.start]

    return tasks, blocks_of, tmp_of


def batch_norm_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    eps: float,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
    workspace: Workspace | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Batch norm of (N, C, H, W): ``(y, mean, var, cache)``; y is a channels-last view.

    ``stats`` None: the batch's mean and (biased) var, training mode. Otherwise the given
    ``(running_mean, running_var)``, eval mode."""
    ws = Workspace() if workspace is None else workspace
    x_cl = channels_last(x)  # (N, H, W, C)
    N, H, W, C = x_cl.shape
    M = N * H * W
    rows = x_cl.reshape(N * H, W * C)  # (N*H, W*C): a row is one image row, all channels
    tasks, blocks_of, tmp_of = _row_passes(rows, ws)

    if stats is None:
        # The statistics in one pass: sums of t = x - K and of t^2, K a per-channel shift close
        # to the mean (the first block's). var = mean(t^2) - mean(t)^2 is then a difference of
        # small numbers; with K = 0 it would be E[x^2] - mean^2, which loses digits in float32
        # when the mean is large next to the spread.
        first = rows[blocks_of(tasks[0])[0]]
        shift = first.sum(axis=0, dtype=np.float64).reshape(W, C).sum(axis=0) / (first.shape[0] * W)  # (C,)
        shift_row = _tile(shift, W, x.dtype)

        def sums(task: slice) -> np.ndarray:
            total = np.zeros((2, W * C))  # float64 totals of float32 blocks: sum(t), sum(t^2)
            for b in blocks_of(task):
                t = np.subtract(rows[b], shift_row, out=tmp_of(b))  # x - K, in cache
                total[0] += t.sum(axis=0)
                total[1] += np.einsum("ij,ij->j", t, t)
            return total

        sum_t, sum_tt = np.sum(parallel_map(sums, tasks), axis=0).reshape(2, W, C).sum(axis=1)  # (C,) each
        mean_t = sum_t / M
        mean, var = shift + mean_t, np.maximum(sum_tt / M - mean_t**2, 0)  # (C,), var biased
    else:
        mean, var = stats
    inv_std = 1 / np.sqrt(var + eps)  # (C,) float64 in training, the buffers' dtype in eval
    # y = (x - mean) * a + bias, a = weight / sqrt(var + eps); three operations on a block
    # that stays in cache (x * a + (bias - mean * a) saves one, but loses digits to
    # cancellation when the mean is large next to the spread)
    mean_row, a_row, bias_row = (_tile(v, W, x.dtype) for v in (mean, weight * inv_std, bias))
    y = empty((N, H, W, C), x.dtype)
    y_rows = y.reshape(N * H, W * C)

    def normalise(task: slice) -> None:
        for b in blocks_of(task):
            out = np.subtract(rows[b], mean_row, out=y_rows[b])
            out *= a_row
            out += bias_row

    parallel_map(normalise, tasks)
    cache = (rows, (N, H, W, C), mean, inv_std, weight, stats is None)
    return nchw(y), mean.astype(x.dtype), var.astype(x.dtype), cache


def batch_norm_backward(
    dy: np.ndarray, cache: tuple, workspace: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dweight, dbias) from ``dy`` (N, C, H, W) and ``batch_norm_forward``'s cache."""
    ws = Workspace() if workspace is None else workspace
    rows, (N, H, W, C), mean, inv_std, weight, batch_stats = cache
    dtype = rows.dtype
    dy_rows = channels_last(dy).astype(dtype, copy=False).reshape(N * H, W * C)
    tasks, blocks_of, tmp_of = _row_passes(rows, ws)
    mean_row = _tile(mean, W, dtype)

    # pass 1: dbias = sum(dy), dweight = sum(dy * x_hat) = sum(dy * (x - mean)) / std
    def sums(task: slice) -> np.ndarray:
        total = np.zeros((2, W * C))  # float64 totals of float32 blocks: sum(dy), sum(dy * (x - mean))
        for b in blocks_of(task):
            t = np.subtract(rows[b], mean_row, out=tmp_of(b))  # x - mean, in cache
            total[0] += dy_rows[b].sum(axis=0)
            total[1] += np.einsum("ij,ij->j", dy_rows[b], t)
        return total

    sum_dy, sum_dy_xc = np.sum(parallel_map(sums, tasks), axis=0).reshape(2, W, C).sum(axis=1)
    dbias = sum_dy  # (C,)
    dweight = sum_dy_xc * inv_std  # (C,)

    dx = empty((N, H, W, C), dtype)
    dx_rows = dx.reshape(N * H, W * C)
    scale = weight * inv_std  # (C,) d y / d x at fixed statistics
    scale_row = _tile(scale, W, dtype)
    if not batch_stats:  # eval: the statistics are constants
        parallel_map(lambda task: np.multiply(dy_rows[task], scale_row, out=dx_rows[task]), tasks)
        return nchw(dx), dweight.astype(dtype), dbias.astype(dtype)

    # pass 2: dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat))
    #            = scale * dy - k * (x - mean) - scale * mean(dy),  k = scale * mean(dy * x_hat) / std
    M = N * H * W
    k_row = _tile(scale * (dweight / M) * inv_std, W, dtype)
    shift_row = _tile(-scale * dbias / M, W, dtype)

    def chain_rule(task: slice) -> None:
        for b in blocks_of(task):
            t = np.subtract(rows[b], mean_row, out=tmp_of(b))
            t *= k_row
            out = np.multiply(dy_rows[b], scale_row, out=dx_rows[b])
            out -= t
            out += shift_row

    parallel_map(chain_rule, tasks)
    return nchw(dx), dweight.astype(dtype), dbias.astype(dtype)


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
