"""What a fast convolution does to each chunk of its output while it is still in cache:
add the bias, then clip (ReLU, or ReLU6 with ``cap`` = 6, for fused inference)."""

from __future__ import annotations

import numpy as np


def bias_and_activation(out: np.ndarray, bias: np.ndarray | None, relu: bool, cap: float | None) -> None:
    """In place: ``out += bias`` (broadcast over the rows), then max(., 0) and/or min(., cap)."""
    if bias is not None:
        out += bias
    if relu and cap is not None:
        np.clip(out, 0, cap, out=out)  # ReLU6 in one pass, several times faster than max then min
    elif relu:
        np.maximum(out, 0, out=out)
    elif cap is not None:
        np.minimum(out, cap, out=out)
