"""The Vision Transformer and its layers, each forward pass followed by its backward.

Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words": cut the image into P x P
patches, embed each patch linearly as a token, prepend a learned class token, add
learned position embeddings, run a stack of Transformer encoder blocks (Vaswani et al.
2017, "Attention Is All You Need", with each norm moved before its sub-layer) and
classify from the class token. Bottom-up, as in nanoGPT's model.py:

    erf -> GELU, LayerNorm -> Attention, Mlp -> Block -> PatchEmbed, ConvNormAct -> ConvPatchEmbed
        -> VisionTransformer

Two variations, each off by default:

* Early convolutions (Xiao et al. 2021, "Early Convolutions Help Transformers See
  Better"): ``ConvPatchEmbed`` replaces the one P x P patchify convolution by a few 3x3
  stride-2 convolutions with BatchNorm and ReLU, then a 1x1 projection; the tokens are
  the same P x P cells, seen through a gentler, overlapping stem.
* A distillation token (Touvron et al. 2021, DeiT, "Training data-efficient image
  transformers & distillation through attention"): a second learned token beside the
  class token, with its own head, trained on a teacher's labels. In training the model
  gives both heads' logits; at inference their softmaxes averaged.

Class names, arguments and parameter keys follow PyTorch and timm's VisionTransformer
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.0.attn.qkv``, ``norm``,
``head``; ``dist_token`` and ``head_dist`` of timm's ``VisionTransformerDistilled``), so
weights move by name between this file, ``tinytriage.models.torch_vit`` and any
timm-structured PyTorch model. Shapes: N images, T tokens, D = embed_dim features,
H heads of hd = D / H features each, K classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.activation import ReLU
from tinytriage.nn.conv import Conv2d, pair
from tinytriage.nn.linear import Linear
from tinytriage.nn.module import Module, Sequential, check_ndim
from tinytriage.nn.norm import BatchNorm2d
from tinytriage.nn.pool import MaxPool2d

# -- erf, to double precision and vectorised -------------------------------------------------
# GELU needs the error function on every hidden activation, and the float64 parity tests
# need it as exact as libm's erf (what torch uses). The usual shortcuts fall short:
# Abramowitz & Stegun 7.1.26 is off by up to 1.5e-7, and math.erf through np.frompyfunc
# is exact but one Python call per element (2.4x slower than this in float64, 6x in
# float32, on a ViT's 1.6 M hidden activations). W. J. Cody's rational Chebyshev
# approximations ("Rational Chebyshev approximations for the error function", Math. Comp.
# 23, 1969; Netlib SPECFUN's CALERF) are accurate to about 1e-18 on three intervals:
#
#     |x| <= 0.46875         erf(x)  = x A(x^2) / B(x^2)
#     0.46875 < |x| <= 4     erfc(y) = exp(-y^2) C(y) / D(y)                    y = |x|
#     |x| > 4                erfc(y) = exp(-y^2) / y (1/sqrt(pi) - z P(z) / Q(z))   z = 1/y^2
#
# and erf(x) = sign(x) (1 - erfc(|x|)). Evaluated with NumPy this is within 3 ulp of
# libm's erf in float64 (tested), and in float32 it runs in float32 (error ~2e-7).
# Cody's coefficients, highest power first (for _polyval); the denominators are monic.
# fmt: off
_A = (1.85777706184603153e-1, 3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03)
_B = (1.0, 2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_C = (2.15311535474403846e-8, 5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03, 2.05107837782607147e03,
      1.23033935479799725e03)
_D = (1.0, 1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02, 1.62138957456669019e03,
      3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03, 1.23033935480374942e03)
_P = (1.63153871373020978e-2, 3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4)
_Q = (1.0, 2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1, 6.05183413124413191e-2,
      2.33520497626869185e-3)
# fmt: on
_INV_SQRT_PI = 5.6418958354775628695e-1  # 1 / sqrt(pi)
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _polyval(coefs: tuple[float, ...], t: np.ndarray) -> np.ndarray:
    """c0 t^n + c1 t^(n-1) + ... + cn by Horner's rule, in place on one new array."""
    out = np.full_like(t, coefs[0])
    for c in coefs[1:]:
        out *= t
        out += c
    return out


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in ``x``'s float dtype (Cody 1969; see above)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    y = np.abs(x)
    # small |x|: the odd series, on y clipped into its interval (used only where y is small)
    z = np.minimum(y, 0.46875)
    z *= z
    small = x * _polyval(_A, z) / _polyval(_B, z)
    # larger |x|: erfc(y) = exp(-y^2) R(y), R = C/D up to 4, the asymptotic form beyond
    t = np.clip(y, 0.46875, 4.0)
    r = _polyval(_C, t)
    r /= _polyval(_D, t)
    tail = np.flatnonzero(y > 4.0)  # rare: there erf(x) = sign(x) within 1.6e-8
    if tail.size:
        yt = np.minimum(y.flat[tail], 26.6)  # erfc(26.6) ~ 1e-309 is 0 next to 1; inf stays finite
        z = 1 / (yt * yt)
        r.flat[tail] = (_INV_SQRT_PI - z * _polyval(_P, z) / _polyval(_Q, z)) / yt
        t.flat[tail] = yt
    # exp(-y^2) without rounding y^2 first: y = a + d with a = trunc(16 y) / 16, so a^2 is
    # exact and exp(-y^2) = exp(-a^2) exp(-(y - a)(y + a)) (Cody's trick; exp magnifies errors)
    a = np.trunc(16 * t) / 16
    r *= np.exp(-a * a)
    r *= np.exp(-(t - a) * (t + a))  # r is now erfc(y)
    large = np.copysign(1 - r, x)
    return np.where(y <= 0.46875, small, large)  # NaN falls through to `large` and stays NaN


# -- GELU and LayerNorm -----------------------------------------------------------------------
class GELU(Module):
    """``torch.nn.GELU()``: x Phi(x), Phi the standard normal CDF (Hendrycks & Gimpel 2016),
    in its exact erf form (PyTorch's default, not the tanh approximation)."""

    def __init__(self) -> None:
        super().__init__()
        self._x: np.ndarray | None = None
        self._cdf: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        self._cdf = 0.5 * (1 + erf(x * _SQRT_HALF))  # Phi(x) = (1 + erf(x / sqrt 2)) / 2
        return x * self._cdf

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        x = self._x
        pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI  # phi(x), the normal density
        return grad_out * (self._cdf + x * pdf)  # d/dx x Phi(x) = Phi(x) + x phi(x)


class LayerNorm(Module):
    """``torch.nn.LayerNorm(normalized_shape, eps)`` (Ba et al. 2016): normalise each token
    over its last axes, then scale and shift: y = (x - mean) / sqrt(var + eps) * weight + bias."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, dtype: type = np.float32) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        self.normalized_shape = tuple(int(s) for s in shape)
        self.eps = eps
        self._params["weight"] = np.ones(self.normalized_shape, dtype=dtype)
        self._params["bias"] = np.zeros(self.normalized_shape, dtype=dtype)
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        k = len(self.normalized_shape)
        if x.shape[x.ndim - k :] != self.normalized_shape:
            raise ShapeError(f"LayerNorm: expected (..., {self.normalized_shape}) input, got shape {tuple(x.shape)}")
        axes = tuple(range(x.ndim - k, x.ndim))  # the normalised axes, e.g. D of (N, T, D)
        xc = x - x.mean(axis=axes, keepdims=True)
        var = (xc * xc).mean(axis=axes, keepdims=True)  # biased variance, as PyTorch
        rstd = 1 / np.sqrt(var + self.eps)  # (N, T, 1)
        xhat = xc * rstd  # zero mean, unit variance per token
        self._cache = (xhat, rstd, axes)
        return xhat * self._params["weight"] + self._params["bias"]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        xhat, rstd, axes = self._cache
        shared = tuple(range(grad_out.ndim - len(axes)))  # axes that share weight and bias
        self._grads = {"weight": (grad_out * xhat).sum(axis=shared), "bias": grad_out.sum(axis=shared)}
        dxhat = grad_out * self._params["weight"]
        # xhat = (x - mean) rstd, and mean and rstd depend on every x of the token, hence
        # dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
        mean_d = dxhat.mean(axis=axes, keepdims=True)
        mean_dx = (dxhat * xhat).mean(axis=axes, keepdims=True)
        return rstd * (dxhat - mean_d - xhat * mean_dx)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


# -- attention and the MLP -------------------------------------------------------------------
class Attention(Module):
    """Multi-head self-attention (Vaswani et al. 2017, sec. 3.2.2) in timm's layout: one
    ``qkv`` Linear makes queries, keys and values for every head, each head computes
    softmax(q k^T / sqrt(hd)) v, the heads are concatenated and ``proj`` mixes them.

    ``self.attn`` keeps the last forward's attention probabilities, (N, heads, T, T), row
    t over the keys s that token t attends to: what attention rollout and ``explain`` read."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ShapeError(f"Attention: dim={dim} must be a multiple of num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5  # keeps q.k of unit-variance vectors at unit variance
        self.qkv = self.add_module("qkv", Linear(dim, 3 * dim, bias=qkv_bias, dtype=dtype, rng=rng))
        self.proj = self.add_module("proj", Linear(dim, dim, dtype=dtype, rng=rng))
        self.attn: np.ndarray | None = None
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_ndim(x, 3, "Attention", "(N, T, D) token")
        N, T, D = x.shape
        H, hd = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(N, T, 3, H, hd).transpose(2, 0, 3, 1, 4)  # (3, N, H, T, hd)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # each (N, H, T, hd)
        scores = q @ k.swapaxes(-1, -2)  # (N, H, T, T): query t . key s
        scores -= scores.max(axis=-1, keepdims=True)  # softmax ignores a shift; exp can't overflow
        attn = np.exp(scores)
        attn /= attn.sum(axis=-1, keepdims=True)  # softmax over the keys: rows sum to 1
        out = attn @ v  # (N, H, T, hd): each token's weighted average of the values
        out = out.transpose(0, 2, 1, 3).reshape(N, T, D)  # (N, T, H*hd): heads side by side
        self.attn, self._cache = attn, (q, k, v)
        return self.proj(out)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        q, k, v = self._cache  # q already scaled
        attn = self.attn
        N, H, T, hd = q.shape
        dout = self.proj.backward(grad_out)  # (N, T, D)
        dout = dout.reshape(N, T, H, hd).transpose(0, 2, 1, 3)  # (N, H, T, hd)
        # out = attn @ v
        dattn = dout @ v.swapaxes(-1, -2)  # (N, H, T, T)
        dv = attn.swapaxes(-1, -2) @ dout  # (N, H, T, hd)
        # attn = softmax(scores) row by row: dscores = attn (dattn - sum_s attn dattn)
        dscores = attn * (dattn - (attn * dattn).sum(axis=-1, keepdims=True))  # (N, H, T, T)
        # scores = (scale q) k^T
        dq = (dscores @ k) * self.scale  # (N, H, T, hd)
        dk = dscores.swapaxes(-1, -2) @ q  # (N, H, T, hd)
        dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4)  # (N, T, 3, H, hd), undoing forward
        return self.qkv.backward(dqkv.reshape(N, T, 3 * H * hd))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"


class Mlp(Module):
    """timm's ``Mlp(in_features, hidden_features)``: fc1, GELU, fc2, applied to every token
    on its own (the position-wise feed-forward network of Vaswani et al. 2017, sec. 3.3)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = self.add_module("fc1", Linear(in_features, hidden_features, dtype=dtype, rng=rng))
        self.act = self.add_module("act", GELU())
        self.fc2 = self.add_module("fc2", Linear(hidden_features, out_features, dtype=dtype, rng=rng))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.fc2(self.act(self.fc1(x)))  # (N, T, D) -> (N, T, hidden) -> (N, T, D)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return self.fc1.backward(self.act.backward(self.fc2.backward(grad_out)))


class Block(Module):
    """A pre-norm Transformer encoder block, as in ViT and timm:

        x = x + attn(norm1(x))
        x = x + mlp(norm2(x))

    LayerNorm eps is 1e-6 (timm's ViT), not PyTorch's default 1e-5."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = self.add_module("norm1", LayerNorm(dim, eps=1e-6, dtype=dtype))
        self.attn = self.add_module("attn", Attention(dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, rng=rng))
        self.norm2 = self.add_module("norm2", LayerNorm(dim, eps=1e-6, dtype=dtype))
        self.mlp = self.add_module("mlp", Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rng=rng))

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = x + self.attn(self.norm1(x))  # (N, T, D): tokens exchange information
        return x + self.mlp(self.norm2(x))  # (N, T, D): each token on its own

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        # a residual x + f(x) passes the gradient straight through and adds f's share
        dx = grad_out + self.norm2.backward(self.mlp.backward(grad_out))
        return dx + self.norm1.backward(self.attn.backward(dx))


# -- patches in, class out ------------------------------------------------------------------
class _TokenGrid(Module):
    """What both patch embeddings share: (N, C, H, W) images become (N, T, D) tokens, one
    per P x P cell, T = (H/P) (W/P) in row-major order. A subclass says how a cell is
    embedded (``embed``: images -> (N, D, H/P, W/P), and its ``embed_backward``)."""

    def _grid(self, img_size: int | tuple[int, int], patch_size: int | tuple[int, int]) -> None:
        """``img_size``, ``patch_size``, ``grid_size`` and ``num_patches``, checked."""
        name = type(self).__name__
        self.img_size = pair(img_size, "img_size", name, 1)
        self.patch_size = pair(patch_size, "patch_size", name, 1)
        if self.img_size[0] % self.patch_size[0] or self.img_size[1] % self.patch_size[1]:
            raise ShapeError(f"{name}: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def embed(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed_backward(self, d: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def forward(self, x: np.ndarray) -> np.ndarray:
        name = type(self).__name__
        check_ndim(x, 4, name, "(N, C, H, W)")
        if x.shape[2:] != self.img_size:
            raise ShapeError(
                f"{name}: expected {self.img_size[0]}x{self.img_size[1]} images, got shape {tuple(x.shape)}"
            )
        x = self.embed(x)  # (N, D, H/P, W/P): one embedding per cell
        N, D, gh, gw = x.shape
        return x.reshape(N, D, gh * gw).transpose(0, 2, 1)  # (N, T, D)

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        N, T, D = grad_out.shape
        d = grad_out.transpose(0, 2, 1).reshape(N, D, *self.grid_size)  # back to (N, D, H/P, W/P)
        return self.embed_backward(d)  # None when the first conv skips dx

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, patch_size={self.patch_size}, grid_size={self.grid_size}"


class PatchEmbed(_TokenGrid):
    """timm's ``PatchEmbed``: a Conv2d ``proj`` with kernel = stride = patch size embeds each
    non-overlapping patch as one token; (N, C, H, W) -> (N, T, D), T = (H/P) (W/P) tokens
    in row-major patch order."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self._grid(img_size, patch_size)
        self.proj = self.add_module(
            "proj", Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size, dtype=dtype, rng=rng)
        )

    def embed(self, x: np.ndarray) -> np.ndarray:
        return self.proj(x)  # (N, D, H/P, W/P): one linear map per patch

    def embed_backward(self, d: np.ndarray) -> np.ndarray | None:
        return self.proj.backward(d)


class ConvNormAct(Module):
    """One stage of a convolutional stem: conv (no bias) -> BatchNorm2d -> ReLU, with timm's
    ``ConvNormAct`` names (``conv``, ``bn``). The BatchNorm makes the conv's bias redundant.
    ``pool=True`` adds a 2x2 max pool after the ReLU (a VGG-style stage, as the triage CNN's)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        pool: bool = False,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.conv = self.add_module(
            "conv", Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False, dtype=dtype, rng=rng)
        )
        self.bn = self.add_module("bn", BatchNorm2d(out_channels, dtype=dtype))
        self.act = self.add_module("act", ReLU())
        self.pool = self.add_module("pool", MaxPool2d(2, 2)) if pool else None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self.act(self.bn(self.conv(x)))  # (N, C, H, W) -> (N, out_channels, H/stride, W/stride)
        return x if self.pool is None else self.pool(x)  # pooled: halved again

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        if self.pool is not None:
            grad_out = self.pool.backward(grad_out)
        return self.conv.backward(self.bn.backward(self.act.backward(grad_out)))  # None when conv skips dx


class ConvPatchEmbed(_TokenGrid):
    """The convolutional stem of Xiao et al. 2021 ("Early Convolutions Help Transformers See
    Better"): a ``stem`` of 3x3 stride-2 ``ConvNormAct`` stages (padding 1), each halving
    the image, with ``stem_channels[i]`` output channels, then a 1x1 conv ``proj`` (with
    bias) to embed_dim; (N, C, H, W) -> (N, T, D) as ``PatchEmbed``, one token per P x P
    cell, P = 2^len(stem_channels). With ``stem_pool`` each stage is a stride-1 conv and a
    2x2 max pool instead (the triage CNN's stages, so a CNN's first stages can be the stem:
    the hybrid ViT of Dosovitskiy et al. 2020, sec. 3.1).

    Where patchify sees each patch once through one linear map, the stem's overlapping
    3x3 windows and nonlinearities give the Transformer better-conditioned inputs: the
    paper finds training steadier across optimizers and learning rates, and accuracy up,
    at about the same cost. The keys are ``stem.{i}.conv``, ``stem.{i}.bn`` and ``proj``,
    the last the same as patchify's projection."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        stem_channels: Sequence[int] = (48, 96, 192, 384),
        stem_pool: bool = False,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        stride = 2 ** len(stem_channels)  # each stage halves the image
        if not stem_channels or pair(patch_size, "patch_size", "ConvPatchEmbed", 1) != (stride, stride):
            raise ShapeError(
                f"ConvPatchEmbed: a stem of {len(stem_channels)} stride-2 convolutions has stride {stride}, "
                f"not patch_size {patch_size} (it needs at least one convolution)"
            )
        self._grid(img_size, patch_size)
        chans = [in_chans, *stem_channels]
        stages = [
            ConvNormAct(c_in, c_out, stride=1 if stem_pool else 2, pool=stem_pool, dtype=dtype, rng=rng)
            for c_in, c_out in zip(chans[:-1], chans[1:], strict=True)
        ]
        self.stem = self.add_module("stem", Sequential(*stages))
        self.proj = self.add_module("proj", Conv2d(chans[-1], embed_dim, 1, dtype=dtype, rng=rng))

    def embed(self, x: np.ndarray) -> np.ndarray:
        x = self.stem(x)  # (N, C', H/P, W/P): each stage halves the image
        return self.proj(x)  # (N, D, H/P, W/P): each cell's C' features mixed into D

    def embed_backward(self, d: np.ndarray) -> np.ndarray | None:
        return self.stem.backward(self.proj.backward(d))  # None when the first conv skips dx


def trunc_normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, dtype: type) -> np.ndarray:
    """N(0, std^2) draws, redrawn until within 2 std of zero (BERT's and ViT's init).

    timm's ``trunc_normal_(w, std=.02)`` passes its bounds as absolute values (-2, 2), where
    they cut nothing; at 2 std they cut the 4.6% of outliers, as the original code meant."""
    out = rng.standard_normal(shape)
    outside = np.abs(out) > 2
    while outside.any():
        out[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(out) > 2
    return (std * out).astype(dtype)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, stably: z - max(z) - log(sum(exp(z - max(z))))."""
    shifted = z - z.max(axis=-1, keepdims=True)  # max 0: exp cannot overflow
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class VisionTransformer(Module):
    """timm's ``VisionTransformer`` with a class token (Dosovitskiy et al. 2020), in NumPy.

    ``forward_features``: patch tokens, prefix tokens prepended, position embeddings added,
    ``depth`` blocks, final LayerNorm -> (N, P + T, D); ``forward_head``: ``head`` on the
    class token -> (N, num_classes). Defaults are timm's ViT-B/16; ``tinytriage.models.vit.ViTConfig``
    holds the small model tinytriage trains.

    ``conv_stem`` (channels, one per 3x3 stride-2 convolution) embeds the patches with
    ``ConvPatchEmbed`` instead of ``PatchEmbed``; ``patch_size`` must then be 2^len(conv_stem).
    ``stem_pool``: its stages are stride-1 convolutions, each with a 2x2 max pool.

    ``distilled`` adds DeiT's distillation token (timm's ``VisionTransformerDistilled``):
    ``dist_token`` is token 1, right after the class token (``num_prefix_tokens`` = 2), with
    its own ``head_dist``. In training mode ``forward`` gives both heads' logits,
    (N, 2, K): [:, 0] the class head's (trained on the true labels), [:, 1] the distillation
    head's (trained on the teacher's). In eval mode it gives (N, K) log((p + q) / 2), p and q
    the two heads' softmaxes: log-probabilities, so their softmax is the average itself."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        distilled: bool = False,
        conv_stem: Sequence[int] = (),
        stem_pool: bool = False,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(0) if rng is None else rng
        self.num_classes, self.embed_dim = num_classes, embed_dim
        self.num_prefix_tokens = 2 if distilled else 1  # the class token, and the distillation token
        if conv_stem:
            embed = ConvPatchEmbed(
                img_size, patch_size, in_chans, embed_dim, conv_stem, stem_pool, dtype=dtype, rng=rng
            )
        else:
            embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, dtype=dtype, rng=rng)
        self.patch_embed = self.add_module("patch_embed", embed)
        T, P = self.patch_embed.num_patches, self.num_prefix_tokens
        blocks = [Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dtype=dtype, rng=rng) for _ in range(depth)]
        self.blocks = self.add_module("blocks", Sequential(*blocks))
        self.norm = self.add_module("norm", LayerNorm(embed_dim, eps=1e-6, dtype=dtype))
        self.head = self.add_module("head", Linear(embed_dim, num_classes, dtype=dtype, rng=rng))
        self.head_dist = None
        if distilled:
            self.head_dist = self.add_module("head_dist", Linear(embed_dim, num_classes, dtype=dtype, rng=rng))
        # timm's init: truncated normal (std .02) for the embeddings and every Linear weight,
        # zero biases; LayerNorms start as the identity and the patch Conv2d keeps PyTorch's
        # init. (Current timm draws cls_token from N(0, 1e-6); DeiT and older timm, as here, .02.)
        self._params["cls_token"] = trunc_normal(rng, (1, 1, embed_dim), 0.02, dtype)  # (1, 1, D)
        self._params["pos_embed"] = trunc_normal(rng, (1, P + T, embed_dim), 0.02, dtype)  # (1, P + T, D)
        if distilled:
            self._params["dist_token"] = trunc_normal(rng, (1, 1, embed_dim), 0.02, dtype)  # (1, 1, D)
        for _, module in self.named_modules():
            if isinstance(module, Linear):
                module._params["weight"] = trunc_normal(rng, module._params["weight"].shape, 0.02, dtype)
                if "bias" in module._params:
                    module._params["bias"] = np.zeros_like(module._params["bias"])
        self._num_tokens = P + T
        self._averaged: tuple | None = None  # eval mode, distilled: what backward needs of the average

    def _pos_embed(self, x: np.ndarray) -> np.ndarray:
        """Prefix tokens prepended and position embeddings added (timm's ``_pos_embed``):
        (N, T, D) patch tokens -> (N, P + T, D)."""
        N, T, D = x.shape
        prefix = [self._params["cls_token"]]  # the class token is token 0...
        if self.head_dist is not None:
            prefix.append(self._params["dist_token"])  # ...and the distillation token token 1
        prefix = [np.broadcast_to(p, (N, 1, D)) for p in prefix]  # one copy per image
        x = np.concatenate([*prefix, x], axis=1)  # (N, P + T, D)
        return x + self._params["pos_embed"]  # where each patch sits: learned, one vector per token

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        x = self.patch_embed(x)  # (N, T, D)
        x = self._pos_embed(x)  # (N, P + T, D)
        x = self.blocks(x)  # (N, P + T, D)
        return self.norm(x)

    def forward_head(self, x: np.ndarray) -> np.ndarray:
        logits = self.head(x[:, 0])  # the class token's features (N, D) -> logits (N, K)
        if self.head_dist is None:
            return logits
        logits_dist = self.head_dist(x[:, 1])  # the distillation token's (N, D) -> (N, K)
        if self.training:
            self._averaged = None
            return np.stack([logits, logits_dist], axis=1)  # (N, 2, K): each head trains on its labels
        # inference (DeiT): the two heads' softmaxes averaged, log((p + q) / 2), as log-probabilities
        log_p, log_q = log_softmax(logits), log_softmax(logits_dist)  # (N, K) each
        out = np.logaddexp(log_p, log_q) - math.log(2)  # (N, K)
        self._averaged = (log_p, log_q, out)
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.forward_head(self.forward_features(x))

    def backward_head(self, grad_out: np.ndarray) -> np.ndarray:
        """d logits -> d of ``forward_features``' output, (N, P + T, D): only the prefix
        tokens reach the heads."""
        if self.head_dist is None:
            dcls = self.head.backward(grad_out)  # (N, D)
            N, D = dcls.shape
            dx = np.zeros((N, self._num_tokens, D), dtype=dcls.dtype)
            dx[:, 0] = dcls  # only the class token reaches the head
            return dx
        if self._averaged is None:  # training: (N, 2, K), one slice per head
            if grad_out.ndim != 3 or grad_out.shape[1] != 2:
                raise ShapeError(
                    f"VisionTransformer: a distilled model in training mode gives (N, 2, K) logits, "
                    f"so backward takes (N, 2, K) gradients, got shape {tuple(grad_out.shape)}"
                )
            dlogits, dlogits_dist = grad_out[:, 0], grad_out[:, 1]  # (N, K) each
        else:  # eval: out = log((p + q) / 2)
            log_p, log_q, out = self._averaged
            # d out_k = (dp_k + dq_k) / (p_k + q_k): each head's probabilities take the upstream
            # gradient weighted by their share of the sum, p_k / (p_k + q_k) = exp(log p_k - out_k) / 2
            a_p = grad_out * np.exp(log_p - out - math.log(2))  # (N, K)
            a_q = grad_out * np.exp(log_q - out - math.log(2))  # (N, K)
            # p = softmax(z): dz = p * (dp - sum_k p_k dp_k) = a_p - p sum_k a_p,k
            p, q = np.exp(log_p), np.exp(log_q)
            dlogits = a_p - p * a_p.sum(axis=-1, keepdims=True)
            dlogits_dist = a_q - q * a_q.sum(axis=-1, keepdims=True)
        dcls = self.head.backward(dlogits)  # (N, D)
        ddist = self.head_dist.backward(dlogits_dist)  # (N, D)
        N, D = dcls.shape
        dx = np.zeros((N, self._num_tokens, D), dtype=dcls.dtype)
        dx[:, 0], dx[:, 1] = dcls, ddist  # token 0 reaches the class head, token 1 the distillation head
        return dx

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        dx = self.backward_head(grad_out)  # (N, P + T, D)
        dx = self.blocks.backward(self.norm.backward(dx))  # (N, P + T, D)
        self._grads = {
            "cls_token": dx[:, :1].sum(axis=0, keepdims=True),  # shared by every image: sum over N
            "pos_embed": dx.sum(axis=0, keepdims=True),  # added to every image: sum over N
        }
        if self.head_dist is not None:
            self._grads["dist_token"] = dx[:, 1:2].sum(axis=0, keepdims=True)
        return self.patch_embed.backward(dx[:, self.num_prefix_tokens :])  # None when the first conv skips dx

    def attention_maps(self) -> list[np.ndarray]:
        """Each block's attention probabilities from the last forward, (N, heads, P + T, P + T):
        the prefix tokens first (the class token, then the distillation token if any)."""
        return [block.attn.attn for block in self.blocks]
