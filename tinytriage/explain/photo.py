"""`tinytriage explain PHOTO`: how the network reaches its decision on one real photo.

Every number is computed here and printed by ``render.print_explain``:

1. **Model summary**, from the architecture's config (so the same for every engine): each
   layer's output shape, trainable parameters, and its receptive field r and jump in input
   pixels (``tinytriage.explain.receptive``: r_l = r_(l-1) + (k_l - 1) * jump_(l-1)).
2. **Feature maps** of one layer. The default is ``relu1``, the first conv block's output:
   it keeps the input's resolution and its 3x3x3 kernels read the photo itself, so its maps
   still look like the photo (edges, colour blobs) and its cell can be computed by hand in
   27 products. ``--layer`` picks any other (conv2, bn2, relu2, pool2, ...).
3. **One cell by hand**, for the conv block of that layer: the input window of every input
   channel, the kernel, their products and sum (``conv2d_cell``, the reference loop's cell),
   then BatchNorm as eval mode computes it, (s - running_mean) / sqrt(running_var + eps) *
   gamma + beta (the convs have no bias: BatchNorm's beta plays its role), then ReLU; each
   checked against the fast engine's activation at that cell. Then the max-pool window the
   cell falls in and which cell won it (``maxpool2d_reference``'s winners).
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
from tinytriage.errors import ImageError, TinyTriageError
from tinytriage.explain.gradcam import Localization, grad_cam, heat_on_photo, localize
from tinytriage.explain.receptive import receptive_fields
from tinytriage.models import get_arch
from tinytriage.models.cnn import CNNConfig, feature_layers
from tinytriage.nn.conv import conv2d_cell, conv_output_size
from tinytriage.nn.pool import maxpool2d_reference

DEFAULT_LAYER = "relu1"  # see the module docstring, point 2
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


def _cnn_geometry(cfg: CNNConfig) -> list[tuple[str, str, int, int, int]]:
    """(name, kind, kernel, stride, padding) per layer of ``features``; BN and ReLU are 1x1."""
    out = []
    for kind, role, args in feature_layers(cfg):
        if kind == "conv":
            out.append((role, kind, args["kernel_size"], 1, args["padding"]))
        elif kind == "maxpool":
            out.append((role, kind, args["kernel_size"], args["stride"], 0))
        else:
            out.append((role, kind, 1, 1, 0))
    return out


def _cnn_summary(cfg: CNNConfig) -> ModelSummary:
    rows: list[tuple[str, str, str, tuple[int, ...], int]] = []
    C, S = cfg.in_channels, cfg.input_size
    spec = []  # (name, kernel, stride) for receptive_fields
    for i, ((kind, role, args), (_, _, k, s, p)) in enumerate(
        zip(feature_layers(cfg), _cnn_geometry(cfg), strict=True)
    ):
        params = 0
        if kind == "conv":
            c_in, C = args["in_channels"], args["out_channels"]
            params = C * c_in * k * k + (C if args["bias"] else 0)  # one k x k x C_in kernel per output channel
        elif kind == "bn":
            params = 2 * C  # gamma and beta per channel
        S = conv_output_size(S, k, s, p)
        rows.append((role, kind, f"features.{i}" if params else "", (C, S, S), params))
        spec.append((role, k, s))
    n, F = cfg.num_classes, cfg.head_features
    pool = "avgpool" if cfg.pool == "avg" else "avgmaxpool"  # avgmax: mean and max of each map, 2C values
    rows += [
        (pool, pool, "", (F, 1, 1), 0),  # global pooling: one window the size of the map
        ("flatten", "flatten", "", (F,), 0),
        ("dropout", "dropout", "", (F,), 0),  # identity in eval mode
        ("head", "linear", "head.3", (n,), F * n + n),
    ]
    spec += [(pool, S, 1), ("flatten", 1, 1), ("dropout", 1, 1), ("head", 1, 1)]
    rf = receptive_fields(spec)
    table = [
        LayerRow(name, kind, t, shape, p, r.receptive_field, r.jump)
        for (name, kind, t, shape, p), r in zip(rows, rf, strict=True)
    ]
    return ModelSummary("cnn", cfg.input_size, table, sum(r.params for r in table))


def _vit_summary(config: dict) -> ModelSummary:
    from tinytriage.models.vit import ViTConfig

    cfg = ViTConfig.from_dict(config)
    D, P, (gh, gw) = cfg.embed_dim, cfg.patch_size, cfg.grid_size
    T, hidden = cfg.num_tokens, int(cfg.embed_dim * cfg.mlp_ratio)
    qkv_bias = 3 * D if cfg.qkv_bias else 0
    # norm1, qkv, proj, norm2, fc1, fc2
    block = 2 * D + (3 * D * D + qkv_bias) + (D * D + D) + 2 * D + (D * hidden + hidden) + (hidden * D + D)
    # a patch sees its P x P pixels; after the first attention every token can see every patch
    rows = [
        LayerRow("patch_embed", "conv", "patch_embed.proj", (D, gh, gw), D * cfg.in_chans * P * P + D, P, P),
        LayerRow("tokens", "cls_token + pos_embed", "cls_token, pos_embed", (T, D), D + T * D, P, P),
    ]
    rows += [LayerRow(f"blocks.{i}", "block", f"blocks.{i}", (T, D), block, cfg.img_size, P) for i in range(cfg.depth)]
    rows += [
        LayerRow("norm", "layernorm", "norm", (T, D), 2 * D, cfg.img_size, P),
        LayerRow("head", "linear", "head", (cfg.num_classes,), D * cfg.num_classes + cfg.num_classes, cfg.img_size, P),
    ]
    return ModelSummary("vit", cfg.img_size, rows, sum(r.params for r in rows))


# how each family of the architecture table is summarised, by what explain shows for it
_SUMMARIES = {"grad-cam": lambda config: _cnn_summary(CNNConfig.from_dict(config)), "attention rollout": _vit_summary}


def model_summary(arch: str, config: dict) -> ModelSummary:
    """The layer table of an architecture, computed from its config alone."""
    return _SUMMARIES[get_arch(arch).heatmap](config)


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


def _hand_cell(
    predictor, x: np.ndarray, outs: dict[str, np.ndarray], conv_i: int, channel: int, row: int, col: int,
    geom: LetterboxGeometry,
) -> ConvCell:  # fmt: skip
    """Cell (row, col) of output channel ``channel`` of the conv at ``features[conv_i]``, by
    the reference formulas in float64 from the model file's weights, beside the engine's."""
    cfg = predictor.engine.model.cfg
    layers = feature_layers(cfg)
    geometry = _cnn_geometry(cfg)
    names = [role for _kind, role, _args in layers]
    conv, bn, relu = names[conv_i], names[conv_i + 1], names[conv_i + 2]
    t = predictor.model_file.tensors
    f64 = lambda key: np.asarray(t[key], dtype=np.float64)  # noqa: E731
    src = x[0] if conv_i == 0 else outs[names[conv_i - 1]]  # (C_in, H, W) what the conv reads
    pad = layers[conv_i][2]["padding"]
    c = conv2d_cell(src[None].astype(np.float64), f64(f"features.{conv_i}.weight"), None, 0, channel, row, col, 1, pad)
    b = f"features.{conv_i + 1}."
    mean, var = float(f64(b + "running_mean")[channel]), float(f64(b + "running_var")[channel])
    gamma, beta = float(f64(b + "weight")[channel]), float(f64(b + "bias")[channel])
    eps = float(predictor.engine.model.features[conv_i + 1].eps)
    x_hat = (c["sum"] - mean) / math.sqrt(var + eps)  # eval mode: the running statistics
    bn_out = x_hat * gamma + beta
    relu_out = max(bn_out, 0.0)
    engine = {k: float(outs[name][channel, row, col]) for k, name in (("conv", conv), ("bn", bn), ("relu", relu))}
    diff = max(abs(engine["conv"] - c["out"]), abs(engine["bn"] - bn_out), abs(engine["relu"] - relu_out))

    (r0, r1), (c0, c1) = cell_input_window(geometry, conv_i, row, col)
    S = cfg.input_size
    box = (max(c0, 0), max(r0, 0), min(c1 + 1, S), min(r1 + 1, S))
    px0, py0 = geom.to_original(box[0], box[1])
    px1, py1 = geom.to_original(box[2], box[3])
    photo_box = (
        int(np.clip(math.floor(float(px0)), 0, geom.orig_w)),
        int(np.clip(math.floor(float(py0)), 0, geom.orig_h)),
        int(np.clip(math.ceil(float(px1)), 0, geom.orig_w)),
        int(np.clip(math.ceil(float(py1)), 0, geom.orig_h)),
    )
    products = c["products"]  # (C_in, k, k)
    return ConvCell(
        conv=conv, bn=bn, relu=relu, source="input" if conv_i == 0 else names[conv_i - 1],
        channel=channel, row=row, col=col,
        window=c["window"], kernel=c["kernel"], products=products, channel_sums=products.sum(axis=(1, 2)),
        conv_sum=c["sum"], conv_bias=c["bias"],
        bn_mean=mean, bn_var=var, bn_eps=eps, bn_gamma=gamma, bn_beta=beta, bn_x_hat=x_hat, bn_out=bn_out,
        relu_out=relu_out, engine=engine, max_abs_diff=diff, agrees=diff <= AGREE_ATOL,
        receptive_field=r1 - r0 + 1, input_box=box, photo_box=photo_box,
    )  # fmt: skip


def _pool_cell(
    cfg: CNNConfig, outs: dict[str, np.ndarray], conv_i: int, cell: ConvCell
) -> tuple[PoolCell | None, str | None]:
    """The max-pool after the cell's block, or (None, why) where there is none."""
    layers = feature_layers(cfg)
    if conv_i + 3 >= len(layers):
        head = "global average pooling" if cfg.pool == "avg" else "global average and max pooling"
        return None, f"{cell.relu} is the last conv block: {head} follows, every cell counts"
    if layers[conv_i + 3][0] != "maxpool":  # a deeper stage: the next block of the same stage reads every cell
        return None, f"no max pool after {cell.relu}: {layers[conv_i + 3][1]}, the stage's next block, reads every cell"
    _kind, pool, args = layers[conv_i + 3]
    k, s = args["kernel_size"], args["stride"]
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
    features: FeatureMaps | None  # CNN only
    cell: ConvCell | None  # CNN only
    pool: PoolCell | None
    pool_note: str | None  # why there is no pool cell
    heatmap: Heatmap
    decision: Any  # predict.Prediction
    saved: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    attention_heads: np.ndarray | None = None  # ViT: class-token attention, (layers, heads, gh, gw)

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
        return d


def _pick_layer(cfg: CNNConfig, layer: str | None) -> tuple[str, int]:
    """(name, index in ``features`` of its block's conv) of a layer name (default relu1)."""
    layers = feature_layers(cfg)
    names = [role for _kind, role, _args in layers]
    name = DEFAULT_LAYER if layer is None else layer
    if name not in names:
        raise TinyTriageError(f"--layer {name}: no such layer; this model has {', '.join(names)}")
    conv_i = max(j for j in range(names.index(name) + 1) if layers[j][0] == "conv")
    return name, conv_i


def _explain_cnn(
    predictor, x: np.ndarray, geom: LetterboxGeometry, layer: str | None, channel: int | None,
    at: tuple[int, int] | None,
) -> tuple[FeatureMaps, ConvCell, PoolCell | None, str | None]:  # fmt: skip
    """Sections 2 and 3: the layer's maps, its block's cell by hand, the pool window after it."""
    cfg = predictor.engine.model.cfg
    name, conv_i = _pick_layer(cfg, layer)
    outs = predictor.engine.layer_outputs(x)  # name -> (C, h, w)
    fmap = outs[name]  # (C, h, w)
    C = fmap.shape[0]
    if channel is not None and not 0 <= channel < C:
        raise TinyTriageError(f"--channel {channel}: {name} has channels 0..{C - 1}")
    chans = list(range(C)) if channel is None else [channel]
    shown = fmap[chans]
    features = FeatureMaps(name, tuple(fmap.shape), chans, shown, float(shown.min()), float(shown.max()))

    relu = outs[feature_layers(cfg)[conv_i + 2][1]]  # (C, h, w): the block's ReLU, same channels
    if at is None:  # the strongest activation: of the chosen channel, or of the whole block
        search = relu if channel is None else relu[channel : channel + 1]
        k, r, c = np.unravel_index(int(np.argmax(search)), search.shape)
        channel, at = (int(k) if channel is None else channel), (int(r), int(c))
    else:
        h, w = relu.shape[1:]
        if not (0 <= at[0] < h and 0 <= at[1] < w):
            raise TinyTriageError(
                f"--at {at[0]},{at[1]}: the block's maps are {h}x{w} (rows 0..{h - 1}, columns 0..{w - 1})"
            )
        if channel is None:
            channel = int(np.argmax(relu[:, at[0], at[1]]))  # the channel most active there
    cell = _hand_cell(predictor, x, outs, conv_i, channel, at[0], at[1], geom)
    pool, pool_note = _pool_cell(cfg, outs, conv_i, cell)
    return features, cell, pool, pool_note


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
    means the bundled model of ``arch`` (default cnn)."""
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
            raise TinyTriageError(f"--class {class_name}: not a class of this model ({', '.join(mf.classes)})")
        class_index = mf.classes.index(class_name)

    features = cell = pool = pool_note = None
    if get_arch(mf.arch).heatmap == "grad-cam":  # a conv net: its maps and one cell by hand
        features, cell, pool, pool_note = _explain_cnn(predictor, x, geom, layer, channel, at)
    elif layer is not None or channel is not None or at is not None:
        raise TinyTriageError(
            "--layer, --channel and --at are for CNN models; a ViT is explained by its attention rollout"
        )
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
        model_summary(mf.arch, mf.config), features, cell, pool, pool_note, heatmap, decision, saved, notes,
        hm["head_maps"][:, 0] if "head_maps" in hm else None,
    )  # fmt: skip
