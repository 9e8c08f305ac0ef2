"""Inference fusion (tinytriage.nn.fast.fuse): conv + BatchNorm (+ ReLU, + max pool) as one conv.

Checked against PyTorch's eval-mode conv -> bn -> relu and its own fuse_conv_bn_eval, on
the whole triage CNN against its torch twin, and for staleness after training steps."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

from parity import assert_close  # noqa: E402

from tinytriage import nn  # noqa: E402
from tinytriage.engines import OptimConfig  # noqa: E402
from tinytriage.engines.numpy_engine import NumpyEngine  # noqa: E402
from tinytriage.models import ARCHS  # noqa: E402
from tinytriage.models.cnn import CNNConfig, TriageCNN  # noqa: E402
from tinytriage.nn.fast.im2col import conv2d_forward, conv2d_fused_forward  # noqa: E402

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


def randomise_batchnorms(model: nn.Module, rng: np.random.Generator) -> None:
    """Running statistics and affine parameters far from their initial 0/1, so a wrong fold shows."""
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            C = m.num_features
            m._buffers["running_mean"][:] = rng.standard_normal(C)
            m._buffers["running_var"][:] = rng.uniform(0.2, 3.0, C)
            if m.affine:
                m._params["weight"][:] = rng.uniform(-2.0, 2.0, C)
                m._params["bias"][:] = rng.standard_normal(C)


# (conv kwargs, bn kwargs, with relu, max pool (kernel, stride) or None, input shape)
FUSE_CASES = [
    pytest.param(dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), {}, True, None, (2, 3, 6, 7), id="k3-p1-relu"),
    pytest.param(dict(in_channels=3, out_channels=4, kernel_size=3, bias=False), {}, True, None, (2, 3, 6, 6), id="no-bias"),
    pytest.param(dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, groups=2), {}, False, None, (2, 4, 7, 7), id="s2-groups-no-relu"),
    pytest.param(dict(in_channels=3, out_channels=5, kernel_size=1), dict(eps=1e-3), True, None, (1, 3, 4, 5), id="k1-eps"),
    pytest.param(dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, dilation=2), dict(affine=False), True, None, (2, 3, 6, 6), id="dilated-no-affine"),
    pytest.param(dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), {}, True, (2, 2), (2, 3, 8, 8), id="relu-pool2"),
    pytest.param(dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), {}, True, (2, 2), (3, 3, 7, 9), id="relu-pool2-odd"),
    pytest.param(dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, bias=False), {}, False, (3, 2), (2, 4, 9, 8), id="groups-pool3s2-no-relu"),
    pytest.param(dict(in_channels=3, out_channels=5, kernel_size=1), {}, True, (2, 1), (2, 3, 4, 5), id="k1-pool2s1"),
    # 32+ input channels, 3x3, padding 1, even map: Winograd (tinytriage.nn.fast.winograd)
    pytest.param(dict(in_channels=32, out_channels=6, kernel_size=3, padding=1, bias=False), {}, True, (2, 2), (3, 32, 6, 8), id="winograd-relu-pool2"),
    pytest.param(dict(in_channels=36, out_channels=5, kernel_size=3, padding=1), {}, False, None, (2, 36, 4, 4), id="winograd-no-relu"),
]  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("conv_kw, bn_kw, relu, pool, shape", FUSE_CASES)
def test_fused_conv_bn_relu_matches_torch_eval(conv_kw, bn_kw, relu, pool, shape, dtype):
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(**conv_kw, dtype=dtype, rng=rng)
    bn = nn.BatchNorm2d(conv_kw["out_channels"], **bn_kw)
    layers = [conv, bn] + ([nn.ReLU()] if relu else []) + ([nn.MaxPool2d(*pool)] if pool else [])
    model = nn.Sequential(*layers)
    model.astype(dtype)
    randomise_batchnorms(model, rng)
    model.eval()
    fused = nn.fuse_for_inference(model)
    assert [type(m).__name__ for m in fused] == ["ConvBNReLU"]

    t_layers = (
        [tnn.Conv2d(**conv_kw), tnn.BatchNorm2d(conv_kw["out_channels"], **bn_kw)]
        + ([tnn.ReLU()] if relu else [])
        + ([tnn.MaxPool2d(*pool)] if pool else [])
    )
    twin = tnn.Sequential(*t_layers).to(TORCH_DTYPE[dtype]).eval()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})

    x = rng.standard_normal(shape).astype(dtype)
    ours = fused(x)
    assert ours.dtype == dtype
    with torch.no_grad():
        assert_close("fused vs torch conv-bn-relu", ours, twin(torch.from_numpy(x)), **TOL[dtype])
        # and PyTorch's own folding gives the same kernel and bias as ours
        folded = torch.nn.utils.fusion.fuse_conv_bn_eval(twin[0], twin[1])
    w, b = nn.fold_batchnorm(conv.params["weight"], conv.params.get("bias"), bn)
    assert_close("folded weight", w, folded.weight, **TOL[dtype])
    assert_close("folded bias", b, folded.bias, **TOL[dtype])


def test_conv_relu_epilogue_is_max_of_conv_and_zero():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 4, 9, 9)), rng.standard_normal((6, 4, 3, 3)), rng.standard_normal(6)
    plain, _ = conv2d_forward(x, w, b, 1, 1)
    fused = conv2d_fused_forward(x, w, b, 1, 1, 1, 1, None, relu=True, pool=None)
    np.testing.assert_array_equal(fused, np.maximum(plain, 0))


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
def test_conv_pool_epilogue_is_maxpool_of_conv(relu):
    """Pooling in the epilogue runs before bias and ReLU; the result is bit for bit the
    unfused conv -> (ReLU ->) max pool, for a batch cut into several chunks too."""
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((5, 8, 33, 31)), rng.standard_normal((6, 8, 3, 3)), rng.standard_normal(6)
    plain, _ = conv2d_forward(x, w, b, 1, 1)
    expected, _ = nn.pool.maxpool2d_forward(np.maximum(plain, 0) if relu else plain, 2, 2)
    fused = conv2d_fused_forward(x, w, b, 1, 1, 1, 1, None, relu=relu, pool=(2, 2))
    assert fused.shape == (5, 6, 16, 15)
    np.testing.assert_array_equal(fused, expected)


def test_padded_max_pool_is_not_fused():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    kinds = [type(m).__name__ for m in nn.fuse_for_inference(model)]
    assert kinds == ["ConvBNReLU", "MaxPool2d"]


@pytest.mark.parametrize(
    "widths, pool, depths",
    [
        ((4, 8, 8), "avg", None),
        ((16, 32, 64, 128), "avg", None),
        ((8, 8, 16, 16, 32), "avg", None),
        ((4, 8, 8), "avgmax", None),
        ((4, 8, 8), "avg", (2, 1, 3)),  # blocks without a pool after them, inside a stage and last
    ],
)
def test_fused_triage_cnn_equals_unfused_and_torch(widths, pool, depths):
    cfg = CNNConfig(widths=widths, input_size=32, pool=pool, depths=depths)
    rng = np.random.default_rng(2)
    model = TriageCNN(cfg, rng=rng)
    randomise_batchnorms(model, rng)
    model.eval()
    x = rng.standard_normal((5, 3, 32, 32)).astype(np.float32)
    unfused = model(x).copy()
    fused_model = nn.fuse_for_inference(model)
    kinds = [type(m).__name__ for m in fused_model.features]
    blocks = sum(cfg.stage_depths)
    assert kinds == ["ConvBNReLU"] * blocks  # BatchNorm, ReLU and max pooling all folded in
    assert [type(m).__name__ for m in model.features].count("BatchNorm2d") == blocks  # the original is untouched
    fused = fused_model(x)
    assert_close("fused vs unfused", fused, unfused, rtol=1e-4, atol=1e-5)

    twin = ARCHS["cnn"].torch_model(cfg.to_dict()).eval()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    with torch.no_grad():
        assert_close("fused vs torch", fused, twin(torch.from_numpy(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("widths", [(4, 8), (8, 32, 32)], ids=["im2col", "winograd-last"])
def test_engine_logits_follow_training_steps(widths):
    """The fused twin reads the live weights and statistics: never stale after an update
    (nor is Winograd's kept transform of the kernels)."""
    rng = np.random.default_rng(3)
    model = TriageCNN(CNNConfig(widths=widths, input_size=16, num_classes=3), rng=rng)
    engine = NumpyEngine(model, OptimConfig(lr=0.1), arch=ARCHS["cnn"])
    x = rng.standard_normal((6, 3, 16, 16)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    before = engine.logits(x).copy()
    for _ in range(3):
        engine.train_step(x, y, 0.1)
        model.eval()
        expected = model(x).copy()
        got = engine.logits(x)
        assert_close("engine logits vs eval model", got, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(before, got)
    kept = [m._winograd is not None for m in engine._fused().features]
    assert kept == [False] * (len(widths) - 1) + [len(widths) == 3]


def test_fused_layers_refuse_backward_and_non_conv_models_pass_through():
    conv, bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)
    fused = nn.ConvBNReLU(conv, bn, relu=True)
    with pytest.raises(RuntimeError, match="inference only"):
        fused.backward(np.zeros((1, 3, 2, 2), np.float32))
    plain = nn.Sequential(nn.Linear(4, 2), nn.ReLU())
    assert nn.fuse_for_inference(plain) is plain
    batch_stats = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False))
    assert nn.fuse_for_inference(batch_stats) is batch_stats  # no running statistics: nothing to fold


@pytest.mark.parametrize("stem_pool", [False, True], ids=["stride-2", "pooled"])
def test_a_vits_early_convolutions_fold_and_it_predicts_as_before(stem_pool):
    """The conv stem's conv-BatchNorm-ReLU[-pool] stages fold like the CNN's (BatchNorm
    statistics made non-trivial by a few training-mode passes); the blocks run on the fast
    path with the model's own weights, in float64 with the exact erf."""
    from tinytriage.models.vit import ViTConfig, build_vit
    from tinytriage.nn.fast.transformer import FastBlocks

    cfg = ViTConfig(
        num_classes=3, img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, conv_stem=[4, 8, 8],
        stem_pool=stem_pool,
    )  # fmt: skip
    model = build_vit(cfg, rng=np.random.default_rng(0), dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32))
    model.train()
    for _ in range(3):
        model(x)  # running statistics move away from (0, 1)
    model.eval()
    fused = nn.fuse_for_inference(model)
    assert [type(s).__name__ for s in fused.patch_embed.stem] == ["ConvBNReLU"] * 3
    assert isinstance(fused.blocks, FastBlocks)
    assert all(f is b for f, b in zip(fused.blocks.blocks, model.blocks, strict=True))  # shared, not copied
    assert_close("fused ViT", fused(x), model(x), rtol=1e-10, atol=1e-12)


# -- ReLU6, the depthwise and pointwise paths, TF "same" padding, and the mobile blocks ----
# (conv class, Conv2d or Conv2dSame; its kwargs; max pool (kernel, stride) or None; input shape)
RELU6_CASES = [
    pytest.param(nn.Conv2d, dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6), None, (2, 6, 7, 8), id="depthwise-k3"),
    pytest.param(nn.Conv2dSame, dict(in_channels=4, out_channels=4, kernel_size=5, stride=2, groups=4, bias=False), None, (2, 4, 9, 8), id="depthwise-same-k5-s2"),
    pytest.param(nn.Conv2d, dict(in_channels=5, out_channels=7, kernel_size=1), None, (2, 5, 4, 6), id="pointwise"),
    pytest.param(nn.Conv2dSame, dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, bias=False), None, (2, 3, 10, 9), id="im2col-same-s2"),
    pytest.param(nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (2, 2), (2, 3, 8, 8), id="im2col-pool2"),
    pytest.param(nn.Conv2d, dict(in_channels=32, out_channels=4, kernel_size=3, padding=1), (2, 2), (1, 32, 4, 4), id="no-winograd-for-relu6"),
]  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("conv_cls, conv_kw, pool, shape", RELU6_CASES)
def test_fused_conv_bn_relu6_matches_torch_eval(conv_cls, conv_kw, pool, shape, dtype):
    from tinytriage.models import torch_efficientnet

    rng = np.random.default_rng(0)
    O = conv_kw["out_channels"]
    layers = [conv_cls(**conv_kw, rng=rng), nn.BatchNorm2d(O, eps=1e-3), nn.ReLU6()] + (
        [nn.MaxPool2d(*pool)] if pool else []
    )
    model = nn.Sequential(*layers).astype(dtype)
    randomise_batchnorms(model, rng)
    model.eval()
    fused = nn.fuse_for_inference(model)
    assert [type(m).__name__ for m in fused] == ["ConvBNReLU"] and fused[0].relu6

    t_conv = torch_efficientnet.Conv2dSame if conv_cls is nn.Conv2dSame else tnn.Conv2d
    t_layers = [t_conv(**conv_kw), tnn.BatchNorm2d(O, eps=1e-3), tnn.ReLU6()] + ([tnn.MaxPool2d(*pool)] if pool else [])
    twin = tnn.Sequential(*t_layers).to(TORCH_DTYPE[dtype]).eval()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    x = (10 * rng.standard_normal(shape)).astype(dtype)
    assert model[1](model[0](x)).max() > 6  # the cap has work to do
    ours = fused(x)
    assert ours.dtype == dtype and ours.max() == 6.0
    assert fused[0]._winograd is None  # Winograd's epilogue has no cap: ReLU6 stays on im2col
    with torch.no_grad():
        assert_close("fused vs torch conv-bn-relu6", ours, twin(torch.from_numpy(x)), **TOL[dtype])
    assert_close("fused vs unfused", ours, model(x), **TOL[dtype])


BLOCKS = [
    pytest.param(lambda rng: nn.DepthwiseSeparableConv(8, 8, 3, 1, rng=rng), (2, 8, 7, 6), id="ds-residual"),
    pytest.param(lambda rng: nn.DepthwiseSeparableConv(8, 4, 5, 2, rng=rng), (2, 8, 9, 8), id="ds-s2"),
    pytest.param(lambda rng: nn.InvertedResidual(4, 4, 3, 1, 6.0, rng=rng), (2, 4, 8, 7), id="ir-residual"),
    pytest.param(lambda rng: nn.InvertedResidual(4, 6, 5, 2, 6.0, rng=rng), (2, 4, 9, 10), id="ir-s2-k5"),
]


@pytest.mark.parametrize("make, shape", BLOCKS)
def test_fused_block_equals_the_unfused_block_in_eval(make, shape):
    rng = np.random.default_rng(5)
    block = make(rng).astype(np.float64)
    randomise_batchnorms(block, rng)
    block.eval()
    x = 2 * rng.standard_normal(shape)
    expected = block(x).copy()
    fused = nn.fuse_for_inference(block)
    assert isinstance(fused, nn.FusedBlock) and fused.has_skip == block.has_skip
    kinds = [(type(m).__name__, m.conv.path, m.relu6) for m in fused.branch]
    paths = (
        ["depthwise", "pointwise"]
        if isinstance(block, nn.DepthwiseSeparableConv)
        else ["pointwise", "depthwise", "pointwise"]
    )
    assert kinds == [
        ("ConvBNReLU", p, k < len(paths) - 1) for k, p in enumerate(paths)
    ]  # no ReLU6 after the last BatchNorm
    assert_close("fused block vs unfused", fused(x), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="inference only"):
        fused.backward(expected)


def test_a_stack_of_blocks_fuses_every_block_and_follows_training():
    rng = np.random.default_rng(6)
    model = nn.Sequential(
        nn.Conv2dSame(3, 8, 3, stride=2, bias=False, rng=rng),
        nn.BatchNorm2d(8, eps=1e-3),
        nn.ReLU6(),
        nn.DepthwiseSeparableConv(8, 8, rng=rng),
        nn.InvertedResidual(8, 12, 3, 2, 6.0, rng=rng),
        nn.InvertedResidual(12, 12, 5, 1, 6.0, rng=rng),
    )
    randomise_batchnorms(model, rng)
    x = rng.standard_normal((3, 3, 16, 15)).astype(np.float32)
    fused = nn.fuse_for_inference(model)
    assert [type(m).__name__ for m in fused] == ["ConvBNReLU", "FusedBlock", "FusedBlock", "FusedBlock"]
    model.eval()
    assert_close("stack: fused vs unfused", fused(x), model(x), rtol=1e-4, atol=1e-5)
    # a training step changes weights and statistics: the fused model reads the live ones
    model.train()
    out = model(x)
    model.backward(np.ones_like(out))
    for name, p in model.params.items():
        p -= 0.1 * model.grads[name]
    model.eval()
    assert_close("after a step", fused(x), model(x), rtol=1e-4, atol=1e-5)
