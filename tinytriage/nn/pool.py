"""Pooling: max, average and adaptive average over K x K windows, and global average + max.

Max pooling keeps the largest value of each window,

    out[n, c, i, j] = max_{u,v} x_pad[n, c, i*S + u, j*S + v]        (padding is -inf)

and its gradient is winner-take-all: the whole upstream gradient of a cell goes to the one
input that won it (on ties the first maximum in row-major order, as PyTorch), the others
get zero. Average pooling takes the mean (zero padding counted, PyTorch's default
``count_include_pad=True``), so its gradient is spread evenly: dout / (KH*KW) to every
cell of the window. Adaptive average pooling picks the windows from the output size:
cell i covers rows floor(i*H/H') to ceil((i+1)*H/H').

As for convolution there are two versions: ``maxpool2d_reference`` / ``avgpool2d_reference``
loop over output cells (the max one also returns which input cell won), and
``maxpool2d_forward`` / ``avgpool2d_forward`` loop only over the K*K kernel offsets, each
step one NumPy operation on a strided slab of the whole batch (max pooling works
channels-last, the layout the convolutions hand on, a few images per thread).
"""

from __future__ import annotations

import math

import numpy as np

from tinytriage.nn.fast.memory import Workspace, channels_last, empty, nchw
from tinytriage.nn.fast.pool import maxpool2d_backward, maxpool2d_forward
from tinytriage.nn.module import Module, check_ndim, take_cache
from tinytriage.nn.sizes import IntPair, pad2d, pair, pool_args, pool_output_hw


def _slab(a: np.ndarray, u: int, v: int, stride: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """View of kernel offset (u, v) in every window: a[:, :, i*S + u, j*S + v] for all (i, j)."""
    (SH, SW), (Ho, Wo) = stride, out_hw
    return a[:, :, u : u + SH * (Ho - 1) + 1 : SH, v : v + SW * (Wo - 1) + 1 : SW]


# -- max pooling --------------------------------------------------------------------------
def maxpool2d_reference(
    x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Loop over output cells; returns ``(out, winners)``, winners (N, C, H', W', 2) the
    (row, col) in ``x`` of the input cell each output took its value from."""
    kernel, stride, padding = pool_args("MaxPool2d", kernel_size, stride, padding)
    Ho, Wo = pool_output_hw("MaxPool2d", x, kernel, stride, padding)
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    winners = np.empty((N, C, Ho, Wo, 2), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    best, best_at = -math.inf, None
                    for u in range(KH):
                        for v in range(KW):
                            r, s = i * SH + u - PH, j * SW + v - PW  # position in x
                            if not (0 <= r < H and 0 <= s < W):
                                continue  # padding never wins
                            value = x[n, c, r, s]
                            # strictly greater: the first maximum wins ties; NaN always wins
                            if best_at is None or value > best or np.isnan(value):
                                best, best_at = value, (r, s)
                    out[n, c, i, j] = best
                    winners[n, c, i, j] = best_at
    return out, winners


def maxpool2d_backward_reference(dout: np.ndarray, winners: np.ndarray, x_shape: tuple) -> np.ndarray:
    """Winner-take-all: each output cell's gradient goes to the input cell that won it."""
    dx = np.zeros(x_shape, dtype=dout.dtype)
    N, C, Ho, Wo = dout.shape
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    r, s = winners[n, c, i, j]
                    dx[n, c, r, s] += dout[n, c, i, j]  # += : overlapping windows can share a winner
    return dx


# -- average pooling ----------------------------------------------------------------------
def avgpool2d_reference(
    x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0
) -> np.ndarray:
    """Loop over output cells: the mean of each zero-padded window."""
    kernel, stride, padding = pool_args("AvgPool2d", kernel_size, stride, padding)
    Ho, Wo = pool_output_hw("AvgPool2d", x, kernel, stride, padding)
    N, C, H, W = x.shape
    (KH, KW), (SH, SW) = kernel, stride
    x_padded = pad2d(x, padding)
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    out[n, c, i, j] = x_padded[n, c, i * SH : i * SH + KH, j * SW : j * SW + KW].mean()
    return out


def avgpool2d_backward_reference(
    dout: np.ndarray, x_shape: tuple, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0
) -> np.ndarray:
    """Every cell of a window gets dout / (KH*KW)."""
    kernel, stride, padding = pool_args("AvgPool2d", kernel_size, stride, padding)
    N, C, H, W = x_shape
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    dx_padded = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=dout.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    dx_padded[n, c, i * SH : i * SH + KH, j * SW : j * SW + KW] += dout[n, c, i, j] / (KH * KW)
    return dx_padded[:, :, PH : PH + H, PW : PW + W]


def avgpool2d_forward(
    x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0
) -> tuple[np.ndarray, tuple]:
    """Fast average pooling; returns ``(out, cache)``. A sum of the K*K strided slabs."""
    kernel, stride, padding = pool_args("AvgPool2d", kernel_size, stride, padding)
    Ho, Wo = pool_output_hw("AvgPool2d", x, kernel, stride, padding)
    KH, KW = kernel
    x_padded = pad2d(x, padding)
    out = np.zeros((x.shape[0], x.shape[1], Ho, Wo), dtype=x.dtype)
    for u in range(KH):
        for v in range(KW):
            out += _slab(x_padded, u, v, stride, (Ho, Wo))
    out /= KH * KW
    return out, (x.shape, kernel, stride, padding)


def avgpool2d_backward(dout: np.ndarray, cache: tuple) -> np.ndarray:
    """dx: dout / (KH*KW) added back to every kernel offset, one strided add each."""
    (N, C, H, W), (KH, KW), stride, (PH, PW) = cache
    Ho, Wo = dout.shape[2:]
    share = dout / (KH * KW)  # d mean / d x = 1 / (KH*KW)
    dx_padded = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=dout.dtype)
    for u in range(KH):
        for v in range(KW):
            _slab(dx_padded, u, v, stride, (Ho, Wo))[...] += share
    return dx_padded[:, :, PH : PH + H, PW : PW + W]


# -- the layers ---------------------------------------------------------------------------
class MaxPool2d(Module):
    """``torch.nn.MaxPool2d(kernel_size, stride=None, padding=0)``."""

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = pool_args("MaxPool2d", kernel_size, stride, padding)
        self._cache: tuple | None = None
        self._workspace = Workspace()  # the -inf padded input, when there is padding

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = maxpool2d_forward(x, self.kernel_size, self.stride, self.padding, self._workspace)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        cache, self._cache = take_cache(self._cache, "MaxPool2d")
        return maxpool2d_backward(grad_out, cache, self._workspace)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """``torch.nn.AvgPool2d(kernel_size, stride=None, padding=0)``, padding counted in the mean."""

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = pool_args("AvgPool2d", kernel_size, stride, padding)
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return avgpool2d_backward(grad_out, self._cache)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def adaptive_bins(size: int, out_size: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive windows along one axis: [floor(i*H/H'), ceil((i+1)*H/H'))."""
    return [((i * size) // out_size, -(-((i + 1) * size) // out_size)) for i in range(out_size)]


class AdaptiveAvgPool2d(Module):
    """``torch.nn.AdaptiveAvgPool2d(output_size)``: average into a fixed (H', W') grid."""

    def __init__(self, output_size: IntPair) -> None:
        super().__init__()
        self.output_size = pair(output_size, "output_size", "AdaptiveAvgPool2d", 1)
        self._x_shape: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_ndim(x, 4, "AdaptiveAvgPool2d", "(N, C, H, W)")
        N, C, H, W = x.shape
        Ho, Wo = self.output_size
        self._x_shape = x.shape
        if (Ho, Wo) == (1, 1):
            return x.mean(axis=(2, 3), keepdims=True)  # global average pooling, (N, C, 1, 1)
        out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
        for i, (top, bottom) in enumerate(adaptive_bins(H, Ho)):
            for j, (left, right) in enumerate(adaptive_bins(W, Wo)):
                out[:, :, i, j] = x[:, :, top:bottom, left:right].mean(axis=(2, 3))
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        N, C, H, W = self._x_shape
        Ho, Wo = self.output_size
        if (Ho, Wo) == (1, 1):
            # d mean / d x = 1 / (H*W) everywhere; written channels-last, the layout of the
            # layers before it, so that their backward reads the two in the same order
            dx = empty((N, H, W, C), grad_out.dtype)
            np.divide(grad_out.reshape(N, 1, 1, C), H * W, out=dx)
            return nchw(dx)
        dx = np.zeros((N, C, H, W), dtype=grad_out.dtype)
        for i, (top, bottom) in enumerate(adaptive_bins(H, Ho)):
            for j, (left, right) in enumerate(adaptive_bins(W, Wo)):
                # d mean / d x = 1 / (window area); adaptive windows may overlap, hence +=
                area = (bottom - top) * (right - left)
                dx[:, :, top:bottom, left:right] += grad_out[:, :, i : i + 1, j : j + 1] / area
        return dx

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class GlobalAvgMaxPool2d(Module):
    """Global average and global max pooling side by side: (N, C, H, W) -> (N, 2C, 1, 1).

    Channels [0, C) hold each map's mean, channels [C, 2C) its maximum (fastai's
    ``AdaptiveConcatPool2d``, with the halves the other way round). The mean speaks for
    what covers the photo; the maximum for what lights up a single cell, such as a crack
    across one corner of a small screen, which a mean over the whole map dilutes by H*W.
    The gradient is the sum of the two pools' gradients:

        dx[n, c, i, j] = dmean[n, c] / (H*W) + dmax[n, c] * [(i, j) is the first maximum]

    (row-major first maximum on ties, NaN always wins: ``torch.nn.AdaptiveMaxPool2d(1)``
    on the CPU). Its PyTorch twin is ``tinytriage.engines.torch_engine.TorchGlobalAvgMaxPool2d``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_ndim(x, 4, "GlobalAvgMaxPool2d", "(N, C, H, W)")
        N, C, H, W = x.shape
        x_cl = channels_last(x).reshape(N, H * W, C)  # (N, HW, C): one row per cell
        winner = np.argmax(x_cl, axis=1)  # (N, C): first maximum (argmax also picks the first NaN)
        top = np.take_along_axis(x_cl, winner[:, None, :], axis=1)[:, 0]  # (N, C)
        self._cache = (x.shape, winner)
        return np.concatenate([x_cl.mean(axis=1), top], axis=1).reshape(N, 2 * C, 1, 1)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        cache, self._cache = take_cache(self._cache, "GlobalAvgMaxPool2d")
        (N, C, H, W), winner = cache
        g = grad_out.reshape(N, 2 * C)
        g_mean, g_max = g[:, :C], g[:, C:]  # (N, C) each
        # d mean / d x = 1 / (H*W) everywhere, written channels-last like the layers before it
        dx = np.empty((N, H * W, C), dtype=grad_out.dtype)  # (N, HW, C)
        np.divide(g_mean[:, None, :], H * W, out=dx)
        # d max / d x = 1 at the winner, 0 elsewhere
        at = winner[:, None, :]  # (N, 1, C)
        np.put_along_axis(dx, at, np.take_along_axis(dx, at, axis=1) + g_max[:, None, :], axis=1)
        return nchw(dx.reshape(N, H, W, C))
