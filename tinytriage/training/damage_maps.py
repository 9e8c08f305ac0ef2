"""Damage maps: teaching the CNN *where* a crack is, not only *that* there is one.

The generator knows where it drew the damage: ``tinytriage samples`` writes a ``NAME.json``
sidecar with the ``damage_bbox`` of every screen_damage photo. ``tinytriage train
--damage-weight W`` uses it for a second task on the last conv stage's map (8 x 8 cells at
128 px, the map global pooling averages): a 1x1 convolution predicts, per cell, how much
of the cell the damage box covers, and binary cross-entropy against those coverages (0
everywhere on every other photo, intact twins included) joins the classification loss:

    f = features(x)                        (N, C, h, w)
    z = conv1x1(f)                         (N, 1, h, w)   one damage logit per cell
    loss = CE(head(f), y) + W * BCE(z, coverage)

so the gradient that reaches the features is the sum of the two tasks' gradients:

    df = head.backward(dCE) + conv1x1.backward(W * dBCE)

Why: the damaged screens the CNN misses have small damage (a median box of ~5% of the
photo, about 3 of 64 cells). One label per photo says only "somewhere in here"; a map of
64 says which cells, on damaged photos and, as importantly, on their intact twins. This
is auxiliary (deep) supervision with location labels, as in Lee et al. 2015 ("Deeply-
Supervised Nets") and the segmentation heads of multi-task detectors.

The 1x1 head trains and is then thrown away: it is not in the model file, and ``predict``
runs exactly the network it ran before. Boxes follow each photo through the cache's
letterbox and augment's affine map (``augment_batch(..., return_maps=True)``), so a crop,
a turn or a mirror moves the target with the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinytriage import nn
from tinytriage.data.datasets import read_damage_box
from tinytriage.data.preprocess import LetterboxGeometry
from tinytriage.nn.module import Module

#: Coverage is measured at SAMPLES x SAMPLES points per cell (16 at the default).
SAMPLES = 4


def boxes_in_cache(paths: Sequence[Path], geometries: Sequence[LetterboxGeometry]) -> np.ndarray:
    """(N, 4) float64 damage boxes (x0, y0, x1, y1) in cached-square pixels; NaN where a
    photo has none (no sidecar, or no damage drawn). Photo pixel i spans [i, i + 1)."""
    boxes = np.full((len(paths), 4), np.nan)
    for i, (path, geom) in enumerate(zip(paths, geometries, strict=True)):
        box = read_damage_box(Path(path))
        if isinstance(box, str):  # why there is none: not a damage photo
            continue
        x0, y0, x1, y1 = box
        u0, v0 = geom.to_model(x0, y0)
        u1, v1 = geom.to_model(x1, y1)
        boxes[i] = (u0, v0, u1, v1)
    return boxes


def cell_coverage(boxes: np.ndarray, maps: np.ndarray | None, out_size: int, grid: int) -> np.ndarray:
    """(N, grid, grid) float32: the share of each cell of the out_size x out_size input
    that lies in the photo's box, measured at SAMPLES^2 points per cell.

    ``boxes``: (N, 4) in source pixels, NaN rows for none. ``maps``: (N, 6) affine maps from
    input points to source points (Pillow's AFFINE coefficients, ``augment_batch``); None:
    the source is the input itself. Points are pixel centres, as Pillow samples them."""
    N = len(boxes)
    n = grid * SAMPLES  # sample points along each side
    t = (np.arange(n) + 0.5) * (out_size / n)  # (n,) their coordinates in input pixels
    x, y = np.meshgrid(t, t)  # (n, n) each: column, row
    if maps is None:
        maps = np.tile(np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), (N, 1))
    a, b, c, d, e, f = (maps[:, k, None, None] for k in range(6))  # (N, 1, 1) each
    sx, sy = a * x + b * y + c, d * x + e * y + f  # (N, n, n): where each point came from
    x0, y0, x1, y1 = (boxes[:, k, None, None] for k in range(4))  # NaN compares False: no box
    inside = (x0 <= sx) & (sx < x1) & (y0 <= sy) & (sy < y1)  # (N, n, n)
    return inside.reshape(N, grid, SAMPLES, grid, SAMPLES).mean(axis=(2, 4), dtype=np.float32)


class DamageMapHead(Module):
    """The training-only task: 1x1 conv on the last stage's map, BCE against coverage, times ``weight``."""

    def __init__(self, channels: int, weight: float, *, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.conv = self.add_module("conv", nn.Conv2d(channels, 1, 1, bias=True, rng=rng))
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, f: np.ndarray, coverage: np.ndarray) -> float:  # type: ignore[override]
        # f: (N, C, h, w) features; coverage: (N, h, w) targets in [0, 1]
        N, _C, h, w = f.shape
        if coverage.shape != (N, h, w):
            raise ValueError(f"damage coverage {coverage.shape} does not fit the feature map {(N, h, w)}")
        z = self.conv(f)  # (N, 1, h, w): one logit per cell
        return float(self.loss_fn.forward(z, coverage[:, None].astype(f.dtype)))  # unweighted, for the log

    def backward(self, grad_out: float = 1.0) -> np.ndarray:  # type: ignore[override]
        dz, _ = self.loss_fn.backward(self.weight * grad_out)  # (N, 1, h, w)
        return self.conv.backward(dz)  # (N, C, h, w): this task's share of df


def damage_head_for(model: Module, weight: float, seed: int = 0) -> DamageMapHead:
    """The head for a conv net's last stage (its channels and float type), seeded by ``seed``."""
    rng = np.random.default_rng([seed, 1])
    dtype = model.features[0].params["weight"].dtype  # the first conv's: the model's float type
    *_, last_bn = (m for m in model.features if isinstance(m, nn.BatchNorm2d))  # the last stage's BatchNorm
    return DamageMapHead(last_bn.num_features, weight, rng=rng).astype(dtype)
