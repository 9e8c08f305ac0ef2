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
(im2col: copy every window into a row, then a GEMM, a few images at a time; they live in
``tinytriage.nn.fast.im2col``) and are what training uses. dx is computed the same way, as a convolution of dout (see
``conv2d_backward``). Tests hold the two equal.

Two kinds of convolution are not worth im2col's copy, and ``Conv2d`` sends them down paths
of their own (``Conv2d.path``): a depthwise convolution (groups = channels, one kernel per
channel: ``tinytriage.nn.depthwise``) and a pointwise one (1x1, stride 1, no padding,
groups 1: a plain matrix multiply, ``tinytriage.nn.fast.pointwise``). The numbers are the
same; tests hold every path equal to these loops and to PyTorch.

TensorFlow's "same" padding (``Conv2dSame``, as timm's) pads each axis so that the kernel
takes ceil(H / S) positions:

    total = max((ceil(H / S) - 1) * S + (K - 1) * D + 1 - H, 0),   top = total // 2,
    bottom = total - top

so on stride 2 the bottom and right often get one row more than the top and left. It is
a ``Conv2d`` with that padding worked out for each input size; the weights and their keys
are a ``Conv2d``'s.
"""

from __future__ import annotations

import math

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.fast.depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward
from tinytriage.nn.fast.im2col import conv2d_backward, conv2d_forward
from tinytriage.nn.fast.memory import Workspace
from tinytriage.nn.fast.pointwise import pointwise_conv2d_backward, pointwise_conv2d_forward
from tinytriage.nn.module import Module, check_ndim, take_cache
from tinytriage.nn.sizes import (  # noqa: F401 (conv_output_size: nn's own)
    IntPair,
    Pads,
    check_conv,
    conv_output_size,
    pad2d,
    pad2d_asym,
    pair,
    same_padding,
    sliding_output_hw,
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
    check_conv(x, weight, groups)
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
    check_conv(x, weight, groups)
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
    check_conv(x, weight, groups)
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


# -- the layers ---------------------------------------------------------------------------
def im2col_padding(x: np.ndarray, pads: Pads) -> tuple[np.ndarray, tuple[int, int]]:
    """``(x, padding)`` for im2col, which pads both sides of an axis alike: symmetric pads
    pass through; others (TF's "same" on stride 2) are applied to ``x`` here, padding 0."""
    (PT, PB), (PL, PR) = pads
    if PT == PB and PL == PR:
        return x, (PT, PL)
    return pad2d_asym(x, pads), (0, 0)


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
        self.workspace = Workspace()  # im2col columns and padded canvases, kept between steps

    @property
    def path(self) -> str:
        """Which fast pair computes this layer: ``"depthwise"`` (one kernel per channel,
        ``tinytriage.nn.fast.depthwise``), ``"pointwise"`` (1x1, stride 1, no padding, groups 1:
        one matrix multiply, ``tinytriage.nn.fast.pointwise``) or ``"im2col"`` (the rest)."""
        if self.groups == self.in_channels == self.out_channels and self.groups > 1:
            return "depthwise"
        if self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0) and self.groups == 1:
            return "pointwise"
        return "im2col"

    def pads(self, hw: tuple[int, int]) -> Pads:
        """The padding of an (H, W) input, ((top, bottom), (left, right)): ``padding`` on both sides."""
        (PH, PW) = self.padding
        return (PH, PH), (PW, PW)

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_ndim(x, 4, "Conv2d", "(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"Conv2d: expected {self.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        w, b = self._params["weight"], self._params.get("bias")
        pads, path = self.pads(x.shape[2:]), self.path
        if path == "depthwise":
            out, cache = depthwise_conv2d_forward(x, w, b, self.stride, pads, self.dilation, self.workspace)
        elif path == "pointwise":
            out, cache = pointwise_conv2d_forward(x, w, b)
        else:
            x, padding = im2col_padding(x, pads)
            out, cache = conv2d_forward(x, w, b, self.stride, padding, self.dilation, self.groups, self.workspace)
        self._cache = (path, pads, cache)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        (path, pads, cache), self._cache = take_cache(self._cache, "Conv2d")
        if path == "depthwise":
            dx, dw, db = depthwise_conv2d_backward(grad_out, cache, self.needs_input_grad, self.workspace)
        elif path == "pointwise":
            dx, dw, db = pointwise_conv2d_backward(grad_out, cache, self.needs_input_grad)
        else:
            dx, dw, db = conv2d_backward(grad_out, cache, self.needs_input_grad, self.workspace)
            (PT, PB), (PL, PR) = pads
            if dx is not None and (PT != PB or PL != PR):  # padded by hand: the border's gradient is dropped
                dx = dx[:, :, PT : dx.shape[2] - PB, PL : dx.shape[3] - PR]
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


class Conv2dSame(Conv2d):
    """timm's ``Conv2dSame``: a ``Conv2d`` with TensorFlow's "same" padding, worked out for
    each input size (the module docstring's formula; ``padding`` is ignored, as in timm).
    The same parameters and keys as ``Conv2d``."""

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
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias, dtype, rng)

    def pads(self, hw: tuple[int, int]) -> Pads:
        """((top, bottom), (left, right)) for an (H, W) input: the kernel takes ceil(H / S) positions."""
        (H, W), (KH, KW), (SH, SW), (DH, DW) = hw, self.kernel_size, self.stride, self.dilation
        return same_padding(H, KH, SH, DH), same_padding(W, KW, SW, DW)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", padding=same (TF)"
