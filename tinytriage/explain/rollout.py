"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

One layer's attention says which tokens each token mixes in, but after the first layer
every token is already a mixture of patches. Rollout follows the mixing through the stack:

    A_l = mean over heads of layer l's attention        (N, T, T), rows sum to 1
    Â_l = (A_l + I) / rowsum(A_l + I)                   the residual keeps the token itself
    R   = Â_L Â_(L-1) ... Â_1                           how much of each input token reaches each output token

Row 0 of R over the patch tokens, reshaped to the patch grid, is the heatmap: how much of
the class token's final state (what the head classifies) came from each patch.
``cls_attention_maps`` gives the raw, un-rolled view: what the class token attends to, per
layer and head. Pure NumPy, on the attention arrays a ViT forward leaves behind
(``VisionTransformer.attention_maps()`` or ``TorchVisionTransformer(..., return_attn=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tinytriage.errors import ShapeError


def _check(attns: Sequence[np.ndarray], grid: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(N, heads, T) of a non-empty list of (N, heads, T, T) attentions with 1 + gh*gw tokens."""
    if len(attns) == 0:
        raise ShapeError("attention rollout needs the attention of at least one layer")
    first = np.shape(attns[0])
    for i, a in enumerate(attns):
        shape = np.shape(a)
        if len(shape) != 4 or shape[2] != shape[3] or shape != first:
            raise ShapeError(
                f"attention rollout: layer {i} has shape {shape}; every layer needs the same "
                f"(N, heads, T, T) shape (layer 0: {first})"
            )
    N, H, T, _ = first
    if grid is not None and T != 1 + grid[0] * grid[1]:
        raise ShapeError(
            f"attention rollout: {T} tokens do not fit a {grid[0]}x{grid[1]} patch grid plus the class token"
        )
    return N, H, T


def rollout(attns: Sequence[np.ndarray]) -> np.ndarray:
    """The rolled-out attention R = Â_L ... Â_1, (N, T, T), from a list of per-layer
    (N, heads, T, T) attentions, first layer first. Rows of R sum to 1."""
    N, _, T = _check(attns)
    R = np.broadcast_to(np.eye(T), (N, T, T))  # before any layer, each token is itself
    for a in attns:
        A = np.asarray(a, dtype=np.float64).mean(axis=1)  # (N, T, T): heads averaged
        A = A + np.eye(T)  # the residual connection carries the token through unchanged
        A /= A.sum(axis=-1, keepdims=True)  # rows sum to 1 again
        R = A @ R  # (N, T, T): this layer mixes what the earlier layers had mixed
    return R


def attention_rollout(attns: Sequence[np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """The class token's row of the rollout over the patches, (N, grid_h, grid_w).

    Values are the share of the class token's final state that flows from each patch
    (they sum to 1 minus the class token's share of itself); scale them for display."""
    N, _, T = _check(attns, grid)
    return rollout(attns)[:, 0, 1:].reshape(N, *grid)


def cls_attention_maps(attns: Sequence[np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """What the class token attends to, per layer and head, over the patch grid:
    (layers, N, heads, grid_h, grid_w). No rollout: layer l's own attention only."""
    N, H, T = _check(attns, grid)
    return np.stack([np.asarray(a)[:, :, 0, 1:].reshape(N, H, *grid) for a in attns])
