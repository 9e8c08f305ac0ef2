"""2-D convolution, twice: the literal sliding-window loop and the fast im2col version.

A convolution slides a (C, KH, KW) kernel over the zero-padded input; each output cell is
one dot product (a cross-correlation, as in every deep-learning library):

    out[n, o, i, j] = b[o] + sum_{c,u,v} x_pad[n, c, i*S + u*D, j*S + v*D] * w[o, c, u, v]

with H' = floor((H + 2P - D*(K-1) - 1) / S) + 1 positions along each axis
(``conv_output_size``). With ``groups`` G the channels split into G independent
convolutions: output channel o only sees the C/G input channels of its own group.

The backward pass is the chain rule on that sum, term by term:

    db[o]          = sum_{n,i,j} dout[n, o, i, j]
    dw[o, c, u, v] = sum_{n,i,j} dout[n, o, i, j] * x_pad[n, c, i*S + u*D, j*S + v*D]
    dx_pad[n, c, i*S + u*D, j*S + v*D] += dout[n, o, i, j] * w[o, c, u, v]

``conv2d_reference`` and ``conv2d_backward_reference`` are these formulas as loops: slow,
obviously right, and what ``explain`` shows (``conv2d_window``, ``conv2d_cell``).
``conv2d_forward`` and ``conv2d_backward`` compute the same numbers with matrix multiplies
(im2col: copy every window into a row, then a GEMM, a few images at a time) and are what
training uses. dx is computed the same way, as a convolution of dout (see
``conv2d_backward``). Tests hold the two equal.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tinytriage.errors import ShapeError
from tinytriage.nn.memory import Workspace, channel_sums, channels_last, empty, nchw
from tinytriage.nn.module import Module, check_ndim, take_cache
from tinytriage.nn.parallel import parallel_map

IntPair = int | Sequence[int]


# -- sizes and checks, shared with pooling ------------------------------------------------
def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Positions of a kernel along one axis: floor((H + 2P - D*(K-1) - 1) / S) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pair(value: IntPair, name: str, layer: str, minimum: int) -> tuple[int, int]:
    """``3`` -> ``(3, 3)``; ``(3, 5)`` stays; ShapeError if a value is below ``minimum``."""
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 2 or min(out) < minimum:
        need = "positive" if minimum > 0 else "non-negative"
        raise ShapeError(f"{layer}: {name} must be {need} (an int or a pair), got {value}")
    return out  # type: ignore[return-value]


def _slab_cl(a: np.ndarray, u: int, v: int, stride: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """A pooling window's cell (u, v) for every output cell of a channels-last (N, H, W, C)
    array: a[:, i*S + u, j*S + v, :] for all (i, j). A strided view, no copy."""
    (SH, SW), (Ho, Wo) = stride, out_hw
    return a[:, u : u + SH * (Ho - 1) + 1 : SH, v : v + SW * (Wo - 1) + 1 : SW, :]


def running_max_cl(out: np.ndarray, a: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> None:
    """Max pooling of a channels-last (N, H, W, C) array into ``out`` (N, H', W', C), no
    padding: a running maximum over the kernel's cells, one strided slab each."""
    hw = out.shape[1:3]
    np.copyto(out, _slab_cl(a, 0, 0, stride, hw))
    for u in range(kernel[0]):
        for v in range(kernel[1]):
            if u or v:
                np.maximum(out, _slab_cl(a, u, v, stride, hw), out=out)  # NaN propagates


def sliding_output_hw(
    layer: str,
    hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> tuple[int, int]:
    """(H', W') of a kernel sliding over the padded input; ShapeError if it does not fit."""
    H, W = hw
    (KH, KW), (PH, PW) = kernel, padding
    for axis, size, k, p, d in (("H", H, KH, PH, dilation[0]), ("W", W, KW, PW, dilation[1])):
        span = d * (k - 1) + 1  # a dilated kernel covers D*(K-1) + 1 cells
        if size + 2 * p < span:
            dilated = f" with dilation {dilation[0]}x{dilation[1]}" if dilation != (1, 1) else ""
            rule = "K" if d == 1 else "D*(K-1) + 1"
            raise ShapeError(
                f"{layer}: kernel {KH}x{KW}{dilated} does not fit the padded input "
                f"{H + 2 * PH}x{W + 2 * PW} ({axis} + 2P = {size + 2 * p} < {rule} = {span})"
            )
    return (
        conv_output_size(H, KH, stride[0], PH, dilation[0]),
        conv_output_size(W, KW, stride[1], PW, dilation[1]),
    )


def pad2d(x: np.ndarray, padding: tuple[int, int], value: float = 0.0) -> np.ndarray:
    """Pad the last two axes of (N, C, H, W) by (P_H, P_W) on both sides."""
    PH, PW = padding
    if PH == PW == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)), constant_values=value)


def _check_conv(x: np.ndarray, weight: np.ndarray, groups: int) -> None:
    check_ndim(x, 4, "Conv2d", "(N, C, H, W)")
    check_ndim(weight, 4, "Conv2d weight", "(C_out, C_in/groups, KH, KW)")
    C, (O, Cg) = x.shape[1], weight.shape[:2]
    if groups < 1 or O % groups:
        raise ShapeError(f"Conv2d: groups={groups} must divide the {O} output channels")
    if C != Cg * groups:
        raise ShapeError(
            f"Conv2d: the input has {C} channels but the weight expects "
            f"{Cg * groups} ({Cg} per group x {groups} groups); input shape {tuple(x.shape)}"
        )


# -- (a) the reference: one output cell at a time -----------------------------------------
def conv2d_window(
    x_padded: np.ndarray,
    n: int,
    channels: slice,
    row: int,
    col: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """The (C, KH, KW) patch of ``x_padded[n, channels]`` that output cell (row, col) sees.

    A view, so the backward reference can add into it."""
    (KH, KW), (SH, SW), (DH, DW) = kernel_size, stride, dilation
    top, left = row * SH, col * SW  # the window's top-left corner in the padded input
    return x_padded[n, channels, top : top + DH * (KH - 1) + 1 : DH, left : left + DW * (KW - 1) + 1 : DW]


def conv2d_reference(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> np.ndarray:
    """The convolution as its definition: a loop over every output cell. (N, C, H, W) -> (N, O, H', W')."""
    _check_conv(x, weight, groups)
    stride, padding = pair(stride, "stride", "Conv2d", 1), pair(padding, "padding", "Conv2d", 0)
    dilation = pair(dilation, "dilation", "Conv2d", 1)
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape  # Cg = C / groups input channels per kernel
    Ho, Wo = sliding_output_hw("Conv2d", (H, W), (KH, KW), stride, padding, dilation)
    Og = O // groups  # output channels per group
    x_padded = pad2d(x, padding)  # (N, C, H + 2P, W + 2P)
    out = np.zeros((N, O, Ho, Wo), dtype=np.result_type(x, weight))
    for n in range(N):
        for o in range(O):
            g = o // Og  # output channel o belongs to group g and sees its input channels only
            channels = slice(g * Cg, (g + 1) * Cg)
            for i in range(Ho):
                for j in range(Wo):
                    window = conv2d_window(x_padded, n, channels, i, j, (KH, KW), stride, dilation)
                    out[n, o, i, j] = np.sum(window * weight[o]) + (0 if bias is None else bias[o])
    return out


def conv2d_backward_reference(
    x: np.ndarray,
    weight: np.ndarray,
    dout: np.ndarray,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dw, db) by the loop: every output cell hands its gradient back to its window."""
    _check_conv(x, weight, groups)
    stride, padding = pair(stride, "stride", "Conv2d", 1), pair(padding, "padding", "Conv2d", 0)
    dilation = pair(dilation, "dilation", "Conv2d", 1)
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    Og = O // groups
    PH, PW = padding
    x_padded = pad2d(x, padding)
    dx_padded = np.zeros_like(x_padded)
    dw = np.zeros_like(weight)
    db = np.zeros(O, dtype=dout.dtype)
    for n in range(N):
        for o in range(O):
            g = o // Og
            channels = slice(g * Cg, (g + 1) * Cg)
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    d = dout[n, o, i, j]  # dL/dout for this cell
                    window = conv2d_window(x_padded, n, channels, i, j, (KH, KW), stride, dilation)
                    dw[o] += d * window  # d out / d w = the window
                    dx_window = conv2d_window(dx_padded, n, channels, i, j, (KH, KW), stride, dilation)
                    dx_window += d * weight[o]  # d out / d window = the kernel
                    db[o] += d  # d out / d b = 1
    dx = dx_padded[:, :, PH : PH + H, PW : PW + W]  # the padding's gradient is dropped
    return dx, dw, db


def conv2d_cell(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    n: int,
    oc: int,
    row: int,
    col: int,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> dict:
    """Everything one output cell ``out[n, oc, row, col]`` is made of, for ``explain``.

    Returns ``window``, ``kernel`` and their elementwise ``products`` (each (C/groups, KH, KW)),
    their ``sum``, the ``bias`` and ``out = sum + bias``."""
    _check_conv(x, weight, groups)
    stride, padding = pair(stride, "stride", "Conv2d", 1), pair(padding, "padding", "Conv2d", 0)
    dilation = pair(dilation, "dilation", "Conv2d", 1)
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    Ho, Wo = sliding_output_hw("Conv2d", (H, W), (KH, KW), stride, padding, dilation)
    if not (0 <= n < N and 0 <= oc < O and 0 <= row < Ho and 0 <= col < Wo):
        raise ShapeError(
            f"Conv2d: cell (n={n}, oc={oc}, row={row}, col={col}) is outside the output of shape ({N}, {O}, {Ho}, {Wo})"
        )
    g = oc // (O // groups)
    window = conv2d_window(pad2d(x, padding), n, slice(g * Cg, (g + 1) * Cg), row, col, (KH, KW), stride, dilation)
    kernel = weight[oc]
    products = window * kernel
    total = float(products.sum())
    b = 0.0 if bias is None else float(bias[oc])
    return dict(window=window.copy(), kernel=kernel.copy(), products=products, sum=total, bias=b, out=total + b)


# -- (b) the fast pair: im2col, one matrix multiply per chunk of images ------------------
# Both passes are the same three steps, applied to a few images at a time:
#
#   1. place the images into a zero canvas (the forward pass pads them by P);
#   2. im2col: copy every KH x KW window of the canvas into one row of ``cols``
#      (N*H'*W', KH*KW*C);
#   3. one matrix multiply per group: out (N*H'*W', O) = cols @ w_mat (KH*KW*C, O). Its rows
#      are output cells and its columns channels: the output comes out channels-last
#      (see ``tinytriage.nn.memory``), with no transpose afterwards.
#
# The copy in step 2 reads the input in its own memory order, so that numbers adjacent in
# memory stay adjacent: from a channels-last input (the layers' own outputs) a window row
# is KW*C consecutive numbers, the columns in (u, v, c) order; from an ordinary NCHW array
# (the photos: only 3 channels) it copies runs along W instead, into ``cols`` stored
# transposed, (KH*KW*C, N*H'*W') in (c, u, v) order, and BLAS reads that transposed.
#
# Chunks, not the whole batch: a few images' cols (about ``CHUNK_BYTES``) stay in the CPU's
# cache between the copy that writes them and the multiply that reads them; the whole
# batch's would be up to 85 MB, written to and read back from main memory. Backward makes
# the columns again rather than keeping them from the forward pass: making them from x
# costs about what reading them back would, and saves that memory. Chunks are also the
# tasks that ``set_num_threads`` shares out over threads, each with its own cols.
CHUNK_BYTES = 2**21


def _spread(n_src: int, n_dst: int, offset: int, step: int) -> tuple[slice, slice]:
    """Along one axis: source cell i lands on canvas cell offset + i*step. Returns the
    (source, canvas) slices of the cells that land inside the canvas [0, n_dst)."""
    first = max(0, -(offset // step))  # the first i with offset + i*step >= 0
    last = min(n_src, (n_dst - 1 - offset) // step + 1)  # one past the last that fits
    if last <= first:
        return slice(0, 0), slice(0, 0)
    return slice(first, last), slice(offset + first * step, offset + (last - 1) * step + 1, step)


def _gather_source(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(src, cl)``: an ordinary NCHW array is read as it is (cl False); anything else,
    e.g. a layer's channels-last output, as its (N, H, W, C) array (cl True)."""
    if x.flags.c_contiguous:
        return x, False
    return channels_last(x), True


def _weight_matrix(w: np.ndarray, cl: bool) -> np.ndarray:
    """(G, O/G, C/G, KH, KW) kernels -> (G, KH*KW*C/G, O/G), rows in the order of cols'
    columns: (u, v, c) when cl, else (c, u, v)."""
    G, Og, Cg, KH, KW = w.shape
    w = w.transpose(0, 3, 4, 2, 1) if cl else w.transpose(0, 2, 3, 4, 1)
    return np.ascontiguousarray(w).reshape(G, KH * KW * Cg, Og)


def _kernel_grad(dw_mat: np.ndarray, kernel: tuple[int, int], cl: bool) -> np.ndarray:
    """``_weight_matrix`` undone: (G, KH*KW*C/G, O/G) -> (O, C/G, KH, KW)."""
    G, K, Og = dw_mat.shape
    KH, KW = kernel
    Cg = K // (KH * KW)
    if cl:
        dw = dw_mat.reshape(G, KH, KW, Cg, Og).transpose(0, 4, 3, 1, 2)
    else:
        dw = dw_mat.reshape(G, Cg, KH, KW, Og).transpose(0, 4, 1, 2, 3)
    return dw.reshape(G * Og, Cg, KH, KW)  # the one copy


def _im2col_plan(
    src: np.ndarray,
    cl: bool,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    canvas_hw: tuple[int, int],
    offset: tuple[int, int],
    step: tuple[int, int],
    ws: Workspace,
    tag: str,
):
    """Steps 1 and 2. Returns ``(chunks, cols_of)``: the batch cut into (n0, n) chunks of
    images, and ``cols_of(n0, n)``, an (n*H'*W', G, KH*KW*C/G) array whose row (k, i, j)
    is the window of output cell (i, j) of image n0 + k (in the calling thread's scratch).

    ``src`` is (N, Hs, Ws, C) when ``cl``, else (N, C, Hs, Ws). Each image is placed into an
    (Hc, Wc) zero canvas, its cell (i, j) at (offset + i*step, ...): padding for the forward
    pass (offset P, step 1), the zero-stuffed gradient for dx (see ``conv2d_backward``)."""
    N, Hs, Ws, C = src.shape if cl else (src.shape[0], *src.shape[2:], src.shape[1])
    (KH, KW), (SH, SW), (DH, DW), (Hc, Wc), G = kernel, stride, dilation, canvas_hw, groups
    span = (DH * (KH - 1) + 1, DW * (KW - 1) + 1)  # the dilated kernel's extent
    Ho, Wo = (Hc - span[0]) // SH + 1, (Wc - span[1]) // SW + 1
    K = KH * KW * (C // G)
    n_chunk = max(1, min(N, CHUNK_BYTES // (Ho * Wo * G * K * src.dtype.itemsize)))
    chunks = [(n0, min(n_chunk, N - n0)) for n0 in range(0, N, n_chunk)]
    src_h, dst_h = _spread(Hs, Hc, offset[0], step[0])
    src_w, dst_w = _spread(Ws, Wc, offset[1], step[1])
    plain = (Hs, Ws) == (Hc, Wc) and offset == (0, 0) and step == (1, 1)  # no padding: read src itself

    def cols_of(n0: int, n: int) -> np.ndarray:
        me = f"{tag} {threading.get_ident()}"  # every thread its own canvas and cols
        m = n * Ho * Wo
        if plain:
            image = src[n0 : n0 + n]
        else:
            # zeroed once: every chunk writes the same cells of the canvas, the rest stay zero
            shape = (n_chunk, Hc, Wc, C) if cl else (n_chunk, C, Hc, Wc)
            image = ws.scratch(me + " canvas", shape, src.dtype, fill=0)[:n]
            if cl:
                image[:, dst_h, dst_w] = src[n0 : n0 + n, src_h, src_w]  # (n, Hc, Wc, C)
            else:
                image[:, :, dst_h, dst_w] = src[n0 : n0 + n, :, src_h, src_w]  # (n, C, Hc, Wc)
        flat = ws.scratch(me + " cols", (n_chunk * Ho * Wo * G * K,), src.dtype)[: m * G * K]
        if cl:
            windows = sliding_window_view(image, span, axis=(1, 2))  # a view: (n, ., ., C, spanH, spanW)
            windows = windows[:, ::SH, ::SW, :, ::DH, ::DW]  # still a view: (n, H', W', C, KH, KW)
            windows = windows.reshape(n, Ho, Wo, G, C // G, KH, KW)  # split C into groups
            cols = flat.reshape(n, Ho, Wo, G, KH, KW, C // G)
            np.copyto(cols, windows.transpose(0, 1, 2, 3, 5, 6, 4))  # the one copy
            return flat.reshape(m, G, K)
        windows = sliding_window_view(image, span, axis=(2, 3))  # a view: (n, C, ., ., spanH, spanW)
        windows = windows[:, :, ::SH, ::SW, ::DH, ::DW]  # still a view: (n, C, H', W', KH, KW)
        windows = windows.reshape(n, G, C // G, Ho, Wo, KH, KW)
        cols_t = flat.reshape(G, C // G, KH, KW, n, Ho, Wo)
        np.copyto(cols_t, windows.transpose(1, 2, 5, 6, 0, 3, 4))  # the one copy, runs along W
        return flat.reshape(G, K, m).transpose(2, 0, 1)  # a view: (m, G, K)

    return chunks, cols_of


def _correlate(
    chunks: list,
    cols_of,
    w_mat: np.ndarray,
    out: np.ndarray,
    bias: np.ndarray | None = None,
    relu: bool = False,
    pool: tuple | None = None,
) -> None:
    """Step 3 for every chunk: out rows (N*H'*W', O) = cols @ w_mat, group by group, then
    ``+ bias`` and (``relu``) ``max(., 0)`` on the chunk while it is still in cache.

    ``pool`` = (kernel, stride, (H', W'), workspace): the chunk's product goes to scratch
    and only its max pooling lands in ``out`` (N, H'', W'', O). The pooling runs first: a
    window's max plus a channel's bias is the max of the window plus the bias, and ReLU
    keeps order, so bias and ReLU then touch a quarter as many numbers."""
    if pool is None:
        N, Ho, Wo, O = out.shape
    else:
        pool_k, pool_s, (Ho, Wo), ws = pool
        N, O = out.shape[0], out.shape[3]
    G, _, Og = w_mat.shape
    rows = out.reshape(N * Ho * Wo, G, Og) if pool is None else None  # one row per output cell
    bias_g = None if bias is None else bias.reshape(G, Og).astype(out.dtype, copy=False)
    n_chunk = max(n for _, n in chunks) if chunks else 0

    def task(chunk: tuple[int, int]) -> None:
        n0, n = chunk
        cols = cols_of(n0, n)  # (n*H'*W', G, K)
        if pool is None:
            mine = rows[n0 * Ho * Wo : (n0 + n) * Ho * Wo]  # (n*H'*W', G, O/G)
        else:
            scratch = ws.scratch(f"conv out {threading.get_ident()}", (n_chunk * Ho * Wo, G, Og), out.dtype)
            mine = scratch[: n * Ho * Wo]
        for g in range(G):
            # every output cell is a window . a kernel: (n*H'*W', K) @ (K, O/G)
            np.matmul(cols[:, g], w_mat[g], out=mine[:, g])
        if pool is not None:  # (n, H', W', O) -> (n, H'', W'', O), into out
            running_max_cl(out[n0 : n0 + n], mine.reshape(n, Ho, Wo, O), pool_k, pool_s)
            mine = out[n0 : n0 + n].reshape(-1, G, Og)
        if bias_g is not None:
            mine += bias_g  # broadcasts over the rows
        if relu:
            np.maximum(mine, 0, out=mine)

    parallel_map(task, chunks, blas=True)


def conv2d_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    workspace: Workspace | None = None,
    relu: bool = False,
    pool: tuple[IntPair, IntPair] | None = None,
) -> tuple[np.ndarray, tuple]:
    """Fast convolution (N, C, H, W) -> (N, O, H', W'); returns ``(out, cache)`` for backward.

    ``out`` is a channels-last view (see ``tinytriage.nn.memory``); ``workspace`` keeps the
    buffers between calls (a layer passes its own; None allocates fresh ones). For inference
    only (``tinytriage.nn.fuse``): ``relu`` returns ``max(conv, 0)`` instead, and ``pool``
    (kernel, stride) max-pools it (no padding), each chunk while it is in cache. The cache
    then describes the convolution without them, so backward must not be called."""
    _check_conv(x, weight, groups)
    stride, padding = pair(stride, "stride", "Conv2d", 1), pair(padding, "padding", "Conv2d", 0)
    dilation = pair(dilation, "dilation", "Conv2d", 1)
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    G = groups
    Ho, Wo = sliding_output_hw("Conv2d", (H, W), (KH, KW), stride, padding, dilation)
    ws = Workspace() if workspace is None else workspace
    dtype = np.result_type(x, weight)
    src, cl = _gather_source(x.astype(dtype, copy=False))
    w_mat = _weight_matrix(weight.reshape(G, O // G, Cg, KH, KW).astype(dtype, copy=False), cl)  # (G, K, O/G)
    canvas = (H + 2 * padding[0], W + 2 * padding[1])
    plan = _im2col_plan(src, cl, (KH, KW), stride, dilation, G, canvas, padding, (1, 1), ws, "x")
    if pool is None:
        out = empty((N, Ho, Wo, O), dtype)  # (N, H', W', O)
        _correlate(*plan, w_mat, out, bias, relu)
    else:
        pool_k, pool_s = pair(pool[0], "kernel_size", "MaxPool2d", 1), pair(pool[1], "stride", "MaxPool2d", 1)
        Hp, Wp = sliding_output_hw("MaxPool2d", (Ho, Wo), pool_k, pool_s, (0, 0), (1, 1))
        out = empty((N, Hp, Wp, O), dtype)  # (N, H'', W'', O): the pooled map
        _correlate(*plan, w_mat, out, bias, relu, pool=(pool_k, pool_s, (Ho, Wo), ws))
    cache = (src, cl, weight, bias is not None, stride, padding, dilation, groups)
    return nchw(out), cache


def conv2d_backward(
    dout: np.ndarray, cache: tuple, needs_input_grad: bool = True, workspace: Workspace | None = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw, db) from ``dout`` (N, O, H', W') and ``conv2d_forward``'s cache.

    ``dx`` is None when ``needs_input_grad`` is False (the first layer needs no dx), ``db``
    when the convolution has no bias."""
    src, cl, weight, has_bias, stride, padding, dilation, G = cache
    N, C, H, W = (src.shape[0], src.shape[3], *src.shape[1:3]) if cl else src.shape
    O, Cg, KH, KW = weight.shape
    (PH, PW), (DH, DW) = padding, dilation
    ws = Workspace() if workspace is None else workspace
    dtype = src.dtype
    Ho, Wo = dout.shape[2:]
    d_cl = channels_last(dout).astype(dtype, copy=False)  # (N, H', W', O)
    d_rows = d_cl.reshape(N * Ho * Wo, G, O // G)  # one row per output cell, as in the forward pass

    db = channel_sums(d_cl) if has_bias else None  # (O,)  d out / d b = 1

    # dw[o] = sum over output cells of dout[cell, o] * window[cell]: cols^T @ dout per chunk,
    # the chunks' parts added in chunk order
    canvas = (H + 2 * PH, W + 2 * PW)
    chunks, cols_of = _im2col_plan(src, cl, (KH, KW), stride, dilation, G, canvas, padding, (1, 1), ws, "x")

    def dw_part(chunk: tuple[int, int]) -> np.ndarray:
        n0, n = chunk
        cols = cols_of(n0, n)  # (n*H'*W', G, K)
        part = np.empty((G, KH * KW * Cg, O // G), dtype)
        for g in range(G):
            np.matmul(cols[:, g].T, d_rows[n0 * Ho * Wo : (n0 + n) * Ho * Wo, g], out=part[g])  # (K, O/G)
        return part

    parts = parallel_map(dw_part, chunks, blas=True)
    dw_mat = np.sum(parts, axis=0) if parts else np.zeros((G, KH * KW * Cg, O // G), dtype)  # (G, K, O/G)
    dw = _kernel_grad(dw_mat, (KH, KW), cl)
    if not needs_input_grad:
        return None, dw, db

    # dx is itself a convolution, stride 1: of dout stuffed with zeros (S-1 between cells,
    # a border of D*(K-1) - P), with the kernel turned by 180 degrees and its in/out channels
    # swapped. Each x cell gathers, through the turned kernel, exactly the dout cells whose
    # windows covered it: the backward reference's scatter, as one GEMM per chunk.
    d_src, d_cl_gather = _gather_source(dout.astype(dtype, copy=False))
    w_turned = weight.reshape(G, O // G, Cg, KH, KW).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    w_mat = _weight_matrix(w_turned, d_cl_gather)  # (G, KH*KW*O/G, Cg)
    canvas = (H + DH * (KH - 1), W + DW * (KW - 1))
    offset = (DH * (KH - 1) - PH, DW * (KW - 1) - PW)
    plan = _im2col_plan(d_src, d_cl_gather, (KH, KW), (1, 1), dilation, G, canvas, offset, stride, ws, "dout")
    dx = empty((N, H, W, C), dtype)  # (N, H, W, C)
    _correlate(*plan, w_mat, dx)
    return nchw(dx), dw, db


# -- the layer ----------------------------------------------------------------------------
class Conv2d(Module):
    """``torch.nn.Conv2d`` in NumPy: weight (O, C/groups, KH, KW), bias (O,)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d", 1)
        self.stride = pair(stride, "stride", "Conv2d", 1)
        self.padding = pair(padding, "padding", "Conv2d", 0)
        self.dilation = pair(dilation, "dilation", "Conv2d", 1)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ShapeError(
                f"Conv2d: groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.needs_input_grad = True  # set False on a first layer: backward then skips dx
        # PyTorch's init: kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        rng = np.random.default_rng(0) if rng is None else rng
        KH, KW = self.kernel_size
        fan_in = in_channels // groups * KH * KW
        bound = 1 / math.sqrt(fan_in)
        shape = (out_channels, in_channels // groups, KH, KW)
        self._params["weight"] = rng.uniform(-bound, bound, shape).astype(dtype)
        if bias:
            self._params["bias"] = rng.uniform(-bound, bound, out_channels).astype(dtype)
        self._cache: tuple | None = None
        self._workspace = Workspace()  # im2col columns and padded canvases, kept between steps

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_ndim(x, 4, "Conv2d", "(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"Conv2d: expected {self.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        out, self._cache = conv2d_forward(
            x,
            self._params["weight"],
            self._params.get("bias"),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self._workspace,
        )
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        cache, self._cache = take_cache(self._cache, "Conv2d")
        dx, dw, db = conv2d_backward(grad_out, cache, self.needs_input_grad, self._workspace)
        self._grads = {"weight": dw, "bias": db} if "bias" in self._params else {"weight": dw}
        return dx

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if "bias" in self._params else ", bias=False")
