"""The models, and the one table where architectures differ.

``ARCHS`` maps an architecture's name (the ``arch`` a model file records, ``--arch``) to
everything the rest of tinytriage needs to know about it: its config dataclass, how to
build it in each engine, which config field is the input size, how to count its
multiply-adds, and what ``explain`` shows for it. Nothing else in the package branches
on an architecture's name.

Adding an architecture is one model module with its NumPy and PyTorch twins (same
parameter names, so one model file runs in both engines: see ``cnn.py`` and
``torch_cnn.py``) plus one entry below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinytriage.errors import TinyTriageError
from tinytriage.models import cnn, efficientnet, vit
from tinytriage.models.layers import LayerSpec


@dataclass(frozen=True)
class Architecture:
    """One row of the table."""

    name: str
    config: type  # the config dataclass: from_dict / to_dict, a comment on every field
    build: Callable[[Any, Any], Any]  # (config, rng) -> the NumPy model (tinytriage.nn.Module)
    torch_twin: str  # "module:function" building the PyTorch twin from the config (imported only when asked)
    input_size_field: str  # the config field that is the square input side in pixels
    count_macs: Callable[[Any], int]  # multiply-adds of one forward pass, one photo
    heatmap: str  # what explain shows: "grad-cam" (conv features) or "attention rollout"
    train_defaults: dict[str, Any] = field(default_factory=dict)  # what it trains well with (``train`` options)
    finetune_free: tuple[str, ...] = ()  # config fields that may differ from the weights' (``train --init``)
    pretrained: str | None = None  # bundled weights (models/) that ``train`` fine-tunes from by default
    layer_names: Callable[[Any], list[str]] | None = None  # names of ``model.features`` (conv nets)
    # every layer as data, ``features`` first (models.layers.LayerSpec): explain's summary,
    # receptive fields and the window a cell reads (conv nets)
    layer_table: Callable[[Any], list[LayerSpec]] | None = None
    features_module: str | None = None  # the submodule whose output is the last spatial map (conv nets)
    # what explain computes by hand: "conv block" (one cell of conv -> BatchNorm -> ReLU, then
    # the max pool it falls in) or "mobile block" (one cell of a block's depthwise conv ->
    # BatchNorm -> ReLU6, then one of its pointwise conv -> BatchNorm); None: nothing (ViT)
    hand_cell: str | None = None
    explain_layer: str | None = None  # explain's default --layer: an early one, whose maps still look like the photo
    dropout_field: str | None = None  # the config field holding the dropout rate (``compare`` sets it to 0); None: none

    def from_dict(self, config: dict) -> Any:
        return self.config.from_dict(config)

    def full_config(self, config: dict) -> dict:
        """``config`` with every field: a file written before a field existed reads as its default."""
        return self.from_dict(config).to_dict()

    @property
    def default_input_size(self) -> int:
        return getattr(self.config, self.input_size_field)

    def config_for(self, overrides: dict, num_classes: int, input_size: int) -> dict:
        """The full config dict for a training run: the defaults, ``overrides``, the classes and input size."""
        return self.full_config({**overrides, "num_classes": num_classes, self.input_size_field: input_size})

    def input_size(self, config: dict) -> int:
        return int(self.full_config(config)[self.input_size_field])

    def numpy_model(self, config: dict, seed: int = 0, init: bool = True):
        """The NumPy model, weights drawn from ``seed``; ``init=False``: all zeros, for
        weights about to be loaded (``nn.NoInit``, so no random numbers are drawn)."""
        from tinytriage import nn

        rng = np.random.default_rng(seed) if init else nn.NoInit(seed)
        return self.build(self.from_dict(config), rng)

    def torch_model(self, config: dict):
        """The PyTorch twin (imports torch)."""
        module, _, fn = self.torch_twin.partition(":")
        return getattr(importlib.import_module(module), fn)(self.from_dict(config))

    def feature_map_shape(self, config: dict) -> tuple[int, ...]:
        """(C, h, w) of the last spatial map, the output of ``features`` (conv nets)."""
        cfg = self.from_dict(config)
        return self.layer_table(cfg)[len(self.layer_names(cfg)) - 1].output_shape

    def expected_tensors(self, config: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Name -> (shape, dtype) a model file of this config must hold."""
        model = self.numpy_model(config, init=False)
        return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


ARCHS: dict[str, Architecture] = {
    "cnn": Architecture(
        name="cnn",
        config=cnn.CNNConfig,
        build=lambda cfg, rng: cnn.TriageCNN(cfg, rng=rng),
        torch_twin="tinytriage.models.torch_cnn:TorchTriageCNN",
        input_size_field="input_size",
        count_macs=cnn.count_macs,
        heatmap="grad-cam",
        # SGD with Nesterov momentum at a high rate, which BatchNorm makes safe
        train_defaults={"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "warmup_epochs": 0.5},
        # every CNN weight is a conv kernel, a BatchNorm channel or the linear layer after global
        # pooling, none tied to the photo's size; the head's pooling may change too (its linear
        # layer's columns are carried over: training.loop.convert_head_weight)
        finetune_free=("pool", "input_size"),
        layer_names=cnn.layer_names,
        layer_table=cnn.layer_table,
        features_module="features",
        # relu1 keeps the input's resolution and its 3x3x3 kernels read the photo itself:
        # its maps still look like the photo, and its cell takes 27 products by hand
        hand_cell="conv block",
        explain_layer="relu1",
        dropout_field="dropout",
    ),
    "vit": Architecture(
        name="vit",
        config=vit.ViTConfig,
        build=lambda cfg, rng: vit.build_vit(cfg, rng=rng),
        torch_twin="tinytriage.models.torch_vit:TorchVisionTransformer",
        input_size_field="img_size",
        count_macs=vit.count_macs,
        heatmap="attention rollout",
        # AdamW with weight decay 0.05 and a warm-up (DeiT's recipe, Touvron et al. 2021): Adam's
        # per-parameter step sizes suit attention, whose gradients differ in scale from layer to
        # layer (Zhang et al. 2020). Measured on 60 generated photos per class, 48 px, 240 steps
        # of 64: AdamW 1e-3 reached 0.28 test accuracy, AdamW 3e-4 and 3e-3 0.22-0.24, SGD 0.05
        # 0.22 (chance 0.2).
        train_defaults={"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1.0},
        # the position embedding is tied to the input size: only the config's pool-free rest must match
        finetune_free=("pool",),
    ),
    "efficientnet_lite0": Architecture(
        name="efficientnet_lite0",
        config=efficientnet.EfficientNetConfig,
        build=lambda cfg, rng: efficientnet.EfficientNet(cfg, rng=rng),
        torch_twin="tinytriage.models.torch_efficientnet:TorchEfficientNet",
        input_size_field="input_size",
        count_macs=efficientnet.count_macs,
        heatmap="grad-cam",
        # fine-tuning a pretrained backbone: AdamW (per-parameter steps suit the mix of
        # depthwise, pointwise and BatchNorm weights), a short warm-up
        train_defaults={"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "warmup_epochs": 1.0},
        # every weight is a convolution, a BatchNorm channel or the classifier after global
        # pooling: none is tied to the photo's size
        finetune_free=("input_size",),
        pretrained="efficientnet_lite0_imagenet.safetensors",  # ImageNet (models/NOTICE.md)
        layer_names=efficientnet.layer_names,
        layer_table=efficientnet.layer_table,
        features_module="features",
        # act1, the stem's output at half the input's resolution, still looks like the photo,
        # and the first block's depthwise kernels read it directly
        hand_cell="mobile block",
        explain_layer="act1",
        dropout_field="drop_rate",
    ),
}


def get_arch(name: str) -> Architecture:
    """The table's row for ``name``, or a clear error naming the known ones."""
    try:
        return ARCHS[name]
    except KeyError:
        raise TinyTriageError(f"unknown architecture {name!r} (known: {', '.join(ARCHS)})") from None


__all__ = ["ARCHS", "Architecture", "get_arch"]
