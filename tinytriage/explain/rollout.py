"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

One layer's attention says which tokens each token mixes in, but after the first layer
every token is already a mixture of patches. Rollout follows the mixing through the stack:

    A_l = mean over heads of layer l's attention        (N, T, T), rows sum to 1
    Â_l = (A_l + I) / rowsum(A_l + I)                   the residual keeps the token itself
    R   = Â_L Â_(L-1) ... Â_1                           how much of each input token reaches each output token

Row 0 of R over the patch tokens, reshaped to the patch grid, is the heatmap: how much of
the class token's final state (what the head classifies) came from each patch. The
patches come after the prefix tokens: the class token, and in a distilled ViT (DeiT,
Touvron et al. 2021) the distillation token, token 1. How many there are follows from
the token count and the grid (T = prefix + gh*gw), so one call serves both.
``cls_attention_maps`` gives the raw, un-rolled view: what the class token attends to, per
layer and head. Pure NumPy, on the attention arrays a ViT forward leaves behind
(``VisionTransformer.attention_maps()`` or ``TorchVisionTransformer(..., return_attn=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tinytriage.errors import ShapeError

MAX_PREFIX_TOKENS = 2  # the class token and DeiT's distillation token


def _check(attns: Sequence[np.ndarray], grid: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(N, heads, T) of a non-empty list of (N, heads, T, T) attentions with 1 + gh*gw tokens
    (class token) or 2 + gh*gw (class and distillation tokens)."""
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
    if grid is not None and not 1 <= T - grid[0] * grid[1] <= MAX_PREFIX_TOKENS:
        raise ShapeError(
            f"attention rollout: {T} tokens do not fit a {grid[0]}x{grid[1]} patch grid plus the class token "
            f"(and a distillation token)"
        )
    return N, H, T


def num_prefix_tokens(T: int, grid: tuple[int, int]) -> int:
    """Tokens before the patches (1: the class token; 2: and the distillation token), of T
    tokens on a checked grid."""
    return T - grid[0] * grid[1]


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
    (they sum to 1 minus the prefix tokens' share); scale them for display."""
    N, _, T = _check(attns, grid)
    P = num_prefix_tokens(T, grid)
    return rollout(attns)[:, 0, P:].reshape(N, *grid)  # row 0: the class token; patches after the prefix


def cls_attention_maps(attns: Sequence[np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """What the class token attends to, per layer and head, over the patch grid:
    (layers, N, heads, grid_h, grid_w). No rollout: layer l's own attention only."""
    N, H, T = _check(attns, grid)
    P = num_prefix_tokens(T, grid)
    return np.stack([np.asarray(a)[:, :, 0, P:].reshape(N, H, *grid) for a in attns])
