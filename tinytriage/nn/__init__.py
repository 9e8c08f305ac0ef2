"""tinytriage.nn: a small neural-network library written from first principles in NumPy.

Layers keep PyTorch's class names, constructor arguments and parameter keys, so weights
move between the two engines by name; every layer has ``forward`` and ``backward``.
Each layer file reads as the textbook: the formula in its docstring, the literal loop as
the reference, the layer class. What makes them fast lives in ``nn.fast``, tested equal
to the references. Imports NumPy and the standard library only.
"""

from tinytriage.nn.activation import ReLU, ReLU6
from tinytriage.nn.conv import (
    Conv2d,
    Conv2dSame,
    conv2d_backward_reference,
    conv2d_cell,
    conv2d_reference,
    conv2d_window,
)
from tinytriage.nn.depthwise import (
    depthwise_conv2d_backward,
    depthwise_conv2d_backward_reference,
    depthwise_conv2d_forward,
    depthwise_conv2d_reference,
)
from tinytriage.nn.dropout import Dropout
from tinytriage.nn.fast.fuse import ConvBNReLU, FusedBlock, fold_batchnorm, fuse_for_inference
from tinytriage.nn.fast.im2col import conv2d_backward, conv2d_forward
from tinytriage.nn.fast.norm import batch_norm_backward, batch_norm_forward
from tinytriage.nn.fast.parallel import get_num_threads, set_num_threads
from tinytriage.nn.fast.pointwise import pointwise_conv2d_backward, pointwise_conv2d_forward
from tinytriage.nn.fast.pool import maxpool2d_backward, maxpool2d_forward
from tinytriage.nn.gradcheck import GradcheckError, gradcheck, numerical_grad
from tinytriage.nn.group_softmax import GroupLogSoftmax
from tinytriage.nn.linear import Flatten, Linear
from tinytriage.nn.loss import BCEWithLogitsLoss, CrossEntropyLoss
from tinytriage.nn.mobile import DepthwiseSeparableConv, InvertedResidual, make_divisible
from tinytriage.nn.module import Module, NoInit, Sequential
from tinytriage.nn.norm import BatchNorm2d, batch_norm_backward_reference, batch_norm_reference
from tinytriage.nn.optim import SGD, Adam, AdamW, Optimizer
from tinytriage.nn.pool import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    GlobalAvgMaxPool2d,
    MaxPool2d,
    avgpool2d_backward,
    avgpool2d_backward_reference,
    avgpool2d_forward,
    avgpool2d_reference,
    maxpool2d_backward_reference,
    maxpool2d_reference,
)
from tinytriage.nn.sizes import conv_output_size, pad2d_asym, same_padding
from tinytriage.nn.transformer import (
    GELU,
    Attention,
    Block,
    ConvNormAct,
    ConvPatchEmbed,
    LayerNorm,
    Mlp,
    PatchEmbed,
    VisionTransformer,
    erf,
    trunc_normal,
)

__all__ = [
    "BCEWithLogitsLoss",
    "ConvBNReLU",
    "FusedBlock",
    "fold_batchnorm",
    "fuse_for_inference",
    "Module",
    "NoInit",
    "Sequential",
    "Conv2d",
    "Conv2dSame",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "GlobalAvgMaxPool2d",
    "ReLU",
    "ReLU6",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "make_divisible",
    "Linear",
    "Flatten",
    "GroupLogSoftmax",
    "BatchNorm2d",
    "batch_norm_reference",
    "batch_norm_backward_reference",
    "batch_norm_forward",
    "batch_norm_backward",
    "set_num_threads",
    "get_num_threads",
    "Dropout",
    "CrossEntropyLoss",
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "conv_output_size",
    "same_padding",
    "pad2d_asym",
    "conv2d_window",
    "conv2d_cell",
    "conv2d_reference",
    "conv2d_backward_reference",
    "conv2d_forward",
    "conv2d_backward",
    "depthwise_conv2d_reference",
    "depthwise_conv2d_backward_reference",
    "depthwise_conv2d_forward",
    "depthwise_conv2d_backward",
    "pointwise_conv2d_forward",
    "pointwise_conv2d_backward",
    "maxpool2d_reference",
    "maxpool2d_backward_reference",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_reference",
    "avgpool2d_backward_reference",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "numerical_grad",
    "gradcheck",
    "GradcheckError",
    "LayerNorm",
    "GELU",
    "Attention",
    "Mlp",
    "Block",
    "PatchEmbed",
    "ConvNormAct",
    "ConvPatchEmbed",
    "VisionTransformer",
    "erf",
    "trunc_normal",
]
