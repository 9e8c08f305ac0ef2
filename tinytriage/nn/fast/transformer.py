"""Inference for the Transformer blocks (``tinytriage.nn.transformer``): the same functions,
faster, for ``fuse_for_inference``.

Three things make the textbook blocks slow at inference, and each has its fix here:

* **One core.** NumPy runs each elementwise operation (GELU, softmax, LayerNorm: most of a
  small block's time) on one core, and only the matrix multiplies use BLAS's threads.
  ``FastBlocks`` cuts the batch into groups of photos and runs every block on each group
  in its own thread (``tinytriage.nn.fast.parallel``), BLAS single-threaded inside, as the
  CNN's fast convolutions do. Photos never mix in a Transformer block, so the groups are
  independent and the result does not depend on the cut.
* **GELU's erf.** ``tinytriage.nn.transformer.erf`` is Cody's piecewise rational function,
  exact to double precision, and costs about twenty passes over the MLP's hidden
  activations with two ``exp``. In float32 one rational function on the clipped input,
  erf(x) ~ x P(x^2) / Q(x^2) on [-4, 4] (the minimax fit Eigen and XLA use for float32),
  is within 5e-7 of erf: below float32's own rounding of GELU's output, at about a third
  of the work and in place. Float64 (the parity tests) keeps Cody's.
* **Caches and copies.** Training keeps every intermediate for backward; here nothing is
  kept, biases are added in place and the softmax is computed in place in its scores.
"""

from __future__ import annotations

import numpy as np

from tinytriage.nn.fast.parallel import TASK_BYTES, parallel_map, split
from tinytriage.nn.linear import Linear
from tinytriage.nn.module import Module, Sequential
from tinytriage.nn.transformer import Attention, Block, LayerNorm, Mlp, erf

# erf(x) ~ x P(x^2) / Q(x^2) for |x| <= 4 (beyond, erf(x) = +-1 to float32), lowest power first
_ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
          -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10)  # fmt: skip
_ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, -2.13374055278905e-04,
          -1.45660718464996e-05)  # fmt: skip
_SQRT_HALF = float(np.sqrt(0.5))


def erf32(x: np.ndarray) -> np.ndarray:
    """erf of a float32 array, within 5e-7 (tested against ``math.erf``); other dtypes get
    the exact ``tinytriage.nn.transformer.erf``."""
    if x.dtype != np.float32:
        return erf(x)
    x = np.clip(x, -4.0, 4.0)  # a new array: the caller's stays as it was
    x2 = x * x
    p = np.full_like(x, _ERF_P[-1])
    for c in _ERF_P[-2::-1]:  # Horner's rule, highest power first
        p *= x2
        p += np.float32(c)
    p *= x
    q = np.full_like(x, _ERF_Q[-1])
    for c in _ERF_Q[-2::-1]:
        q *= x2
        q += np.float32(c)
    p /= q
    return p


def gelu_(h: np.ndarray) -> np.ndarray:
    """GELU in place: h <- h Phi(h), Phi(h) = (1 + erf(h / sqrt 2)) / 2."""
    cdf = erf32(h * np.asarray(_SQRT_HALF, h.dtype))
    cdf += 1
    cdf *= 0.5
    h *= cdf
    return h


def layer_norm(x: np.ndarray, ln: LayerNorm) -> np.ndarray:
    """``ln(x)`` over the last axis (N, T, D), without keeping anything for backward."""
    xc = x - x.mean(axis=-1, keepdims=True)
    var = np.einsum("...d,...d->...", xc, xc)[..., None] / x.shape[-1]  # (N, T, 1), biased as PyTorch
    var += ln.eps
    xc *= 1 / np.sqrt(var)
    xc *= ln.params["weight"]
    xc += ln.params["bias"]
    return xc


def linear(x: np.ndarray, layer: Linear) -> np.ndarray:
    """``layer(x)``, its bias added in place."""
    out = x @ layer.params["weight"].T  # (..., in) @ (in, out)
    if "bias" in layer.params:
        out += layer.params["bias"]
    return out


def attention(x: np.ndarray, attn: Attention) -> np.ndarray:
    """``attn(x)`` for (N, T, D) tokens: softmax(q k^T / sqrt(hd)) v per head, then ``proj``."""
    N, T, D = x.shape
    H, hd = attn.num_heads, attn.head_dim
    qkv = linear(x, attn.qkv).reshape(N, T, 3, H, hd).transpose(2, 0, 3, 1, 4)  # (3, N, H, T, hd)
    q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]  # each (N, H, T, hd)
    scores = q @ k.swapaxes(-1, -2)  # (N, H, T, T)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)  # the attention probabilities, in place
    out = (scores @ v).transpose(0, 2, 1, 3).reshape(N, T, D)  # heads side by side
    return linear(out, attn.proj)


def mlp(x: np.ndarray, m: Mlp) -> np.ndarray:
    return linear(gelu_(linear(x, m.fc1)), m.fc2)  # (N, T, D) -> (N, T, hidden) -> (N, T, D)


def block(x: np.ndarray, b: Block) -> np.ndarray:
    x = x + attention(layer_norm(x, b.norm1), b.attn)
    x += mlp(layer_norm(x, b.norm2), b.mlp)
    return x


class FastBlocks(Module):
    """A Sequential of ``Block``s for inference: groups of photos through every block, one
    group per task on the threads. Shares the blocks' weights; no backward."""

    def __init__(self, blocks: Sequential) -> None:
        super().__init__()
        self.blocks = list(blocks)  # not registered: the weights are the model's own
        self.training = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        N, T, D = x.shape
        b = self.blocks[0]
        hidden, H = b.mlp.fc1.out_features, b.attn.num_heads
        per_photo = T * (3 * D + hidden + H * T) * x.itemsize  # qkv, the MLP's hidden layer, the scores
        tasks = split(N, per_photo, TASK_BYTES // 4)  # a group's working set stays in cache

        def run(rows: slice) -> np.ndarray:
            h = x[rows]
            for blk in self.blocks:
                h = block(h, blk)
            return h

        return np.concatenate(parallel_map(run, tasks, blas=True))

    def extra_repr(self) -> str:
        return f"{len(self.blocks)} blocks, in groups of photos over the threads"
