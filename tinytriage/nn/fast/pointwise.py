"""The fast pointwise (1x1) convolution: one matrix multiply on the channels-last input.

A 1x1 convolution with stride 1 and no padding mixes channels and nothing else: every
pixel's C numbers times the same (C, O) matrix. Channels-last (see
``tinytriage.nn.fast.memory``) the input already *is* that multiply's left operand, one row
per pixel, with no im2col copy:

    out (N*H*W, O) = x (N*H*W, C) @ w (C, O) + b

and backward is two more multiplies and a sum over the rows:

    dx (N*H*W, C) = dout (N*H*W, O) @ w (O, C)
    dw (O, C)     = dout^T (O, N*H*W) @ x (N*H*W, C)
    db (O,)       = sum over rows of dout

The rows go in chunks of about ``CHUNK_BYTES`` (bias and activation run on a chunk while
it is in cache), which are also the tasks ``set_num_threads`` shares out; dw's chunk parts
are added in chunk order, so the thread count does not change it. The same numbers as
im2col's path (``tinytriage.nn.fast.im2col``; tests hold them equal), which ``Conv2d``
takes for every other convolution. In MobileNet's blocks these 1x1 convolutions do most
of the multiply-adds (``tinytriage.nn.mobile``).
"""

from __future__ import annotations

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.fast.epilogue import bias_and_activation
from tinytriage.nn.fast.memory import channel_sums, channels_last, empty, nchw
from tinytriage.nn.fast.parallel import parallel_map, split
from tinytriage.nn.sizes import check_conv

CHUNK_BYTES = 2**21  # rows of output per task: big enough for BLAS, small enough to stay in cache


def _chunks(M: int, C: int, O: int, itemsize: int) -> list[slice]:
    """The rows cut into tasks of about ``CHUNK_BYTES`` (input and output rows together)."""
    return split(M, (C + O) * itemsize, CHUNK_BYTES)


def pointwise_conv2d_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, tuple]:
    """Fast 1x1 convolution (N, C, H, W) -> (N, O, H, W), weight (O, C, 1, 1), stride 1,
    no padding; returns ``(out, cache)``, ``out`` a channels-last view."""
    return _pointwise(x, weight, bias)


def pointwise_conv2d_fused_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, relu: bool, cap: float | None = None
) -> np.ndarray:
    """Inference only (``tinytriage.nn.fast.fuse``): the 1x1 convolution, then ``max(., 0)``
    when ``relu`` and ``min(., cap)`` when ``cap`` (ReLU6: 6), each chunk while in cache."""
    out, _ = _pointwise(x, weight, bias, relu, cap)
    return out


def _pointwise(x, weight, bias, relu=False, cap=None):
    check_conv(x, weight, 1)
    if weight.shape[2:] != (1, 1):
        raise ShapeError(f"Conv2d: the pointwise path takes 1x1 kernels, got weight shape {tuple(weight.shape)}")
    N, C, H, W = x.shape
    O = weight.shape[0]
    dtype = np.result_type(x, weight)
    x_rows = channels_last(x.astype(dtype, copy=False)).reshape(N * H * W, C)  # (N*H*W, C): one row per pixel
    w_mat = weight.reshape(O, C).T.astype(dtype, copy=False)  # (C, O), a view when the dtype matches
    b = None if bias is None else bias.astype(dtype, copy=False)
    out = empty((N, H, W, O), dtype)  # (N, H, W, O)
    out_rows = out.reshape(N * H * W, O)

    def chunk(rows: slice) -> None:
        mine = out_rows[rows]
        np.matmul(x_rows[rows], w_mat, out=mine)  # (m, C) @ (C, O)
        bias_and_activation(mine, b, relu, cap)

    parallel_map(chunk, _chunks(N * H * W, C, O, out.itemsize), blas=True)
    return nchw(out), (x_rows, (N, C, H, W), weight, bias is not None)


def pointwise_conv2d_backward(
    dout: np.ndarray, cache: tuple, needs_input_grad: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw, db) from ``dout`` (N, O, H, W) and ``pointwise_conv2d_forward``'s cache.

    ``dx`` is None when ``needs_input_grad`` is False, ``db`` when there is no bias."""
    x_rows, (N, C, H, W), weight, has_bias = cache
    O = weight.shape[0]
    dtype = x_rows.dtype
    d_cl = channels_last(dout).astype(dtype, copy=False)  # (N, H, W, O)
    d_rows = d_cl.reshape(N * H * W, O)  # one row per pixel, as in the forward pass
    chunks = _chunks(N * H * W, C, O, x_rows.itemsize)

    db = channel_sums(d_cl) if has_bias else None  # (O,)  d out / d b = 1

    # dw = dout^T @ x, chunk by chunk, the parts added in chunk order
    def dw_part(rows: slice) -> np.ndarray:
        return d_rows[rows].T @ x_rows[rows]  # (O, m) @ (m, C)

    parts = parallel_map(dw_part, chunks, blas=True)
    dw_mat = np.sum(parts, axis=0) if parts else np.zeros((O, C), dtype)  # (O, C)
    dw = dw_mat.reshape(O, C, 1, 1)
    if not needs_input_grad:
        return None, dw, db

    w_mat = weight.reshape(O, C).astype(dtype, copy=False)  # (O, C)
    dx = empty((N, H, W, C), dtype)  # (N, H, W, C)
    dx_rows = dx.reshape(N * H * W, C)

    def dx_chunk(rows: slice) -> None:
        np.matmul(d_rows[rows], w_mat, out=dx_rows[rows])  # (m, O) @ (O, C): d out / d x = w

    parallel_map(dx_chunk, chunks, blas=True)
    return nchw(dx), dw, db
