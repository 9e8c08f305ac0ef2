"""Fast max pooling, channels-last: the layout the convolutions hand on.

A running maximum over the K*K kernel offsets, each one NumPy operation over a strided
slab of a few images (one task per thread). Same numbers as ``tinytriage.nn.pool``'s
reference loop; ``MaxPool2d`` calls these, and ``im2col``'s fused path pools with
``running_max_cl`` while a chunk is in cache.
"""

from __future__ import annotations

import numpy as np

from tinytriage.nn.fast.memory import Workspace, channels_last, empty, nchw
from tinytriage.nn.fast.parallel import parallel_map, split
from tinytriage.nn.sizes import IntPair, pool_args, pool_output_hw


def slab_cl(a: np.ndarray, u: int, v: int, stride: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """A pooling window's cell (u, v) for every output cell of a channels-last (N, H, W, C)
    array: a[:, i*S + u, j*S + v, :] for all (i, j). A strided view, no copy."""
    (SH, SW), (Ho, Wo) = stride, out_hw
    return a[:, u : u + SH * (Ho - 1) + 1 : SH, v : v + SW * (Wo - 1) + 1 : SW, :]


def running_max_cl(out: np.ndarray, a: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> None:
    """Max pooling of a channels-last (N, H, W, C) array into ``out`` (N, H', W', C), no
    padding: a running maximum over the kernel's cells, one strided slab each."""
    hw = out.shape[1:3]
    np.copyto(out, slab_cl(a, 0, 0, stride, hw))
    for u in range(kernel[0]):
        for v in range(kernel[1]):
            if u or v:
                np.maximum(out, slab_cl(a, u, v, stride, hw), out=out)  # NaN propagates


def maxpool2d_forward(
    x: np.ndarray,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    workspace: Workspace | None = None,
) -> tuple[np.ndarray, tuple]:
    """Fast max pooling; returns ``(out, cache)``. A running maximum over the K*K kernel
    offsets, each one ``np.maximum`` over a strided slab of the whole batch, channels-last
    (``out`` is a channels-last view; ``workspace`` keeps the buffers between calls)."""
    kernel, stride, padding = pool_args("MaxPool2d", kernel_size, stride, padding)
    Ho, Wo = pool_output_hw("MaxPool2d", x, kernel, stride, padding)
    PH, PW = padding
    ws = Workspace() if workspace is None else workspace
    x_cl = channels_last(x)  # (N, H, W, C)
    N, H, W, C = x_cl.shape
    if PH or PW:  # the -inf border is written once, when the buffer is made
        x_padded = ws.scratch("x padded", (N, H + 2 * PH, W + 2 * PW, C), x.dtype, fill=-np.inf)
        x_padded[:, PH : PH + H, PW : PW + W] = x_cl
    else:
        x_padded = x_cl
    out = empty((N, Ho, Wo, C), x.dtype)  # (N, H', W', C)

    def running_max(images: slice) -> None:  # a few images, for one thread
        running_max_cl(out[images], x_padded[images], kernel, stride)

    parallel_map(running_max, split(N, x_padded[0].nbytes))
    cache = ((N, C, H, W), x_padded, out, kernel, stride, padding)
    return nchw(out), cache


def maxpool2d_backward(dout: np.ndarray, cache: tuple, workspace: Workspace | None = None) -> np.ndarray:
    """dx: each window's gradient goes to its winner, the first cell (row-major) equal to
    the max; one strided operation per kernel offset. (A window whose max is NaN passes none.)"""
    (N, C, H, W), x_padded, out, (KH, KW), stride, (PH, PW) = cache
    Ho, Wo = out.shape[1:3]
    ws = Workspace() if workspace is None else workspace
    d = channels_last(dout).astype(out.dtype, copy=False)  # (N, H', W', C)
    # Windows that tile the input (stride = kernel, no padding, sizes divisible) cover every
    # cell exactly once: each offset's slab of dx is *set*, so dx needs no zeroing and no adds.
    tiles = stride == (KH, KW) and (PH, PW) == (0, 0) and H % KH == 0 and W % KW == 0
    dx = empty((N, H, W, C), out.dtype)  # (N, H, W, C)
    if tiles:
        dx_padded = dx
    else:
        dx_padded = dx if (PH, PW) == (0, 0) else ws.scratch("dx padded", x_padded.shape, out.dtype)
        dx_padded.fill(0)
    unclaimed_all = empty(out.shape, bool)  # windows whose winner is still to be found
    wins_all = empty(out.shape, bool)
    share_all = None if tiles else empty(out.shape, out.dtype)

    def to_winners(images: slice) -> None:  # a few images, for one thread
        xi, oi, di, dxi = x_padded[images], out[images], d[images], dx_padded[images]
        unclaimed, wins = unclaimed_all[images], wins_all[images]
        unclaimed.fill(True)
        for u in range(KH):
            for v in range(KW):
                np.equal(slab_cl(xi, u, v, stride, (Ho, Wo)), oi, out=wins)
                wins &= unclaimed  # an earlier offset with the same value keeps the tie
                unclaimed ^= wins
                # d max / d x = 1 for the winner, 0 for the rest
                slab = slab_cl(dxi, u, v, stride, (Ho, Wo))
                if tiles:
                    np.multiply(di, wins, out=slab)
                else:
                    slab += np.multiply(di, wins, out=share_all[images])

    parallel_map(to_winners, split(N, x_padded[0].nbytes))
    if dx_padded is not dx:
        dx[...] = dx_padded[:, PH : PH + H, PW : PW + W]
    return nchw(dx)
