"""PyTorch twin of the triage ViT (`tinytriage.nn.transformer`), written the way timm writes it.

Module and parameter names are timm's VisionTransformer's (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``,
``norm``, ``head``; ``dist_token`` and ``head_dist`` when distilled; the conv stem's
``patch_embed.stem.{i}.conv/bn``), so the NumPy model, this twin and a timm-structured model
exchange weights unchanged. Attention is spelled out (no fused kernel) so that
``return_attn=True`` can hand back the probabilities, (N, heads, P + T, P + T) per block
(P prefix tokens), for attention rollout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tinytriage.errors import ShapeError
from tinytriage.models.vit import ViTConfig


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = patch size, then (N, D, H/P, W/P) -> (N, T, D)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:  # a conv would quietly drop the border (timm asserts)
            raise ShapeError(
                f"PatchEmbed: expected {self.img_size[0]}x{self.img_size[1]} images, got shape {tuple(x.shape)}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


class ConvNormAct(nn.Module):
    """conv (no bias) -> BatchNorm2d -> ReLU: one stage of the convolutional stem."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        pool: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class ConvPatchEmbed(nn.Module):
    """Early convolutions (Xiao et al. 2021): 3x3 stride-2 ConvNormAct stages, a 1x1 ``proj``, (N, T, D)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        stem_channels: Sequence[int] = (48, 96, 192, 384),
        stem_pool: bool = False,
    ) -> None:
        super().__init__()
        if not stem_channels or patch_size != 2 ** len(stem_channels):
            raise ShapeError(
                f"ConvPatchEmbed: a stem of {len(stem_channels)} stride-2 convolutions has stride "
                f"{2 ** len(stem_channels)}, not patch_size {patch_size}"
            )
        self.img_size = (img_size, img_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        chans = [in_chans, *stem_channels]
        self.stem = nn.Sequential(
            *[
                ConvNormAct(c_in, c_out, stride=1 if stem_pool else 2, pool=stem_pool)
                for c_in, c_out in zip(chans[:-1], chans[1:], strict=True)
            ]
        )
        self.proj = nn.Conv2d(chans[-1], embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ShapeError(
                f"ConvPatchEmbed: expected {self.img_size[0]}x{self.img_size[1]} images, got shape {tuple(x.shape)}"
            )
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)  # (N, T, D)


class Attention(nn.Module):
    """Multi-head self-attention, timm's layout: one ``qkv`` Linear, softmax(q k^T / sqrt(hd)) v, ``proj``."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd)
        q = q * self.scale
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        return (x, attn) if return_attn else x


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        y, attn = self.attn(self.norm1(x), return_attn=True)
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return (x, attn) if return_attn else x


class TorchVisionTransformer(nn.Module):
    """PyTorch twin of ``tinytriage.nn.VisionTransformer``, built from a ``ViTConfig``.

    ``forward(x)`` gives logits (N, num_classes); ``forward(x, return_attn=True)`` gives
    ``(logits, [attention of each block])``. Distilled (``cfg.distilled``): (N, 2, K) logits
    of the class and distillation heads in training mode, log of their averaged softmaxes
    (N, K) in eval mode, as the NumPy model."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        if cfg.conv_stem:
            self.patch_embed = ConvPatchEmbed(
                cfg.img_size, cfg.patch_size, cfg.in_chans, D, cfg.conv_stem, cfg.stem_pool
            )
        else:
            self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, D)
        self.num_prefix_tokens = cfg.num_prefix_tokens  # the class token, and the distillation token
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, D))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distilled else None
        self.blocks = nn.Sequential(*[Block(D, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, cfg.num_classes)
        self.head_dist = nn.Linear(D, cfg.num_classes) if cfg.distilled else None
        # timm's init (engines overwrite it with the NumPy model's, for identical starts)
        for p in (self.cls_token, self.pos_embed, self.dist_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        prefix = [self.cls_token] if self.dist_token is None else [self.cls_token, self.dist_token]
        x = torch.cat([*(p.expand(x.shape[0], -1, -1) for p in prefix), x], dim=1)  # (N, P + T, D)
        return x + self.pos_embed

    def forward_features(self, x: torch.Tensor, return_attn: bool = False):
        x = self.patch_embed(x)  # (N, T, D)
        x = self._pos_embed(x)  # (N, P + T, D)
        attns = []
        for block in self.blocks:
            x, attn = block(x, return_attn=True)
            attns.append(attn)
        x = self.norm(x)
        return (x, attns) if return_attn else x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x[:, 0])  # the class token
        if self.head_dist is None:
            return logits
        logits_dist = self.head_dist(x[:, 1])  # the distillation token
        if self.training:
            return torch.stack([logits, logits_dist], dim=1)  # (N, 2, K)
        # log((p + q) / 2): the two heads' softmaxes averaged, as log-probabilities
        return torch.logaddexp(logits.log_softmax(-1), logits_dist.log_softmax(-1)) - math.log(2)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        x, attns = self.forward_features(x, return_attn=True)
        logits = self.forward_head(x)
        return (logits, attns) if return_attn else logits
