"""Every layer of tinytriage.nn against PyTorch, one case per line, float64 and float32.

To add a layer, add rows to LAYERS (and a small one to GRADCHECK): the NumPy class beside
its PyTorch twin, the same arguments, the input shapes.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

from parity import assert_close, assert_matches_torch  # noqa: E402

from tinytriage.errors import ShapeError  # noqa: E402
from tinytriage.models import torch_efficientnet as torch_eff  # noqa: E402
from tinytriage.models import torch_vit  # noqa: E402
from tinytriage.models.torch_cnn import TorchGlobalAvgMaxPool2d  # noqa: E402
from tinytriage.models.vit import ViTConfig  # noqa: E402
from tinytriage.nn import (  # noqa: E402
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    BCEWithLogitsLoss,
    Conv2d,
    Conv2dSame,
    CrossEntropyLoss,
    DepthwiseSeparableConv,
    Dropout,
    Flatten,
    GlobalAvgMaxPool2d,
    GradcheckError,
    GroupLogSoftmax,
    InvertedResidual,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    ReLU6,
    Sequential,
    avgpool2d_backward,
    avgpool2d_backward_reference,
    avgpool2d_forward,
    avgpool2d_reference,
    batch_norm_backward,
    batch_norm_backward_reference,
    batch_norm_forward,
    batch_norm_reference,
    conv2d_backward,
    conv2d_backward_reference,
    conv2d_cell,
    conv2d_forward,
    conv2d_reference,
    depthwise_conv2d_backward,
    depthwise_conv2d_backward_reference,
    depthwise_conv2d_forward,
    depthwise_conv2d_reference,
    gradcheck,
    maxpool2d_backward,
    maxpool2d_backward_reference,
    maxpool2d_forward,
    maxpool2d_reference,
    pointwise_conv2d_backward,
    pointwise_conv2d_forward,
)
from tinytriage.nn.fast import depthwise as fast_depthwise  # noqa: E402
from tinytriage.nn.transformer import (  # noqa: E402
    GELU,
    Attention,
    Block,
    ConvNormAct,
    ConvPatchEmbed,
    LayerNorm,
    Mlp,
    PatchEmbed,
    VisionTransformer,
)

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}
DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]


def twins(np_cls, torch_cls, *args, **kwargs):
    """The same constructor call in both engines, as two factories."""
    return (lambda: np_cls(*args, **kwargs)), (lambda: torch_cls(*args, **kwargs))


def case(id, layers, *inputs, train=True, params=None):
    """One row: (NumPy factory, torch factory), inputs (shapes, class indices or
    ``f(rng, dtype)``), train/eval mode, state to load into both."""
    return pytest.param(layers, inputs, train, params, id=id)


def ints(low, high, shape):
    """Small integers as floats: inputs full of ties and exact zeros."""
    return lambda rng, dtype: rng.integers(low, high, shape).astype(dtype)


def uniform(shape):
    """Soft targets in [0, 1)."""
    return lambda rng, dtype: rng.random(shape).astype(dtype)


def scaled(scale, shape):
    return lambda rng, dtype: (scale * rng.standard_normal(shape)).astype(dtype)


def vit_twins(**config):
    """A whole ViT from one ``ViTConfig`` in both engines (the NumPy one built directly, so
    that it computes the photo's gradient too, which ``build_vit`` skips)."""
    cfg = ViTConfig(**config)
    return (lambda: VisionTransformer(**asdict(cfg))), (lambda: torch_vit.TorchVisionTransformer(cfg))


# a 8x8 photo in a 2x2 grid of 4x4 cells, one block of 2 heads: every part, and fast
SMALL_VIT = dict(in_chans=3, num_classes=3, img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2)


# two heads that prefer opposite classes: the average far from either softmax. (At 3: larger
# weights scale up the gradients and float32's rounding alone then passes the table's
# atol of 1e-5; float64 still agrees with torch to 1e-10 at 10.)
_W = 3 * np.random.default_rng(1).standard_normal((3, 8))
HEADS_APART = {"head.weight": _W, "head_dist.weight": -_W}


def small_cnn(conv, relu, pool, flatten, linear, seq):
    return seq(conv(2, 3, 3, padding=1), relu(), pool(2), conv(3, 4, 3), relu(), flatten(), linear(16, 5))


TARGETS = np.array([0, 3, 1, 4, 3])
STATS = {
    "running_mean": np.array([0.5, -1.0, 2.0]),
    "running_var": np.array([0.25, 2.0, 1.5]),
    "num_batches_tracked": np.array(7),
}


GROUPS = np.array(  # 7 classes in 5 groups: one class in two groups, one in none, a group of one
    [[1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 0], [1, 0, 0, 0, 1, 0, 0]],
    float,
)


def bn_stats(**channels):
    """Eval-mode state for a block's BatchNorms, e.g. ``bn_stats(bn1=8, bn2=4)``: running
    statistics and affine parameters away from their initial 0 and 1."""
    state = {}
    for name, C in channels.items():
        state |= {
            f"{name}.running_mean": np.linspace(-1.0, 1.0, C),
            f"{name}.running_var": np.linspace(0.5, 2.0, C),
            f"{name}.weight": np.linspace(0.5, 1.5, C),
            f"{name}.bias": np.linspace(-0.5, 0.5, C),
            f"{name}.num_batches_tracked": np.array(3),
        }
    return state


# fmt: off
LAYERS = [
    # -- convolution: kernel 1/3/5, stride 1/2/3, padding 0/1/2, dilation, groups, odd and non-square sizes
    case("conv-k1",                 twins(Conv2d, tnn.Conv2d, 3, 4, 1),                                     (2, 3, 5, 6)),
    case("conv-k3",                 twins(Conv2d, tnn.Conv2d, 3, 4, 3),                                     (2, 3, 5, 6)),
    case("conv-k5",                 twins(Conv2d, tnn.Conv2d, 2, 3, 5),                                     (2, 2, 7, 6)),
    case("conv-k3-p1",              twins(Conv2d, tnn.Conv2d, 3, 4, 3, padding=1),                          (2, 3, 5, 6)),
    case("conv-k3-p2",              twins(Conv2d, tnn.Conv2d, 3, 4, 3, padding=2),                          (2, 3, 4, 5)),
    case("conv-k3-s2-p1-odd",       twins(Conv2d, tnn.Conv2d, 3, 4, 3, stride=2, padding=1),                (2, 3, 7, 9)),
    case("conv-k3-s3",              twins(Conv2d, tnn.Conv2d, 3, 4, 3, stride=3),                           (1, 3, 10, 8)),
    case("conv-k5-s2-p2",           twins(Conv2d, tnn.Conv2d, 2, 3, 5, stride=2, padding=2),                (2, 2, 9, 11)),
    case("conv-k1-s2-p1",           twins(Conv2d, tnn.Conv2d, 4, 2, 1, stride=2, padding=1),                (2, 4, 5, 5)),
    case("conv-k3x5-s2x1-p1x2",     twins(Conv2d, tnn.Conv2d, 3, 4, (3, 5), stride=(2, 1), padding=(1, 2)), (2, 3, 6, 9)),
    case("conv-kernel-is-input",    twins(Conv2d, tnn.Conv2d, 3, 5, (5, 4)),                                (2, 3, 5, 4)),
    case("conv-batch-1",            twins(Conv2d, tnn.Conv2d, 3, 4, 3, padding=1),                          (1, 3, 6, 6)),
    case("conv-many-channels",      twins(Conv2d, tnn.Conv2d, 16, 24, 3, padding=1),                        (2, 16, 6, 6)),
    case("conv-fewer-out-channels", twins(Conv2d, tnn.Conv2d, 16, 4, 3, padding=1),                         (2, 16, 6, 7)),
    case("conv-fewer-out-k1-p1",    twins(Conv2d, tnn.Conv2d, 6, 2, 1, padding=1),                          (2, 6, 4, 5)),
    case("conv-fewer-out-k5-p0",    twins(Conv2d, tnn.Conv2d, 6, 2, 5),                                     (2, 6, 7, 6)),
    case("conv-dilation-2",         twins(Conv2d, tnn.Conv2d, 3, 4, 3, padding=2, dilation=2),              (2, 3, 7, 8)),
    case("conv-dilation-fewer-out", twins(Conv2d, tnn.Conv2d, 8, 4, 3, padding=1, dilation=2),              (2, 8, 7, 6)),
    case("conv-dilation-2x1-s2",    twins(Conv2d, tnn.Conv2d, 3, 4, 3, stride=2, dilation=(2, 1)),          (2, 3, 9, 8)),
    case("conv-groups-2",           twins(Conv2d, tnn.Conv2d, 4, 6, 3, padding=1, groups=2),                (2, 4, 5, 6)),
    case("conv-groups-fewer-out",   twins(Conv2d, tnn.Conv2d, 8, 4, 3, padding=1, groups=2),                (2, 8, 5, 5)),
    case("conv-depthwise",          twins(Conv2d, tnn.Conv2d, 4, 4, 3, padding=1, groups=4),                (2, 4, 5, 6)),
    case("conv-groups-3-s2",        twins(Conv2d, tnn.Conv2d, 6, 6, 3, stride=2, groups=3),                 (2, 6, 7, 7)),
    case("conv-no-bias",            twins(Conv2d, tnn.Conv2d, 3, 4, 3, bias=False),                         (2, 3, 5, 5)),
    # -- depthwise (Conv2d.path "depthwise"): kernel 3/5, stride 1/2, odd and even sizes, batch 1
    case("dw-k3-s1-odd",            twins(Conv2d, tnn.Conv2d, 6, 6, 3, padding=1, groups=6),                (2, 6, 7, 7)),
    case("dw-k3-s1-even",           twins(Conv2d, tnn.Conv2d, 4, 4, 3, padding=1, groups=4),                (2, 4, 6, 8)),
    case("dw-k3-s2-odd",            twins(Conv2d, tnn.Conv2d, 4, 4, 3, stride=2, padding=1, groups=4),      (2, 4, 7, 9)),
    case("dw-k3-s2-even",           twins(Conv2d, tnn.Conv2d, 4, 4, 3, stride=2, padding=1, groups=4),      (2, 4, 8, 8)),
    case("dw-k5-s1-odd",            twins(Conv2d, tnn.Conv2d, 3, 3, 5, padding=2, groups=3),                (2, 3, 7, 9)),
    case("dw-k5-s1-even",           twins(Conv2d, tnn.Conv2d, 3, 3, 5, padding=2, groups=3),                (2, 3, 6, 6)),
    case("dw-k5-s2-odd",            twins(Conv2d, tnn.Conv2d, 3, 3, 5, stride=2, padding=2, groups=3),      (2, 3, 9, 7)),
    case("dw-k5-s2-even",           twins(Conv2d, tnn.Conv2d, 3, 3, 5, stride=2, padding=2, groups=3),      (2, 3, 10, 8)),
    case("dw-batch-1",              twins(Conv2d, tnn.Conv2d, 5, 5, 3, padding=1, groups=5),                (1, 5, 6, 7)),
    case("dw-no-padding-no-bias",   twins(Conv2d, tnn.Conv2d, 4, 4, 3, groups=4, bias=False),               (2, 4, 6, 5)),
    case("dw-k3x5-s2x1-dilated",    twins(Conv2d, tnn.Conv2d, 4, 4, (3, 5), stride=(2, 1), padding=(2, 1), dilation=(2, 1), groups=4), (2, 4, 8, 7)),
    case("dw-kernel-is-input",      twins(Conv2d, tnn.Conv2d, 2, 2, 5, groups=2),                           (2, 2, 5, 5)),
    # -- pointwise (Conv2d.path "pointwise"): 1x1, stride 1, no padding
    case("pw",                      twins(Conv2d, tnn.Conv2d, 5, 7, 1),                                     (2, 5, 4, 3)),
    case("pw-fewer-out-no-bias",    twins(Conv2d, tnn.Conv2d, 8, 3, 1, bias=False),                         (2, 8, 5, 6)),
    case("pw-batch-1-1x1-map",      twins(Conv2d, tnn.Conv2d, 6, 4, 1),                                     (1, 6, 1, 1)),
    # -- TensorFlow "same" padding (timm's Conv2dSame): kernel 3/5, stride 1/2, odd and even sizes
    case("same-k3-s1-odd",          twins(Conv2dSame, torch_eff.Conv2dSame, 3, 4, 3),                       (2, 3, 7, 7)),
    case("same-k3-s1-even",         twins(Conv2dSame, torch_eff.Conv2dSame, 3, 4, 3),                       (2, 3, 6, 8)),
    case("same-k3-s2-odd",          twins(Conv2dSame, torch_eff.Conv2dSame, 3, 4, 3, stride=2),             (2, 3, 7, 9)),
    case("same-k3-s2-even",         twins(Conv2dSame, torch_eff.Conv2dSame, 3, 4, 3, stride=2),             (2, 3, 8, 8)),
    case("same-k5-s1-odd",          twins(Conv2dSame, torch_eff.Conv2dSame, 2, 3, 5),                       (2, 2, 7, 9)),
    case("same-k5-s1-even",         twins(Conv2dSame, torch_eff.Conv2dSame, 2, 3, 5),                       (2, 2, 6, 8)),
    case("same-k5-s2-odd",          twins(Conv2dSame, torch_eff.Conv2dSame, 2, 3, 5, stride=2),             (2, 2, 9, 7)),
    case("same-k5-s2-even",         twins(Conv2dSame, torch_eff.Conv2dSame, 2, 3, 5, stride=2),             (2, 2, 8, 10)),
    case("same-k3-s2-batch-1",      twins(Conv2dSame, torch_eff.Conv2dSame, 3, 8, 3, stride=2, bias=False), (1, 3, 10, 10)),
    case("same-k1-s1",              twins(Conv2dSame, torch_eff.Conv2dSame, 4, 5, 1),                       (2, 4, 5, 6)),
    case("same-dw-k3-s2-even",      twins(Conv2dSame, torch_eff.Conv2dSame, 4, 4, 3, stride=2, groups=4),   (2, 4, 8, 8)),
    case("same-dw-k5-s2-odd",       twins(Conv2dSame, torch_eff.Conv2dSame, 4, 4, 5, stride=2, groups=4),   (2, 4, 9, 9)),
    case("same-dw-k5-s1-batch-1",   twins(Conv2dSame, torch_eff.Conv2dSame, 3, 3, 5, groups=3, bias=False), (1, 3, 6, 7)),
    case("same-dw-k3-s2-tiny",      twins(Conv2dSame, torch_eff.Conv2dSame, 2, 2, 3, stride=2, groups=2),   (2, 2, 1, 2)),
    # -- pooling
    case("maxpool-k2",              twins(MaxPool2d, tnn.MaxPool2d, 2),                                     (2, 3, 6, 8)),
    case("maxpool-k2-odd",          twins(MaxPool2d, tnn.MaxPool2d, 2),                                     (2, 3, 7, 9)),
    case("maxpool-k3-s2",           twins(MaxPool2d, tnn.MaxPool2d, 3, 2),                                  (2, 3, 7, 7)),
    case("maxpool-k3-s1-p1",        twins(MaxPool2d, tnn.MaxPool2d, 3, 1, 1),                               (2, 3, 5, 6)),
    case("maxpool-k2x3-s1x2",       twins(MaxPool2d, tnn.MaxPool2d, (2, 3), (1, 2)),                        (2, 2, 5, 8)),
    case("maxpool-k5-s3-p2",        twins(MaxPool2d, tnn.MaxPool2d, 5, 3, 2),                               (1, 2, 9, 10)),
    case("maxpool-kernel-is-input", twins(MaxPool2d, tnn.MaxPool2d, (5, 4)),                                (2, 2, 5, 4)),
    case("maxpool-ties",            twins(MaxPool2d, tnn.MaxPool2d, 2),                                     ints(0, 2, (2, 3, 6, 6))),
    case("maxpool-ties-overlap",    twins(MaxPool2d, tnn.MaxPool2d, 3, 1, 1),                               ints(0, 2, (2, 2, 5, 5))),
    case("avgpool-k2",              twins(AvgPool2d, tnn.AvgPool2d, 2),                                     (2, 3, 6, 8)),
    case("avgpool-k2-odd",          twins(AvgPool2d, tnn.AvgPool2d, 2),                                     (2, 3, 7, 9)),
    case("avgpool-k3-s2-p1",        twins(AvgPool2d, tnn.AvgPool2d, 3, 2, 1),                               (2, 3, 7, 6)),
    case("avgpool-k2x3-s1x2-p1",    twins(AvgPool2d, tnn.AvgPool2d, (2, 3), (1, 2), 1),                     (2, 2, 5, 8)),
    case("adaptive-avg-1",          twins(AdaptiveAvgPool2d, tnn.AdaptiveAvgPool2d, 1),                     (2, 3, 5, 7)),
    case("adaptive-avg-2x3",        twins(AdaptiveAvgPool2d, tnn.AdaptiveAvgPool2d, (2, 3)),                (2, 3, 5, 7)),
    case("adaptive-avg-3-overlap",  twins(AdaptiveAvgPool2d, tnn.AdaptiveAvgPool2d, 3),                     (2, 2, 7, 4)),
    case("adaptive-avg-upsample",   twins(AdaptiveAvgPool2d, tnn.AdaptiveAvgPool2d, (4, 5)),                (1, 2, 3, 3)),
    case("global-avgmax",           twins(GlobalAvgMaxPool2d, TorchGlobalAvgMaxPool2d),                     (2, 3, 5, 7)),
    case("global-avgmax-1x1",       twins(GlobalAvgMaxPool2d, TorchGlobalAvgMaxPool2d),                     (3, 4, 1, 1)),
    case("global-avgmax-ties",      twins(GlobalAvgMaxPool2d, TorchGlobalAvgMaxPool2d),                     ints(0, 2, (2, 3, 4, 4))),
    # -- activations, linear, flatten
    case("relu",                    twins(ReLU, tnn.ReLU),                                                  (2, 3, 4, 5)),
    case("relu-exact-zeros",        twins(ReLU, tnn.ReLU),                                                  ints(-2, 3, (4, 6))),
    case("relu6",                   twins(ReLU6, tnn.ReLU6),                                                scaled(5.0, (2, 3, 4, 5))),
    case("relu6-exact-0-and-6",     twins(ReLU6, tnn.ReLU6),                                                ints(-2, 9, (4, 6))),
    case("linear",                  twins(Linear, tnn.Linear, 6, 4),                                        (3, 6)),
    case("linear-3d",               twins(Linear, tnn.Linear, 6, 4),                                        (2, 5, 6)),
    case("linear-batch-1",          twins(Linear, tnn.Linear, 7, 3),                                        (1, 7)),
    case("linear-no-bias",          twins(Linear, tnn.Linear, 6, 4, bias=False),                            (3, 6)),
    case("flatten",                 twins(Flatten, tnn.Flatten),                                            (2, 3, 4, 5)),
    case("flatten-1-2",             twins(Flatten, tnn.Flatten, 1, 2),                                      (2, 3, 4, 5)),
    # -- grouped log-softmax (the PriorClassifier's prior; twin in tinytriage.models.torch_efficientnet)
    case("group-log-softmax",       twins(GroupLogSoftmax, torch_eff.GroupLogSoftmax, 7, 5),                (3, 7), params={"members": GROUPS}),
    case("group-log-softmax-far",   twins(GroupLogSoftmax, torch_eff.GroupLogSoftmax, 7, 5),                scaled(40.0, (4, 7)), params={"members": GROUPS}),
    case("group-log-softmax-one",   twins(GroupLogSoftmax, torch_eff.GroupLogSoftmax, 4, 1),                (2, 4), params={"members": np.ones((1, 4))}),
    # -- batch norm: train (batch statistics, running statistics updated) and eval
    case("bn-train",                twins(BatchNorm2d, tnn.BatchNorm2d, 3),                                 (4, 3, 5, 6)),
    case("bn-train-batch-1",        twins(BatchNorm2d, tnn.BatchNorm2d, 3),                                 (1, 3, 4, 4)),
    case("bn-train-momentum-none",  twins(BatchNorm2d, tnn.BatchNorm2d, 3, momentum=None),                  (4, 3, 3, 3), params=STATS),
    case("bn-train-no-affine",      twins(BatchNorm2d, tnn.BatchNorm2d, 3, affine=False),                   (4, 3, 5, 6)),
    case("bn-no-running-stats",     twins(BatchNorm2d, tnn.BatchNorm2d, 3, track_running_stats=False),      (4, 3, 5, 6), train=False),
    case("bn-eval",                 twins(BatchNorm2d, tnn.BatchNorm2d, 3),                                 (4, 3, 5, 6), train=False, params=STATS),
    case("bn-eval-scaled",          twins(BatchNorm2d, tnn.BatchNorm2d, 3, eps=1e-3),                       (2, 3, 4, 4), train=False,
         params={**STATS, "weight": np.array([2.0, -0.5, 1.0]), "bias": np.array([0.1, 0.2, -0.3])}),
    case("bn-train-offset",         twins(BatchNorm2d, tnn.BatchNorm2d, 3),                                 lambda rng, dtype: (30 + rng.standard_normal((4, 3, 5, 6))).astype(dtype)),
    case("bn-train-scaled",         twins(BatchNorm2d, tnn.BatchNorm2d, 3),                                 scaled(5.0, (4, 3, 3, 5)),
         params={"weight": np.array([2.0, -0.5, 1.0]), "bias": np.array([0.1, 0.2, -0.3])}),
    # -- dropout where it is deterministic (train mode with torch's own mask: see below)
    case("dropout-p0-train",        twins(Dropout, tnn.Dropout, 0.0),                                       (3, 8)),
    case("dropout-eval",            twins(Dropout, tnn.Dropout, 0.5),                                       (3, 8), train=False),
    # -- loss: logits and class indices
    case("cross-entropy",           twins(CrossEntropyLoss, tnn.CrossEntropyLoss),                          (5, 6), TARGETS),
    case("cross-entropy-smooth-0.1", twins(CrossEntropyLoss, tnn.CrossEntropyLoss, label_smoothing=0.1),    (5, 6), TARGETS),
    case("cross-entropy-smooth-0.4", twins(CrossEntropyLoss, tnn.CrossEntropyLoss, label_smoothing=0.4),    (5, 6), TARGETS),
    case("cross-entropy-sum",       twins(CrossEntropyLoss, tnn.CrossEntropyLoss, reduction="sum"),         (5, 6), TARGETS),
    case("cross-entropy-none",      twins(CrossEntropyLoss, tnn.CrossEntropyLoss, label_smoothing=0.2, reduction="none"), (5, 6), TARGETS),
    case("cross-entropy-huge",      twins(CrossEntropyLoss, tnn.CrossEntropyLoss, label_smoothing=0.1),    scaled(300.0, (5, 6)), TARGETS),
    case("cross-entropy-1-sample",  twins(CrossEntropyLoss, tnn.CrossEntropyLoss),                          (1, 4), np.array([2])),
    case("bce-logits-soft",         twins(BCEWithLogitsLoss, tnn.BCEWithLogitsLoss),                        (2, 1, 4, 5), uniform((2, 1, 4, 5))),
    case("bce-logits-hard-sum",     twins(BCEWithLogitsLoss, tnn.BCEWithLogitsLoss, reduction="sum"),       (3, 6), ints(0, 2, (3, 6))),
    case("bce-logits-none",         twins(BCEWithLogitsLoss, tnn.BCEWithLogitsLoss, reduction="none"),      (3, 6), uniform((3, 6))),
    case("bce-logits-huge",         twins(BCEWithLogitsLoss, tnn.BCEWithLogitsLoss),                        scaled(300.0, (4, 5)), ints(0, 2, (4, 5))),
    # -- composition: names such as "0.weight" and "4.bias" must line up
    case("sequential-cnn",          (lambda: small_cnn(Conv2d, ReLU, MaxPool2d, Flatten, Linear, Sequential),
                                     lambda: small_cnn(tnn.Conv2d, tnn.ReLU, tnn.MaxPool2d, tnn.Flatten, tnn.Linear, tnn.Sequential)), (2, 2, 8, 8)),
    # -- transformer layers: twins in tinytriage.models.torch_vit, timm's names (whole ViT: test_vit.py)
    case("layernorm",               twins(LayerNorm, tnn.LayerNorm, 8),                                     (2, 5, 8)),
    case("layernorm-2d-eps",        twins(LayerNorm, tnn.LayerNorm, 6, eps=1e-6),                           (4, 6)),
    case("layernorm-last-2-axes",   twins(LayerNorm, tnn.LayerNorm, (3, 4)),                                (2, 3, 4)),
    case("layernorm-affine-scaled", twins(LayerNorm, tnn.LayerNorm, 5),                                     scaled(50.0, (2, 3, 5)),
         params={"weight": np.array([2.0, -0.5, 1.0, 0.3, -1.2]), "bias": np.array([0.1, 0.2, -0.3, 0.0, 1.0])}),
    case("gelu",                    twins(GELU, tnn.GELU),                                                  (2, 5, 8)),
    case("gelu-erf-tails",          twins(GELU, tnn.GELU),                                                  scaled(6.0, (4, 50))),
    case("gelu-exact-zeros",        twins(GELU, tnn.GELU),                                                  ints(-3, 4, (4, 6))),
    case("attention",               twins(Attention, torch_vit.Attention, 8, 2),                            (2, 5, 8)),
    case("attention-1-head-no-bias", twins(Attention, torch_vit.Attention, 6, 1, qkv_bias=False),          (2, 4, 6)),
    case("attention-1-token",       twins(Attention, torch_vit.Attention, 8, 4),                            (3, 1, 8)),
    case("mlp",                     twins(Mlp, torch_vit.Mlp, 8, 16),                                       (2, 5, 8)),
    case("block",                   twins(Block, torch_vit.Block, 8, 2, mlp_ratio=2.0),                     (2, 5, 8)),
    case("block-3-heads-no-bias",   twins(Block, torch_vit.Block, 12, 3, qkv_bias=False),                   (1, 4, 12)),
    case("patch-embed",             twins(PatchEmbed, torch_vit.PatchEmbed, 12, 4, 3, 8),                   (2, 3, 12, 12)),
    # -- early convolutions (Xiao et al. 2021): conv -> BatchNorm -> ReLU stages, then a 1x1 projection
    case("conv-norm-act",           twins(ConvNormAct, torch_vit.ConvNormAct, 3, 4),                        (2, 3, 7, 6)),
    case("conv-norm-act-eval",      twins(ConvNormAct, torch_vit.ConvNormAct, 3, 4),                        (2, 3, 6, 6), train=False,
         params=bn_stats(bn=4)),
    case("conv-patch-embed",        twins(ConvPatchEmbed, torch_vit.ConvPatchEmbed, 8, 4, 3, 6, (4, 5)),    (2, 3, 8, 8)),
    case("conv-patch-embed-s8",     twins(ConvPatchEmbed, torch_vit.ConvPatchEmbed, 16, 8, 2, 4, (3, 4, 6)), (2, 2, 16, 16)),
    case("conv-patch-embed-eval",   twins(ConvPatchEmbed, torch_vit.ConvPatchEmbed, 8, 4, 3, 6, (4, 5)),    (2, 3, 8, 8), train=False,
         params=bn_stats(**{"stem.0.bn": 4, "stem.1.bn": 5})),
    # the pooled stem (stem_pool: stride-1 convs, each then a 2x2 max pool, as the triage CNN's stages)
    case("conv-norm-act-pool",      twins(ConvNormAct, torch_vit.ConvNormAct, 3, 4, stride=1, pool=True),   (2, 3, 8, 6)),
    case("conv-patch-embed-pool",   twins(ConvPatchEmbed, torch_vit.ConvPatchEmbed, 8, 4, 3, 6, (4, 5), True), (2, 3, 8, 8)),
    case("conv-patch-embed-pool-eval", twins(ConvPatchEmbed, torch_vit.ConvPatchEmbed, 8, 4, 3, 6, (4, 5), True), (2, 3, 8, 8),
         train=False, params=bn_stats(**{"stem.0.bn": 4, "stem.1.bn": 5})),
    # -- whole ViTs: the distillation token (DeiT) in training mode, (N, 2, K), and eval mode, log of the
    #    averaged softmaxes (N, K); the conv stem; both
    case("vit",                     vit_twins(**SMALL_VIT),                                                 (2, 3, 8, 8)),
    case("vit-distilled-train",     vit_twins(**SMALL_VIT, distilled=True),                                 (2, 3, 8, 8)),
    case("vit-distilled-eval",      vit_twins(**SMALL_VIT, distilled=True),                                 (2, 3, 8, 8), train=False),
    case("vit-distilled-eval-apart", vit_twins(**SMALL_VIT, distilled=True),                                (2, 3, 8, 8), train=False,
         params=HEADS_APART),
    case("vit-conv-stem",           vit_twins(**SMALL_VIT, conv_stem=[4, 6]),                               (2, 3, 8, 8)),
    case("vit-conv-stem-distilled", vit_twins(**SMALL_VIT, conv_stem=[4, 6], distilled=True),               (2, 3, 8, 8)),
    case("vit-conv-stem-distilled-eval", vit_twins(**SMALL_VIT, conv_stem=[4, 6], distilled=True),          (2, 3, 8, 8), train=False,
         params=bn_stats(**{"patch_embed.stem.0.bn": 4, "patch_embed.stem.1.bn": 6})),
    case("vit-pooled-stem-distilled", vit_twins(**SMALL_VIT, conv_stem=[4, 6], stem_pool=True, distilled=True), (2, 3, 8, 8)),
    # -- mobile blocks: twins in tinytriage.models.torch_efficientnet, timm's names; train and eval, with and without the residual
    case("ds-residual",             twins(DepthwiseSeparableConv, torch_eff.DepthwiseSeparableConv, 4, 4, 3, 1), (2, 4, 6, 7)),
    case("ds-residual-eval",        twins(DepthwiseSeparableConv, torch_eff.DepthwiseSeparableConv, 4, 4, 3, 1), (2, 4, 6, 7), train=False,
         params=bn_stats(bn1=4, bn2=4)),
    case("ds-s2-k5",                twins(DepthwiseSeparableConv, torch_eff.DepthwiseSeparableConv, 4, 6, 5, 2), (2, 4, 9, 8)),
    case("ds-wider-eval",           twins(DepthwiseSeparableConv, torch_eff.DepthwiseSeparableConv, 3, 5, 3, 1), (2, 3, 5, 6), train=False,
         params=bn_stats(bn1=3, bn2=5)),
    case("ir-residual",             twins(InvertedResidual, torch_eff.InvertedResidual, 4, 4, 3, 1, 2.0),   (2, 4, 6, 7)),
    case("ir-residual-eval",        twins(InvertedResidual, torch_eff.InvertedResidual, 4, 4, 3, 1, 2.0),   (2, 4, 6, 7), train=False,
         params=bn_stats(bn1=8, bn2=8, bn3=4)),
    case("ir-s2-k5-e3",             twins(InvertedResidual, torch_eff.InvertedResidual, 4, 6, 5, 2, 3.0),   (2, 4, 9, 8)),
    case("ir-s2-k3-e6-eval",        twins(InvertedResidual, torch_eff.InvertedResidual, 4, 6, 3, 2, 6.0),   (1, 4, 8, 7), train=False,
         params=bn_stats(bn1=24, bn2=24, bn3=6)),
    case("ir-k5-residual-batch-1",  twins(InvertedResidual, torch_eff.InvertedResidual, 8, 8, 5, 1, 6.0),   (1, 8, 5, 6)),
    case("ir-eps-1e-5",             twins(InvertedResidual, torch_eff.InvertedResidual, 4, 8, 3, 1, 6.0, bn_eps=1e-5), (2, 4, 5, 5)),
]
# fmt: on


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layers, inputs, train, params", LAYERS)
def test_layer_matches_torch(layers, inputs, train, params, dtype):
    np_layer, torch_layer = layers
    assert_matches_torch(np_layer(), torch_layer(), inputs, dtype=dtype, train=train, params=params, **TOL[dtype])


# -- the helper itself must fail on wrong layers ------------------------------------------
class _WrongInputGrad(ReLU):
    def backward(self, grad_out):
        return 1.001 * super().backward(grad_out)


class _WrongBiasGrad(Linear):
    def backward(self, grad_out):
        dx = super().backward(grad_out)
        self._grads["bias"] = self._grads["bias"] + 1e-6
        return dx


class _RenamedParam(Linear):
    def __init__(self, *args):
        super().__init__(*args)
        self._params["b"] = self._params.pop("bias")


@pytest.mark.parametrize(
    "np_layer, torch_layer, message",
    [
        (lambda: _WrongInputGrad(), lambda: tnn.ReLU(), "d input 0"),
        (lambda: _WrongBiasGrad(4, 3), lambda: tnn.Linear(4, 3), "d bias"),
        (lambda: ReLU(), lambda: tnn.Tanh(), "output: max abs diff"),
        (lambda: _RenamedParam(4, 3), lambda: tnn.Linear(4, 3), "Missing key|Unexpected key"),
    ],
    ids=["input-grad", "param-grad", "output", "param-names"],
)
def test_parity_helper_catches_mistakes(np_layer, torch_layer, message):
    with pytest.raises((AssertionError, RuntimeError, ShapeError), match=message):
        assert_matches_torch(np_layer(), torch_layer(), [(3, 4)], dtype=np.float64, **TOL[np.float64])


def test_parity_helper_rejects_an_upcast():
    class Upcasting(ReLU):
        def forward(self, x):
            return super().forward(x).astype(np.float64)

    with pytest.raises(AssertionError, match="expected float32"):
        assert_matches_torch(Upcasting(), tnn.ReLU(), [(3, 4)], dtype=np.float32, **TOL[np.float32])


# -- dropout in training mode, with the very mask torch drew ------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_train_matches_torch_given_its_mask(p, dtype):
    shape = (4, 50)
    torch_dtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]

    def torch_dropout(x):
        torch.manual_seed(0)
        return torch.nn.functional.dropout(x, p, training=True)

    keep = (torch_dropout(torch.ones(shape, dtype=torch_dtype)) != 0).numpy()
    assert 0 < keep.sum() < keep.size  # a real mask, not all or nothing
    layer = Dropout(p)
    layer.sample_keep = lambda s: keep  # draw torch's mask instead of our own
    assert_matches_torch(layer, torch_dropout, [shape], dtype=dtype, **TOL[dtype])


def test_dropout_scales_survivors_and_backward_reuses_the_mask():
    layer = Dropout(0.25, rng=np.random.default_rng(1))
    x = np.random.default_rng(0).standard_normal((200, 100)).astype(np.float32)
    y = layer(x)
    kept = y != 0
    assert y.dtype == np.float32
    assert abs(kept.mean() - 0.75) < 0.01  # 20,000 draws: 0.75 +- 3 sigma (0.009)
    np.testing.assert_array_equal(y[kept], x[kept] * np.float32(1 / 0.75))
    g = np.ones_like(x)
    np.testing.assert_array_equal(layer.backward(g), kept * np.float32(1 / 0.75))
    assert not np.array_equal(layer(x) != 0, kept)  # a fresh mask on the next forward


def test_dropout_p1_drops_everything():
    layer = Dropout(1.0)
    x = np.ones((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(layer(x), 0)
    np.testing.assert_array_equal(layer.backward(x), 0)


# -- batch norm: running statistics over several steps, then eval -------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_batchnorm_running_stats_follow_torch_over_steps(momentum, dtype):
    torch_dtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    ours = BatchNorm2d(3, momentum=momentum).astype(dtype)
    theirs = tnn.BatchNorm2d(3, momentum=momentum).to(torch_dtype)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = (2.0 * rng.standard_normal((5, 3, 4, 3)) + 1.5).astype(dtype)
        ours.forward(x)
        theirs(torch.from_numpy(x))
    tstate = theirs.state_dict()
    for name, value in ours.state_dict().items():
        assert_close(name, value, tstate[name], **TOL[dtype])
    assert ours.state_dict()["num_batches_tracked"].dtype == np.int64
    assert int(ours.state_dict()["num_batches_tracked"]) == 4
    x = rng.standard_normal((2, 3, 4, 3)).astype(dtype)
    ours.eval(), theirs.eval()
    assert_close("eval output", ours.forward(x), theirs(torch.from_numpy(x)), **TOL[dtype])


def test_batchnorm_state_dict_keys_are_torchs():
    assert list(BatchNorm2d(4).state_dict()) == list(tnn.BatchNorm2d(4).state_dict())


# -- reference loops == fast versions -----------------------------------------------------
CONV_CONFIGS = [
    # x shape, (O, kernel), stride, padding, dilation, groups
    ((2, 3, 6, 7), (4, 3), 1, 1, 1, 1),
    ((2, 6, 6, 7), (2, 3), 1, 1, 1, 1),  # O < C
    ((2, 6, 6, 7), (2, 3), 1, 2, 1, 1),  # padding > K-1: dx's canvas drops dout's border cells
    ((1, 3, 9, 8), (4, (3, 5)), (2, 3), (1, 2), 1, 1),  # stride: dout stuffed with zeros for dx
    ((2, 4, 8, 8), (6, 3), 2, 2, 2, 2),
    ((2, 8, 7, 7), (4, 3), 1, 2, (2, 1), 4),
    ((2, 2, 5, 4), (3, (5, 4)), 1, 0, 1, 1),
]


def in_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """The same (N, C, H, W) numbers, C-contiguous or as the channels-last view the fast layers hand on."""
    return a if layout == "nchw" else np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


LAYOUTS = pytest.mark.parametrize("layout", ["nchw", "channels-last"])


@LAYOUTS
@pytest.mark.parametrize("x_shape, ok, stride, padding, dilation, groups", CONV_CONFIGS)
def test_conv_fast_equals_reference(x_shape, ok, stride, padding, dilation, groups, layout):
    rng = np.random.default_rng(0)
    (O, k), C = ok, x_shape[1]
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((O, C // groups, kh, kw))
    b = rng.standard_normal(O)
    args = (stride, padding, dilation, groups)
    out, cache = conv2d_forward(in_layout(x, layout), w, b, *args)
    np.testing.assert_allclose(out, conv2d_reference(x, w, b, *args), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    fast = conv2d_backward(in_layout(dout, layout), cache)
    slow = conv2d_backward_reference(x, w, dout, *args)
    for name, a, r in zip(("dx", "dw", "db"), fast, slow, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12, err_msg=name)
    dx_none, dw, db = conv2d_backward(dout, cache, needs_input_grad=False)
    assert dx_none is None
    np.testing.assert_array_equal(dw, fast[1])


DEPTHWISE_CONFIGS = [
    # x shape, kernel, stride, padding (P, (PH, PW) or ((top, bottom), (left, right))), dilation
    ((2, 4, 7, 7), 3, 1, 1, 1),
    ((2, 4, 6, 8), 3, 2, 1, 1),
    ((1, 3, 9, 8), 5, 2, 2, 1),
    ((2, 3, 8, 9), 3, 2, ((0, 1), (0, 1)), 1),  # TF "same" on stride 2: the odd row and column at the end
    ((2, 3, 7, 7), 5, 2, ((1, 2), (2, 2)), 1),
    ((2, 3, 9, 7), 3, 1, 2, 2),
    ((2, 3, 6, 5), (3, 5), (2, 1), (1, 2), 1),
    ((3, 5, 6, 6), 3, 3, 0, 1),  # stride 3: dx cells no window reads
    ((2, 3, 9, 10), 3, 2, 2, 2),  # stride and dilation 2: column phases with a dilated kernel
    ((1, 2, 3, 3), 5, 1, 2, 1),  # kernel larger than the input: every tap cut at the border
]


@LAYOUTS
@pytest.mark.parametrize("bands", ["one", "many"])
@pytest.mark.parametrize("x_shape, kernel, stride, padding, dilation", DEPTHWISE_CONFIGS)
def test_depthwise_fast_equals_reference(x_shape, kernel, stride, padding, dilation, bands, layout, monkeypatch):
    if bands == "many":  # a band of a row or two: the tasks' seams must not show
        monkeypatch.setattr(fast_depthwise, "BAND_BYTES", 64)
    rng = np.random.default_rng(0)
    C = x_shape[1]
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal((C, 1, kh, kw)), rng.standard_normal(C)
    args = (stride, padding, dilation)
    out, cache = depthwise_conv2d_forward(in_layout(x, layout), w, b, *args)
    np.testing.assert_allclose(out, depthwise_conv2d_reference(x, w, b, *args), rtol=1e-12, atol=1e-12)
    # and the reference is PyTorch's grouped convolution of the padded input
    padded = np.pad(x, ((0, 0), (0, 0), *fast_depthwise.as_pads(padding)))
    expected = tnn.functional.conv2d(
        torch.from_numpy(padded), torch.from_numpy(w), torch.from_numpy(b), stride, 0, dilation, C
    )
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    fast = depthwise_conv2d_backward(in_layout(dout, layout), cache)
    slow = depthwise_conv2d_backward_reference(x, w, dout, *args)
    for name, a, r in zip(("dx", "dw", "db"), fast, slow, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12, err_msg=name)
    dx_none, dw, _ = depthwise_conv2d_backward(dout, cache, needs_input_grad=False)
    assert dx_none is None
    np.testing.assert_array_equal(dw, fast[1])
    _, no_bias = depthwise_conv2d_forward(x, w, None, *args)
    assert depthwise_conv2d_backward(dout, no_bias)[2] is None


def test_depthwise_float32_stays_float32():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 4, 6, 6), np.float32), rng.standard_normal((4, 1, 3, 3), np.float32)
    out, cache = depthwise_conv2d_forward(x, w, np.zeros(4, np.float32), 1, 1)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in depthwise_conv2d_backward(out, cache))


@LAYOUTS
@pytest.mark.parametrize("x_shape, O", [((2, 5, 4, 3), 7), ((3, 8, 6, 5), 3), ((1, 6, 1, 1), 4)])
def test_pointwise_equals_the_im2col_path(x_shape, O, layout):
    """A 1x1 convolution as one matrix multiply gives im2col's numbers, forward and backward."""
    rng = np.random.default_rng(0)
    C = x_shape[1]
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal((O, C, 1, 1)), rng.standard_normal(O)
    out, cache = pointwise_conv2d_forward(in_layout(x, layout), w, b)
    out_im2col, cache_im2col = conv2d_forward(in_layout(x, layout), w, b)
    np.testing.assert_allclose(out, out_im2col, rtol=1e-13, atol=1e-13)
    dout = rng.standard_normal(out.shape)
    fast = pointwise_conv2d_backward(in_layout(dout, layout), cache)
    for name, a, r in zip(("dx", "dw", "db"), fast, conv2d_backward(dout, cache_im2col), strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-13, atol=1e-13, err_msg=name)
    assert pointwise_conv2d_backward(dout, cache, needs_input_grad=False)[0] is None


# fmt: off
PATHS = [
    # the layer                                         its path
    (lambda: Conv2d(8, 8, 3, padding=1, groups=8),      "depthwise"),
    (lambda: Conv2d(8, 8, 5, stride=2, groups=8),       "depthwise"),
    (lambda: Conv2dSame(8, 8, 3, stride=2, groups=8),   "depthwise"),
    (lambda: Conv2d(8, 16, 3, padding=1, groups=8),     "im2col"),     # depth multiplier 2: im2col
    (lambda: Conv2d(8, 8, 3, padding=1, groups=4),      "im2col"),
    (lambda: Conv2d(8, 16, 1),                          "pointwise"),
    (lambda: Conv2dSame(8, 16, 1),                      "pointwise"),
    (lambda: Conv2d(8, 16, 1, stride=2),                "im2col"),
    (lambda: Conv2d(8, 16, 1, padding=1),               "im2col"),
    (lambda: Conv2d(8, 16, 1, groups=2),                "im2col"),
    (lambda: Conv2d(8, 16, 3, padding=1),               "im2col"),
    (lambda: Conv2dSame(3, 8, 3, stride=2),             "im2col"),
    (lambda: Conv2d(1, 1, 3),                           "im2col"),     # one channel: an ordinary convolution
]
# fmt: on


@pytest.mark.parametrize("make, path", PATHS)
def test_conv2d_takes_its_path(make, path, monkeypatch):
    from tinytriage.nn import conv as conv_module

    layer = make().astype(np.float64)
    assert layer.path == path
    called = []
    for name in ("depthwise_conv2d", "pointwise_conv2d", "conv2d"):
        for step in ("forward", "backward"):
            real = getattr(conv_module, f"{name}_{step}")
            spy = lambda *a, _real=real, _name=f"{name}_{step}", **k: called.append(_name) or _real(*a, **k)  # noqa: E731
            monkeypatch.setattr(conv_module, f"{name}_{step}", spy)
    x = np.random.default_rng(0).standard_normal((2, layer.in_channels, 6, 7))
    out = layer(x)
    layer.backward(np.ones_like(out))
    fast = {"depthwise": "depthwise_conv2d", "pointwise": "pointwise_conv2d", "im2col": "conv2d"}[path]
    assert called == [f"{fast}_forward", f"{fast}_backward"]


POOL_CONFIGS = [
    ((2, 3, 6, 8), 2, None, 0),
    ((2, 3, 7, 9), 2, None, 0),
    ((2, 2, 7, 7), 3, 2, 1),
    ((1, 2, 6, 7), (2, 3), (1, 2), (1, 1)),
]


@LAYOUTS
@pytest.mark.parametrize("x_shape, kernel, stride, padding", POOL_CONFIGS)
@pytest.mark.parametrize("data", ["normal", "ties"])
def test_maxpool_fast_equals_reference(x_shape, kernel, stride, padding, data, layout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape) if data == "normal" else rng.integers(0, 2, x_shape).astype(np.float64)
    out, cache = maxpool2d_forward(in_layout(x, layout), kernel, stride, padding)
    ref, winners = maxpool2d_reference(x, kernel, stride, padding)
    np.testing.assert_array_equal(out, ref)
    n, c, i, j = np.indices(out.shape)
    np.testing.assert_array_equal(x[n, c, winners[..., 0], winners[..., 1]], out)  # winners hold the max
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(
        maxpool2d_backward(dout, cache), maxpool2d_backward_reference(dout, winners, x.shape), rtol=1e-13, atol=1e-13
    )


def test_maxpool_ties_go_to_the_first_maximum_and_nan_wins():
    x = np.array([[[[1.0, 3.0], [3.0, 0.0]]]])
    out, winners = maxpool2d_reference(x, 2)
    assert out[0, 0, 0, 0] == 3.0 and tuple(winners[0, 0, 0, 0]) == (0, 1)  # row-major first
    _, cache = maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(maxpool2d_backward(np.ones((1, 1, 1, 1)), cache), [[[[0, 1], [0, 0]]]])
    x[0, 0, 1, 0] = np.nan
    assert np.isnan(maxpool2d_forward(x, 2)[0]).all() and np.isnan(maxpool2d_reference(x, 2)[0]).all()
    assert np.isnan(tnn.functional.max_pool2d(torch.from_numpy(x), 2).numpy()).all()


@pytest.mark.parametrize("x_shape, kernel, stride, padding", POOL_CONFIGS)
def test_avgpool_fast_equals_reference(x_shape, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape)
    out, cache = avgpool2d_forward(x, kernel, stride, padding)
    np.testing.assert_allclose(out, avgpool2d_reference(x, kernel, stride, padding), rtol=1e-12, atol=1e-13)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(
        avgpool2d_backward(dout, cache),
        avgpool2d_backward_reference(dout, x.shape, kernel, stride, padding),
        rtol=1e-12,
        atol=1e-13,
    )


BN_CONFIGS = [
    # x shape, offset of the data (a large mean next to the spread tests the numerics)
    ((4, 3, 5, 6), 0.0),
    ((1, 3, 4, 4), 0.0),
    ((2, 16, 9, 7), 0.0),
    ((3, 2, 6, 5), 1e4),
]


@LAYOUTS
@pytest.mark.parametrize("x_shape, offset", BN_CONFIGS)
def test_batchnorm_fast_equals_reference(x_shape, offset, layout):
    rng = np.random.default_rng(0)
    C = x_shape[1]
    x = offset + rng.standard_normal(x_shape) * rng.uniform(0.5, 2.0, (1, C, 1, 1))
    weight, bias, dy = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(x_shape)
    y, mean, var, cache = batch_norm_forward(in_layout(x, layout), weight, bias, 1e-5)
    ref_y, ref_mean, ref_var, ref_cache = batch_norm_reference(x, weight, bias, 1e-5)
    for name, a, r in (("y", y, ref_y), ("mean", mean, ref_mean), ("var", var, ref_var)):
        np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-9, err_msg=name)
    fast = batch_norm_backward(in_layout(dy, layout), cache)
    for name, a, r in zip(("dx", "dweight", "dbias"), fast, batch_norm_backward_reference(dy, ref_cache), strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-9, err_msg=name)
    # eval: given statistics are constants, y = (x - mean) * weight / sqrt(var + eps) + bias
    stats = (rng.standard_normal(C) + offset, rng.uniform(0.5, 2, C))
    y, _, _, cache = batch_norm_forward(in_layout(x, layout), weight, bias, 1e-5, stats)
    scale = (weight / np.sqrt(stats[1] + 1e-5)).reshape(1, C, 1, 1)
    np.testing.assert_allclose(y, (x - stats[0].reshape(1, C, 1, 1)) * scale + bias.reshape(1, C, 1, 1), rtol=1e-9)
    np.testing.assert_allclose(batch_norm_backward(dy, cache)[0], dy * scale, rtol=1e-12)


# -- one output cell, as explain shows it -------------------------------------------------
def test_conv2d_cell_shows_the_window_the_kernel_and_their_sum():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((6, 2, 3, 3)), rng.standard_normal(6)
    out = conv2d_reference(x, w, b, stride=2, padding=1, groups=2)
    cell = conv2d_cell(x, w, b, n=1, oc=4, row=1, col=2, stride=2, padding=1, groups=2)
    x_padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    np.testing.assert_array_equal(cell["window"], x_padded[1, 2:4, 2:5, 4:7])  # group 1: channels 2, 3
    np.testing.assert_array_equal(cell["kernel"], w[4])
    np.testing.assert_array_equal(cell["products"], cell["window"] * cell["kernel"])
    assert cell["sum"] == pytest.approx(cell["products"].sum())
    assert cell["bias"] == b[4] and cell["out"] == pytest.approx(cell["sum"] + b[4])
    assert cell["out"] == pytest.approx(out[1, 4, 1, 2], abs=1e-12)
    with pytest.raises(ShapeError, match="outside the output"):
        conv2d_cell(x, w, b, n=0, oc=0, row=3, col=0, stride=2, padding=1, groups=2)


# -- gradient checks by central differences, float64 --------------------------------------
def _fixed_mask_dropout():
    layer = Dropout(0.5)
    keep = np.random.default_rng(3).random((3, 5)) > 0.5
    layer.sample_keep = lambda shape: keep  # the same mask on every forward
    return layer


GRADCHECK = [
    pytest.param(lambda: Conv2d(2, 3, 3, stride=2, padding=1), [(2, 2, 5, 5)], id="conv-s2-p1"),
    pytest.param(lambda: Conv2d(4, 2, 3, padding=2, dilation=2), [(1, 4, 4, 5)], id="conv-dilated-fewer-out"),
    pytest.param(lambda: Conv2d(4, 4, 3, padding=1, groups=2), [(1, 4, 4, 4)], id="conv-groups"),
    pytest.param(lambda: Conv2d(3, 3, 3, stride=2, padding=1, groups=3), [(2, 3, 5, 4)], id="depthwise-s2"),
    pytest.param(lambda: Conv2d(3, 4, 1), [(2, 3, 3, 2)], id="pointwise"),
    pytest.param(lambda: Conv2dSame(2, 3, 3, stride=2), [(1, 2, 6, 5)], id="conv-same-s2"),
    pytest.param(lambda: ReLU6(), [lambda rng: 4 * rng.standard_normal((3, 7))], id="relu6"),
    pytest.param(lambda: InvertedResidual(2, 2, 3, 1, 2.0, bn_eps=1e-2), [(2, 2, 3, 3)], id="inverted-residual"),
    pytest.param(lambda: DepthwiseSeparableConv(2, 3, 3, 2).eval(), [(1, 2, 4, 5)], id="ds-eval"),
    pytest.param(lambda: MaxPool2d(2), [(2, 2, 4, 5)], id="maxpool"),
    pytest.param(lambda: MaxPool2d(3, 2, 1), [(1, 2, 5, 5)], id="maxpool-overlap"),
    pytest.param(lambda: AvgPool2d(3, 2, 1), [(1, 2, 5, 5)], id="avgpool"),
    pytest.param(lambda: AdaptiveAvgPool2d((2, 3)), [(1, 2, 5, 7)], id="adaptive-avg"),
    pytest.param(lambda: GlobalAvgMaxPool2d(), [(2, 3, 4, 5)], id="global-avgmax"),
    pytest.param(lambda: ReLU(), [(3, 7)], id="relu"),
    pytest.param(lambda: _groups(GroupLogSoftmax(7, 5)), [(3, 7)], id="group-log-softmax"),
    pytest.param(lambda: Linear(5, 3), [(4, 5)], id="linear"),
    pytest.param(lambda: Flatten(), [(2, 2, 3)], id="flatten"),
    pytest.param(lambda: BatchNorm2d(2), [(3, 2, 2, 3)], id="bn-train"),
    pytest.param(lambda: BatchNorm2d(2).eval(), [(3, 2, 2, 3)], id="bn-eval"),
    pytest.param(lambda: CrossEntropyLoss(label_smoothing=0.1), [(4, 5), np.array([1, 0, 4, 4])], id="cross-entropy"),
    pytest.param(_fixed_mask_dropout, [(3, 5)], id="dropout"),
    pytest.param(lambda: LayerNorm(4), [(2, 3, 4)], id="layernorm"),
    pytest.param(lambda: GELU(), [(3, 7)], id="gelu"),
    pytest.param(lambda: Attention(4, 2), [(2, 3, 4)], id="attention"),
    pytest.param(lambda: ConvPatchEmbed(8, 4, 2, 4, (3, 3)), [(2, 2, 8, 8)], id="conv-patch-embed"),
    pytest.param(lambda: ConvPatchEmbed(8, 4, 2, 4, (3, 3), True), [(2, 2, 8, 8)], id="conv-patch-embed-pool"),
    pytest.param(
        lambda: VisionTransformer(**SMALL_VIT, distilled=True).eval(), [(2, 3, 8, 8)], id="vit-distilled-eval"
    ),
]


def _groups(layer):
    layer.load_state_dict({"members": GROUPS})
    return layer


@pytest.mark.parametrize("make, inputs", GRADCHECK)
def test_gradcheck(make, inputs):
    rng = np.random.default_rng(0)
    x, *extra = [rng.standard_normal(s) if isinstance(s, tuple) else s(rng) if callable(s) else s for s in inputs]
    errors = gradcheck(make().astype(np.float64), x, *extra)
    assert "input" in errors


def test_gradcheck_catches_a_wrong_gradient():
    with pytest.raises(GradcheckError, match="input"):
        gradcheck(_WrongInputGrad(), np.random.default_rng(0).standard_normal((3, 4)))


# -- construction, init, dtypes -----------------------------------------------------------
def test_conv_and_linear_init_like_torch():
    conv, tconv = Conv2d(8, 16, 3, rng=np.random.default_rng(1)), tnn.Conv2d(8, 16, 3)
    linear, tlinear = Linear(50, 40), tnn.Linear(50, 40)
    for ours, theirs, fan_in in [(conv, tconv, 8 * 9), (linear, tlinear, 50)]:
        bound = 1 / np.sqrt(fan_in)
        for name, p in ours.params.items():
            t = theirs.state_dict()[name].numpy()
            assert p.shape == t.shape and p.dtype == np.float32
            assert np.abs(p).max() <= bound and np.abs(t).max() <= bound
            if p.size > 500:  # both fill U(-bound, bound)
                assert np.abs(p).max() > 0.98 * bound
                assert abs(p.std() - bound / np.sqrt(3)) < 0.05 * bound
    np.testing.assert_array_equal(Conv2d(3, 4, 3).params["weight"], Conv2d(3, 4, 3).params["weight"])  # seeded
    assert Conv2d(3, 4, 3, dtype=np.float64).params["weight"].dtype == np.float64


def test_first_conv_skips_the_input_gradient():
    conv = Conv2d(3, 4, 3, padding=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    g = np.ones((2, 4, 5, 5), np.float32)
    conv(x)
    conv.backward(g)
    expected = conv.grads
    conv.needs_input_grad = False
    conv(x)
    assert conv.backward(g) is None
    for name in expected:
        np.testing.assert_array_equal(conv.grads[name], expected[name])


def test_float32_stays_float32_through_a_training_step():
    model = Sequential(
        Conv2d(2, 4, 3, padding=1),
        BatchNorm2d(4),
        ReLU(),
        MaxPool2d(2),
        AvgPool2d(1),
        AdaptiveAvgPool2d(1),
        Flatten(),
        Dropout(0.3),
        Linear(4, 3),
    )
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    logits = model(x)
    loss, dlogits = CrossEntropyLoss(label_smoothing=0.1)(logits, np.array([0, 1, 2]))
    dx = model.backward(dlogits)
    assert logits.dtype == dlogits.dtype == dx.dtype == np.float32 and np.asarray(loss).dtype == np.float32
    assert all(g.dtype == np.float32 for g in model.grads.values())
    assert set(model.grads) == set(model.params)


def test_state_dict_round_trips_into_torch_and_back():
    ours = small_cnn(Conv2d, ReLU, MaxPool2d, Flatten, Linear, Sequential)
    theirs = small_cnn(tnn.Conv2d, tnn.ReLU, tnn.MaxPool2d, tnn.Flatten, tnn.Linear, tnn.Sequential)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for name, value in theirs.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[name], value.numpy())


# -- clear errors for impossible shapes ---------------------------------------------------
# fmt: off
BAD = [
    # what to call                                                      shape                  message
    (lambda x: Conv2d(3, 4, 5)(x),                                      (1, 3, 3, 4),          r"Conv2d: kernel 5x5 does not fit the padded input 3x4 \(H \+ 2P = 3 < K = 5\)"),
    (lambda x: Conv2d(3, 4, (1, 5), padding=(0, 1))(x),                 (1, 3, 3, 2),          r"Conv2d: kernel 1x5 does not fit the padded input 3x4 \(W \+ 2P = 4 < K = 5\)"),
    (lambda x: Conv2d(3, 4, 3, dilation=2)(x),                          (1, 3, 4, 9),          r"kernel 3x3 with dilation 2x2 does not fit the padded input 4x9 \(H \+ 2P = 4 < D\*\(K-1\) \+ 1 = 5\)"),
    (lambda x: Conv2d(3, 4, 3)(x),                                      (3, 8, 8),             r"Conv2d expects a 4-D \(N, C, H, W\) array, got shape \(3, 8, 8\)"),
    (lambda x: Conv2d(3, 4, 3)(x),                                      (1, 2, 8, 8),          r"Conv2d: expected 3 input channels, got 2"),
    (lambda x: Conv2d(3, 4, 3, stride=0),                               None,                  r"Conv2d: stride must be positive"),
    (lambda x: Conv2d(3, 4, 3, stride=(1, -1)),                         None,                  r"Conv2d: stride must be positive"),
    (lambda x: Conv2d(3, 4, 0),                                         None,                  r"Conv2d: kernel_size must be positive"),
    (lambda x: Conv2d(3, 4, 3, padding=-1),                             None,                  r"Conv2d: padding must be non-negative"),
    (lambda x: Conv2d(3, 4, 3, groups=2),                               None,                  r"Conv2d: groups=2 must divide in_channels=3 and out_channels=4"),
    (lambda x: conv2d_forward(x, np.ones((4, 2, 3, 3)), None),          (1, 3, 5, 5),          r"Conv2d: the input has 3 channels but the weight expects 2"),
    (lambda x: depthwise_conv2d_forward(x, np.ones((8, 1, 3, 3)), None), (1, 4, 5, 5),         r"Conv2d: the depthwise path takes one kernel per channel"),
    (lambda x: depthwise_conv2d_forward(x, np.ones((4, 1, 5, 5)), None), (1, 4, 3, 3),         r"Conv2d: kernel 5x5 does not fit the padded input 3x3"),
    (lambda x: Conv2dSame(4, 4, 3, groups=4)(x),                        (1, 3, 5, 5),          r"Conv2d: expected 4 input channels, got 3"),
    (lambda x: MaxPool2d(3)(x),                                         (1, 1, 2, 5),          r"MaxPool2d: kernel 3x3 does not fit the padded input 2x5"),
    (lambda x: MaxPool2d(2, stride=0),                                  None,                  r"MaxPool2d: stride must be positive"),
    (lambda x: MaxPool2d(2, padding=2),                                 None,                  r"MaxPool2d: padding \(2, 2\) must be at most half the kernel size"),
    (lambda x: AvgPool2d(2)(x),                                         (1, 4, 4),             r"AvgPool2d expects a 4-D"),
    (lambda x: AdaptiveAvgPool2d(0),                                    None,                  r"AdaptiveAvgPool2d: output_size must be positive"),
    (lambda x: Linear(4, 3)(x),                                         (2, 5),                r"Linear: expected \(\.\.\., 4\) input, got shape \(2, 5\)"),
    (lambda x: BatchNorm2d(3)(x),                                       (2, 4, 3, 3),          r"BatchNorm2d: expected 3 channels, got 4"),
    (lambda x: BatchNorm2d(3)(x),                                       (1, 3, 1, 1),          r"BatchNorm2d: training needs more than 1 value per channel"),
    (lambda x: CrossEntropyLoss()(x, np.array([0, 5])),                 (2, 5),                r"targets must lie in \[0, 5\)"),
    (lambda x: CrossEntropyLoss()(x, np.array([0, 1, 2])),              (2, 5),                r"targets must be 2 integer class indices"),
    (lambda x: CrossEntropyLoss()(x, np.array([0, 1])),                 (2, 5, 1),             r"CrossEntropyLoss expects a 2-D"),
]
# fmt: on


@pytest.mark.parametrize("call, shape, message", BAD)
def test_impossible_shapes_raise_clear_errors(call, shape, message):
    x = None if shape is None else np.zeros(shape, np.float32)
    with pytest.raises(ShapeError, match=message):
        call(x)


def test_every_layer_is_a_module():
    for layer in (
        Conv2d(1, 1, 1),
        Conv2dSame(1, 1, 3),
        MaxPool2d(2),
        AvgPool2d(2),
        AdaptiveAvgPool2d(1),
        ReLU(),
        ReLU6(),
        DepthwiseSeparableConv(2, 2),
        InvertedResidual(2, 2),
        Linear(1, 1),
        Flatten(),
        BatchNorm2d(1),
        Dropout(),
        CrossEntropyLoss(),
    ):
        assert isinstance(layer, Module)
        assert repr(layer).startswith(type(layer).__name__)
