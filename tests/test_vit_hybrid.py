"""The bundled ViT's pieces that need no torch: the pooled stem started from a trained CNN
(``stem_from_cnn``), and the blocks' inference path (``tinytriage.nn.fast.transformer``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinytriage import nn
from tinytriage.errors import ShapeError
from tinytriage.models.cnn import CNNConfig, TriageCNN
from tinytriage.models.vit import ViTConfig, build_vit, count_macs, stem_from_cnn
from tinytriage.nn.fast.transformer import FastBlocks, erf32

HYBRID = ViTConfig(
    num_classes=3, img_size=16, patch_size=4, embed_dim=8, depth=2, num_heads=2, conv_stem=[4, 6], stem_pool=True,
    distilled=True,
)  # fmt: skip


def _trained_cnn() -> TriageCNN:
    """A small CNN whose BatchNorms hold statistics of their own (a few training-mode passes)."""
    cnn = TriageCNN(CNNConfig(num_classes=3, input_size=16, widths=(4, 6, 8)), rng=np.random.default_rng(3))
    cnn.train()
    for seed in range(3):
        cnn(np.random.default_rng(seed).standard_normal((4, 3, 16, 16)).astype(np.float32))
    return cnn.eval()


def test_a_pooled_stem_from_a_cnn_computes_the_cnns_first_stages():
    cnn = _trained_cnn()
    vit = build_vit(HYBRID)
    state = vit.state_dict()
    stem = stem_from_cnn(HYBRID, cnn.cfg.to_dict(), cnn.state_dict())
    assert sorted(stem) == sorted(k for k in state if k.startswith("patch_embed.stem."))  # every stem tensor
    vit.load_state_dict({**state, **stem})
    vit.eval()
    x = np.random.default_rng(9).standard_normal((2, 3, 16, 16)).astype(np.float32)
    h = x
    for layer in list(cnn.features)[:8]:  # conv1 bn1 relu1 pool1 conv2 bn2 relu2 pool2
        h = layer(h)
    np.testing.assert_array_equal(vit.patch_embed.stem(x), h)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"conv_stem": [4, 8]}, r"stem's channels \[4, 8\] are not the CNN's first 2 stages' \[4, 6\]"),
        ({"stem_pool": False}, r"a pooled ViT stem"),
    ],
)
def test_stem_from_cnn_refuses_a_stem_that_is_not_the_cnns(change, message):
    cfg = ViTConfig(**{**HYBRID.to_dict(), **change})
    cnn = _trained_cnn()
    with pytest.raises(ShapeError, match=message):
        stem_from_cnn(cfg, cnn.cfg.to_dict(), cnn.state_dict())


def test_the_pooled_stem_in_the_config_its_file_form_and_its_cost():
    with pytest.raises(ShapeError, match="stem_pool pools the stages of a conv_stem, and there is none"):
        ViTConfig(stem_pool=True)
    assert "stem_pool" not in ViTConfig(conv_stem=[4, 6], patch_size=4, img_size=16).to_dict()  # files as before
    assert ViTConfig.from_dict(HYBRID.to_dict()) == HYBRID
    # the stem's convolutions run at the full size of their input (stride 1): 16x16 then 8x8
    stride2 = count_macs(ViTConfig(**{**HYBRID.to_dict(), "stem_pool": False}))
    assert count_macs(HYBRID) - stride2 == (16 * 16 - 8 * 8) * 4 * 3 * 9 + (8 * 8 - 4 * 4) * 6 * 4 * 9


def test_float32_erf_is_within_5e7_of_libm():
    x = np.concatenate([np.linspace(-10, 10, 200_001), [0.0, -0.0, 1e-30, 4.0, 26.0, np.inf, -np.inf]])
    got = erf32(x.astype(np.float32)).astype(np.float64)
    want = np.array([math.erf(v) for v in x.astype(np.float32).astype(np.float64)])
    assert np.abs(got - want).max() < 5e-7
    assert np.isnan(erf32(np.array([np.nan], np.float32)))[0]
    assert erf32(np.array([0.5])).dtype == np.float64  # other dtypes: the exact erf


def test_fast_blocks_in_float32_predict_as_the_model_does():
    """The fast path (groups of photos, float32 erf, in place) against the textbook blocks."""
    cfg = ViTConfig(num_classes=5, img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, distilled=True)
    model = build_vit(cfg, rng=np.random.default_rng(0)).eval()
    x = np.random.default_rng(1).standard_normal((37, 3, 32, 32)).astype(np.float32)
    fused = nn.fuse_for_inference(model)
    assert isinstance(fused.blocks, FastBlocks)
    got = fused(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, model(x), rtol=0, atol=2e-5)
    np.testing.assert_array_equal(fused(x[:5]), got[:5])  # a photo's result does not depend on its batch
