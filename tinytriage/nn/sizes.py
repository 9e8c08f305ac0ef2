"""Sizes and argument checks shared by convolution and pooling: how many positions a
kernel takes along an axis, and the errors a wrong shape gets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.module import check_ndim

IntPair = int | Sequence[int]
Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))


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


def as_pads(padding: IntPair | Pads, layer: str = "Conv2d") -> Pads:
    """``P`` or ``(PH, PW)`` -> ((PH, PH), (PW, PW)); ((top, bottom), (left, right)) stays."""
    if not isinstance(padding, (int, np.integer)) and all(isinstance(p, Sequence) for p in padding):
        (PT, PB), (PL, PR) = (pair(p, "padding", layer, 0) for p in padding)
        return (PT, PB), (PL, PR)
    PH, PW = pair(padding, "padding", layer, 0)
    return (PH, PH), (PW, PW)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's "same" padding along one axis, (before, after): enough that the kernel
    takes ceil(size / stride) positions, half before, the odd one after.

        total = max((ceil(H / S) - 1) * S + (K - 1) * D + 1 - H, 0)
        before = total // 2,  after = total - total // 2
    """
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad2d_asym(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """Pad the last two axes of (N, C, H, W) by ((top, bottom), (left, right))."""
    (PT, PB), (PL, PR) = pads
    if PT == PB == PL == PR == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (PT, PB), (PL, PR)), constant_values=value)


def padded_output_hw(
    layer: str,
    hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: Pads,
    dilation: tuple[int, int] = (1, 1),
) -> tuple[int, int]:
    """``sliding_output_hw`` for padding that may differ between the two sides of an axis."""
    (PT, PB), (PL, PR) = pads
    if PT == PB and PL == PR:
        return sliding_output_hw(layer, hw, kernel, stride, (PT, PL), dilation)
    return sliding_output_hw(layer, (hw[0] + PT + PB, hw[1] + PL + PR), kernel, stride, (0, 0), dilation)


def check_conv(x: np.ndarray, weight: np.ndarray, groups: int) -> None:
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


def pool_args(
    layer: str, kernel_size: IntPair, stride: IntPair | None, padding: IntPair
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Normalise to pairs; stride defaults to the kernel size, as in PyTorch."""
    kernel = pair(kernel_size, "kernel_size", layer, 1)
    stride = kernel if stride is None else pair(stride, "stride", layer, 1)
    padding = pair(padding, "padding", layer, 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ShapeError(f"{layer}: padding {padding} must be at most half the kernel size {kernel}")
    return kernel, stride, padding


def pool_output_hw(layer: str, x: np.ndarray, kernel, stride, padding) -> tuple[int, int]:
    check_ndim(x, 4, layer, "(N, C, H, W)")
    return sliding_output_hw(layer, x.shape[2:], kernel, stride, padding)
