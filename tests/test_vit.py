"""The Vision Transformer: erf, attention against torch's own kernel, the whole ViT against
its PyTorch twin (forward and every gradient, by name), timm's key names, init, config,
and attention rollout. The single layers' one-line parity rows live in test_nn_layers.py.
"""

from __future__ import annotations

import math

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
from tinytriage.models.vit import ViTConfig, build_vit, count_macs, forward_with_attention  # noqa: E402
from tinytriage.nn import (  # noqa: E402
    GELU,
    Attention,
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


def tiny_vit(cfg: ViTConfig = TINY, seed: int = 0) -> VisionTransformer:
    """The NumPy ViT with the photo's gradient switched on, so parity can compare it."""
    model = build_vit(cfg, rng=np.random.default_rng(seed))
    model.patch_embed.proj.needs_input_grad = True
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


def test_attention_maps_match_torch_twin():
    ours = tiny_vit().astype(np.float64)
    theirs = torch_vit.TorchVisionTransformer(TINY).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    logits, attns = forward_with_attention(ours, x)
    with torch.no_grad():
        tlogits, tattns = theirs(torch.from_numpy(x), return_attn=True)
    assert_close("logits", logits, tlogits, **TOL[np.float64])
    assert len(attns) == len(tattns) == TINY.depth
    for a, t in zip(attns, tattns, strict=True):
        assert a.shape == (2, TINY.num_heads, TINY.num_tokens, TINY.num_tokens)
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
    ],
    ids=[
        "image-size",
        "image-size-torch",
        "patch-ndim",
        "patch-divides",
        "heads-divide",
        "attention-ndim",
        "layernorm-shape",
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
