"""The Vision Transformer: erf, attention against torch's own kernel, the whole ViT against
its PyTorch twin (forward and every gradient, by name), timm's key names, init, config,
and attention rollout; the distillation token (DeiT) and the convolutional stem (Xiao et
al. 2021) through config, heads, keys, model files, engines and rollout. The single
layers' one-line parity rows live in test_nn_layers.py.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from parity import assert_close, assert_matches_torch  # noqa: E402

from tinytriage.engines.torch_engine import TorchEngine  # noqa: E402
from tinytriage.errors import ShapeError  # noqa: E402
from tinytriage.explain.rollout import attention_rollout, cls_attention_maps, rollout  # noqa: E402
from tinytriage.models import ARCHS, torch_vit  # noqa: E402
from tinytriage.models.file import build_numpy_model  # noqa: E402
from tinytriage.models.vit import (  # noqa: E402
    ViTConfig,
    build_vit,
    count_macs,
    first_conv,
    forward_with_attention,
)
from tinytriage.nn import (  # noqa: E402
    GELU,
    Attention,
    ConvPatchEmbed,
    CrossEntropyLoss,
    LayerNorm,
    Linear,
    PatchEmbed,
    VisionTransformer,
    erf,
    gradcheck,
)

# the layer table's tolerances (measured: ~1e-15 of the largest value in float64, ~1e-6 in float32)
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}
DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}

# small enough for a fast test, with every part: a 4x4 grid of 4x4 patches (16 tokens and the
# class token), 2 blocks of 2 heads
TINY = ViTConfig(
    in_chans=3, num_classes=3, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0
)


# the same with DeiT's distillation token, with the early convolutions (two 3x3 stride-2
# convs: stride 4, the patch size), and with both
TINY_DISTILLED = replace(TINY, distilled=True)
TINY_CONV_STEM = replace(TINY, conv_stem=[4, 6])
TINY_BOTH = replace(TINY, distilled=True, conv_stem=[4, 6])


def tiny_vit(cfg: ViTConfig = TINY, seed: int = 0) -> VisionTransformer:
    """The NumPy ViT with the photo's gradient switched on, so parity can compare it."""
    model = build_vit(cfg, rng=np.random.default_rng(seed))
    first_conv(model).needs_input_grad = True
    return model


def timm_keys(depth: int) -> list[str]:
    """timm's VisionTransformer state-dict keys, in timm's order (class token, no registers)."""
    per_block = [
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    ]  # fmt: skip
    return [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        *[f"blocks.{i}.{k}" for i in range(depth) for k in per_block],
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    ]


# -- erf: as exact as libm's, fast path included ---------------------------------------------
def test_erf_is_within_a_few_ulp_of_libm():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(20_000) * 3,
            np.linspace(-7, 7, 20_001),  # every interval and its edges
            [0.0, -0.0, 1e-300, -5e-324, 0.46875, -0.46875, 4.0, -4.0, 5.9, 26.5, 27.0, 1e300, np.inf, -np.inf],
        ]
    )
    exact = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(erf(x), exact, rtol=4 * np.finfo(np.float64).eps, atol=0)
    np.testing.assert_array_equal(np.signbit(erf(np.array([-0.0, 0.0]))), [True, False])
    assert np.isnan(erf(np.array([np.nan, 1.0])))[0]
    np.testing.assert_allclose(
        erf(x), torch.erf(torch.from_numpy(x)).numpy(), rtol=4 * np.finfo(np.float64).eps, atol=0
    )


def test_erf_float32_stays_float32():
    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    out = erf(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [math.erf(v) for v in x.astype(np.float64)], rtol=0, atol=3e-7)


# -- attention against torch's own fused kernel, not against our twin -------------------------
class SdpaAttention(torch.nn.Module):
    """A reference written with torch ops: torch's scaled_dot_product_attention does the
    softmax(q k^T / sqrt(hd)) v, so nothing here shares code or layout with ours."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        N, T, D = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (N, T, D) each: q, k, v sit side by side
        q, k, v = (t.reshape(N, T, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, hd)
        return self.proj(out.transpose(1, 2).reshape(N, T, D))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "dim, heads, qkv_bias, shape",
    [(8, 2, True, (2, 5, 8)), (12, 3, False, (1, 7, 12)), (6, 1, True, (3, 4, 6)), (8, 4, True, (2, 1, 8))],
    ids=["2-heads", "3-heads-no-bias", "1-head", "1-token"],
)
def test_attention_matches_torch_sdpa(dim, heads, qkv_bias, shape, dtype):
    ours = Attention(dim, heads, qkv_bias=qkv_bias)
    got = assert_matches_torch(ours, SdpaAttention(dim, heads, qkv_bias), [shape], dtype=dtype, **TOL[dtype])
    assert set(got) == {"output", "d input 0", *(f"d {k}" for k in ours.params)}  # every gradient, by name
    assert ours.attn.shape == (shape[0], heads, shape[1], shape[1]) and ours.attn.dtype == np.dtype(dtype)
    np.testing.assert_allclose(ours.attn.sum(-1), 1, rtol=1e-6)


def test_attention_does_not_overflow_on_huge_scores():
    attn = Attention(4, 1, rng=np.random.default_rng(0)).astype(np.float64)
    attn.qkv._params["weight"] *= 1e4
    out = attn(np.random.default_rng(1).standard_normal((1, 3, 4)))
    assert np.isfinite(out).all() and np.isfinite(attn.attn).all()


# -- the whole ViT against its twin -------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_vit_matches_torch_twin(dtype):
    ours = tiny_vit()
    theirs = torch_vit.TorchVisionTransformer(TINY)  # loads our weights by name (strict)
    got = assert_matches_torch(ours, theirs, [(2, 3, 16, 16)], dtype=dtype, **TOL[dtype])
    assert {k[2:] for k in got if k.startswith("d ") and k != "d input 0"} == set(timm_keys(TINY.depth))
    assert got["output"].shape == (2, TINY.num_classes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vit_training_loss_gradients_match_torch(dtype):
    """The gradients a training step uses: cross-entropy, label smoothing, a bigger batch."""
    cfg = ViTConfig(num_classes=4, img_size=24, patch_size=8, embed_dim=12, depth=3, num_heads=3, mlp_ratio=4.0)
    ours = build_vit(cfg, rng=np.random.default_rng(3), dtype=dtype)
    theirs = ARCHS["vit"].torch_model(cfg.to_dict()).to(TORCH_DTYPE[dtype])
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 24, 24)).astype(dtype)
    y = np.array([0, 1, 2, 3, 0, 2])
    loss, dlogits = CrossEntropyLoss(label_smoothing=0.1)(ours(x), y)
    assert ours.backward(dlogits) is None  # build_vit skips the photo's gradient
    tloss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(theirs(torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    assert_close("loss", loss, tloss, **TOL[dtype])
    for name, p in theirs.named_parameters():
        assert_close(f"d {name}", ours.grads[name], p.grad, **TOL[dtype])
        assert ours.grads[name].dtype == np.dtype(dtype)


def test_vit_gradcheck_by_central_differences():
    cfg = ViTConfig(num_classes=2, img_size=8, patch_size=4, embed_dim=4, depth=1, num_heads=2, mlp_ratio=1.0)
    errors = gradcheck(tiny_vit(cfg).astype(np.float64), np.random.default_rng(0).standard_normal((2, 3, 8, 8)))
    assert set(errors) == {"input", *timm_keys(1)}


@pytest.mark.parametrize("cfg", [TINY, TINY_BOTH], ids=["plain", "distilled-conv-stem"])
def test_attention_maps_match_torch_twin(cfg):
    ours = tiny_vit(cfg).astype(np.float64)
    theirs = torch_vit.TorchVisionTransformer(cfg).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    logits, attns = forward_with_attention(ours, x)
    theirs.eval()
    with torch.no_grad():
        tlogits, tattns = theirs(torch.from_numpy(x), return_attn=True)
    assert_close("logits", logits, tlogits, **TOL[np.float64])
    assert len(attns) == len(tattns) == cfg.depth
    for a, t in zip(attns, tattns, strict=True):
        assert a.shape == (2, cfg.num_heads, cfg.num_tokens, cfg.num_tokens)
        assert_close("attention", a, t, **TOL[np.float64])
    np.testing.assert_allclose(theirs(torch.from_numpy(x)).detach().numpy(), logits, rtol=1e-12)  # flag off: logits


# -- names, shapes, init: what makes weights portable -----------------------------------------
def test_state_dict_keys_are_timms_in_timms_order():
    ours, theirs = tiny_vit(), torch_vit.TorchVisionTransformer(TINY)
    assert list(ours.state_dict()) == timm_keys(TINY.depth) == list(theirs.state_dict())
    for name, t in theirs.state_dict().items():
        assert ours.state_dict()[name].shape == tuple(t.shape), name
    D, T = TINY.embed_dim, TINY.num_tokens
    assert ours.state_dict()["pos_embed"].shape == (1, T, D)
    assert ours.state_dict()["blocks.0.attn.qkv.weight"].shape == (3 * D, D)
    assert ours.state_dict()["patch_embed.proj.weight"].shape == (D, 3, 4, 4)


def test_state_dict_round_trips_through_torch_engine():
    engine = TorchEngine.create(ARCHS["vit"], TINY.to_dict(), seed=5)  # starts from the NumPy init for seed 5
    ours = build_numpy_model("vit", TINY.to_dict(), seed=5)
    for name, value in ours.state_dict().items():
        np.testing.assert_array_equal(engine.state_dict()[name], value)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ours.eval()
    assert_close("logits", ours(x), engine.logits(x), **TOL[np.float32])


def test_both_engines_train_the_vit_alike():
    from tinytriage.engines import OptimConfig, make_engine

    optim = OptimConfig(name="adamw", lr=3e-3, weight_decay=0.05)
    engines = [make_engine(b, "vit", TINY.to_dict(), optim=optim, seed=1) for b in ("numpy", "torch")]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 16, 16)).astype(np.float32), rng.integers(0, 3, 8)
    losses = [[e.train_step(x, y, 3e-3)[0] for _ in range(3)] for e in engines]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert losses[0][-1] < losses[0][0]
    theirs = engines[1].state_dict()
    for name, value in engines[0].state_dict().items():
        assert_close(name, value, theirs[name], rtol=1e-4, atol=1e-5)


def test_init_is_timms_and_seeded():
    model = build_vit(ViTConfig(embed_dim=64, depth=2), rng=np.random.default_rng(1))
    sd = model.state_dict()
    assert all(v.dtype == np.float32 for v in sd.values())
    for name, v in sd.items():
        if name.endswith(".bias"):
            assert not v.any() or name == "patch_embed.proj.bias", name  # the conv keeps torch's init
        if name.startswith(("blocks.0.norm", "norm.")):
            np.testing.assert_array_equal(v, 1.0 if name.endswith("weight") else 0.0)
    for name in ("pos_embed", "cls_token", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "head.weight"):
        assert np.abs(sd[name]).max() <= 0.04, name  # truncated at 2 std
    big = np.concatenate([sd["pos_embed"].ravel(), sd["blocks.0.mlp.fc1.weight"].ravel()])
    assert abs(big.std() - 0.0176) < 0.001  # std of N(0, .02^2) cut at 2 std: .02 * 0.880
    again = build_vit(ViTConfig(embed_dim=64, depth=2), rng=np.random.default_rng(1)).state_dict()
    assert all(np.array_equal(sd[k], again[k]) for k in sd)
    other = build_vit(ViTConfig(embed_dim=64, depth=2), rng=np.random.default_rng(2)).state_dict()
    assert not np.array_equal(sd["pos_embed"], other["pos_embed"])
    assert build_vit(TINY, dtype=np.float64).state_dict()["pos_embed"].dtype == np.float64


# -- config -------------------------------------------------------------------------------------
def test_config_round_trips_and_says_what_is_wrong():
    cfg = ViTConfig(num_classes=7, patch_size=16)
    assert ViTConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg
    assert ViTConfig().grid_size == (8, 8) and ViTConfig().num_tokens == 65
    with pytest.raises(ShapeError, match="img_size 100 is not a multiple of patch_size 12"):
        ViTConfig(img_size=100)
    with pytest.raises(ShapeError, match="embed_dim 96 is not a multiple of num_heads 5"):
        ViTConfig(num_heads=5)


def test_count_macs_matches_the_models_weights():
    cfg = ViTConfig()
    model = build_vit(cfg)
    T = cfg.num_tokens
    linear = sum(m._params["weight"].size for _, m in model.blocks.named_modules() if isinstance(m, Linear))
    expected = (
        (T - 1) * model.patch_embed.proj._params["weight"].size  # each patch: one kernel application
        + T * linear  # every Linear in the blocks, once per token
        + cfg.depth * 2 * T * T * cfg.embed_dim  # q . k and attn . v
        + model.head._params["weight"].size  # the class token only
    )
    assert count_macs(cfg) == expected


# -- clear errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: tiny_vit()(np.zeros((1, 3, 20, 16), np.float32)), r"PatchEmbed: expected 16x16 images, got shape"),
        (
            lambda: torch_vit.TorchVisionTransformer(TINY)(torch.zeros(1, 3, 20, 16)),
            r"PatchEmbed: expected 16x16 images, got shape",
        ),
        (lambda: PatchEmbed(16, 4)(np.zeros((3, 16, 16), np.float32)), r"PatchEmbed expects a 4-D"),
        (lambda: PatchEmbed(18, 4), r"img_size \(18, 18\) is not a multiple of patch_size \(4, 4\)"),
        (lambda: Attention(10, 3), r"dim=10 must be a multiple of num_heads=3"),
        (lambda: Attention(8, 2)(np.zeros((5, 8), np.float32)), r"Attention expects a 3-D"),
        (lambda: LayerNorm(8)(np.zeros((2, 7), np.float32)), r"LayerNorm: expected \(\.\.\., \(8,\)\) input"),
        (lambda: ConvPatchEmbed(16, 4, 3, 8, (4, 4, 4)), r"3 stride-2 convolutions has stride 8, not patch_size"),
        (lambda: ConvPatchEmbed(16, 1, 3, 8, ()), r"0 stride-2 convolutions has stride 1.*at least one"),
        (
            lambda: ConvPatchEmbed(12, 8, 3, 8, (4, 4, 4)),
            r"img_size \(12, 12\) is not a multiple of patch_size \(8, 8\)",
        ),
        (lambda: tiny_vit(TINY_CONV_STEM)(np.zeros((1, 3, 16, 20), np.float32)), r"ConvPatchEmbed: expected 16x16"),
        (
            lambda: torch_vit.TorchVisionTransformer(TINY_CONV_STEM)(torch.zeros(1, 3, 20, 16)),
            r"ConvPatchEmbed: expected 16x16 images",
        ),
        (lambda: tiny_vit(TINY_DISTILLED).backward(np.zeros((2, 3), np.float32)), r"takes \(N, 2, K\) gradients"),
    ],
    ids=[
        "image-size",
        "image-size-torch",
        "patch-ndim",
        "patch-divides",
        "heads-divide",
        "attention-ndim",
        "layernorm-shape",
        "stem-stride",
        "stem-empty",
        "stem-image-size",
        "stem-photo-size",
        "stem-photo-size-torch",
        "distilled-backward-shape",
    ],
)
def test_impossible_shapes_raise_clear_errors(call, message):
    with pytest.raises(ShapeError, match=message):
        call()


def test_gelu_backward_reuses_the_forward():
    gelu = GELU()  # values by hand: x Phi(x), and Phi(x) + x phi(x)
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(gelu(x), x * 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x])), rtol=1e-15)
    np.testing.assert_allclose(gelu.backward(np.ones(3)), [-0.08331547058768629, 0.5, 1.085231801078197], rtol=1e-13)


# -- attention rollout --------------------------------------------------------------------------
def random_attention(rng, layers, N, H, T):
    scores = rng.standard_normal((layers, N, H, T, T)) * 2
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return list(e / e.sum(-1, keepdims=True))


def test_rollout_rows_sum_to_one():
    attns = random_attention(np.random.default_rng(0), 3, 2, 4, 10)
    R = rollout(attns)
    assert R.shape == (2, 10, 10) and (R >= 0).all()
    np.testing.assert_allclose(R.sum(-1), 1, rtol=1e-12)
    heat = attention_rollout(attns, (3, 3))
    assert heat.shape == (2, 3, 3)
    np.testing.assert_allclose(heat.sum(axis=(1, 2)), 1 - R[:, 0, 0], rtol=1e-12)


def test_rollout_of_identity_attention_is_the_identity():
    eye = np.broadcast_to(np.eye(5), (2, 3, 5, 5))  # every token attends only to itself
    np.testing.assert_allclose(rollout([eye, eye, eye]), np.broadcast_to(np.eye(5), (2, 5, 5)), atol=1e-15)
    np.testing.assert_array_equal(attention_rollout([eye, eye], (2, 2)), 0)  # the class token keeps to itself


def test_rollout_of_uniform_attention_is_uniform_over_patches():
    T, L = 10, 3
    uniform = np.full((1, 2, T, T), 1 / T)
    heat = attention_rollout([uniform] * L, (3, 3))
    # ((U + I) / 2)^L = I / 2^L + (1 - 1/2^L) U, since U U = U
    np.testing.assert_allclose(heat, (1 - 0.5**L) / T, rtol=1e-12)


def test_rollout_by_hand_two_layers():
    # layer 1: head 0 attends to itself, head 1 evenly to the others; the mean plus I, halved
    head0 = np.eye(3)
    head1 = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    layer1 = np.stack([head0, head1])[None]  # (1, 2, 3, 3)
    # layer 2: the class token looks only at patch 1 (both heads)
    layer2 = np.broadcast_to(np.array([[0, 1.0, 0], [0, 1, 0], [0, 0, 1]]), (1, 2, 3, 3))
    a1 = np.array([[0.75, 0.125, 0.125], [0.125, 0.75, 0.125], [0.125, 0.125, 0.75]])  # (mean + I) / 2
    a2 = np.array([[0.5, 0.5, 0], [0, 1, 0], [0, 0, 1]])  # (A + I) / rowsum
    expected = np.array([[0.4375, 0.4375, 0.125], [0.125, 0.75, 0.125], [0.125, 0.125, 0.75]])
    np.testing.assert_allclose(a2 @ a1, expected)  # the later layer on the left
    np.testing.assert_allclose(rollout([layer1, layer2])[0], expected, rtol=1e-15)
    np.testing.assert_allclose(attention_rollout([layer1, layer2], (1, 2)), [[[0.4375, 0.125]]], rtol=1e-15)


def test_cls_attention_maps_are_the_class_tokens_rows():
    attns = random_attention(np.random.default_rng(1), 2, 3, 4, 7)
    maps = cls_attention_maps(attns, (2, 3))
    assert maps.shape == (2, 3, 4, 2, 3)  # (layers, N, heads, grid_h, grid_w)
    np.testing.assert_array_equal(maps[1, 2, 3].ravel(), attns[1][2, 3, 0, 1:])


def test_rollout_on_a_real_vit():
    model = tiny_vit()
    _, attns = forward_with_attention(
        model, np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    )
    heat = attention_rollout(attns, TINY.grid_size)
    assert heat.shape == (2, 4, 4) and (heat > 0).all() and (heat.sum(axis=(1, 2)) < 1).all()
    assert cls_attention_maps(attns, TINY.grid_size).shape == (2, 2, 2, 4, 4)


@pytest.mark.parametrize(
    "attns, grid, message",
    [
        ([], (2, 2), "at least one layer"),
        ([np.ones((2, 5, 5))], (2, 2), r"layer 0 has shape \(2, 5, 5\)"),
        ([np.ones((1, 2, 5, 5)), np.ones((1, 2, 6, 6))], (2, 2), r"layer 1 has shape \(1, 2, 6, 6\)"),
        ([np.ones((1, 2, 5, 5))], (3, 3), r"5 tokens do not fit a 3x3 patch grid"),
    ],
    ids=["empty", "3-d", "mismatch", "grid"],
)
def test_rollout_says_what_is_wrong(attns, grid, message):
    with pytest.raises(ShapeError, match=message):
        attention_rollout(attns, grid)


# -- the distillation token (DeiT) and the convolutional stem (Xiao et al. 2021) ---------------
def stem_keys(n: int) -> list[str]:
    """The conv stem's state-dict keys: conv (no bias), then BatchNorm with PyTorch's buffers."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    return [
        k
        for i in range(n)
        for k in [f"patch_embed.stem.{i}.conv.weight", *(f"patch_embed.stem.{i}.bn.{b}" for b in bn)]
    ]


def test_config_checks_the_conv_stem_and_counts_the_prefix_tokens():
    with pytest.raises(
        ShapeError, match="conv_stem of 3 convolutions has stride 8, but patch_size is 12: set patch_size 8"
    ):
        ViTConfig(conv_stem=[24, 48, 96])
    with pytest.raises(ShapeError, match="conv_stem of 1 convolution has stride 2.*set patch_size 2"):
        ViTConfig(conv_stem=[8], patch_size=4, img_size=16)
    with pytest.raises(ShapeError, match=r"conv_stem channels must be positive, got \[8, 0\]"):
        ViTConfig(conv_stem=[8, 0], patch_size=4, img_size=16)
    with pytest.raises(ShapeError, match="img_size 100 is not a multiple of patch_size 8"):
        ViTConfig(conv_stem=[8, 16, 32], patch_size=8, img_size=100)
    cfg = ViTConfig(conv_stem=(24, 48, 96), patch_size=8, distilled=True)
    assert cfg.conv_stem == [24, 48, 96] and cfg.grid_size == (12, 12)
    assert cfg.num_prefix_tokens == 2 and cfg.num_tokens == 2 + 144
    assert ViTConfig().num_prefix_tokens == 1 and ViTConfig().num_tokens == 65
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg  # through JSON's lists too
    assert "distilled" not in ViTConfig().to_dict() and "conv_stem" not in ViTConfig().to_dict()  # files as before
    model = build_vit(replace(TINY_BOTH, depth=1))
    assert model.num_prefix_tokens == 2 and build_vit(TINY).num_prefix_tokens == 1
    assert not first_conv(model).needs_input_grad and first_conv(model) is model.patch_embed.stem[0].conv


def test_distilled_state_dict_keys_match_the_torch_twin():
    ours, theirs = tiny_vit(TINY_BOTH), torch_vit.TorchVisionTransformer(TINY_BOTH)
    plain = timm_keys(TINY.depth)  # cls_token, pos_embed, patch_embed.proj.weight/bias, blocks..., norm, head
    # timm's VisionTransformerDistilled: dist_token after pos_embed, head_dist after head; the
    # stem before the 1x1 projection, which keeps patchify's key
    expected = [*plain[:2], "dist_token", *stem_keys(2), *plain[2:], "head_dist.weight", "head_dist.bias"]
    assert list(ours.state_dict()) == expected == list(theirs.state_dict())
    for name, t in theirs.state_dict().items():
        assert ours.state_dict()[name].shape == tuple(t.shape), name
        assert ours.state_dict()[name].dtype == (np.int64 if name.endswith("num_batches_tracked") else np.float32)
    D, T = TINY.embed_dim, TINY_BOTH.num_tokens
    sd = ours.state_dict()
    assert T == 2 + 16 and sd["pos_embed"].shape == (1, T, D) and sd["dist_token"].shape == (1, 1, D)
    assert sd["patch_embed.stem.0.conv.weight"].shape == (4, 3, 3, 3)
    assert sd["patch_embed.stem.1.conv.weight"].shape == (6, 4, 3, 3)
    assert sd["patch_embed.proj.weight"].shape == (D, 6, 1, 1) and sd["head_dist.weight"].shape == (3, D)
    assert np.abs(sd["dist_token"]).max() <= 0.04 and not sd["head_dist.bias"].any()  # initialised like cls_token, head
    np.testing.assert_array_equal(sd["patch_embed.stem.0.bn.running_var"], 1.0)


def test_distilled_heads_by_hand():
    """Training mode: the two heads' logits side by side, (N, 2, K). Eval mode: the log of
    their softmaxes averaged, so that softmax of the output is the average itself."""
    model = build_vit(TINY_DISTILLED, rng=np.random.default_rng(4), dtype=np.float64)
    for name in ("head.weight", "head_dist.weight"):  # heads that disagree, not near-uniform at init
        model.params[name][...] = np.random.default_rng(len(name)).standard_normal(model.params[name].shape)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16))
    model.eval()
    features = model.forward_features(x)  # (N, 2 + T, D)
    W, b = model.params["head.weight"], model.params["head.bias"]
    Wd, bd = model.params["head_dist.weight"], model.params["head_dist.bias"]
    cls_logits, dist_logits = features[:, 0] @ W.T + b, features[:, 1] @ Wd.T + bd  # (N, K) each

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    average = (softmax(cls_logits) + softmax(dist_logits)) / 2
    out = model(x)
    assert out.shape == (3, TINY.num_classes)
    np.testing.assert_allclose(out, np.log(average), rtol=1e-13)
    np.testing.assert_allclose(softmax(out), average, rtol=1e-13)
    assert np.abs(softmax(cls_logits) - softmax(dist_logits)).max() > 0.1  # the two heads did disagree
    model.train()
    train_out = model(x)  # LayerNorm, not BatchNorm: the features are the same in both modes
    assert train_out.shape == (3, 2, TINY.num_classes)
    np.testing.assert_allclose(train_out[:, 0], cls_logits, rtol=1e-13)
    np.testing.assert_allclose(train_out[:, 1], dist_logits, rtol=1e-13)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_distilled_conv_stem_vit_gradcheck_by_central_differences(train):
    cfg = ViTConfig(
        num_classes=3, img_size=8, patch_size=4, embed_dim=4, depth=1, num_heads=2, mlp_ratio=1.0,
        distilled=True, conv_stem=[3, 3],
    )  # fmt: skip
    model = tiny_vit(cfg).astype(np.float64).train(train)
    errors = gradcheck(model, np.random.default_rng(0).standard_normal((2, 3, 8, 8)))
    assert set(errors) == {"input", *model.params} and "dist_token" in errors and "head_dist.weight" in errors


def test_engines_agree_on_a_distilled_conv_stem_vit_in_float64():
    """The loss both engines train a distilled ViT with: cross-entropy over all N*2 rows, the
    class head on the labels, the distillation head on the teacher's, label smoothing; the
    same loss and gradients in NumPy and in PyTorch, and the class head's logits back."""
    from tinytriage.engines import OptimConfig, make_engine

    optim = OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, label_smoothing=0.1)
    engines = [make_engine(b, "vit", TINY_BOTH.to_dict(), optim=optim, seed=2) for b in ("numpy", "torch")]
    for e in engines:
        e.use_float64()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 16, 16))
    y = np.stack([rng.integers(0, 3, 6), rng.integers(0, 3, 6)], axis=1)  # (N, 2): true label, teacher's
    (loss, logits, grads), (tloss, tlogits, tgrads) = [e.loss_and_grads(x, y) for e in engines]
    assert logits.shape == tlogits.shape == (6, TINY.num_classes)
    assert_close("loss", loss, np.float64(tloss), **TOL[np.float64])
    assert_close("logits", logits, tlogits, **TOL[np.float64])
    assert set(grads) == set(tgrads) and {"dist_token", "head_dist.weight", "patch_embed.stem.0.conv.weight"} <= set(
        grads
    )
    for name, g in grads.items():
        assert_close(f"d {name}", g, tgrads[name], **TOL[np.float64])
    for name, value in engines[0].state_dict().items():  # BatchNorm's running statistics moved alike
        assert_close(name, value, engines[1].state_dict()[name], **TOL[np.float64])
    # by hand: the mean of the class head's loss on y[:, 0] and the distillation head's on y[:, 1]
    model = engines[0].model
    both = model.train()(x)  # (N, 2, K)
    ce = CrossEntropyLoss(label_smoothing=0.1)
    expected = (ce(both[:, 0], y[:, 0])[0] + ce(both[:, 1], y[:, 1])[0]) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-13)
    np.testing.assert_allclose(logits, both[:, 0], rtol=1e-13)  # the class head's logits, for accuracy
    for e in engines:
        with pytest.raises(ShapeError, match=r"targets must be \(N, H\) = \(6, 2\)"):
            e.loss_and_grads(x, y[:, 0])
    steps = [e.train_step(x, y, 1e-3) for e in engines]
    assert steps[0][1].shape == steps[1][1].shape == (6, TINY.num_classes)
    assert_close("step loss", steps[0][0], np.float64(steps[1][0]), **TOL[np.float64])


def test_one_head_losses_are_unchanged():
    from tinytriage.engines import make_engine

    engine = make_engine("numpy", "vit", TINY.to_dict(), seed=2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 16, 16)).astype(np.float32), rng.integers(0, 3, 4)
    loss, logits, _ = engine.loss_and_grads(x, y)
    engine.model.train()
    expected, _ = engine.loss_fn(engine.model(x), y)
    assert loss == float(expected) and logits.shape == (4, 3)


def test_distilled_conv_stem_model_file_round_trip_in_both_engines(tmp_path):
    from tinytriage.engines import load_engine
    from tinytriage.models.file import ModelFile, read_model, save_model

    model = build_numpy_model("vit", TINY_BOTH.to_dict(), seed=7)
    rng = np.random.default_rng(1)
    model.train()(rng.standard_normal((4, 3, 16, 16)).astype(np.float32))  # BatchNorm's running statistics move
    classes = ["crack", "dent", "scratch"]
    mf = ModelFile(
        arch="vit",
        config=TINY_BOTH.to_dict(),
        classes=classes,
        routes=dict.fromkeys(classes, "body-shop"),
        preprocess={"input_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "letterbox"},
        tensors=model.state_dict(),
    )
    back = read_model(save_model(mf, tmp_path / "deit.safetensors"))
    assert back.config == TINY_BOTH.to_dict() and ViTConfig.from_dict(back.config) == TINY_BOTH
    assert back.tensors["patch_embed.stem.1.bn.num_batches_tracked"] == 1
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    expected = model.eval()(x)  # (N, K): the averaged heads, as log-probabilities
    for backend in ("numpy", "torch"):
        engine = load_engine(backend, back)
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(engine.state_dict()[name], value, err_msg=f"{backend} {name}")
        logits = engine.logits(x)
        assert logits.shape == (3, 3)
        assert_close(f"{backend} logits", logits, expected, **TOL[np.float32])
        np.testing.assert_allclose(np.exp(logits).sum(-1), 1, rtol=1e-5)  # log-probabilities
        probs, attns = engine.logits_and_attention(x)
        assert attns[0].shape == (3, TINY.num_heads, 18, 18)
        assert attention_rollout(attns, TINY.grid_size).shape == (3, 4, 4)


def test_count_macs_counts_the_conv_stem_and_the_distillation_head():
    cfg = ViTConfig(conv_stem=[24, 48, 96], patch_size=8, distilled=True)
    model = build_vit(cfg)
    T, D, side = cfg.num_tokens, cfg.embed_dim, cfg.img_size
    stem = 0
    for stage in model.patch_embed.stem:
        side //= 2  # stride 2, padding 1: each 3x3 conv halves the image
        stem += side * side * stage.conv._params["weight"].size  # one kernel application per output cell
    linear = sum(m._params["weight"].size for _, m in model.blocks.named_modules() if isinstance(m, Linear))
    expected = (
        stem
        + 144 * model.patch_embed.proj._params["weight"].size  # the 1x1 projection, once per cell
        + T * linear
        + cfg.depth * 2 * T * T * D
        + model.head._params["weight"].size
        + model.head_dist._params["weight"].size  # the distillation token's head
    )
    assert count_macs(cfg) == expected
    assert count_macs(replace(cfg, distilled=False)) < expected


def test_summary_and_token_maps_of_a_distilled_conv_stem_vit():
    from tinytriage.explain.lesson import vit_token_maps
    from tinytriage.explain.photo import model_summary

    model = build_vit(TINY_BOTH, dtype=np.float64)
    s = model_summary("vit", TINY_BOTH.to_dict())
    assert s.total_params == model.num_parameters()
    assert [r.name for r in s.rows[:4]] == ["stem.0", "stem.1", "patch_embed", "tokens"]
    assert [(r.receptive_field, r.jump) for r in s.rows[:3]] == [(3, 2), (7, 4), (7, 4)]  # 3x3 s2 twice, then 1x1
    assert s.rows[-1].name == "head_dist"
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    maps = dict(vit_token_maps(model, x))
    tokens = model.patch_embed(x)  # (N, T, D), eval mode
    expected = (tokens + model.params["pos_embed"][:, 2:]).transpose(0, 2, 1).reshape(2, TINY.embed_dim, 4, 4)
    np.testing.assert_allclose(maps["+ position embedding"], expected, rtol=1e-13)  # both prefix tokens skipped
    assert all(m.shape == (2, TINY.embed_dim, 4, 4) for m in maps.values())


# -- attention rollout with two prefix tokens -------------------------------------------------
def test_rollout_skips_both_prefix_tokens():
    attns = random_attention(np.random.default_rng(2), 3, 2, 4, 2 + 6)  # class, distillation, 2x3 patches
    R = rollout(attns)
    heat = attention_rollout(attns, (2, 3))
    np.testing.assert_array_equal(heat, R[:, 0, 2:].reshape(2, 2, 3))  # the class token's row, patches only
    np.testing.assert_allclose(heat.sum(axis=(1, 2)), 1 - R[:, 0, 0] - R[:, 0, 1], rtol=1e-12)
    maps = cls_attention_maps(attns, (2, 3))
    np.testing.assert_array_equal(maps[2, 1, 3].ravel(), attns[2][1, 3, 0, 2:])
    one = random_attention(np.random.default_rng(2), 3, 2, 4, 1 + 6)  # a single prefix token, as before
    np.testing.assert_array_equal(attention_rollout(one, (2, 3)), rollout(one)[:, 0, 1:].reshape(2, 2, 3))
    with pytest.raises(ShapeError, match="9 tokens do not fit a 2x3 patch grid"):
        attention_rollout(random_attention(np.random.default_rng(2), 1, 1, 1, 9), (2, 3))


def test_rollout_on_a_real_distilled_vit():
    model = tiny_vit(TINY_DISTILLED)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    _, attns = forward_with_attention(model, x)
    assert attns[0].shape == (2, TINY.num_heads, TINY_DISTILLED.num_tokens, TINY_DISTILLED.num_tokens)
    heat = attention_rollout(attns, TINY.grid_size)
    assert heat.shape == (2, 4, 4) and (heat > 0).all() and (heat.sum(axis=(1, 2)) < 1).all()


def test_data_parallel_step_takes_two_heads(tmp_path):
    """``TorchEngine._ddp_step`` (under torchrun) uses the same two-head loss; in a group of
    one process it takes the step the plain engine takes, and gives the class head's logits."""
    import torch.distributed as dist

    from tinytriage.engines import make_engine

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 16, 16)).astype(np.float32), rng.integers(0, 3, (4, 2))
    plain = make_engine("torch", "vit", TINY_DISTILLED.to_dict(), seed=3)
    expected = plain.train_step(x, y, 1e-3)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        engine = make_engine("torch", "vit", TINY_DISTILLED.to_dict(), seed=3)
        engine.distribute()
        loss, logits = engine.train_step(x, y, 1e-3)
    finally:
        dist.destroy_process_group()
    assert logits.shape == (4, TINY.num_classes)
    assert_close("loss", loss, expected[0], **TOL[np.float32])
    assert_close("logits", logits, expected[1], **TOL[np.float32])
    for name, value in plain.state_dict().items():
        assert_close(name, engine.state_dict()[name], value, **TOL[np.float32])
