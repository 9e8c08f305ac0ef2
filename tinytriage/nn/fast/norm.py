"""Fast batch normalisation: channels-last, two passes each way.

The same numbers as ``tinytriage.nn.norm``'s reference formulas (tests hold them equal);
``BatchNorm2d`` calls ``batch_norm_forward`` and ``batch_norm_backward``.
"""

from __future__ import annotations

import threading

import numpy as np

from tinytriage.nn.fast.memory import Workspace, channels_last, empty, nchw
from tinytriage.nn.fast.parallel import parallel_map, split

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
