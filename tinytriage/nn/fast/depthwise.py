"""The fast depthwise convolution: K*K broadcast multiply-adds, channels-last, by bands of rows.

A depthwise convolution (groups = channels, one KH x KW kernel per channel) does K*K
multiply-adds per output number. im2col would copy every window into a row (K*K copies of
the input) only to multiply those rows by a matrix that is zero off its diagonal, so it
gets a pair of its own here, computing what ``tinytriage.nn.depthwise``'s reference loops
compute (tests hold them equal). Channels-last (see ``tinytriage.nn.fast.memory``):

    out[n, i, j, :] = b + sum_{u,v} x_pad[n, i*S + u*D, j*S + v*D, :] * w[u, v, :]

is one multiply and one add per kernel offset (u, v), each over a strided slab: for all
output cells (i, j) at once, the input cells that offset reads. ``w[u, v]`` is a (C,) row
that broadcasts over the slab (with stride 1 along W, a row of cells is W*C numbers in a
row of memory, and the kernel row is tiled W times to match: one long loop per row).

Bands. A slab of the whole batch is far bigger than the CPU's cache, and the K*K passes
would each read it from main memory. So the work goes a band of output rows at a time
(about ``BAND_BYTES`` of output: a band of one large image, or a few small images whole):
its K*K passes run in cache. The bands are the tasks that ``set_num_threads`` shares out.

The padding is never written: each offset's slab is cut to the cells that fall inside the
input (``_tap``), so the zero border costs nothing, and TensorFlow's "same" padding, one
row more at the bottom than at the top, is just another pair of numbers.

Backward, the same way:

    db[c]       = sum over cells of dout[n, i, j, c]
    dw[u, v, c] = sum over cells of dout[n, i, j, c] * x_pad[n, i*S + u*D, j*S + v*D, c]
    dx_pad[n, i*S + u*D, j*S + v*D, c] += dout[n, i, j, c] * w[u, v, c]

dw and db by bands of output rows, each band's sums in float64, added in band order; dx
by bands of *input* rows: each offset scatters dout * w[u, v] into the strided slab of the
band's rows it lands on, so every dx cell belongs to one band and gets its K*K terms in one
fixed order. Tasks are cut by size alone: the results do not depend on the thread count.
"""

from __future__ import annotations

import threading

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.fast.memory import Workspace, channels_last, empty, nchw
from tinytriage.nn.fast.parallel import parallel_map, split
from tinytriage.nn.sizes import IntPair, Pads, as_pads, check_conv, padded_output_hw, pair

BAND_BYTES = 2**21  # output per task: big enough that the K*K NumPy calls per band cost little next to
# their work, small enough that a band and the slabs it reads stay in cache


def check_depthwise(x: np.ndarray, weight: np.ndarray) -> None:
    """ShapeError unless ``weight`` is (C, 1, KH, KW) for an (N, C, H, W) ``x``: one kernel per channel."""
    check_conv(x, weight, x.shape[1] if x.ndim == 4 else 1)
    if weight.shape[0] != x.shape[1]:
        raise ShapeError(
            f"Conv2d: the depthwise path takes one kernel per channel, weight ({x.shape[1]}, 1, KH, KW); "
            f"got weight shape {tuple(weight.shape)}"
        )


def _tap(shift: int, step: int, out_range: tuple[int, int], in_range: tuple[int, int]) -> tuple[slice, slice] | None:
    """Along one axis, for one kernel offset: output cell o reads input cell o*step + shift.

    Returns (output slice, input slice) of the cells o in ``out_range`` whose input cell
    lies in ``in_range`` (both half-open), or None when there are none."""
    first = max(out_range[0], -((shift - in_range[0]) // step))  # ceil((in_lo - shift) / step)
    last = min(out_range[1], -((shift - in_range[1]) // step))  # ceil((in_hi - shift) / step)
    if last <= first:
        return None
    return slice(first, last), slice(first * step + shift, (last - 1) * step + shift + 1, step)


def _bands(N: int, rows: int, row_bytes: int) -> list[tuple[slice, slice]]:
    """``(images, rows)`` tasks of about ``BAND_BYTES``: bands of rows of one image, or
    whole images a few at a time. Cut by size alone."""
    if rows * row_bytes >= BAND_BYTES:
        return [(slice(n, n + 1), band) for n in range(N) for band in split(rows, row_bytes, BAND_BYTES)]
    return [(images, slice(0, rows)) for images in split(N, max(1, rows * row_bytes), BAND_BYTES)]


def _rows(a: np.ndarray, flat: bool) -> np.ndarray:
    """(N, H, W, C) -> (N, H, W*C) when ``flat``: a channels-last row is W*C numbers in a row
    of memory, so with stride 1 along W a slab's row is one run of numbers (a view)."""
    return a.reshape(*a.shape[:2], -1) if flat else a


def _column_taps(weight: np.ndarray, dtype, stride_w: int, pad_left: int, dilation_w: int, W: int, Wo: int, flat: bool):
    """Per kernel column v: ``(out cols, in cols, kernels)`` or None when the column only
    ever reads the zero border. ``kernels[u]`` is the kernel row w[u, v] (C,) that
    broadcasts over a slab; when ``flat``, the slices count numbers, not cells, and the
    kernel row is tiled along the row to match."""
    C, _, KH, KW = weight.shape
    w_rows = np.ascontiguousarray(weight.reshape(C, KH, KW).transpose(1, 2, 0)).astype(dtype, copy=False)  # (KH, KW, C)
    taps = []
    for v in range(KW):
        tap = _tap(v * dilation_w - pad_left, stride_w, (0, Wo), (0, W))
        if tap is None or not flat:
            taps.append(None if tap is None else (*tap, w_rows[:, v]))
            continue
        (o, i), n = tap, tap[0].stop - tap[0].start
        taps.append(
            (slice(o.start * C, o.stop * C), slice(i.start * C, (i.start + n) * C), np.tile(w_rows[:, v], (1, n)))
        )
    return taps


def _sum_of_taps(band: np.ndarray, terms: list, tmp: np.ndarray) -> None:
    """``band = sum of src * w`` over ``terms`` ``(dst, src, w)``, each dst a view into ``band``,
    in their order: the first term that covers the whole band is written, not added, so the
    band needs no zeroing (with "same" padding the centre tap does); the others are added
    through the calling thread's scratch ``tmp``, so that nothing is allocated."""
    first = next((k for k, (dst, _, _) in enumerate(terms) if dst.size == band.size), None)
    if first is None:
        band[...] = 0
    else:
        dst, src, w = terms.pop(first)
        np.multiply(src, w, out=dst)
    for dst, src, w in terms:
        t = tmp[: src.size].reshape(src.shape)
        np.multiply(src, w, out=t)
        np.add(dst, t, out=dst)


def depthwise_conv2d_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntPair = 1,
    padding: IntPair | Pads = 0,
    dilation: IntPair = 1,
    workspace: Workspace | None = None,
) -> tuple[np.ndarray, tuple]:
    """Fast depthwise convolution (N, C, H, W) -> (N, C, H', W'), weight (C, 1, KH, KW);
    returns ``(out, cache)`` for backward. ``padding``: P, (PH, PW) or ((top, bottom),
    (left, right)). ``out`` is a channels-last view (see ``tinytriage.nn.fast.memory``)."""
    return _depthwise(x, weight, bias, stride, padding, dilation, workspace)


def depthwise_conv2d_fused_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntPair,
    padding: IntPair | Pads,
    dilation: IntPair,
    workspace: Workspace | None,
    relu: bool,
    cap: float | None = None,
) -> np.ndarray:
    """Inference only (``tinytriage.nn.fast.fuse``): the convolution, then ``max(., 0)`` when
    ``relu`` and ``min(., cap)`` when ``cap`` (ReLU6: 6), on each band while it is in cache."""
    out, _ = _depthwise(x, weight, bias, stride, padding, dilation, workspace, relu, cap)
    return out


def _depthwise(x, weight, bias, stride, padding, dilation, workspace, relu=False, cap=None):
    check_depthwise(x, weight)
    stride, dilation = pair(stride, "stride", "Conv2d", 1), pair(dilation, "dilation", "Conv2d", 1)
    pads = as_pads(padding)
    N, C, H, W = x.shape
    KH, KW = weight.shape[2:]
    (SH, SW), (DH, DW), (PT, PL) = stride, dilation, (pads[0][0], pads[1][0])
    Ho, Wo = padded_output_hw("Conv2d", (H, W), (KH, KW), stride, pads, dilation)
    ws = Workspace() if workspace is None else workspace
    dtype = np.result_type(x, weight)
    x_cl = channels_last(x.astype(dtype, copy=False))  # (N, H, W, C)
    out = empty((N, Ho, Wo, C), dtype)  # (N, H', W', C)
    flat = SW == 1  # slabs' rows are runs of numbers: index (N, H, W*C) rows
    cols = _column_taps(weight, dtype, SW, PL, DW, W, Wo, flat)
    x_rows, out_rows = _rows(x_cl, flat), _rows(out, flat)
    b = None if bias is None else bias.astype(dtype, copy=False)
    b_row = b if b is None or not flat else np.tile(b, Wo)  # (C,) or, along a flat row, (W'*C,)
    tasks = _bands(N, Ho, Wo * C * out.itemsize)
    tmp_size = max((im.stop - im.start) * (r.stop - r.start) for im, r in tasks) * Wo * C if tasks else 0

    def band(task: tuple[slice, slice]) -> None:
        images, rows = task
        terms = []  # out[i, j] += x_pad[i*S + u*D, j*S + v*D] * w[u, v], for every cell of the band at once
        for u in range(KH):
            r = _tap(u * DH - PT, SH, (rows.start, rows.stop), (0, H))
            for v in range(KW):
                if r is None or cols[v] is None:
                    continue  # this offset only ever reads the zero border
                (o_r, x_r), (o_c, x_c, w) = r, cols[v]
                terms.append((out_rows[images, o_r, o_c], x_rows[images, x_r, x_c], w[u]))
        mine = out_rows[images, rows]
        _sum_of_taps(mine, terms, ws.scratch(f"forward {threading.get_ident()}", (tmp_size,), dtype))
        if b_row is not None:
            mine += b_row
        if relu:
            np.maximum(mine, 0, out=mine)
        if cap is not None:
            np.minimum(mine, cap, out=mine)

    parallel_map(band, tasks)
    cache = (x_cl, weight, bias is not None, stride, pads, dilation)
    return nchw(out), cache


def depthwise_conv2d_backward(
    dout: np.ndarray, cache: tuple, needs_input_grad: bool = True, workspace: Workspace | None = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw, db) from ``dout`` (N, C, H', W') and ``depthwise_conv2d_forward``'s cache.

    ``dx`` is None when ``needs_input_grad`` is False, ``db`` when there is no bias."""
    x_cl, weight, has_bias, stride, pads, dilation = cache
    N, H, W, C = x_cl.shape
    KH, KW = weight.shape[2:]
    (SH, SW), (DH, DW), (PT, PL) = stride, dilation, (pads[0][0], pads[1][0])
    ws = Workspace() if workspace is None else workspace
    dtype = x_cl.dtype
    d_cl = channels_last(dout).astype(dtype, copy=False)  # (N, H', W', C)
    Ho, Wo = d_cl.shape[1:3]
    flat = SW == 1  # slabs' rows are runs of numbers: index (N, H, W*C) rows
    cols = _column_taps(weight, dtype, SW, PL, DW, W, Wo, flat)
    x_rows, d_rows = _rows(x_cl, flat), _rows(d_cl, flat)

    # dw and db, by bands of output rows: each band's sums in float64, added in band order
    def sums(task: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray | None]:
        images, rows = task
        dw = np.zeros((KH, KW, C))  # float64
        for u in range(KH):
            r = _tap(u * DH - PT, SH, (rows.start, rows.stop), (0, H))
            for v in range(KW):
                if r is None or cols[v] is None:
                    continue
                (o_r, x_r), (o_c, x_c, _) = r, cols[v]
                # d out[i, j] / d w[u, v] = x_pad[i*S + u*D, j*S + v*D], summed over the band's cells:
                # over its rows here, (W'*C,) per number of a flat row or (C,), then over the columns
                d, xs = d_rows[images, o_r, o_c], x_rows[images, x_r, x_c]
                part = np.einsum("nij,nij->j", d, xs) if flat else np.einsum("nijc,nijc->c", d, xs)
                dw[u, v] = part.reshape(-1, C).sum(axis=0, dtype=np.float64)
        if not has_bias:
            return dw, None
        d_band = d_cl[images, rows]  # (n, R, W', C), d out / d b = 1
        return dw, d_band.reshape(-1, Wo * C).sum(axis=0).reshape(Wo, C).sum(axis=0, dtype=np.float64)

    parts = parallel_map(sums, _bands(N, Ho, Wo * C * x_cl.itemsize))
    dw_sum, db_sum = np.zeros((KH, KW, C)), np.zeros(C)
    for dw_part, db_part in parts:  # in band order, whatever thread finished first
        dw_sum += dw_part
        if has_bias:
            db_sum += db_part
    dw = np.ascontiguousarray(dw_sum.transpose(2, 0, 1)).reshape(C, 1, KH, KW).astype(dtype)
    db = db_sum.astype(dtype) if has_bias else None
    if not needs_input_grad:
        return None, dw, db

    # dx, by bands of input rows: offset (u, v) scatters dout * w[u, v] into the strided slab
    # of the band's rows that it lands on (rows i*S + u*D - P_top); the border's share is dropped
    dx = empty((N, H, W, C), dtype)  # (N, H, W, C)
    dx_rows = _rows(dx, flat)
    tasks = _bands(N, H, W * C * dx.itemsize)
    tmp_size = max((im.stop - im.start) * (r.stop - r.start) for im, r in tasks) * W * C if tasks else 0

    def scatter(task: tuple[slice, slice]) -> None:
        images, rows = task
        terms = []  # dx_pad[i*S + u*D, j*S + v*D] += dout[i, j] * w[u, v]: d out / d x = the kernel
        for u in range(KH):
            r = _tap(u * DH - PT, SH, (0, Ho), (rows.start, rows.stop))
            for v in range(KW):
                if r is None or cols[v] is None:
                    continue
                (o_r, x_r), (o_c, x_c, w) = r, cols[v]
                terms.append((dx_rows[images, x_r, x_c], d_rows[images, o_r, o_c], w[u]))
        _sum_of_taps(dx_rows[images, rows], terms, ws.scratch(f"backward {threading.get_ident()}", (tmp_size,), dtype))

    parallel_map(scatter, tasks)
    return nchw(dx), dw, db
