"""`tinytriage explain --demo`: a CNN's steps on a 4x4 patch, computed by the library.

Every number here comes from `tinytriage.nn` (the literal sliding-window convolution and
pooling loops that the training code is tested against), so the worked example cannot
drift from the code. With PyTorch installed the same numbers are recomputed by
``torch.nn.functional`` side by side (see ``torch_side``).

The patch is from a support-ticket screenshot: low values are background paper, the bright
line in row 1 is the kind of line a crack or a printed form row makes. The kernel is a
horizontal-line detector: it rewards a bright middle row between darker rows, and
penalises a bright top or bottom row, so the window one row lower (the line at its top)
comes out negative and ReLU has something to clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinytriage.explain.receptive import receptive_fields
from tinytriage.nn.conv import conv2d_cell, conv2d_reference, conv_output_size
from tinytriage.nn.pool import maxpool2d_reference

PATCH = np.array(
    [
        [0.05, 0.08, 0.06, 0.07],
        [0.12, 0.92, 0.88, 0.09],
        [0.08, 0.10, 0.11, 0.07],
        [0.06, 0.07, 0.09, 0.05],
    ]
)
PAPER = np.array([0.06, 0.07, 0.05, 0.06])  # a row of background paper: what moves in when the line moves down
KERNEL = np.array([[-0.6, -0.6, -0.6], [1.1, 1.1, 1.1], [-0.6, -0.6, -0.6]])
BIAS = 0.0
CLASSIFIER_W = np.array([[1.5], [-1.2]])  # (classes, features): damage, clean
CLASSIFIER_B = np.array([0.1, -0.3])
CLASS_NAMES = ("damage", "clean")
POOL_MAP = np.array([[2.1, 0.4, 1.8, 0.9], [1.5, 3.2, 0.7, 2.4], [0.8, 1.1, 4.0, 0.3], [2.6, 0.5, 1.2, 3.1]])


@dataclass
class DemoResult:
    patch: np.ndarray
    kernel: np.ndarray
    bias: float
    cells: list[dict[str, Any]]  # per output cell: row, col, window, products, sum, out
    feature_map: np.ndarray  # (2, 2) before ReLU
    relu: np.ndarray
    pooled: float
    pool_winner: tuple[int, int]  # (row, col) in the feature map
    logits: np.ndarray
    probs: np.ndarray
    shifted_patch: np.ndarray
    shifted_map: np.ndarray
    shifted_pooled: float
    pool_example: dict[str, Any]
    output_size: list[dict[str, Any]]
    receptive_field: list[dict[str, Any]]  # two 3x3 convolutions stacked directly
    receptive_field_pooled: list[dict[str, Any]]  # ... with a 2x2 max pool between them, as in the triage CNN
    param_counts: dict[str, Any]
    torch: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _conv_relu_pool(patch: np.ndarray):
    x = patch[None, None]  # (N=1, C=1, H=4, W=4)
    w = KERNEL[None, None]  # (out=1, in=1, 3, 3)
    fmap = conv2d_reference(x, w, np.array([BIAS]), stride=1, padding=0)[0, 0]  # (2, 2)
    relu = np.maximum(fmap, 0.0)
    pooled, winners = maxpool2d_reference(relu[None, None], kernel_size=2, stride=2)
    return fmap, relu, float(pooled[0, 0, 0, 0]), tuple(int(v) for v in winners[0, 0, 0, 0])


def shift_down(patch: np.ndarray) -> np.ndarray:
    """The patch one pixel lower: background paper enters at the top, the bottom row leaves
    (nothing wraps round from the bottom to the top)."""
    return np.vstack([PAPER[None], patch[:-1]])


def linear_param_count(in_features: int, out_features: int) -> int:
    """weights in*out plus one bias per output."""
    return in_features * out_features + out_features


def conv_param_count(in_channels: int, out_channels: int, k: int) -> int:
    """one k x k x in_channels kernel plus one bias per output channel, shared over positions."""
    return out_channels * in_channels * k * k + out_channels


def run_demo(with_torch: bool | None = None) -> DemoResult:
    """Compute the worked example; ``with_torch=None`` adds PyTorch's numbers if installed."""
    x = PATCH[None, None]
    w = KERNEL[None, None]
    cells = []
    for i in range(2):
        for j in range(2):
            c = conv2d_cell(x, w, np.array([BIAS]), n=0, oc=0, row=i, col=j, stride=1, padding=0)
            cells.append(
                {"row": i, "col": j, **{k: v[0] if k in ("window", "kernel", "products") else v for k, v in c.items()}}
            )
    fmap, relu, pooled, winner = _conv_relu_pool(PATCH)
    logits = CLASSIFIER_W[:, 0] * pooled + CLASSIFIER_B  # Linear(1 -> 2): W @ [pooled] + b
    probs = _softmax(logits)

    shifted = shift_down(PATCH)  # the line moves down one pixel, to row 2
    s_map, _s_relu, s_pooled, _ = _conv_relu_pool(shifted)

    pool_out, pool_win = maxpool2d_reference(POOL_MAP[None, None], kernel_size=2, stride=2)
    pool_example = {
        "input": POOL_MAP,
        "output": pool_out[0, 0],
        "winners": [[list(map(int, pool_win[0, 0, i, j])) for j in range(2)] for i in range(2)],
        "output_size": conv_output_size(4, 2, 2, 0),
    }
    output_size = [
        {"what": "3x3 conv on the 4x4 patch", "H": 4, "K": 3, "P": 0, "S": 1, "out": conv_output_size(4, 3, 1, 0)},
        {
            "what": "2x2 max pool, stride 2, on the 2x2 map",
            "H": 2,
            "K": 2,
            "P": 0,
            "S": 2,
            "out": conv_output_size(2, 2, 2, 0),
        },
        {
            "what": "2x2 max pool, stride 2, on the 4x4 map",
            "H": 4,
            "K": 2,
            "P": 0,
            "S": 2,
            "out": conv_output_size(4, 2, 2, 0),
        },
        {
            "what": "3x3 conv, padding 1, stride 2, on a 224 photo",
            "H": 224,
            "K": 3,
            "P": 1,
            "S": 2,
            "out": conv_output_size(224, 3, 2, 1),
        },
    ]
    rf = [r.__dict__ for r in receptive_fields([("conv1 3x3", 3, 1), ("conv2 3x3", 3, 1)])]
    rf_pooled = [r.__dict__ for r in receptive_fields([("conv1 3x3", 3, 1), ("pool1 2x2", 2, 2), ("conv2 3x3", 3, 1)])]
    dense = linear_param_count(224 * 224 * 3, 256)
    conv = conv_param_count(3, 256, 3)
    params = {"dense_256_on_224x224x3": dense, "conv3x3_256_filters_on_rgb": conv, "ratio": dense / conv}

    result = DemoResult(
        PATCH, KERNEL, BIAS, cells, fmap, relu, pooled, winner, logits, probs,
        shifted, s_map, s_pooled, pool_example, output_size, rf, rf_pooled, params,
    )  # fmt: skip
    if with_torch is None:
        from tinytriage.engines import torch_available

        with_torch = torch_available()
    if with_torch:
        result.torch = torch_side()
    return result


def torch_side() -> dict[str, Any]:
    """The same numbers from PyTorch (float64), to show they agree."""
    import torch
    import torch.nn.functional as F

    x = torch.tensor(PATCH)[None, None]
    w = torch.tensor(KERNEL)[None, None]
    fmap = F.conv2d(x, w, torch.tensor([BIAS], dtype=torch.float64))
    relu = F.relu(fmap)
    pooled = F.max_pool2d(relu, 2, 2)
    logits = F.linear(pooled.flatten(1), torch.tensor(CLASSIFIER_W), torch.tensor(CLASSIFIER_B))[0]
    shifted = F.max_pool2d(F.relu(F.conv2d(torch.tensor(shift_down(PATCH))[None, None], w)), 2, 2)
    return {
        "version": torch.__version__,
        "feature_map": fmap[0, 0].numpy(),
        "pooled": float(pooled),
        "logits": logits.numpy(),
        "probs": torch.softmax(logits, 0).numpy(),
        "shifted_pooled": float(shifted),
        "pool_example": F.max_pool2d(torch.tensor(POOL_MAP)[None, None], 2, 2)[0, 0].numpy(),
    }
