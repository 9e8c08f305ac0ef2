"""The triage Vision Transformer: a small ViT for ticket photos, built from `tinytriage.nn`.

A photo of 96 x 96 pixels is cut into 12 x 12 patches: an 8 x 8 grid, 64 patch tokens
plus the class token (Dosovitskiy et al. 2020). Why these defaults:

* Patch 12 on 96 pixels keeps 65 tokens: attention costs T^2 per head, and at 65 tokens
  a batch of 64 photos trains on 2 CPU cores in NumPy. Patch 8 would mean 145 tokens
  (2.2x the tokens, 5x the attention work); patch 16 a 6 x 6 grid, too coarse for the
  attention-rollout heatmap to point at a crack.
* embed_dim 96 with 4 heads of 24 features, depth 4: about 0.35 M parameters and 25 M
  multiply-adds per photo, the same cost as the triage CNN (36 M), so the two compare
  fairly; a training step on 64 photos takes about 0.2 s in NumPy on 2 idle cores.
* mlp_ratio 2 rather than ViT's 4: the MLP holds most of a block's weights and its GELU
  is the costliest elementwise op in NumPy; ratio 4 makes each step about 1.5x slower
  and adds 0.15 M parameters for a few thousand training photos.

These defaults are the plain ViT of ``tinytriage lesson``. Two options, off by default, give
it a CNN's inductive biases back; the bundled ViT (``models/make_triage_vit.py``) has both,
its stem the bundled CNN's first four stages:

* ``conv_stem``: early convolutions (Xiao et al. 2021) instead of the patchify stem: 3x3
  stride-2 convolutions with BatchNorm and ReLU, one per entry, then a 1x1 projection.
  Their total stride is the patch size: [24, 48, 96] with patch_size 8, say.
  ``stem_pool`` makes each stage a stride-1 convolution and a 2x2 max pool, as the triage
  CNN's stages, so the stem can start from a trained CNN's (``stem_from_cnn``).
* ``distilled``: DeiT's distillation token and second head (Touvron et al. 2021), trained
  on a teacher's labels; training-mode logits are (N, 2, K) and targets (N, 2).

The same ``ViTConfig`` builds the PyTorch twin (`tinytriage.models.torch_vit`) with the same
parameter names, so one ``.safetensors`` file runs in both engines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.conv import Conv2d
from tinytriage.nn.transformer import ConvPatchEmbed, VisionTransformer


@dataclass
class ViTConfig:
    """Everything that decides the ViT's shape. Stored in the model file."""

    in_chans: int = 3  # RGB photos
    num_classes: int = 5  # one logit per class in the model file's class list
    img_size: int = 96  # photos are letterboxed to img_size x img_size pixels (--input-size)
    patch_size: int = 12  # each token is a patch_size x patch_size patch; must divide img_size
    embed_dim: int = 96  # features per token (D)
    depth: int = 4  # Transformer blocks
    num_heads: int = 4  # attention heads per block; each sees embed_dim / num_heads features
    mlp_ratio: float = 2.0  # hidden width of each block's MLP, as a multiple of embed_dim
    qkv_bias: bool = True  # biases on the query/key/value projection (timm's default)
    distilled: bool = False  # DeiT's distillation token and its head (head_dist), for a teacher's labels
    # output channels of the early 3x3 stride-2 convolutions (Xiao et al. 2021); empty: patchify
    conv_stem: list[int] = field(default_factory=list)
    # the stem's stages as the triage CNN's: stride-1 convolutions, each then a 2x2 max pool
    # (so a CNN's first stages can initialise it: a hybrid ViT); False: stride-2 convolutions
    stem_pool: bool = False

    def __post_init__(self) -> None:
        self.conv_stem = [int(c) for c in self.conv_stem]  # from a tuple or a JSON list alike
        if any(c < 1 for c in self.conv_stem):
            raise ShapeError(f"ViT: conv_stem channels must be positive, got {self.conv_stem}")
        if self.stem_pool and not self.conv_stem:
            raise ShapeError("ViT: stem_pool pools the stages of a conv_stem, and there is none")
        if self.conv_stem and self.patch_size != 2 ** len(self.conv_stem):
            n, stride = len(self.conv_stem), 2 ** len(self.conv_stem)
            raise ShapeError(
                f"ViT: conv_stem of {n} convolution{'s' if n > 1 else ''} has stride {stride}, "
                f"but patch_size is {self.patch_size}: set patch_size {stride}"
            )
        if self.img_size % self.patch_size:
            raise ShapeError(
                f"ViT: img_size {self.img_size} is not a multiple of patch_size {self.patch_size} "
                f"(try an input size of {self.img_size // self.patch_size * self.patch_size} or another patch size)"
            )
        if self.embed_dim % self.num_heads:
            raise ShapeError(f"ViT: embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along (height, width): the shape of attention heatmaps."""
        side = self.img_size // self.patch_size
        return side, side

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, and the distillation token if distilled."""
        return 2 if self.distilled else 1

    @property
    def num_tokens(self) -> int:
        """Tokens per photo: one per patch plus the prefix tokens."""
        gh, gw = self.grid_size
        return gh * gw + self.num_prefix_tokens

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("distilled", "conv_stem", "stem_pool"):
            if not d[key]:
                del d[key]  # files of the plain ViT stay as they were
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def build_vit(cfg: ViTConfig, rng: np.random.Generator | None = None, dtype: type = np.float32) -> VisionTransformer:
    """A freshly initialised NumPy ViT for ``cfg`` (seeded by ``rng``)."""
    model = VisionTransformer(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        distilled=cfg.distilled,
        conv_stem=cfg.conv_stem,
        stem_pool=cfg.stem_pool,
        dtype=dtype,
        rng=np.random.default_rng(0) if rng is None else rng,
    )
    # training never uses the gradient of the photo itself: the first conv skips it
    first_conv(model).needs_input_grad = False
    return model


def first_conv(model: VisionTransformer) -> Conv2d:
    """The convolution that reads the photo: the patch projection, or the stem's first."""
    if isinstance(model.patch_embed, ConvPatchEmbed):
        return model.patch_embed.stem[0].conv
    return model.patch_embed.proj


def forward_with_attention(model: VisionTransformer, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits (N, num_classes) and each block's attention probabilities
    (N, heads, P + T, P + T), P prefix tokens, in eval mode: what ``tinytriage.explain.rollout``
    turns into heatmaps."""
    model.eval()
    logits = model(x)
    return logits, [a.copy() for a in model.attention_maps()]


def count_macs(cfg: ViTConfig) -> int:
    """Multiply-adds of one forward pass for one photo (matrix products and convolutions only)."""
    T, D = cfg.num_tokens, cfg.embed_dim
    gh, gw = cfg.grid_size
    hidden = int(D * cfg.mlp_ratio)
    if cfg.conv_stem:
        embed, side, c_in = 0, cfg.img_size, cfg.in_chans
        for c_out in cfg.conv_stem:  # each 3x3 conv: one 3x3 x c_in kernel per output cell
            conv_side = side if cfg.stem_pool else side // 2  # stride 1 then a pool, or stride 2
            embed += conv_side * conv_side * c_out * c_in * 9
            side //= 2
            c_in = c_out
        embed += gh * gw * D * c_in  # the 1x1 projection
    else:
        embed = gh * gw * D * cfg.in_chans * cfg.patch_size**2  # one P x P kernel per patch and feature
    per_block = T * D * 3 * D + 2 * T * T * D + T * D * D + 2 * T * D * hidden  # qkv, q.k and attn.v, proj, mlp
    heads = 2 if cfg.distilled else 1  # the class head, and the distillation head
    return embed + cfg.depth * per_block + heads * D * cfg.num_classes


def stem_from_cnn(cfg: ViTConfig, cnn_config: dict, cnn_tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights of a pooled stem (``stem_pool``) taken from a trained triage CNN's first
    stages, by name: the CNN's ``conv{s}`` and ``bn{s}`` become ``patch_embed.stem.{s-1}.conv``
    and ``.bn``. The ViT then starts from the features the CNN has learnt (a hybrid ViT,
    Dosovitskiy et al. 2020, sec. 3.1, whose stem is a pretrained ResNet's first stages);
    everything after the stem starts afresh. The stem must be the CNN's first stages:
    the same channels, one 3x3 conv each."""
    from tinytriage.models.cnn import CNNConfig, layer_names

    cnn = CNNConfig.from_dict(cnn_config)
    n = len(cfg.conv_stem)
    if not cfg.stem_pool or cnn.kernel_size != 3 or cnn.depths is not None or cnn.in_channels != cfg.in_chans:
        raise ShapeError("stem_from_cnn: a pooled ViT stem (stem_pool) and a CNN of one 3x3 conv a stage, same input")
    if list(cnn.widths[:n]) != cfg.conv_stem:
        raise ShapeError(
            f"stem_from_cnn: the stem's channels {cfg.conv_stem} are not the CNN's first {n} stages' {list(cnn.widths[:n])}"
        )
    index = {role: i for i, role in enumerate(layer_names(cnn))}  # conv1 -> 0, bn1 -> 1, ...
    out = {}
    for s in range(n):
        conv, bn = index[f"conv{s + 1}"], index[f"bn{s + 1}"]
        out[f"patch_embed.stem.{s}.conv.weight"] = cnn_tensors[f"features.{conv}.weight"]
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            key = f"features.{bn}.{name}"
            if key in cnn_tensors:
                out[f"patch_embed.stem.{s}.bn.{name}"] = cnn_tensors[key]
    return out
