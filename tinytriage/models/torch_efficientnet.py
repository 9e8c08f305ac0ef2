"""PyTorch twins of the pieces of EfficientNet-Lite that ``torch.nn`` lacks: TensorFlow's
"same" padding, the two mobile blocks of ``tinytriage.nn.mobile`` and the classifier with a
pretrained prior (``GroupLogSoftmax``, ``PriorClassifier``), with timm's names, so parameter keys match the NumPy blocks' (and timm's ``tf_efficientnet_lite0``'s) name for
name. Imported only when torch is wanted."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tinytriage.models.efficientnet import EfficientNetConfig, block_specs
from tinytriage.nn.mobile import make_divisible


def get_same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """timm's: the total padding along one axis for TensorFlow's "same"."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class Conv2dSame(nn.Conv2d):
    """timm's ``Conv2dSame``: pad as TensorFlow does ("same"; the odd row and column at the
    bottom and right), then convolve unpadded. ``padding`` is ignored."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        pad_h = get_same_padding(H, self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = get_same_padding(W, self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])  # left, right, top, bottom
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class DepthwiseSeparableConv(nn.Module):
    """Twin of ``tinytriage.nn.mobile.DepthwiseSeparableConv``."""

    def __init__(self, in_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1, bn_eps: float = 1e-3):
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw = Conv2dSame(in_chs, in_chs, dw_kernel_size, stride, groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs, eps=bn_eps)
        self.act1 = nn.ReLU6()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv_dw(x)))
        x = self.bn2(self.conv_pw(x))
        return x + shortcut if self.has_skip else x


class InvertedResidual(nn.Module):
    """Twin of ``tinytriage.nn.mobile.InvertedResidual``."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        exp_ratio: float = 1.0,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        mid_chs = make_divisible(in_chs * exp_ratio)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs, eps=bn_eps)
        self.act1 = nn.ReLU6()
        self.conv_dw = Conv2dSame(mid_chs, mid_chs, dw_kernel_size, stride, groups=mid_chs, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs, eps=bn_eps)
        self.act2 = nn.ReLU6()
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv_pw(x)))
        x = self.act2(self.bn2(self.conv_dw(x)))
        x = self.bn3(self.conv_pwl(x))
        return x + shortcut if self.has_skip else x


class GroupLogSoftmax(nn.Module):
    """Twin of ``tinytriage.nn.GroupLogSoftmax``: log sum_{j in group k} softmax(x)_j, as a
    logsumexp of the log-softmax over each group (a class outside it adds log 0 = -inf)."""

    def __init__(self, in_features: int, num_groups: int) -> None:
        super().__init__()
        self.register_buffer("members", torch.zeros(num_groups, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(x, dim=1)  # (N, J)
        return torch.logsumexp(log_p[:, None, :] + torch.log(self.members)[None], dim=2)  # (N, K, J) -> (N, K)


class PriorClassifier(nn.Module):
    """Twin of ``tinytriage.models.efficientnet.PriorClassifier``: fc(f) + groups(pretrained(f))."""

    def __init__(self, in_features: int, num_classes: int, prior_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.pretrained = nn.Linear(in_features, prior_classes)
        self.groups = GroupLogSoftmax(prior_classes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.groups(self.pretrained(x))


class TorchEfficientNet(nn.Module):
    """PyTorch twin of ``tinytriage.models.efficientnet.EfficientNet``: the same children,
    so the same state-dict keys (timm's ``tf_efficientnet_lite0``)."""

    def __init__(self, cfg: EfficientNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        eps = cfg.bn_eps
        self.conv_stem = Conv2dSame(cfg.in_chans, cfg.stem_chs, 3, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_chs, eps=eps)
        self.act1 = nn.ReLU6()
        stages = []
        for blocks in block_specs(cfg):
            stage = [
                DepthwiseSeparableConv(c_in, c_out, k, s, bn_eps=eps)
                if kind == "ds"
                else InvertedResidual(c_in, c_out, k, s, e, bn_eps=eps)
                for kind, c_in, c_out, k, s, e in blocks
            ]
            stages.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(block_specs(cfg)[-1][-1][2], cfg.head_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cfg.head_chs, eps=eps)
        self.act2 = nn.ReLU6()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(cfg.drop_rate)
        self.classifier = (
            PriorClassifier(cfg.head_chs, cfg.num_classes, cfg.prior_classes)
            if cfg.prior_classes
            else nn.Linear(cfg.head_chs, cfg.num_classes)
        )

    @property
    def features(self) -> nn.Sequential:
        """Stem, every block, head convolution (a view: the same modules, no keys of its own)."""
        blocks = [block for stage in self.blocks for block in stage]
        return nn.Sequential(self.conv_stem, self.bn1, self.act1, *blocks, self.conv_head, self.bn2, self.act2)

    @property
    def head(self) -> nn.Sequential:
        return nn.Sequential(self.global_pool, self.flatten, self.dropout, self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
