"""Depthwise convolution: every channel convolved with its own kernel, nothing mixed.

``Conv2d(C, C, k, groups=C)``, weight (C, 1, KH, KW): output channel c sees input channel c
alone,

    out[n, c, i, j] = b[c] + sum_{u,v} x_pad[n, c, i*S + u*D, j*S + v*D] * w[c, 0, u, v]

K*K multiply-adds per output number, where a full convolution from C channels does K*K*C.
It is the cheap half of MobileNet's depthwise-separable convolution: the 1x1 convolution
after it mixes the channels (``tinytriage.nn.mobile``).

The backward pass is the chain rule on that sum, term by term:

    db[c]          = sum_{n,i,j} dout[n, c, i, j]
    dw[c, 0, u, v] = sum_{n,i,j} dout[n, c, i, j] * x_pad[n, c, i*S + u*D, j*S + v*D]
    dx_pad[n, c, i*S + u*D, j*S + v*D] += dout[n, c, i, j] * w[c, 0, u, v]

``depthwise_conv2d_reference`` and ``depthwise_conv2d_backward_reference`` are these
formulas as loops. ``Conv2d`` computes the same numbers with ``depthwise_conv2d_forward``
and ``depthwise_conv2d_backward`` (``tinytriage.nn.fast.depthwise``: K*K broadcast
multiply-adds over strided slabs, channels-last, a band of rows at a time), not with
im2col, which would copy every window only to multiply it by a matrix that is zero off its
diagonal. Tests hold the two equal.

``padding`` is P, (PH, PW), or ((top, bottom), (left, right)) for TensorFlow's "same"
padding, which on stride 2 puts one row more at the bottom than at the top
(``tinytriage.nn.conv.Conv2dSame``).
"""

from __future__ import annotations

import numpy as np

from tinytriage.nn.fast.depthwise import (  # noqa: F401 (the fast pair, nn's own)
    check_depthwise,
    depthwise_conv2d_backward,
    depthwise_conv2d_forward,
)
from tinytriage.nn.sizes import IntPair, Pads, as_pads, pad2d_asym, padded_output_hw, pair


def depthwise_conv2d_reference(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntPair = 1,
    padding: IntPair | Pads = 0,
    dilation: IntPair = 1,
) -> np.ndarray:
    """The depthwise convolution as its definition, one output cell at a time.
    (N, C, H, W), weight (C, 1, KH, KW) -> (N, C, H', W')."""
    check_depthwise(x, weight)
    (SH, SW), (DH, DW) = pair(stride, "stride", "Conv2d", 1), pair(dilation, "dilation", "Conv2d", 1)
    pads = as_pads(padding)
    N, C, H, W = x.shape
    _, _, KH, KW = weight.shape
    Ho, Wo = padded_output_hw("Conv2d", (H, W), (KH, KW), (SH, SW), pads, (DH, DW))
    x_pad = pad2d_asym(x, pads)  # (N, C, H + P_top + P_bottom, W + P_left + P_right)
    out = np.zeros((N, C, Ho, Wo), dtype=np.result_type(x, weight))
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    # the (KH, KW) window of channel c alone
                    window = x_pad[
                        n, c, i * SH : i * SH + DH * (KH - 1) + 1 : DH, j * SW : j * SW + DW * (KW - 1) + 1 : DW
                    ]
                    out[n, c, i, j] = np.sum(window * weight[c, 0]) + (0 if bias is None else bias[c])
    return out


def depthwise_conv2d_backward_reference(
    x: np.ndarray,
    weight: np.ndarray,
    dout: np.ndarray,
    stride: IntPair = 1,
    padding: IntPair | Pads = 0,
    dilation: IntPair = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dw, db) by the loop: every output cell hands its gradient back to its window."""
    check_depthwise(x, weight)
    (SH, SW), (DH, DW) = pair(stride, "stride", "Conv2d", 1), pair(dilation, "dilation", "Conv2d", 1)
    pads = as_pads(padding)
    (PT, _), (PL, _) = pads
    N, C, H, W = x.shape
    _, _, KH, KW = weight.shape
    x_pad = pad2d_asym(x, pads)
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(weight)
    db = np.zeros(C, dtype=dout.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    d = dout[n, c, i, j]  # dL/dout for this cell
                    rows = slice(i * SH, i * SH + DH * (KH - 1) + 1, DH)
                    cols = slice(j * SW, j * SW + DW * (KW - 1) + 1, DW)
                    dw[c, 0] += d * x_pad[n, c, rows, cols]  # d out / d w = the window
                    dx_pad[n, c, rows, cols] += d * weight[c, 0]  # d out / d window = the kernel
                    db[c] += d  # d out / d b = 1
    dx = dx_pad[:, :, PT : PT + H, PL : PL + W]  # the padding's gradient is dropped
    return dx, dw, db
