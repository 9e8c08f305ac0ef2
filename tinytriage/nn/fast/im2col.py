"""The fast convolution: im2col, one matrix multiply per chunk of images.

The same numbers as ``tinytriage.nn.conv``'s reference loops (tests hold them equal),
computed for speed; ``Conv2d`` calls ``conv2d_forward`` and ``conv2d_backward``.
``conv2d_fused_forward`` is the inference-only variant that ``fuse`` uses: ReLU and max
pooling applied to each chunk while it is in cache.
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tinytriage.nn.fast.epilogue import bias_and_activation
from tinytriage.nn.fast.memory import Workspace, channel_sums, channels_last, empty, nchw
from tinytriage.nn.fast.parallel import parallel_map
from tinytriage.nn.fast.pool import running_max_cl
from tinytriage.nn.sizes import IntPair, check_conv, pair, sliding_output_hw

# -- (b) the fast pair: im2col, one matrix multiply per chunk of images ------------------
# Both passes are the same three steps, applied to a few images at a time:
#
#   1. place the images into a zero canvas (the forward pass pads them by P);
#   2. im2col: copy every KH x KW window of the canvas into one row of ``cols``
#      (N*H'*W', KH*KW*C);
#   3. one matrix multiply per group: out (N*H'*W', O) = cols @ w_mat (KH*KW*C, O). Its rows
#      are output cells and its columns channels: the output comes out channels-last
#      (see ``tinytriage.nn.fast.memory``), with no transpose afterwards.
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
    cap: float | None = None,
) -> None:
    """Step 3 for every chunk: out rows (N*H'*W', O) = cols @ w_mat, group by group, then
    ``+ bias``, (``relu``) ``max(., 0)`` and (``cap``) ``min(., cap)`` on the chunk while it
    is still in cache.

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
        bias_and_activation(mine, bias_g, relu, cap)

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
) -> tuple[np.ndarray, tuple]:
    """Fast convolution (N, C, H, W) -> (N, O, H', W'); returns ``(out, cache)`` for backward.

    ``out`` is a channels-last view (see ``tinytriage.nn.fast.memory``); ``workspace`` keeps
    the buffers between calls (a layer passes its own; None allocates fresh ones)."""
    return _conv2d(x, weight, bias, stride, padding, dilation, groups, workspace)


def conv2d_fused_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntPair,
    padding: IntPair,
    dilation: IntPair,
    groups: int,
    workspace: Workspace | None,
    relu: bool,
    pool: tuple[IntPair, IntPair] | None,
    cap: float | None = None,
) -> np.ndarray:
    """Inference only (``tinytriage.nn.fast.fuse``): the convolution, then ``max(., 0)``
    when ``relu`` and ``min(., cap)`` when ``cap`` (ReLU6: 6), then max pooling when
    ``pool`` = (kernel, stride) (no padding), each chunk of images while it is in cache.
    No cache: there is no backward."""
    out, _ = _conv2d(x, weight, bias, stride, padding, dilation, groups, workspace, relu, pool, cap)
    return out


def _conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntPair,
    padding: IntPair,
    dilation: IntPair,
    groups: int,
    workspace: Workspace | None,
    relu: bool = False,
    pool: tuple[IntPair, IntPair] | None = None,
    cap: float | None = None,
) -> tuple[np.ndarray, tuple]:
    check_conv(x, weight, groups)
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
        _correlate(*plan, w_mat, out, bias, relu, cap=cap)
    else:
        pool_k, pool_s = pair(pool[0], "kernel_size", "MaxPool2d", 1), pair(pool[1], "stride", "MaxPool2d", 1)
        Hp, Wp = sliding_output_hw("MaxPool2d", (Ho, Wo), pool_k, pool_s, (0, 0), (1, 1))
        out = empty((N, Hp, Wp, O), dtype)  # (N, H'', W'', O): the pooled map
        _correlate(*plan, w_mat, out, bias, relu, pool=(pool_k, pool_s, (Ho, Wo), ws), cap=cap)
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
