"""`tinytriage explain PHOTO`: how the network reaches its decision on one real photo.

Every number is computed here and printed by ``render.print_explain``:

1. **Model summary**, from the architecture's config (so the same for every engine): each
   layer's output shape, trainable parameters, and its receptive field r and jump in input
   pixels (``tinytriage.explain.receptive``: r_l = r_(l-1) + (k_l - 1) * jump_(l-1)).
2. **Feature maps** of one layer. The default is the architecture's ``explain_layer``: for
   the CNN ``relu1``, the first conv block's output: it keeps the input's resolution and its
   3x3x3 kernels read the photo itself, so its maps still look like the photo (edges, colour
   blobs) and its cell can be computed by hand in 27 products. ``--layer`` picks any other
   (conv2, bn2, relu2, pool2, ...; EfficientNet's conv_stem, act1, blocks.S.B, act2, ...).
3. **One cell by hand**, as the architecture's ``hand_cell`` says:

   * a conv block (the CNN), for the block of that layer: the input window of every input
     channel, the kernel, their products and sum (``conv2d_cell``, the reference loop's
     cell), then BatchNorm as eval mode computes it, (s - running_mean) / sqrt(running_var
     + eps) * gamma + beta (the convs have no bias: BatchNorm's beta plays its role), then
     ReLU; each checked against the fast engine's activation at that cell. Then the
     max-pool window the cell falls in and which cell won it (``maxpool2d_reference``'s
     winners).
   * a mobile block (EfficientNet), the block of that layer or the first one after it: one
     cell of its depthwise convolution, the k x k window of ONE channel times that
     channel's kernel, summed (TensorFlow's "same" padding: zeros before and after the
     input, the odd one after), BatchNorm, ReLU6 = min(max(y, 0), 6); then at the same
     pixel one cell of the pointwise (1x1) convolution after it, a dot product over its
     input channels (the depthwise cell among them), BatchNorm, and the block's input added
     back when the block has a residual. Each checked against the engine's value there.
4. **Where the evidence is**: Grad-CAM (``tinytriage.explain.gradcam``) for a CNN, attention rollout
   (``tinytriage.explain.rollout``) for a ViT, mapped back to the photo's own pixels.
5. **The decision**: probabilities, route, review flag, as ``predict`` gives them.

``tinytriage.explain.pointing`` scores these heatmaps against the damage boxes of a
labelled folder.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinytriage.data.preprocess import LetterboxGeometry
from tinytriage.errors import ConfigError, ImageError, listed
from tinytriage.explain.gradcam import Localization, grad_cam, heat_on_photo, localize
from tinytriage.explain.receptive import receptive_fields
from tinytriage.models import Architecture, get_arch
from tinytriage.nn.conv import conv2d_cell
from tinytriage.nn.pool import maxpool2d_reference
from tinytriage.nn.sizes import pad2d_asym

OVERLAY_MAX_SIDE = 1024  # the saved overlay PNG is the photo scaled to at most this long side
PREVIEW_WIDTH = 48  # pixels (= terminal columns) of the heatmap preview
AGREE_ATOL = 1e-4  # |by hand - engine| allowed at one cell (float64 by hand vs float32 engine)


# -- 1. model summary -------------------------------------------------------------------------
@dataclass
class LayerRow:
    """One layer of the summary."""

    name: str  # conv1, bn1, relu1, pool1, ..., head
    kind: str  # conv, bn, relu, maxpool, avgpool (or avgmaxpool), flatten, dropout, linear, ...
    tensors: str  # prefix of its tensors in the model file ("features.0"); "" if it has none
    output_shape: tuple[int, ...]  # for one photo: (C, H, W), (tokens, D) or (classes,)
    params: int  # trainable parameters (BatchNorm's running statistics are not trained)
    receptive_field: int  # r: side of the input square one output cell can see, in pixels
    jump: int  # input pixels between neighbouring output cells


@dataclass
class ModelSummary:
    arch: str
    input_size: int
    rows: list[LayerRow]
    total_params: int


def layer_geometry(arch: Architecture, cfg) -> list[tuple[str, str, int, int, int]]:
    """(name, kind, kernel, stride, padding) per layer of ``features``, from the
    architecture's layer table (``tinytriage.models.layers``)."""
    n = len(arch.layer_names(cfg))
    return [(r.name, r.kind, r.kernel, r.stride, r.padding) for r in arch.layer_table(cfg)[:n]]


def _cnn_geometry(cfg) -> list[tuple[str, str, int, int, int]]:
    """The CNN's ``layer_geometry`` (by the name tests/test_explain.py knows it by)."""
    return layer_geometry(get_arch("cnn"), cfg)


def _table_summary(arch: Architecture, config: dict) -> ModelSummary:
    """A conv net's summary: its layer table, with receptive fields from kernels and strides."""
    table = arch.layer_table(arch.from_dict(config))
    rf = receptive_fields([(r.name, r.kernel, r.stride) for r in table])
    rows = [
        LayerRow(r.name, r.kind, r.tensors, r.output_shape, r.params, f.receptive_field, f.jump)
        for r, f in zip(table, rf, strict=True)
    ]
    return ModelSummary(arch.name, arch.input_size(config), rows, sum(r.params for r in rows))


def _vit_summary(config: dict) -> ModelSummary:
    from tinytriage.models.vit import ViTConfig

    cfg = ViTConfig.from_dict(config)
    D, P, (gh, gw) = cfg.embed_dim, cfg.patch_size, cfg.grid_size
    T, hidden = cfg.num_tokens, int(cfg.embed_dim * cfg.mlp_ratio)
    qkv_bias = 3 * D if cfg.qkv_bias else 0
    # norm1, qkv, proj, norm2, fc1, fc2
    block = 2 * D + (3 * D * D + qkv_bias) + (D * D + D) + 2 * D + (D * hidden + hidden) + (hidden * D + D)
    # a patch sees its P x P pixels; after the first attention every token can see every patch
    rows, rf, c_in = [], P, cfg.in_chans
    if cfg.conv_stem:  # early convolutions: 3x3 stride 2 each, so the window grows by 2 jumps a stage
        rf, jump, side = 1, 1, cfg.img_size
        kind = "conv-bn-relu-pool" if cfg.stem_pool else "conv-bn-relu"
        grow = 3 if cfg.stem_pool else 2  # pooled: a stride-1 3x3 conv (+2 jumps), then a 2x2 pool (+1)
        for i, c_out in enumerate(cfg.conv_stem):
            rf, jump, side = rf + grow * jump, 2 * jump, side // 2
            params = c_out * c_in * 9 + 2 * c_out  # the conv's kernels (no bias), BatchNorm's gamma and beta
            rows.append(LayerRow(f"stem.{i}", kind, f"patch_embed.stem.{i}", (c_out, side, side), params, rf, jump))
            c_in = c_out
        rows.append(LayerRow("patch_embed", "conv", "patch_embed.proj", (D, gh, gw), D * c_in + D, rf, P))  # 1x1
    else:
        rows.append(LayerRow("patch_embed", "conv", "patch_embed.proj", (D, gh, gw), D * c_in * P * P + D, P, P))
    prefix = "cls_token, dist_token" if cfg.distilled else "cls_token"
    kind = prefix.replace(", ", " + ") + " + pos_embed"
    rows.append(LayerRow("tokens", kind, f"{prefix}, pos_embed", (T, D), cfg.num_prefix_tokens * D + T * D, rf, P))
    rows += [LayerRow(f"blocks.{i}", "block", f"blocks.{i}", (T, D), block, cfg.img_size, P) for i in range(cfg.depth)]
    rows.append(LayerRow("norm", "layernorm", "norm", (T, D), 2 * D, cfg.img_size, P))
    heads = ["head", "head_dist"] if cfg.distilled else ["head"]  # the class head, the distillation head
    K = cfg.num_classes
    rows += [LayerRow(h, "linear", h, (K,), D * K + K, cfg.img_size, P) for h in heads]
    return ModelSummary("vit", cfg.img_size, rows, sum(r.params for r in rows))


def model_summary(arch: str, config: dict) -> ModelSummary:
    """The layer table of an architecture, computed from its config alone: from its
    ``layer_table`` (conv nets), else the transformer's (every token sees every patch)."""
    spec = get_arch(arch)
    return _vit_summary(config) if spec.layer_table is None else _table_summary(spec, config)


def cell_input_window(
    geometry: list[tuple[str, str, int, int, int]], upto: int, row: int, col: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Rows and columns (inclusive, unclipped: padding included) of the model input that
    cell (row, col) of layer ``upto`` sees. Walks back: output cells [a, b] of a layer with
    kernel k, stride s, padding p read its input cells [a*s - p, b*s - p + k - 1]."""
    (r0, r1), (c0, c1) = (row, row), (col, col)
    for _name, _kind, k, s, p in reversed(geometry[: upto + 1]):
        r0, r1 = r0 * s - p, r1 * s - p + k - 1
        c0, c1 = c0 * s - p, c1 * s - p + k - 1
    return (r0, r1), (c0, c1)


# -- 2. feature maps ----------------------------------------------------------------------------
@dataclass
class FeatureMaps:
    layer: str
    shape: tuple[int, int, int]  # (C, h, w) of the whole layer, one photo
    channels: list[int]  # which channels ``maps`` holds
    maps: np.ndarray  # (len(channels), h, w)
    vmin: float  # value range over the shown maps (the terminal legend)
    vmax: float


# -- 3. one cell by hand ------------------------------------------------------------------------
@dataclass
class ConvCell:
    """One output cell of a conv block, conv -> BatchNorm (eval) -> ReLU, computed by hand."""

    conv: str  # conv2
    bn: str  # bn2
    relu: str  # relu2
    source: str  # what the conv reads: "input" (the normalised photo) or the layer before (pool1)
    channel: int  # output channel
    row: int  # cell in the conv's output (same size as the BN and ReLU maps)
    col: int
    window: np.ndarray  # (C_in, k, k) input under the kernel (zero padding included)
    kernel: np.ndarray  # (C_in, k, k) the weights of output channel ``channel``
    products: np.ndarray  # (C_in, k, k) window * kernel
    channel_sums: np.ndarray  # (C_in,) products summed per input channel
    conv_sum: float  # sum of all products
    conv_bias: float  # 0: the conv has bias=False, BatchNorm's beta is the bias
    bn_mean: float  # running mean of this channel
    bn_var: float  # running variance
    bn_eps: float
    bn_gamma: float  # BatchNorm weight
    bn_beta: float  # BatchNorm bias
    bn_x_hat: float  # (conv_sum - mean) / sqrt(var + eps)
    bn_out: float  # x_hat * gamma + beta
    relu_out: float  # max(bn_out, 0)
    engine: dict[str, float]  # the engine's conv, bn and relu values at this cell
    max_abs_diff: float  # largest |by hand - engine| of the three
    agrees: bool  # max_abs_diff <= AGREE_ATOL
    receptive_field: int  # side of the input square this cell sees (padding included)
    input_box: tuple[int, int, int, int]  # (x0, y0, x1, y1) model-input pixels seen, clipped, x1/y1 exclusive
    photo_box: tuple[int, int, int, int]  # the same region in the original photo's pixels


@dataclass
class PoolCell:
    """The max-pool window the hand-computed cell falls in."""

    pool: str  # pool2
    row: int  # output cell of the pool
    col: int
    origin: tuple[int, int]  # (row, col) of the window's top-left cell in the ReLU map
    window: np.ndarray  # (k, k) ReLU values of the window (channel ``channel``)
    winner: tuple[int, int]  # (row, col) in the ReLU map of the cell that won
    value: float  # the pooled value (by the reference loop)
    engine_value: float  # the engine's pooled value at that cell
    cell_won: bool  # did the hand-computed cell win?


@dataclass
class DepthwiseCell:
    """One output cell of a mobile block's depthwise convolution, conv -> BatchNorm (eval) ->
    ReLU6, computed by hand: one channel's k x k window times that channel's kernel."""

    block: str  # blocks.1.0
    block_kind: str  # "ds" (depthwise separable) or "ir" (inverted residual)
    conv: str  # blocks.1.0.conv_dw
    bn: str  # blocks.1.0.bn2
    act: str  # blocks.1.0.act2
    source: str  # what the depthwise conv reads: the layer before the block (act1) or the block's expansion
    channel: int  # the channel: its input, its kernel and its output are this one channel
    row: int  # cell in the depthwise conv's output (the block's output grid)
    col: int
    kernel_size: int  # k
    stride: int
    pads: tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right)): TF "same", the odd one after
    window: np.ndarray  # (k, k) channel ``channel`` of the input under the kernel (zero padding included)
    kernel: np.ndarray  # (k, k) that channel's kernel
    products: np.ndarray  # (k, k) window * kernel
    conv_sum: float  # sum of the products (the conv has no bias: BatchNorm's beta is the bias)
    bn_mean: float  # running mean of this channel
    bn_var: float  # running variance
    bn_eps: float
    bn_gamma: float  # BatchNorm weight
    bn_beta: float  # BatchNorm bias
    bn_x_hat: float  # (conv_sum - mean) / sqrt(var + eps)
    bn_out: float  # x_hat * gamma + beta
    act_out: float  # ReLU6: min(max(bn_out, 0), 6)
    engine: dict[str, float]  # the engine's conv, bn and act values at this cell
    max_abs_diff: float  # largest |by hand - engine| of the three
    agrees: bool  # max_abs_diff <= AGREE_ATOL
    receptive_field: int  # side of the input square this cell sees (padding included)
    input_box: tuple[int, int, int, int]  # (x0, y0, x1, y1) model-input pixels seen, clipped, x1/y1 exclusive
    photo_box: tuple[int, int, int, int]  # the same region in the original photo's pixels


@dataclass
class PointwiseCell:
    """At the depthwise cell's pixel, one output of the 1x1 convolution after it: a dot
    product over its input channels, then BatchNorm (eval), then the residual if any."""

    conv: str  # blocks.1.0.conv_pwl
    bn: str  # blocks.1.0.bn3
    source: str  # what it reads: the depthwise conv's ReLU6 (blocks.1.0.act2)
    channel: int  # output channel (the strongest at this pixel)
    row: int
    col: int
    inputs: np.ndarray  # (C_in,) the source's values at (row, col), every channel
    weights: np.ndarray  # (C_in,) the 1x1 kernel of output channel ``channel``
    products: np.ndarray  # (C_in,) inputs * weights
    conv_sum: float  # their sum: the dot product
    depthwise_channel: int  # the input channel computed by hand above
    depthwise_term: float  # its product: inputs[depthwise_channel] * weights[depthwise_channel]
    bn_mean: float
    bn_var: float
    bn_eps: float
    bn_gamma: float
    bn_beta: float
    bn_x_hat: float  # (conv_sum - mean) / sqrt(var + eps)
    bn_out: float  # x_hat * gamma + beta: no activation after (the linear bottleneck)
    residual: float | None  # the block's input at this cell, added back; None: the block has no residual
    block_out: float  # bn_out (+ residual): the block's output at this cell
    engine: dict[str, float]  # the engine's conv, bn and block values at this cell
    max_abs_diff: float
    agrees: bool


def _boxes(
    geometry: list[tuple[str, str, int, int, int]], i: int, row: int, col: int, S: int, geom: LetterboxGeometry
) -> tuple[int, tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(receptive field, input box, photo box) of cell (row, col) of ``features[i]``: the
    input pixels it sees (clipped, right/bottom exclusive) and the same region in the photo."""
    (r0, r1), (c0, c1) = cell_input_window(geometry, i, row, col)
    box = (max(c0, 0), max(r0, 0), min(c1 + 1, S), min(r1 + 1, S))
    px0, py0 = geom.to_original(box[0], box[1])
    px1, py1 = geom.to_original(box[2], box[3])
    photo_box = (
        int(np.clip(math.floor(float(px0)), 0, geom.orig_w)),
        int(np.clip(math.floor(float(py0)), 0, geom.orig_h)),
        int(np.clip(math.ceil(float(px1)), 0, geom.orig_w)),
        int(np.clip(math.ceil(float(py1)), 0, geom.orig_h)),
    )
    return r1 - r0 + 1, box, photo_box


def _batchnorm_eval(t: dict[str, np.ndarray], prefix: str, channel: int, s: float, eps: float) -> dict[str, float]:
    """BatchNorm as eval mode computes it for one value ``s`` of ``channel``, in float64."""
    f = {k: float(np.float64(t[f"{prefix}.{k}"][channel])) for k in ("running_mean", "running_var", "weight", "bias")}
    x_hat = (s - f["running_mean"]) / math.sqrt(f["running_var"] + eps)  # eval mode: the running statistics
    return dict(
        bn_mean=f["running_mean"], bn_var=f["running_var"], bn_eps=eps, bn_gamma=f["weight"], bn_beta=f["bias"],
        bn_x_hat=x_hat, bn_out=x_hat * f["weight"] + f["bias"],
    )  # fmt: skip


def _hand_cell(
    predictor, x: np.ndarray, outs: dict[str, np.ndarray], conv_i: int, channel: int, row: int, col: int,
    geom: LetterboxGeometry,
) -> ConvCell:  # fmt: skip
    """Cell (row, col) of output channel ``channel`` of the conv at ``features[conv_i]``, by
    the reference formulas in float64 from the model file's weights, beside the engine's."""
    engine = predictor.engine
    cfg, arch = engine.model.cfg, engine.arch
    table = arch.layer_table(cfg)
    names = arch.layer_names(cfg)
    conv, bn, relu = names[conv_i], names[conv_i + 1], names[conv_i + 2]
    t = predictor.model_file.tensors
    weight = np.asarray(t[f"{table[conv_i].tensors}.weight"], dtype=np.float64)
    src = x[0] if conv_i == 0 else outs[names[conv_i - 1]]  # (C_in, H, W) what the conv reads
    pad = table[conv_i].padding
    c = conv2d_cell(src[None].astype(np.float64), weight, None, 0, channel, row, col, 1, pad)
    eps = float(engine.model.features[conv_i + 1].eps)
    b = _batchnorm_eval(t, table[conv_i + 1].tensors, channel, c["sum"], eps)
    relu_out = max(b["bn_out"], 0.0)
    values = {k: float(outs[name][channel, row, col]) for k, name in (("conv", conv), ("bn", bn), ("relu", relu))}
    diff = max(abs(values["conv"] - c["out"]), abs(values["bn"] - b["bn_out"]), abs(values["relu"] - relu_out))
    rf, box, photo_box = _boxes(layer_geometry(arch, cfg), conv_i, row, col, x.shape[-1], geom)
    products = c["products"]  # (C_in, k, k)
    return ConvCell(
        conv=conv, bn=bn, relu=relu, source="input" if conv_i == 0 else names[conv_i - 1],
        channel=channel, row=row, col=col,
        window=c["window"], kernel=c["kernel"], products=products, channel_sums=products.sum(axis=(1, 2)),
        conv_sum=c["sum"], conv_bias=c["bias"], **b,
        relu_out=relu_out, engine=values, max_abs_diff=diff, agrees=diff <= AGREE_ATOL,
        receptive_field=rf, input_box=box, photo_box=photo_box,
    )  # fmt: skip


def _pool_cell(
    arch: Architecture, cfg, outs: dict[str, np.ndarray], conv_i: int, cell: ConvCell
) -> tuple[PoolCell | None, str | None]:
    """The max-pool after the cell's block, or (None, why) where there is none."""
    table = arch.layer_table(cfg)
    n = len(arch.layer_names(cfg))  # the first n rows are ``features``, then the head
    if conv_i + 3 >= n:
        head = "global average pooling" if table[n].kind == "avgpool" else "global average and max pooling"
        return None, f"{cell.relu} is the last conv block: {head} follows, every cell counts"
    after = table[conv_i + 3]
    if after.kind != "maxpool":  # a deeper stage: the next block of the same stage reads every cell
        return None, f"no max pool after {cell.relu}: {after.name}, the stage's next block, reads every cell"
    pool, k, s = after.name, after.kernel, after.stride
    relu_map = outs[cell.relu][cell.channel].astype(np.float64)  # (h, w)
    pooled, winners = maxpool2d_reference(relu_map[None, None], k, s)
    i, j = cell.row // s, cell.col // s
    if i >= pooled.shape[2] or j >= pooled.shape[3]:
        return None, f"cell ({cell.row},{cell.col}) is in no {pool} window (the odd last row/column is dropped)"
    r, q = (int(v) for v in winners[0, 0, i, j])
    cell_pool = PoolCell(
        pool=pool, row=i, col=j, origin=(i * s, j * s), window=relu_map[i * s : i * s + k, j * s : j * s + k].copy(),
        winner=(r, q), value=float(pooled[0, 0, i, j]), engine_value=float(outs[pool][cell.channel, i, j]),
        cell_won=(r, q) == (cell.row, cell.col),
    )  # fmt: skip
    return cell_pool, None


# -- 4. the heatmap -----------------------------------------------------------------------------
@dataclass
class Heatmap:
    """Where the evidence is: Grad-CAM (CNN) or attention rollout (ViT), on the photo."""

    method: str  # "grad-cam" or "attention rollout"
    layer: str  # Grad-CAM's target layer (relu4), or "blocks" for rollout
    class_name: str | None  # the class explained; None for rollout, which has no class
    class_index: int | None
    score: float | None  # y_c, the class's logit
    alpha: np.ndarray | None  # (K,) Grad-CAM channel weights
    cam: np.ndarray  # (h, w) the raw map at the layer's resolution
    where: Localization  # upsampled to the input, peak in input and photo pixels
    preview: np.ndarray  # (h, w, 3) uint8 small photo with the heat blended, for the terminal


def heat_maps(predictor, x: np.ndarray, class_index: int | np.ndarray | None) -> dict[str, Any]:
    """The raw maps for photos x: Grad-CAM for a CNN (class ``class_index``, default the
    predicted one), attention rollout for a ViT. Returns method, layer, cams (N, h, w),
    alpha (N, K) or None, class_index (N,) or None, logits (N, classes)."""
    mf, engine = predictor.model_file, predictor.engine
    method = get_arch(mf.arch).heatmap
    if method == "grad-cam":
        m = grad_cam(engine, engine.model.cfg, x, class_index)
        return dict(method=method, layer=m.layer, cams=m.cam, alpha=m.alpha, class_index=m.class_index, logits=m.logits)
    from tinytriage.explain.rollout import attention_rollout, cls_attention_maps

    grid = engine.model.patch_embed.grid_size  # (gh, gw) patches
    logits, attns = engine.logits_and_attention(x)
    cams = attention_rollout(attns, grid)
    heads = cls_attention_maps(attns, grid)  # (layers, N, heads, gh, gw)
    return dict(method=method, layer="blocks", cams=cams, alpha=None, class_index=None, logits=logits, head_maps=heads)


def _overlay(photo, heat: np.ndarray, geom: LetterboxGeometry, peak: tuple[int, int] | None, max_side: int) -> bytes:
    """The photo scaled to at most ``max_side`` with the heat blended over it (PNG bytes)."""
    from tinytriage.plots import overlay_png

    img = photo.copy()
    img.thumbnail((max_side, max_side))
    small_peak = None
    if peak is not None:
        small_peak = (int(peak[0] * img.width / geom.orig_w), int(peak[1] * img.height / geom.orig_h))
    return overlay_png(img, heat_on_photo(heat, geom, img.size), peak=small_peak)


def _preview(photo, heat: np.ndarray, geom: LetterboxGeometry) -> np.ndarray:
    """A small overlay as an RGB array, PREVIEW_WIDTH pixels wide (half blocks: 2 pixels per row)."""
    from PIL import Image

    from tinytriage.plots import overlay_png

    w = PREVIEW_WIDTH
    h = max(2, round(w * geom.orig_h / geom.orig_w))
    if h > 2 * PREVIEW_WIDTH:  # a tall photo: at most PREVIEW_WIDTH terminal rows
        w, h = max(2, round(2 * PREVIEW_WIDTH * geom.orig_w / geom.orig_h)), 2 * PREVIEW_WIDTH
    small = photo.resize((w, h), Image.Resampling.BILINEAR)
    png = overlay_png(small, heat_on_photo(heat, geom, (w, h)))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# -- the whole explanation ------------------------------------------------------------------------
@dataclass
class ExplainResult:
    photo: str
    model: str
    backend: str
    arch: str
    input_size: int
    photo_size: tuple[int, int]  # (width, height) of the photo after EXIF orientation
    geometry: LetterboxGeometry
    summary: ModelSummary
    features: FeatureMaps | None  # conv nets only
    cell: ConvCell | None  # conv blocks (the CNN) only
    pool: PoolCell | None
    pool_note: str | None  # why there is no pool cell
    heatmap: Heatmap
    decision: Any  # predict.Prediction
    saved: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    attention_heads: np.ndarray | None = None  # ViT: class-token attention, (layers, heads, gh, gw)
    depthwise: DepthwiseCell | None = None  # mobile blocks (EfficientNet): the depthwise cell by hand
    pointwise: PointwiseCell | None = None  # ... and the pointwise cell after it

    def to_json(self) -> dict[str, Any]:
        def rounded(a):  # big arrays: 6 decimals is float32's precision, and a third of the text
            return None if a is None else np.round(np.asarray(a, dtype=np.float64), 6)

        g, hm, wh = self.geometry, self.heatmap, self.heatmap.where
        d = {
            "photo": self.photo,
            "model": self.model,
            "backend": self.backend,
            "arch": self.arch,
            "input_size": self.input_size,
            "photo_size": list(self.photo_size),
            "geometry": {"scale_x": g.scale, "scale_y": g.sy, "pad_x": g.pad_x, "pad_y": g.pad_y},
            "summary": {
                "total_params": self.summary.total_params,
                "layers": [r.__dict__ for r in self.summary.rows],
            },
            "features": None,
            "cell": None,
            "pool": None if self.pool is None else self.pool.__dict__,
            "pool_note": self.pool_note,
            "heatmap": {
                "method": hm.method,
                "layer": hm.layer,
                "class": hm.class_name,
                "class_index": hm.class_index,
                "score": hm.score,
                "alpha": hm.alpha,
                "cam": hm.cam,
                "heat": rounded(wh.heat),
                "content_box": list(wh.content_box),
                "peak_input": None if wh.peak_input is None else list(wh.peak_input),
                "peak": None if wh.peak is None else list(wh.peak),
            },
            "gradcam_peak": None if wh.peak is None else list(wh.peak),
            "decision": self.decision.to_json(),
            "saved": self.saved,
            "notes": self.notes,
        }
        if self.features is not None:
            f = self.features
            d["features"] = {**f.__dict__, "maps": rounded(f.maps)}
        if self.cell is not None:
            d["cell"] = dict(self.cell.__dict__)
        if self.attention_heads is not None:
            d["attention_heads"] = np.round(self.attention_heads.astype(np.float64), 6)
        for key in ("depthwise", "pointwise"):  # only where there are: the CNN's JSON stays as it was
            if getattr(self, key) is not None:
                d[key] = dict(getattr(self, key).__dict__)
        return d


def _pick_layer(arch: Architecture, cfg, layer: str | None) -> tuple[str, int]:
    """(name, index in ``features``) of ``--layer`` (default: the architecture's ``explain_layer``)."""
    names = arch.layer_names(cfg)
    name = arch.explain_layer if layer is None else layer
    if name not in names:
        raise ConfigError(f"{name}: no such layer; this model has {', '.join(names)}", option="--layer")
    return name, names.index(name)


def _feature_maps(outs: dict[str, np.ndarray], name: str, channel: int | None) -> FeatureMaps:
    """The maps of layer ``name``: all its channels, or ``channel`` alone."""
    fmap = outs[name]  # (C, h, w)
    C = fmap.shape[0]
    if channel is not None and not 0 <= channel < C:
        raise ConfigError(f"{channel}: {name} has channels 0..{C - 1}", option="--channel")
    chans = list(range(C)) if channel is None else [channel]
    shown = fmap[chans]
    return FeatureMaps(name, tuple(fmap.shape), chans, shown, float(shown.min()), float(shown.max()))


def _pick_cell(act: np.ndarray, channel: int | None, at: tuple[int, int] | None, what: str) -> tuple[int, int, int]:
    """(channel, row, col) of the cell to compute by hand in ``act`` (C, h, w): by default the
    strongest activation (of ``channel``, or of all); with ``at`` alone, the channel most active there."""
    if at is None:
        search = act if channel is None else act[channel : channel + 1]
        k, r, c = np.unravel_index(int(np.argmax(search)), search.shape)
        return (int(k) if channel is None else channel), int(r), int(c)
    h, w = act.shape[1:]
    if not (0 <= at[0] < h and 0 <= at[1] < w):
        raise ConfigError(f"{at[0]},{at[1]}: {what} are {h}x{w} (rows 0..{h - 1}, columns 0..{w - 1})", option="--at")
    if channel is None:
        channel = int(np.argmax(act[:, at[0], at[1]]))  # the channel most active there
    return channel, at[0], at[1]


def _explain_cnn(
    predictor, x: np.ndarray, geom: LetterboxGeometry, layer: str | None, channel: int | None,
    at: tuple[int, int] | None,
) -> tuple[FeatureMaps, dict[str, Any]]:  # fmt: skip
    """Sections 2 and 3 for a conv block: the layer's maps, its block's cell by hand, the
    pool window after it."""
    engine = predictor.engine
    arch, cfg = engine.arch, engine.model.cfg
    name, i = _pick_layer(arch, cfg, layer)
    table = arch.layer_table(cfg)
    conv_i = max(j for j in range(i + 1) if table[j].kind == "conv")  # the conv of the layer's block
    outs = engine.layer_outputs(x)  # name -> (C, h, w)
    features = _feature_maps(outs, name, channel)
    relu = outs[table[conv_i + 2].name]  # (C, h, w): the block's ReLU, same channels
    channel, row, col = _pick_cell(relu, channel, at, "the block's maps")
    cell = _hand_cell(predictor, x, outs, conv_i, channel, row, col, geom)
    pool, pool_note = _pool_cell(arch, cfg, outs, conv_i, cell)
    return features, {"cell": cell, "pool": pool, "pool_note": pool_note}


def _explain_mobile(
    predictor, x: np.ndarray, geom: LetterboxGeometry, layer: str | None, channel: int | None,
    at: tuple[int, int] | None,
) -> tuple[FeatureMaps, dict[str, Any]]:  # fmt: skip
    """Sections 2 and 3 for mobile blocks: the layer's maps, then in the block of that layer
    (or the first after it, or the last) one depthwise cell and one pointwise cell by hand.
    ``channel`` is the maps' channel and the depthwise channel; ``at`` a depthwise output cell."""
    engine, t = predictor.engine, predictor.model_file.tensors
    arch, cfg = engine.arch, engine.model.cfg
    name, i = _pick_layer(arch, cfg, layer)
    outs = engine.layer_outputs(x)  # name -> (C, h, w)
    features = _feature_maps(outs, name, channel)

    names = arch.layer_names(cfg)
    rows = arch.layer_table(cfg)[: len(names)]
    blocks = [j for j, r in enumerate(rows) if f"{r.tensors}.conv_dw.weight" in t]  # blocks with a depthwise conv
    b = next((j for j in blocks if j >= i), blocks[-1])
    block, row_spec, module = names[b], rows[b], engine.model.features[b]
    parts = engine.block_outputs(x, block)  # "input", then each child's output in order
    kids = list(parts)[1:]
    d = kids.index("conv_dw")  # timm's order: conv_dw, its BatchNorm and ReLU6, then the 1x1 after them
    dw_bn, dw_act, pw, pw_bn = kids[d + 1 : d + 5]
    src = parts["input" if d == 0 else kids[d - 1]]  # (C, H, W) what the depthwise conv reads
    act = parts[dw_act]  # (C, h, w)
    if channel is not None and not 0 <= channel < act.shape[0]:
        raise ConfigError(f"{channel}: {block}.conv_dw has channels 0..{act.shape[0] - 1}", option="--channel")
    channel, row, col = _pick_cell(act, channel, at, f"{block}.conv_dw's maps")

    # the depthwise cell: one channel's window times its kernel
    k, s, pt = row_spec.kernel, row_spec.stride, row_spec.padding
    (H, W), (h, w) = src.shape[1:], act.shape[1:]
    after = max((h - 1) * s + k - H - pt, 0), max((w - 1) * s + k - W - pt, 0)  # what the last window needs
    pads = ((pt, after[0]), (pt, after[1]))
    weight = np.asarray(t[f"{block}.conv_dw.weight"], dtype=np.float64)  # (C, 1, k, k)
    x_pad = pad2d_asym(src[None].astype(np.float64), pads)  # (1, C, H + top + bottom, W + left + right)
    c = conv2d_cell(x_pad, weight, None, 0, channel, row, col, s, 0, 1, groups=weight.shape[0])
    bn = _batchnorm_eval(t, f"{block}.{dw_bn}", channel, c["sum"], float(getattr(module, dw_bn).eps))
    act_out = min(max(bn["bn_out"], 0.0), 6.0)  # ReLU6
    at_cell = lambda part: float(parts[part][channel, row, col])  # noqa: E731
    values = {"conv": at_cell("conv_dw"), "bn": at_cell(dw_bn), "act": at_cell(dw_act)}
    diff = max(abs(values["conv"] - c["sum"]), abs(values["bn"] - bn["bn_out"]), abs(values["act"] - act_out))
    rf, box, photo_box = _boxes(layer_geometry(arch, cfg), b, row, col, x.shape[-1], geom)
    depthwise = DepthwiseCell(
        block=block, block_kind=row_spec.kind, conv=f"{block}.conv_dw", bn=f"{block}.{dw_bn}", act=f"{block}.{dw_act}",
        source=names[b - 1] if d == 0 else f"{block}.{kids[d - 1]}", channel=channel, row=row, col=col,
        kernel_size=k, stride=s, pads=pads, window=c["window"][0], kernel=c["kernel"][0], products=c["products"][0],
        conv_sum=c["sum"], **bn, act_out=act_out, engine=values, max_abs_diff=diff, agrees=diff <= AGREE_ATOL,
        receptive_field=rf, input_box=box, photo_box=photo_box,
    )  # fmt: skip

    # the pointwise cell at the same pixel: a dot product over the depthwise conv's channels
    out = int(np.argmax(parts[pw_bn][:, row, col]))  # the strongest output channel there
    weight = np.asarray(t[f"{block}.{pw}.weight"], dtype=np.float64)  # (C_out, C, 1, 1)
    c = conv2d_cell(act[None].astype(np.float64), weight, None, 0, out, row, col)  # window (C, 1, 1)
    inputs, weights, products = c["window"][:, 0, 0], c["kernel"][:, 0, 0], c["products"][:, 0, 0]
    bn = _batchnorm_eval(t, f"{block}.{pw_bn}", out, c["sum"], float(getattr(module, pw_bn).eps))
    residual = float(parts["input"][out, row, col]) if module.has_skip else None  # the input added back
    block_out = bn["bn_out"] + (residual or 0.0)
    values = {"conv": float(parts[pw][out, row, col]), "bn": float(parts[pw_bn][out, row, col])}
    values["block"] = float(outs[block][out, row, col])
    diff = max(abs(values["conv"] - c["sum"]), abs(values["bn"] - bn["bn_out"]), abs(values["block"] - block_out))
    pointwise = PointwiseCell(
        conv=f"{block}.{pw}", bn=f"{block}.{pw_bn}", source=depthwise.act, channel=out, row=row, col=col,
        inputs=inputs, weights=weights, products=products, conv_sum=c["sum"],
        depthwise_channel=channel, depthwise_term=float(products[channel]), **bn,
        residual=residual, block_out=block_out, engine=values, max_abs_diff=diff, agrees=diff <= AGREE_ATOL,
    )  # fmt: skip
    return features, {"depthwise": depthwise, "pointwise": pointwise}


# what explain computes by hand, by the architecture's ``hand_cell`` (models.ARCHS)
_HAND_CELLS = {"conv block": _explain_cnn, "mobile block": _explain_mobile}


def explain_photo(
    photo: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    backend: str = "numpy",
    arch: str | None = None,
    device: str = "cpu",
    layer: str | None = None,
    channel: int | None = None,
    at: tuple[int, int] | None = None,
    class_name: str | None = None,
    save_dir: str | os.PathLike | None = None,
) -> ExplainResult:
    """Explain one photo: summary, feature maps, one cell by hand, heatmap, decision.

    ``channel`` and ``at`` (row, col in the conv's output) choose the hand-computed cell; by
    default the strongest activation of the layer's block (over all channels, or in
    ``channel``); with ``at`` alone, the channel most active at that cell. ``class_name`` is the Grad-CAM class (default: the predicted one).
    ``save_dir`` writes the feature-map grid and the heatmap overlay as PNGs. ``model`` None
    means the bundled model of ``arch`` (default efficientnet_lite0)."""
    from tinytriage.data.preprocess import load_image, preprocess_with_geometry
    from tinytriage.files import atomic_write_bytes
    from tinytriage.inference.predict import PhotoFailure, Predictor

    predictor = Predictor.load(model, backend=backend, arch=arch, device=device)
    mf = predictor.model_file
    x, geom = preprocess_with_geometry(photo, predictor.preprocess_config)  # (1, 3, S, S)
    S = x.shape[-1]
    notes: list[str] = []

    class_index = None
    if class_name is not None:
        if class_name not in mf.classes:
            raise ConfigError(f"{class_name}: not a class of this model ({listed(mf.classes)})", option="--class")
        class_index = mf.classes.index(class_name)

    features, hand = None, {}
    hand_cell = get_arch(mf.arch).hand_cell
    if hand_cell is not None:  # a conv net: its maps and one cell by hand
        features, hand = _HAND_CELLS[hand_cell](predictor, x, geom, layer, channel, at)
    elif layer is not None or channel is not None or at is not None:
        raise ConfigError("--layer, --channel and --at are for CNN models; a ViT is explained by its attention rollout")
    elif class_name is not None:
        notes.append("attention rollout does not depend on the class: --class only affects Grad-CAM (CNN models)")

    # the decision exactly as `predict` makes it, with its second look when the model has one
    (decision,) = predictor.predict_paths([str(photo)], batch_size=1, workers=1)
    if isinstance(decision, PhotoFailure):  # it decoded a moment ago: changed on disk since
        raise ImageError(decision.reason)
    if decision.second_look:
        notes.append(
            "unsure at first, the model looked again closer at the device: the probabilities are the two looks' mean"
        )
    hm = heat_maps(predictor, x, class_index)
    where = localize(hm["cams"][0], geom, S)
    ci = None if hm["class_index"] is None else int(hm["class_index"][0])
    upright = load_image(photo, max_pixels=predictor.preprocess_config.max_pixels)
    heatmap = Heatmap(
        hm["method"], hm["layer"], None if ci is None else mf.classes[ci], ci,
        None if ci is None else float(hm["logits"][0, ci]),
        None if hm["alpha"] is None else hm["alpha"][0], hm["cams"][0], where, _preview(upright, where.heat, geom),
    )  # fmt: skip
    if where.peak is None:
        notes.append(f"the {hm['method']} map is zero everywhere: no positive evidence for the class")

    saved: list[str] = []
    if save_dir is not None:
        from tinytriage.plots import feature_grid_png

        out = Path(save_dir)
        stem = Path(photo).stem
        if features is not None:
            scale = max(1, 128 // max(features.maps.shape[1:]))
            path = out / f"{stem}.{features.layer}.png"
            saved.append(str(atomic_write_bytes(path, feature_grid_png(features.maps, scale=scale))))
        tag = f"gradcam.{heatmap.class_name}" if heatmap.class_name else "rollout"
        png = _overlay(upright, where.heat, geom, where.peak, OVERLAY_MAX_SIDE)
        saved.append(str(atomic_write_bytes(out / f"{stem}.{tag}.png", png)))
        if "head_maps" in hm:  # one row per layer, one column per head
            L, _, H, gh, gw = hm["head_maps"].shape
            grid = feature_grid_png(hm["head_maps"][:, 0].reshape(L * H, gh, gw), scale=8, cols=H)
            saved.append(str(atomic_write_bytes(out / f"{stem}.attention_heads.png", grid)))

    return ExplainResult(
        str(photo), str(predictor.model_path), backend, mf.arch, S, (geom.orig_w, geom.orig_h), geom,
        model_summary(mf.arch, mf.config), features, hand.get("cell"), hand.get("pool"), hand.get("pool_note"),
        heatmap, decision, saved, notes, hm["head_maps"][:, 0] if "head_maps" in hm else None,
        depthwise=hand.get("depthwise"), pointwise=hand.get("pointwise"),
    )  # fmt: skip
