"""Mobile blocks: MobileNet's depthwise-separable convolution and the inverted residual.

Why mobile CNNs are cheap. A 3x3 convolution from C channels to C channels costs 9*C^2
multiply-adds per pixel: every output channel looks at every input channel through a 3x3
kernel of its own. MobileNets (Howard et al. 2017, "MobileNets: Efficient Convolutional
Neural Networks for Mobile Vision Applications") do the two jobs one after the other:

    depthwise 3x3: filter each channel on its own (``tinytriage.nn.depthwise``)   9*C
    pointwise 1x1: mix the channels, one (C, C) matrix multiply per pixel          C^2

9*C + C^2 instead of 9*C^2: at C = 96, 10,080 multiply-adds instead of 82,944, 8x fewer.

``DepthwiseSeparableConv`` is that pair, each followed by BatchNorm, ReLU6 after the first:

    x -> conv_dw (k x k depthwise) -> bn1 -> ReLU6 -> conv_pw (1x1) -> bn2   [+ x]

``InvertedResidual`` (MobileNetV2; Sandler et al. 2018, "MobileNetV2: Inverted Residuals
and Linear Bottlenecks") widens the channels first, filters in the wide space, and narrows
them again, with no activation after the narrowing (a ReLU in the narrow space would throw
information away: the paper's "linear bottleneck"):

    x -> conv_pw (1x1, C -> C*e) -> bn1 -> ReLU6 -> conv_dw (k x k depthwise) -> bn2 -> ReLU6
      -> conv_pwl (1x1, C*e -> C') -> bn3   [+ x]

In both, the input is added back (the residual) when the stride is 1 and C' = C.
EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks") stacks these blocks in stages; its Lite variant uses ReLU6 and drops
squeeze-and-excitation. The children's names (``conv_pw``, ``bn1``, ``conv_dw``, ...) are
timm's (``timm/models/_efficientnet_blocks.py``), so a ``tf_efficientnet_lite0`` state dict
loads by name; as in the TensorFlow original, BatchNorm's eps is 1e-3 and the depthwise
convolutions pad "same" (``Conv2dSame``). The ReLU6 layers (``act1``, ``act2``) hold no
weights (timm keeps them inside its BatchNorm layers).

Backward is the chain rule through the branch in reverse, and the residual adds its own
term: with y = branch(x) + x,

    dL/dx = dL/dy . d branch / dx + dL/dy

For inference ``tinytriage.nn.fast.fuse`` folds each BatchNorm and ReLU6 into the
convolution before it; the residual add stays.
"""

from __future__ import annotations

import numpy as np

from tinytriage.nn.activation import ReLU6
from tinytriage.nn.conv import Conv2d, Conv2dSame
from tinytriage.nn.fast.memory import empty_like
from tinytriage.nn.module import Module
from tinytriage.nn.norm import BatchNorm2d


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's rounding of a channel count to a multiple of ``divisor``, never below 90% of ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


def _residual(branch_out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """branch(x) + x, in the branch output's (channels-last) layout."""
    out = empty_like(branch_out)
    np.add(branch_out, x, out=out)
    return out


class DepthwiseSeparableConv(Module):
    """timm's ``DepthwiseSeparableConv`` (EfficientNet-Lite's first stage): depthwise k x k,
    BatchNorm, ReLU6, pointwise 1x1, BatchNorm, plus the input when the shapes allow."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        bn_eps: float = 1e-3,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(0) if rng is None else rng
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw = self.add_module(
            "conv_dw",
            Conv2dSame(in_chs, in_chs, dw_kernel_size, stride, groups=in_chs, bias=False, dtype=dtype, rng=rng),
        )
        self.bn1 = self.add_module("bn1", BatchNorm2d(in_chs, eps=bn_eps, dtype=dtype))
        self.act1 = self.add_module("act1", ReLU6())
        self.conv_pw = self.add_module("conv_pw", Conv2d(in_chs, out_chs, 1, bias=False, dtype=dtype, rng=rng))
        self.bn2 = self.add_module("bn2", BatchNorm2d(out_chs, eps=bn_eps, dtype=dtype))

    def branch(self) -> list[Module]:
        """The layers between input and residual add, in order (what ``fuse`` folds)."""
        return [self.conv_dw, self.bn1, self.act1, self.conv_pw, self.bn2]

    def forward(self, x: np.ndarray) -> np.ndarray:
        shortcut = x  # (N, C, H, W)
        x = self.act1(self.bn1(self.conv_dw(x)))  # (N, C, H', W')  each channel filtered alone
        x = self.bn2(self.conv_pw(x))  # (N, C', H', W')  the channels mixed, no activation
        return _residual(x, shortcut) if self.has_skip else x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        d = self.conv_pw.backward(self.bn2.backward(grad_out))  # (N, C, H', W')
        dx = self.conv_dw.backward(self.bn1.backward(self.act1.backward(d)))  # (N, C, H, W)
        return _residual(dx, grad_out) if self.has_skip else dx  # the residual's gradient: + dL/dy


class InvertedResidual(Module):
    """timm's ``InvertedResidual`` (MobileNetV2, EfficientNet-Lite): expand 1x1, BatchNorm,
    ReLU6, depthwise k x k, BatchNorm, ReLU6, project 1x1, BatchNorm, plus the input when
    the shapes allow."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        exp_ratio: float = 1.0,
        bn_eps: float = 1e-3,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(0) if rng is None else rng
        mid_chs = make_divisible(in_chs * exp_ratio)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = self.add_module("conv_pw", Conv2d(in_chs, mid_chs, 1, bias=False, dtype=dtype, rng=rng))
        self.bn1 = self.add_module("bn1", BatchNorm2d(mid_chs, eps=bn_eps, dtype=dtype))
        self.act1 = self.add_module("act1", ReLU6())
        self.conv_dw = self.add_module(
            "conv_dw",
            Conv2dSame(mid_chs, mid_chs, dw_kernel_size, stride, groups=mid_chs, bias=False, dtype=dtype, rng=rng),
        )
        self.bn2 = self.add_module("bn2", BatchNorm2d(mid_chs, eps=bn_eps, dtype=dtype))
        self.act2 = self.add_module("act2", ReLU6())
        self.conv_pwl = self.add_module("conv_pwl", Conv2d(mid_chs, out_chs, 1, bias=False, dtype=dtype, rng=rng))
        self.bn3 = self.add_module("bn3", BatchNorm2d(out_chs, eps=bn_eps, dtype=dtype))

    def branch(self) -> list[Module]:
        """The layers between input and residual add, in order (what ``fuse`` folds)."""
        return [self.conv_pw, self.bn1, self.act1, self.conv_dw, self.bn2, self.act2, self.conv_pwl, self.bn3]

    def forward(self, x: np.ndarray) -> np.ndarray:
        shortcut = x  # (N, C, H, W)
        x = self.act1(self.bn1(self.conv_pw(x)))  # (N, C*e, H, W)  expand
        x = self.act2(self.bn2(self.conv_dw(x)))  # (N, C*e, H', W')  filter each channel alone
        x = self.bn3(self.conv_pwl(x))  # (N, C', H', W')  project, no activation: the linear bottleneck
        return _residual(x, shortcut) if self.has_skip else x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        d = self.conv_pwl.backward(self.bn3.backward(grad_out))  # (N, C*e, H', W')
        d = self.conv_dw.backward(self.bn2.backward(self.act2.backward(d)))  # (N, C*e, H, W)
        dx = self.conv_pw.backward(self.bn1.backward(self.act1.backward(d)))  # (N, C, H, W)
        return _residual(dx, grad_out) if self.has_skip else dx  # the residual's gradient: + dL/dy
