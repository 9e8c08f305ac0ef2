"""The triage CNN: a small VGG-style network for ticket photos, built from `tinytriage.nn`.

Stages of ``3x3 conv -> BatchNorm -> ReLU`` each followed by 2x2 max pooling (the last
by global average pooling), then dropout and one linear layer; by default five stages on a
128 x 128 input. Why this shape:

* 3x3 kernels stacked: two 3x3 layers see 5x5 pixels with fewer weights than one 5x5,
  and each stage doubles the channels as pooling halves the map (Simonyan & Zisserman, 2014).
* BatchNorm lets the NumPy engine train in a few epochs at a high learning rate.
* 128 pixels and a fifth stage: a dead-pixel band or a crack on a phone that fills a fifth
  of the photo is only a few pixels wide at 96; the fifth stage lets a unit see 78 pixels
  (38 with four), enough to tell a band across a whole screen from a bar of its app. On
  1,500 generated photos per class, 7 epochs: 0.724 validation accuracy at 96 px against
  0.772 at 128 px (five stages both).
* Global average pooling keeps the parameter count small and keeps the last conv layer's
  spatial map for Grad-CAM, which points at cracks rather than at the whole photo.
  ``pool="avgmax"`` hands the linear layer each map's maximum beside its mean: a crack
  that lights up one cell of the 8 x 8 map is 1/64 of a mean but the whole of a maximum.
* ``depths`` gives a stage more than one ``conv -> BatchNorm -> ReLU`` block before its
  pool, as VGG's stages have (blocks ``conv3``, ``conv3b``, ...). One block each is the
  default; eight layers at about the same multiply-adds did no better (README).

The same ``CNNConfig`` builds the PyTorch twin (`tinytriage.engines.torch_engine`), with the same
parameter names, so one ``.safetensors`` file runs in both engines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tinytriage import nn
from tinytriage.models.layers import LayerSpec
from tinytriage.nn.conv import conv_output_size
from tinytriage.nn.module import Module, Sequential

HEAD_POOLS = ("avg", "avgmax")


@dataclass
class CNNConfig:
    """Everything that decides the CNN's shape. Stored in the model file."""

    in_channels: int = 3  # RGB photos
    num_classes: int = 5  # one logit per class in the model file's class list
    input_size: int = 128  # photos are letterboxed to input_size x input_size pixels
    widths: tuple[int, ...] = field(default=(16, 32, 64, 128, 256))  # output channels per stage
    depths: tuple[int, ...] | None = None  # conv blocks per stage (VGG-style); None: one each
    kernel_size: int = 3  # conv kernel, odd, with 'same' padding
    dropout: float = 0.1  # before the classifier, training only
    pool: str = "avg"  # head: "avg" (global average pooling) or "avgmax" (average and max side by side)

    def __post_init__(self) -> None:
        if self.pool not in HEAD_POOLS:
            raise ValueError(f"pool must be one of {', '.join(HEAD_POOLS)}, got {self.pool!r}")
        if self.depths is not None:
            self.depths = tuple(int(d) for d in self.depths)
            if len(self.depths) != len(self.widths) or any(not 1 <= d <= 26 for d in self.depths):
                raise ValueError(
                    f"depths must give one count >= 1 per stage ({len(self.widths)} stages), at most 26 "
                    f"(blocks are named conv3, conv3b, ... conv3z), got {list(self.depths)}"
                )
            if all(d == 1 for d in self.depths):
                self.depths = None  # one block per stage is the plain network: one way to write it

    @property
    def stage_depths(self) -> tuple[int, ...]:
        """Conv blocks in each stage (1 each unless ``depths`` says otherwise)."""
        return self.depths if self.depths is not None else (1,) * len(self.widths)

    @property
    def head_features(self) -> int:
        """Inputs of the linear layer: the last stage's channels, twice for ``avgmax``."""
        return self.widths[-1] * (2 if self.pool == "avgmax" else 1)

    def to_dict(self) -> dict:
        d = {**asdict(self), "widths": list(self.widths)}
        if self.depths is None:
            del d["depths"]  # files of the plain network stay as they were
        else:
            d["depths"] = list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CNNConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("widths", "depths"):
            if known.get(key) is not None:
                known[key] = tuple(int(w) for w in known[key])
        return cls(**known)


def feature_layers(cfg: CNNConfig) -> list[tuple[str, str, dict]]:
    """The architecture as data: (kind, role, arguments) per layer of ``features``.

    Both engines, the model summary and the receptive-field table read this one list.
    """
    layers: list[tuple[str, str, dict]] = []
    c_in, k = cfg.in_channels, cfg.kernel_size
    for stage, (width, depth) in enumerate(zip(cfg.widths, cfg.stage_depths, strict=True)):
        for block in range(depth):  # block 0 is conv3, block 1 conv3b, ...
            name = f"{stage + 1}{chr(ord('a') + block) if block else ''}"
            conv = dict(in_channels=c_in, out_channels=width, kernel_size=k, padding=k // 2, bias=False)
            layers.append(("conv", f"conv{name}", conv))
            layers.append(("bn", f"bn{name}", dict(num_features=width)))
            layers.append(("relu", f"relu{name}", {}))
            c_in = width
        if stage < len(cfg.widths) - 1:
            layers.append(("maxpool", f"pool{stage + 1}", dict(kernel_size=2, stride=2)))
    return layers


class TriageCNN(Module):
    """``features`` (conv stages) then ``head`` (global pool, flatten, dropout, linear)."""

    def __init__(
        self,
        cfg: CNNConfig,
        *,
        rng: np.random.Generator | None = None,
        dtype=np.float32,
    ):
        super().__init__()
        self.cfg = cfg
        rng = rng if rng is not None else np.random.default_rng(0)
        layers = []
        for kind, _role, args in feature_layers(cfg):
            if kind == "conv":
                layers.append(nn.Conv2d(**args, dtype=dtype, rng=rng))
            elif kind == "bn":
                layers.append(nn.BatchNorm2d(**args))
            elif kind == "relu":
                layers.append(nn.ReLU())
            elif kind == "maxpool":
                layers.append(nn.MaxPool2d(**args))
        # the first conv's input gradient is never used: skip computing it
        layers[0].needs_input_grad = False
        self.features = self.add_module("features", Sequential(*layers))
        pool = nn.AdaptiveAvgPool2d(1) if cfg.pool == "avg" else nn.GlobalAvgMaxPool2d()
        self.head = self.add_module(
            "head",
            Sequential(
                pool,  # (N, C, h, w) -> (N, C or 2C, 1, 1)
                nn.Flatten(),
                nn.Dropout(cfg.dropout, rng=rng),
                nn.Linear(cfg.head_features, cfg.num_classes, dtype=dtype, rng=rng),
            ),
        )
        self.astype(dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        # x: (N, 3, S, S) normalised photos -> logits (N, num_classes)
        return self.head(self.features(x))

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        return self.features.backward(self.head.backward(grad_out))


def layer_names(cfg: CNNConfig) -> list[str]:
    """Readable names (conv1, bn1, ...) aligned with ``model.features`` indices."""
    return [role for _kind, role, _args in feature_layers(cfg)]


def layer_table(cfg: CNNConfig) -> list[LayerSpec]:
    """Every layer as data (``tinytriage.models.layers``): ``feature_layers`` with its output
    shape, parameters, kernel, stride and padding, then the head."""
    rows = []
    C, S = cfg.in_channels, cfg.input_size
    for i, (kind, role, args) in enumerate(feature_layers(cfg)):
        k, s, p, params = 1, 1, 0, 0  # BatchNorm and ReLU: one cell in, one out
        if kind == "conv":
            k, p = args["kernel_size"], args["padding"]
            c_in, C = args["in_channels"], args["out_channels"]
            params = C * c_in * k * k + (C if args["bias"] else 0)  # one k x k x C_in kernel per output channel
        elif kind == "bn":
            params = 2 * C  # gamma and beta per channel
        elif kind == "maxpool":
            k, s = args["kernel_size"], args["stride"]
        S = conv_output_size(S, k, s, p)
        rows.append(LayerSpec(role, kind, f"features.{i}" if params else "", (C, S, S), params, k, s, p))
    n, F = cfg.num_classes, cfg.head_features
    pool = "avgpool" if cfg.pool == "avg" else "avgmaxpool"  # avgmax: mean and max of each map, 2C values
    return rows + [
        LayerSpec(pool, pool, "", (F, 1, 1), 0, S, 1, 0),  # global pooling: one window the size of the map
        LayerSpec("flatten", "flatten", "", (F,), 0, 1, 1, 0),
        LayerSpec("dropout", "dropout", "", (F,), 0, 1, 1, 0),  # identity in eval mode
        LayerSpec("head", "linear", "head.3", (n,), F * n + n, 1, 1, 0),
    ]


def feature_map_size(cfg: CNNConfig) -> int:
    """Side of the last conv stage's map (8 at 128 px): the input halved by each max pool."""
    pools = sum(kind == "maxpool" for kind, _role, _args in feature_layers(cfg))
    return cfg.input_size // 2**pools  # floor at each halving is the floor of the whole


def count_macs(cfg: CNNConfig) -> int:
    """Multiply-adds of one forward pass for one photo (convolutions and the linear layer)."""
    size, macs = cfg.input_size, 0
    for kind, _role, args in feature_layers(cfg):
        if kind == "conv":
            k = args["kernel_size"]
            macs += size * size * args["out_channels"] * args["in_channels"] * k * k
        elif kind == "maxpool":
            size //= 2
    return macs + cfg.head_features * cfg.num_classes
