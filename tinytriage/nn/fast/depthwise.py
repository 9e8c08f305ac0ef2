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
With a stride S along W a slab's cells are S apart, and NumPy would loop over one cell's C
numbers at a time; so the forward pass first copies each band's input rows into S column
phases (phase p holds columns p, p + S, p + 2S, ...), and column j*S + v*D - P of the input
is column j + (v*D - P) // S of phase (v*D - P) % S: runs of numbers again (backward reads
the strided slabs as they are). Each product goes through a scratch laid out like the part
of the band it is added to, which NumPy runs at close to its contiguous speed.

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
from tinytriage.nn.fast.epilogue import bias_and_activation
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


def _band_shape(tasks: list[tuple[slice, slice]], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The largest band of ``tasks`` in an array of ``shape`` (images, rows, ...): the scratch's shape."""
    if not tasks:
        return (0, 0, *shape[2:])
    return (max(im.stop - im.start for im, _ in tasks), max(r.stop - r.start for _, r in tasks), *shape[2:])


def _shift(s: slice, start: int) -> slice:
    """A slice of rows (step 1 or ``stride``) counted from row ``start`` instead of row 0."""
    return slice(s.start - start, s.stop - start, s.step)


def _rows(a: np.ndarray, flat: bool) -> np.ndarray:
    """(N, H, W, C) -> (N, H, W*C) when ``flat``: a channels-last row is W*C numbers in a row
    of memory, so with stride 1 along W a slab's row is one run of numbers (a view)."""
    return a.reshape(*a.shape[:2], -1) if flat else a


def _column_taps(
    weight: np.ndarray,
    dtype,
    stride_w: int,
    pad_left: int,
    dilation_w: int,
    W: int,
    Wo: int,
    flat: bool,
    phases: bool = False,
):
    """Per kernel column v: ``(out cols, in cols, kernels, phase)`` or None when the column
    only ever reads the zero border. ``kernels[u]`` is the kernel row w[u, v] (C,) that
    broadcasts over a slab; when ``flat``, the slices count numbers, not cells, and the
    kernel row is tiled along the row to match. With ``phases`` (a stride along W, flat),
    the input's columns are split into ``stride_w`` phases (``_column_phases``): column
    j*S + v*D - P is column j + (v*D - P) // S of phase (v*D - P) % S, so the in cols count
    cells of that phase, one after the other; else ``phase`` is None."""
    C, _, KH, KW = weight.shape
    w_rows = np.ascontiguousarray(weight.reshape(C, KH, KW).transpose(1, 2, 0)).astype(dtype, copy=False)  # (KH, KW, C)
    taps = []
    for v in range(KW):
        shift, step, width, phase = v * dilation_w - pad_left, stride_w, W, None
        if phases:
            phase, shift = shift % stride_w, shift // stride_w
            step, width = 1, len(range(phase, W, stride_w))  # the phase's columns: phase, phase + S, ...
        tap = _tap(shift, step, (0, Wo), (0, width))
        if tap is None or not flat:
            taps.append(None if tap is None else (*tap, w_rows[:, v], phase))
            continue
        (o, i), n = tap, tap[0].stop - tap[0].start
        taps.append(
            (
                slice(o.start * C, o.stop * C),
                slice(i.start * C, (i.start + n) * C),
                np.tile(w_rows[:, v], (1, n)),
                phase,
            )
        )
    return taps


def _column_phases(x_cl: np.ndarray, images: slice, rows: slice, S: int, out: np.ndarray) -> np.ndarray:
    """The input rows ``rows`` of ``images`` split by column into S phases, phase p holding
    columns p, p + S, p + 2S, ...: ``out[:n, :R, p]`` is phase p as flat rows of numbers,
    (n, R, ceil(W/S)*C). A strided convolution's slabs then read runs of numbers, as with
    stride 1, instead of one cell's C numbers at a time; one copy of the band's rows, in cache."""
    n, R = images.stop - images.start, rows.stop - rows.start
    W, C = x_cl.shape[2:]
    for p in range(S):
        Wp = len(range(p, W, S))
        dst = out[:n, :R, p, : Wp * C].reshape(n, R, Wp, C)
        np.copyto(dst, x_cl[images, rows, p::S])
    return out[:n, :R]


def _sum_of_taps(band: np.ndarray, terms: list, tmp: np.ndarray) -> None:
    """``band[index] += src * w`` for every term ``(index, src, w)`` in their order: the first
    term that covers the whole band is written, not added, so the band needs no zeroing (with
    "same" padding the centre tap does); the others go through the calling thread's scratch
    ``tmp``, so that nothing is allocated. ``tmp`` is at least the band's shape and
    ``tmp[index]`` is used, so the product lies in memory exactly as its destination does:
    NumPy then runs both calls at close to its contiguous speed (a scratch packed to the
    slab's own shape ran each call 2-3x slower)."""
    first = next((k for k, (index, _, _) in enumerate(terms) if band[index].size == band.size), None)
    if first is None:
        band[...] = 0
    else:
        index, src, w = terms.pop(first)
        np.multiply(src, w, out=band[index])
    t_band = tmp.reshape(-1)[: band.size].reshape(band.shape)
    for index, src, w in terms:
        dst = band[index]
        if any(isinstance(i, slice) and i.step not in (None, 1) for i in index):
            t = tmp.reshape(-1)[: dst.size].reshape(dst.shape)  # a strided dst (stride 2's dx): packed is faster
        else:
            t = t_band[index]
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
    phases = SW > 1  # a stride along W: each band's input rows split into column phases first
    cols = _column_taps(weight, dtype, SW, PL, DW, W, Wo, True, phases)  # slabs' rows are runs of numbers
    x_rows, out_rows = _rows(x_cl, True), _rows(out, True)  # (N, H, W*C), (N, H', W'*C)
    b = None if bias is None else bias.astype(dtype, copy=False)
    b_row = None if b is None else np.tile(b, Wo)  # along a flat row, (W'*C,)
    tasks = _bands(N, Ho, Wo * C * out.itemsize)
    tmp_shape = _band_shape(tasks, out_rows.shape)

    def input_rows(rows: slice) -> slice:
        """The input rows that the output rows ``rows`` read (the zero border left out)."""
        lo = max(0, rows.start * SH - PT)
        return slice(lo, max(lo, min(H, (rows.stop - 1) * SH + (KH - 1) * DH - PT + 1)))

    if phases:
        R_in = max(input_rows(r).stop - input_rows(r).start for _, r in tasks) if tasks else 0
        phase_shape = (tmp_shape[0], R_in, SW, -(-W // SW) * C)

    def band(task: tuple[slice, slice]) -> None:
        images, rows = task
        src, first = x_rows[images], 0  # the slabs' source, and its first row's number in x
        if phases:
            r_in = input_rows(rows)
            src = _column_phases(
                x_cl, images, r_in, SW, ws.scratch(f"phases {threading.get_ident()}", phase_shape, dtype)
            )
            first = r_in.start
        terms = []  # out[i, j] += x_pad[i*S + u*D, j*S + v*D] * w[u, v], for every cell of the band at once
        for u in range(KH):
            r = _tap(u * DH - PT, SH, (rows.start, rows.stop), (0, H))
            for v in range(KW):
                if r is None or cols[v] is None:
                    continue  # this offset only ever reads the zero border
                (o_r, x_r), (o_c, x_c, w, p) = r, cols[v]
                slab = src[:, _shift(x_r, first), x_c] if p is None else src[:, _shift(x_r, first), p, x_c]
                terms.append(((slice(None), _shift(o_r, rows.start), o_c), slab, w[u]))
        mine = out_rows[images, rows]
        _sum_of_taps(mine, terms, ws.scratch(f"forward {threading.get_ident()}", tmp_shape, dtype))
        bias_and_activation(mine, b_row, relu, cap)

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
                (o_r, x_r), (o_c, x_c, _, _) = r, cols[v]
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
    tmp_shape = _band_shape(tasks, dx_rows.shape)

    def scatter(task: tuple[slice, slice]) -> None:
        images, rows = task
        terms = []  # dx_pad[i*S + u*D, j*S + v*D] += dout[i, j] * w[u, v]: d out / d x = the kernel
        for u in range(KH):
            r = _tap(u * DH - PT, SH, (0, Ho), (rows.start, rows.stop))
            for v in range(KW):
                if r is None or cols[v] is None:
                    continue
                (o_r, x_r), (o_c, x_c, w, _) = r, cols[v]
                terms.append(((slice(None), _shift(x_r, rows.start), x_c), d_rows[images, o_r, o_c], w[u]))
        _sum_of_taps(dx_rows[images, rows], terms, ws.scratch(f"backward {threading.get_ident()}", tmp_shape, dtype))

    parallel_map(scatter, tasks)
    return nchw(dx), dw, db
