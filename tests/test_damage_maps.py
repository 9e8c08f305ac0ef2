"""Damage maps: box targets that follow the pixels, the head's gradients, and training with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from test_train import cfg_for, make_toy_dataset

from tinytriage import nn
from tinytriage.data.augment import Augment, augment_batch
from tinytriage.data.preprocess import Preprocess, load_fitted
from tinytriage.engines.numpy_engine import NumpyEngine
from tinytriage.errors import TrainingError
from tinytriage.models import ARCHS
from tinytriage.models.cnn import CNNConfig, TriageCNN, feature_map_size
from tinytriage.models.file import read_model
from tinytriage.training.damage_maps import boxes_in_cache, cell_coverage, damage_head_for
from tinytriage.training.loop import train


def test_coverage_without_a_map_is_the_share_of_each_cell_in_the_box():
    # 32 px input, 4 x 4 cells of 8 px: the box covers cell (row 1, col 2) whole and half of (1, 3)
    boxes = np.array([[16.0, 8.0, 28.0, 16.0], [np.nan] * 4])
    cov = cell_coverage(boxes, None, out_size=32, grid=4)
    assert cov.shape == (2, 4, 4) and cov.dtype == np.float32
    want = np.zeros((4, 4), np.float32)
    want[1, 2], want[1, 3] = 1.0, 0.5
    np.testing.assert_array_equal(cov[0], want)
    assert not cov[1].any()  # no box: no damage anywhere


@pytest.mark.parametrize(
    "aug", [Augment(), Augment(hflip=1.0, rotation=25.0, crop_scale=(0.5, 0.7))], ids=["default", "flip-turn-crop"]
)
def test_coverage_follows_the_augmented_pixels(aug):
    """A white box on black, augmented: each cell's share of white pixels is its coverage."""
    rng = np.random.default_rng(0)
    N, S, out, grid = 16, 80, 64, 8
    images = np.zeros((N, S, S, 3), np.uint8)
    boxes = np.zeros((N, 4))
    for i in range(N):
        x0, y0 = rng.integers(0, 50, 2)
        w, h = rng.integers(12, 30, 2)
        images[i, y0 : y0 + h, x0 : x0 + w] = 255
        boxes[i] = (x0, y0, x0 + w, y0 + h)
    plain = Augment(brightness=0, contrast=0, saturation=0, blur=0, rotation=aug.rotation, hflip=aug.hflip,
                    crop_scale=aug.crop_scale)  # fmt: skip
    x, maps = augment_batch(images, out, plain, np.random.default_rng(1), fill=(0, 0, 0), return_maps=True)
    assert maps.shape == (N, 6)
    white = (x[..., 0] / 255.0).reshape(N, grid, out // grid, grid, out // grid).mean(axis=(2, 4))
    cov = cell_coverage(boxes, maps, out, grid)
    assert np.abs(white - cov).max() < 0.2  # bilinear edges blur a little
    assert np.abs(white - cov).mean() < 0.02
    assert (cov > 0.5).sum() > N  # the boxes are really there


def test_maps_do_not_change_the_augmented_images():
    images = np.random.default_rng(0).integers(0, 255, (4, 40, 40, 3), dtype=np.uint8)
    a = augment_batch(images, 32, Augment(), np.random.default_rng(5))
    b, _ = augment_batch(images, 32, Augment(), np.random.default_rng(5), return_maps=True)
    np.testing.assert_array_equal(a, b)


def test_boxes_move_with_the_letterbox(tmp_path):
    d = tmp_path / "screen_damage"
    d.mkdir()
    Image.new("RGB", (200, 100)).save(d / "a.png")
    (d / "a.json").write_text(json.dumps({"damage_bbox": [50, 20, 150, 60]}))
    Image.new("RGB", (200, 100)).save(d / "b.png")  # no sidecar: no box
    paths = [d / "a.png", d / "b.png"]
    geometries = [load_fitted(p, Preprocess(input_size=40))[1] for p in paths]
    boxes = boxes_in_cache(paths, geometries)
    # 200 x 100 -> 40 x 20 at scale 0.2, 10 px of border above and below
    np.testing.assert_allclose(boxes[0], [10, 14, 30, 22])
    assert np.isnan(boxes[1]).all()


@pytest.mark.parametrize("size", [128, 100, 24])
def test_map_size_is_the_last_stage_map(size):
    cfg = CNNConfig(input_size=size, widths=(2, 3, 4), num_classes=3)
    f = TriageCNN(cfg).features(np.zeros((1, 3, size, size), np.float32))
    assert f.shape[2:] == (feature_map_size(cfg), feature_map_size(cfg))


def test_damage_task_gradients_match_central_differences():
    """loss = CE(head(f), y) + W * BCE(conv1x1(f), coverage): every gradient, numerically."""
    cfg = CNNConfig(input_size=8, widths=(2, 3), num_classes=3, dropout=0.0)
    engine = NumpyEngine(TriageCNN(cfg, rng=np.random.default_rng(0), dtype=np.float64), arch=ARCHS["cnn"])
    engine.attach_damage_head(damage_head_for(engine.model, 2.5))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 3, 8, 8)), np.array([0, 2, 1, 2])
    coverage = rng.random((4, 4, 4))
    _, _, grads = engine.damage_loss_and_grads(x, y, coverage)
    params = {**engine.model.params, **{f"damage_head.{k}": v for k, v in engine.damage_head.params.items()}}
    assert set(grads) == set(params)

    def total(_):
        f = engine.model.features(x)
        ce, _ = engine.loss_fn(engine.model.head(f), y)
        return float(ce) + 2.5 * engine.damage_head.forward(f, coverage)

    for name, p in params.items():
        np.testing.assert_allclose(grads[name], nn.numerical_grad(total, p), rtol=1e-5, atol=1e-8, err_msg=name)


def with_damage_boxes(root):
    """The toy screen_damage pictures are a white cross corner to corner: box them whole."""
    for photo in (root / "screen_damage").glob("*.png"):
        w, h = Image.open(photo).size
        photo.with_suffix(".json").write_text(json.dumps({"damage_bbox": [0, 0, w, h]}))
    return root


@pytest.fixture(scope="module")
def boxed(tmp_path_factory):
    return with_damage_boxes(make_toy_dataset(tmp_path_factory.mktemp("boxed")))


def test_training_with_damage_maps_keeps_the_head_out_of_the_model_file(boxed, tmp_path):
    r = train(cfg_for(boxed, tmp_path / "run", damage_weight=1.0))
    losses = [h.damage_loss for h in r.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    mf = read_model(r.model_path)  # checked against the architecture: no stray tensors
    assert not any("damage" in k for k in mf.tensors)
    assert mf.training["args"]["damage_weight"] == 1.0
    from safetensors.numpy import load_file

    ckpt = load_file(tmp_path / "run" / "checkpoint.safetensors")
    assert {k for k in ckpt if k.startswith("damage.")} == {"damage.conv.weight", "damage.conv.bias"}
    plain = read_model(train(cfg_for(boxed, tmp_path / "plain")).model_path).tensors
    assert not all(np.array_equal(plain[k], mf.tensors[k]) for k in plain)  # the task changed the weights


def test_resuming_with_damage_maps_equals_an_uninterrupted_run(boxed, tmp_path, monkeypatch):
    full = read_model(train(cfg_for(boxed, tmp_path / "full", damage_weight=1.0)).run_dir / "last.safetensors")
    real_step = NumpyEngine.train_step
    calls = {"n": 0}

    def flaky(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # in epoch 2 of 3
            raise KeyboardInterrupt
        return real_step(self, *args, **kw)

    monkeypatch.setattr(NumpyEngine, "train_step", flaky)
    assert train(cfg_for(boxed, tmp_path / "cut", damage_weight=1.0)).interrupted
    monkeypatch.setattr(NumpyEngine, "train_step", real_step)
    with pytest.raises(TrainingError, match="--damage-weight 1.0, this one with 0.0"):
        train(cfg_for(boxed, tmp_path / "cut", resume=True))
    train(cfg_for(boxed, tmp_path / "cut", damage_weight=1.0, resume=True))
    last = read_model(tmp_path / "cut" / "last.safetensors").tensors
    for k, v in full.tensors.items():
        np.testing.assert_array_equal(last[k], v, err_msg=k)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(arch="vit", model_config={}), "NumPy CNN only"),
        (dict(backend="torch"), "NumPy CNN only"),
        (dict(damage_weight=-1.0), "must be >= 0"),
    ],
)
def test_damage_maps_refuse_what_they_cannot_train(boxed, tmp_path, kw, message):
    with pytest.raises(TrainingError, match=message):
        train(cfg_for(boxed, tmp_path / "run", **{"damage_weight": 1.0, **kw}))


def test_a_dataset_without_boxes_says_so(tmp_path):
    data = make_toy_dataset(tmp_path / "data")
    with pytest.raises(TrainingError, match="no training photo .* has a damage box"):
        train(cfg_for(data, tmp_path / "run", damage_weight=1.0))


def test_cli_damage_weight(boxed, tmp_path):
    bad = run_cli("train", str(boxed), "--arch", "cnn", "--damage-weight", "-1", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    ok = run_cli("train", str(boxed), "--arch", "cnn", "--damage-weight", "1", "--epochs", "1", "--batch-size", "8",
                 "--input-size", "24", "--widths", "4,8", "--out", str(tmp_path / "run"), "-q")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "damage maps: 10 of 30 training photos have a damage box" in ok.stderr
    assert "damage-map loss" in ok.stderr
