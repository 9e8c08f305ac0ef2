"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variant of TensorFlow's 2020 release), built
from ``tinytriage.nn``'s mobile blocks.

A stem (3x3 convolution, stride 2, 32 channels), seven stages of the blocks of
``tinytriage.nn.mobile``, a 1x1 head convolution to 1280 channels, global average pooling,
dropout and one linear layer. Each stage is a short string, as timm writes them:

    ds_r1_k3_s1_e1_c16   a depthwise-separable block (ds), repeated once, kernel 3, stride 1,
                         expansion 1, 16 output channels
    ir_r2_k5_s2_e6_c40   two inverted residuals, 5x5 depthwise, the first with stride 2,
                         channels widened 6x inside, 40 out

The Lite variant (for phones' integer arithmetic): ReLU6 instead of swish, no squeeze-and-
excitation, and the stem and head widths fixed at 32 and 1280. BatchNorm's eps is 1e-3 and
convolutions with a stride pad TensorFlow's "same" way (one more row and column at the
bottom and right), as the original weights expect.

Children are named as timm's ``tf_efficientnet_lite0`` (``conv_stem``, ``bn1``,
``blocks.S.B.conv_pw``, ..., ``conv_head``, ``bn2``, ``classifier``), so its ImageNet
weights load by name (``models/convert_efficientnet_lite0.py``), and the PyTorch twin
(``torch_efficientnet.py``) has the same keys.

The model is a ``Sequential`` of those children: ``features`` is everything before the
global pool (the last spatial map, 7x7 at 224 px, is where Grad-CAM looks) and ``head``
the rest, as the triage CNN's.

With ``prior_classes`` > 0 the classifier is a ``PriorClassifier``: a new linear layer
plus what the pretrained classifier already knows, each class's group of pretrained
classes (ImageNet's cellular_telephone, laptop, ... for an intact device) read as a
log-probability. The tinytriage model bundled for ``predict`` is one (models/NOTICE.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tinytriage import nn
from tinytriage.models.layers import LayerSpec
from tinytriage.nn.module import Module, Sequential
from tinytriage.nn.sizes import same_padding

LITE0_STAGES = (
    "ds_r1_k3_s1_e1_c16",
    "ir_r2_k3_s2_e6_c24",
    "ir_r2_k5_s2_e6_c40",
    "ir_r3_k3_s2_e6_c80",
    "ir_r3_k5_s1_e6_c112",
    "ir_r4_k5_s2_e6_c192",
    "ir_r1_k3_s1_e6_c320",
)


@dataclass
class EfficientNetConfig:
    """Everything that decides the network's shape. Stored in the model file."""

    in_chans: int = 3  # RGB photos
    num_classes: int = 1000  # one logit per class in the model file's class list
    input_size: int = 224  # photos are fitted to input_size x input_size pixels
    stem_chs: int = 32  # channels of the stem convolution (fixed in the Lite variant)
    head_chs: int = 1280  # channels of the 1x1 head convolution (fixed in the Lite variant)
    stages: tuple[str, ...] = field(default=LITE0_STAGES)  # one block string per stage (see the docstring)
    drop_rate: float = 0.2  # dropout before the classifier, training only
    bn_eps: float = 1e-3  # TensorFlow's BatchNorm epsilon, which the ImageNet weights were trained with
    prior_classes: int = 0  # > 0: a PriorClassifier reading this many pretrained classes (1000); 0: one Linear

    def __post_init__(self) -> None:
        self.stages = tuple(self.stages)
        for s in self.stages:
            decode_stage(s)  # raises on a malformed string

    def to_dict(self) -> dict:
        return {**asdict(self), "stages": list(self.stages)}

    @classmethod
    def from_dict(cls, d: dict) -> EfficientNetConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "stages" in known:
            known["stages"] = tuple(str(s) for s in known["stages"])
        return cls(**known)


@dataclass(frozen=True)
class Stage:
    """One decoded stage string."""

    kind: str  # "ds" (depthwise separable) or "ir" (inverted residual)
    repeats: int  # blocks in the stage; only the first has the stride
    kernel: int  # depthwise kernel size
    stride: int
    expansion: int  # channel widening inside an inverted residual
    channels: int  # output channels


def decode_stage(s: str) -> Stage:
    """``"ir_r2_k5_s2_e6_c40"`` -> Stage("ir", 2, 5, 2, 6, 40)."""
    kind, *options = s.split("_")
    values = {o[0]: int(o[1:]) for o in options if o[:1] in "rksec" and o[1:].isdigit()}
    if kind not in ("ds", "ir") or set(values) != set("rksec") or len(options) != 5:
        raise ValueError(f"a stage is kind_rR_kK_sS_eE_cC with kind ds or ir, got {s!r}")
    return Stage(kind, values["r"], values["k"], values["s"], values["e"], values["c"])


def block_specs(cfg: EfficientNetConfig) -> list[list[tuple[str, int, int, int, int, int]]]:
    """Per stage, per block: (kind, in_chs, out_chs, kernel, stride, expansion)."""
    specs, c_in = [], cfg.stem_chs
    for stage in map(decode_stage, cfg.stages):
        blocks = []
        for b in range(stage.repeats):
            stride = stage.stride if b == 0 else 1
            blocks.append((stage.kind, c_in, stage.channels, stage.kernel, stride, stage.expansion))
            c_in = stage.channels
        specs.append(blocks)
    return specs


class EfficientNet(Sequential):
    """``conv_stem -> bn1 -> act1 -> blocks -> conv_head -> bn2 -> act2 -> global_pool ->
    flatten -> dropout -> classifier``, timm's names."""

    def __init__(self, cfg: EfficientNetConfig, *, rng: np.random.Generator | None = None, dtype=np.float32):
        Module.__init__(self)
        self.cfg = cfg
        rng = rng if rng is not None else np.random.default_rng(0)
        eps = cfg.bn_eps
        stages = []
        for blocks in block_specs(cfg):
            stage = []
            for kind, c_in, c_out, k, s, e in blocks:
                if kind == "ds":
                    stage.append(nn.DepthwiseSeparableConv(c_in, c_out, k, s, bn_eps=eps, dtype=dtype, rng=rng))
                else:
                    stage.append(nn.InvertedResidual(c_in, c_out, k, s, e, bn_eps=eps, dtype=dtype, rng=rng))
            stages.append(Sequential(*stage))
        c_last = block_specs(cfg)[-1][-1][2]
        layers = {
            "conv_stem": nn.Conv2dSame(cfg.in_chans, cfg.stem_chs, 3, 2, bias=False, dtype=dtype, rng=rng),
            "bn1": nn.BatchNorm2d(cfg.stem_chs, eps=eps, dtype=dtype),
            "act1": nn.ReLU6(),
            "blocks": Sequential(*stages),
            "conv_head": nn.Conv2d(c_last, cfg.head_chs, 1, bias=False, dtype=dtype, rng=rng),
            "bn2": nn.BatchNorm2d(cfg.head_chs, eps=eps, dtype=dtype),
            "act2": nn.ReLU6(),
            "global_pool": nn.AdaptiveAvgPool2d(1),  # (N, 1280, h, w) -> (N, 1280, 1, 1)
            "flatten": nn.Flatten(),
            "dropout": nn.Dropout(cfg.drop_rate, rng=rng),
            "classifier": (
                PriorClassifier(cfg.head_chs, cfg.num_classes, cfg.prior_classes, dtype=dtype, rng=rng)
                if cfg.prior_classes
                else nn.Linear(cfg.head_chs, cfg.num_classes, dtype=dtype, rng=rng)
            ),
        }
        for name, layer in layers.items():
            self.add_module(name, layer)
        self[0].needs_input_grad = False  # the photo's own gradient is never used
        self.astype(dtype)

    def _split(self) -> int:
        """Index of the global pool: features before it, head from it (fused or not)."""
        return next(i for i, layer in enumerate(self) if isinstance(layer, nn.AdaptiveAvgPool2d))

    @property
    def features(self) -> Sequential:
        """Stem, every block (stages flattened) and head convolution: x -> the last map (N, 1280, h, w)."""
        return Sequential(*_flatten(list(self)[: self._split()]))

    @property
    def head(self) -> Sequential:
        """Global pool, flatten, dropout, classifier: (N, 1280, h, w) -> logits (N, classes)."""
        return Sequential(*list(self)[self._split() :])


class PriorClassifier(Module):
    """A new linear classifier plus the log-probability that a pretrained classifier gives
    each class's group of its own classes:

        logits_k = fc(f)_k + log sum_{j in group k} softmax(pretrained(f))_j       f (N, C)

    ``pretrained`` is the network's original classifier (ImageNet's 1000 classes) and
    ``groups`` says which of its classes make each new class (a 0/1 buffer, ``members``,
    (K, J)): what the pretrained network already knows, written down without a photo. The
    softmax of these logits is p(class) proportional to p_pretrained(group) exp(fc(f)):
    ``fc`` learns how the new classes differ from that prior (an intact phone from a
    cracked one, which share a group). The backward pass is the sum of the two paths."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        prior_classes: int,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.fc = self.add_module("fc", nn.Linear(in_features, num_classes, dtype=dtype, rng=rng))
        self.pretrained = self.add_module("pretrained", nn.Linear(in_features, prior_classes, dtype=dtype, rng=rng))
        self.groups = self.add_module("groups", nn.GroupLogSoftmax(prior_classes, num_classes, dtype=dtype))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.fc(x) + self.groups(self.pretrained(x))  # (N, K) + (N, K)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        # both paths read x: its gradient is the sum of theirs
        return self.fc.backward(grad_out) + self.pretrained.backward(self.groups.backward(grad_out))


def _flatten(layers: list[Module]) -> list[Module]:
    """Nested Sequentials (the stages) opened into one list of layers and blocks."""
    out = []
    for layer in layers:
        out += _flatten(list(layer)) if type(layer) is Sequential else [layer]
    return out


def layer_names(cfg: EfficientNetConfig) -> list[str]:
    """Names aligned with ``model.features``: conv_stem, bn1, act1, blocks.S.B ..., conv_head, bn2, act2."""
    blocks = [f"blocks.{s}.{b}" for s, stage in enumerate(block_specs(cfg)) for b in range(len(stage))]
    return ["conv_stem", "bn1", "act1", *blocks, "conv_head", "bn2", "act2"]


def layer_table(cfg: EfficientNetConfig) -> list[LayerSpec]:
    """Every layer as data (``tinytriage.models.layers``): ``features`` as ``layer_names``
    names them, a block per row, then the head.

    A block's receptive field grows by its depthwise kernel alone, (k - 1) * jump: the 1x1
    convolutions around it read one cell each. Its stride multiplies the jump. Its padding
    is TensorFlow's "same", before the input: half the total, the odd row at the bottom."""
    rows, S = [], cfg.input_size

    def add(name: str, kind: str, channels: int, params: int, k: int = 1, s: int = 1) -> None:
        nonlocal S
        pad = same_padding(S, k, s)[0]  # (before, after): the cell grid starts `before` rows up
        S = same_out(S, s)
        rows.append(LayerSpec(name, kind, name if params else "", (channels, S, S), params, k, s, pad))

    stem = cfg.stem_chs
    add("conv_stem", "conv", stem, stem * cfg.in_chans * 3 * 3, 3, 2)
    add("bn1", "bn", stem, 2 * stem)  # gamma and beta per channel
    add("act1", "relu6", stem, 0)
    for s, stage in enumerate(block_specs(cfg)):
        for b, (kind, c_in, c_out, k, stride, e) in enumerate(stage):
            mid = c_in if kind == "ds" else nn.mobile.make_divisible(c_in * e)
            expand = 0 if kind == "ds" else c_in * mid + 2 * mid  # 1x1 expansion and its BatchNorm
            params = expand + mid * k * k + 2 * mid + mid * c_out + 2 * c_out  # depthwise, BN, 1x1, BN
            add(f"blocks.{s}.{b}", kind, c_out, params, k, stride)
    c_last, head, n, J = block_specs(cfg)[-1][-1][2], cfg.head_chs, cfg.num_classes, cfg.prior_classes
    add("conv_head", "conv", head, c_last * head)
    add("bn2", "bn", head, 2 * head)
    add("act2", "relu6", head, 0)
    return rows + [
        LayerSpec("global_pool", "avgpool", "", (head, 1, 1), 0, S, 1, 0),  # one window the size of the map
        LayerSpec("flatten", "flatten", "", (head,), 0, 1, 1, 0),
        LayerSpec("dropout", "dropout", "", (head,), 0, 1, 1, 0),  # identity in eval mode
        # with a prior: the new linear layer and the pretrained classifier it reads beside it
        LayerSpec("classifier", "prior" if J else "linear", "classifier", (n,), head * (n + J) + n + J, 1, 1, 0),
    ]


def same_out(size: int, stride: int) -> int:
    """A "same"-padded convolution's output side: ceil(size / stride)."""
    return -(-size // stride)


def count_macs(cfg: EfficientNetConfig) -> int:
    """Multiply-adds of one forward pass for one photo (convolutions and the classifier)."""
    size = same_out(cfg.input_size, 2)
    macs = size * size * cfg.stem_chs * cfg.in_chans * 9
    for stage in block_specs(cfg):
        for kind, c_in, c_out, k, s, e in stage:
            mid = c_in if kind == "ds" else nn.mobile.make_divisible(c_in * e)
            if kind == "ir":
                macs += size * size * c_in * mid  # expand 1x1, at the input's size
            size = same_out(size, s)
            macs += size * size * mid * k * k  # depthwise
            macs += size * size * mid * c_out  # project 1x1
    c_last = block_specs(cfg)[-1][-1][2]
    return macs + size * size * c_last * cfg.head_chs + cfg.head_chs * (cfg.num_classes + cfg.prior_classes)
