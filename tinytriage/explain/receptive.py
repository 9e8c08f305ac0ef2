"""Receptive fields: how many input pixels one cell of a layer can see.

For a stack of layers with kernel k_l and stride s_l (Araujo et al., 2019, "Computing
Receptive Fields of Convolutional Neural Networks"):

    jump_l = jump_{l-1} * s_l                    (distance in input pixels between cells)
    r_l    = r_{l-1} + (k_l - 1) * jump_{l-1}    (r_0 = 1, jump_0 = 1)

So two stacked 3x3 convolutions with stride 1 see 1 + 2 + 2 = 5 pixels, and a 2x2 pool
with stride 2 doubles how much every later kernel step covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class RFRow:
    name: str
    kernel: int
    stride: int
    receptive_field: int  # r: side of the input window one cell sees, in pixels
    jump: int  # product of all strides so far: input pixels between neighbouring cells


def receptive_fields(layers: Sequence[tuple[str, int, int]]) -> list[RFRow]:
    """Rows for (name, kernel, stride) layers; dilation folds into the kernel as d*(k-1)+1."""
    r, jump, rows = 1, 1, []
    for name, k, s in layers:
        r = r + (k - 1) * jump
        jump = jump * s
        rows.append(RFRow(name, k, s, r, jump))
    return rows
