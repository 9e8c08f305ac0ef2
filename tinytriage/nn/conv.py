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
``conv2d_forward`` and ``conv2d_backward`` compute the same numbers with one matrix
multiply per pass (im2col: copy every window into a column, then a GEMM) and are what
training uses. Tests hold the two equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tinytriage.errors import ShapeError
from tinytriage.nn.module import Module, check_ndim

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


# -- (b) the fast pair: im2col and one matrix multiply ------------------------------------
def im2col(
    x_padded: np.ndarray,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> np.ndarray:
    """Copy every window into a column: (N, C, H+2P, W+2P) -> (N, C*KH*KW, H'*W')."""
    N, C = x_padded.shape[:2]
    (KH, KW), (SH, SW), (DH, DW) = kernel_size, stride, dilation
    span = (DH * (KH - 1) + 1, DW * (KW - 1) + 1)  # the dilated kernel's extent
    windows = sliding_window_view(x_padded, span, axis=(2, 3))  # a view: (N, C, ., ., spanH, spanW)
    windows = windows[:, :, ::SH, ::SW, ::DH, ::DW]  # still a view: (N, C, H', W', KH, KW)
    Ho, Wo = windows.shape[2:4]
    return windows.transpose(0, 1, 4, 5, 2, 3).reshape(N, C * KH * KW, Ho * Wo)  # the one copy


def conv2d_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[np.ndarray, tuple]:
    """Fast convolution (N, C, H, W) -> (N, O, H', W'); returns ``(out, cache)`` for backward."""
    _check_conv(x, weight, groups)
    stride, padding = pair(stride, "stride", "Conv2d", 1), pair(padding, "padding", "Conv2d", 0)
    dilation = pair(dilation, "dilation", "Conv2d", 1)
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    G = groups
    Ho, Wo = sliding_output_hw("Conv2d", (H, W), (KH, KW), stride, padding, dilation)
    cols = im2col(pad2d(x, padding), (KH, KW), stride, dilation)  # (N, C*KH*KW, H'*W')
    cols = cols.reshape(N, G, Cg * KH * KW, Ho * Wo)  # a group's channels are consecutive rows
    w = weight.reshape(G, O // G, Cg * KH * KW)  # (G, O/G, Cg*KH*KW)
    out = np.matmul(w, cols)  # (N, G, O/G, H'*W'): every output cell is a row . column
    out = out.reshape(N, O, Ho, Wo)
    if bias is not None:
        out += bias.reshape(1, O, 1, 1)
    cache = (x.shape, weight, cols, stride, padding, dilation, groups)
    return out, cache


def conv2d_backward(
    dout: np.ndarray, cache: tuple, needs_input_grad: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx, dw, db) from ``dout`` (N, O, H', W') and ``conv2d_forward``'s cache.

    ``dx`` is None when ``needs_input_grad`` is False (the first layer needs no dx)."""
    (N, C, H, W), weight, cols, stride, padding, dilation, G = cache
    O, Cg, KH, KW = weight.shape
    Ho, Wo = dout.shape[2:]
    (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
    d = dout.reshape(N, G, O // G, Ho * Wo)  # (N, G, O/G, H'*W')

    db = dout.sum(axis=(0, 2, 3))  # (O,)
    # dw = dout . cols^T, summed over the batch: (N, G, O/G, H'W') @ (N, G, H'W', Cg*KH*KW)
    dw = np.matmul(d, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(weight.shape)
    if not needs_input_grad:
        return None, dw, db

    # dx: two ways to the same numbers, both one GEMM of the same size. They differ in the
    # big temporary they copy: O*K*K rows of windows of dout, or C*K*K rows of dcols.
    if stride == (1, 1) and PH <= DH * (KH - 1) and PW <= DW * (KW - 1) and O < C:
        # Stride 1: dx is a "full" convolution of dout with the kernel flipped and its
        # in/out channels swapped, padded so that the output is H x W again.
        w_flipped = weight.reshape(G, O // G, Cg, KH, KW).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
        w_flipped = w_flipped.reshape(C, O // G, KH, KW)  # (C, O/G, KH, KW)
        full = (DH * (KH - 1) - PH, DW * (KW - 1) - PW)
        dx, _ = conv2d_forward(dout, w_flipped, None, 1, full, dilation, G)
        return dx, dw, db

    # col2im: each column of dcols is the gradient of one window; add the K*K slabs back.
    w = weight.reshape(G, O // G, Cg * KH * KW)
    dcols = np.matmul(w.transpose(0, 2, 1), d)  # (N, G, Cg*KH*KW, H'*W')
    dcols = dcols.reshape(N, C, KH, KW, Ho, Wo)
    dx_padded = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=dcols.dtype)
    for u in range(KH):
        for v in range(KW):
            # kernel offset (u, v) of window (i, j) sits at padded pixel (i*S + u*D, j*S + v*D)
            in_rows = slice(u * DH, u * DH + SH * (Ho - 1) + 1, SH)
            in_cols = slice(v * DW, v * DW + SW * (Wo - 1) + 1, SW)
            dx_padded[:, :, in_rows, in_cols] += dcols[:, :, u, v]
    dx = dx_padded[:, :, PH : PH + H, PW : PW + W]
    return dx, dw, db


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

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_ndim(x, 4, "Conv2d", "(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"Conv2d: expected {self.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        out, self._cache = conv2d_forward(
            x, self._params["weight"], self._params.get("bias"), self.stride, self.padding, self.dilation, self.groups
        )
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        dx, dw, db = conv2d_backward(grad_out, self._cache, self.needs_input_grad)
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
