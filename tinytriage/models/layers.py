"""A model's layers as data: one row per layer, for ``explain``'s summary and receptive fields.

Each conv net of the architecture table (``tinytriage.models.ARCHS``) gives its rows with
``layer_table(cfg)``: first ``features`` (named as ``layer_names`` names them), then the
head. Receptive fields follow from ``kernel`` and ``stride`` alone (Araujo et al. 2019:
r += (k - 1) * jump, jump *= s), and the window one cell reads from ``padding`` too.
"""

from __future__ import annotations

from typing import NamedTuple


class LayerSpec(NamedTuple):
    """One layer of a model, computed from its config alone."""

    name: str  # conv1, blocks.1.0, avgpool, ...: the engines' name for it (``layer_names``) or the head's
    kind: str  # conv, bn, relu, relu6, maxpool, ds / ir (a mobile block), avgpool, flatten, dropout, linear, prior
    tensors: str  # prefix of its tensors in the model file ("features.0", "blocks.1.0"); "" if it has none
    output_shape: tuple[int, ...]  # for one photo: (C, H, W) or (features,)
    params: int  # trainable parameters (BatchNorm's running statistics are not trained)
    kernel: int  # k: cells of its input one output cell reads along each axis (a block: its depthwise kernel)
    stride: int  # s: input cells between neighbouring output cells
    padding: int  # zero rows (and columns) before the input, at the top (left): window 0 starts at -padding
