"""The second look: CAM box, gate, tuning, the Predictor's use of it, calibrate, model files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from test_train import make_toy_dataset

from tinytriage.data.preprocess import LetterboxGeometry, load_fitted, preprocess_with_geometry, to_array
from tinytriage.errors import ModelFileError
from tinytriage.inference.predict import Predictor
from tinytriage.inference.second_look import (
    BELOW_GRID,
    SecondLook,
    cam_region,
    class_activation_maps,
    combine,
    gate,
    head_weight,
    tune_below,
)
from tinytriage.models.file import read_model, save_model
from tinytriage.training.calibration import softmax

DEVICES = ("intact_device", "screen_damage")


def test_cam_mean_over_cells_plus_bias_is_the_logit(tiny_model_file):
    """With global average pooling, logit_k = mean over cells of w_k . f(cell) + b_k."""
    p = Predictor.load(save_model(tiny_model_file, _tmp() / "m.safetensors"))
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    logits, features = p.engine.logits_and_features(x)  # (3, K), (3, 8, 16, 16)
    np.testing.assert_allclose(logits, p.engine.logits(x), atol=1e-6)
    bias = tiny_model_file.tensors["head.3.bias"]
    for k in range(logits.shape[1]):
        cam = class_activation_maps(features, head_weight(tiny_model_file), [k], rectify=False)
        np.testing.assert_allclose(cam.mean(axis=(1, 2)) + bias[k], logits[:, k], rtol=1e-4, atol=1e-5)
    both = class_activation_maps(features, head_weight(tiny_model_file), [1, 4])  # two classes: summed, rectified
    want = class_activation_maps(features, head_weight(tiny_model_file), [1], rectify=False)
    want = np.maximum(want + class_activation_maps(features, head_weight(tiny_model_file), [4], rectify=False), 0)
    np.testing.assert_allclose(both, want, atol=1e-5)


def test_cam_region_maps_cells_to_the_original_photo():
    # a 200 x 100 photo letterboxed into 32 px: 0.16 model px per photo px, 8 px border on top
    geom = LetterboxGeometry(scale=0.16, pad_x=0.0, pad_y=8.0, orig_w=200, orig_h=100)
    cam = np.zeros((4, 4))  # cells of 8 model px
    cam[1, 2] = 1.0  # model x 16..24, y 8..16 -> photo x 100..150, y 0..50
    assert cam_region(cam, geom, 32, 0.5, 0.0) == pytest.approx((100.0, 0.0, 150.0, 50.0))
    cam[2, 1] = 0.6  # joins the box at frac 0.5, not at 0.7
    assert cam_region(cam, geom, 32, 0.5, 0.0) == pytest.approx((50.0, 0.0, 150.0, 100.0))
    assert cam_region(cam, geom, 32, 0.7, 0.0) == pytest.approx((100.0, 0.0, 150.0, 50.0))
    # a quarter cell (2 model px = 12.5 photo px) wider each side, clipped to the photo
    assert cam_region(cam, geom, 32, 0.7, 0.25) == pytest.approx((87.5, 0.0, 162.5, 62.5))
    assert cam_region(np.zeros((4, 4)), geom, 32, 0.5, 0.0) is None
    cam = np.zeros((4, 4))
    cam[0, 0] = 1.0  # only the border above the photo: nothing to look at
    assert cam_region(cam, geom, 32, 0.5, 0.0) is None


def test_gate_and_tuning_pick_the_fewest_looks_that_reach_the_best_accuracy():
    first = np.array([[0.6, 0.4, 0.0], [0.95, 0.05, 0.0], [0.0, 0.1, 0.9], [0.1, 0.0, 0.9]])
    second = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.1, 0.0, 0.9]])
    labels = np.array([1, 0, 2, 2])  # looking again fixes photo 0 and breaks photo 1
    assert gate(first, [0, 1], 0.9).tolist() == [True, False, False, False]  # class 2 is never looked at
    below, rows = tune_below(first, second, labels, [0, 1])
    assert below == 0.7  # the smallest grid value above 0.6 and at most 0.95
    by_below = {r["below"]: r for r in rows}
    assert [r["below"] for r in rows] == list(BELOW_GRID)
    assert by_below[0.0]["accuracy"] == 0.75 and by_below[0.7]["accuracy"] == 1.0
    assert by_below[1.0]["accuracy"] == 0.75 and by_below[1.0]["looked"] == 0.5
    np.testing.assert_allclose(combine(first, second)[0], [0.3, 0.7, 0.0])


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"classes": ["no_such_class"], "below": 0.9}, "does not have"),
        ({"classes": list(DEVICES), "below": 3.0}, "below must be"),
        ({"classes": list(DEVICES), "below": 0.9, "zoom": 2}, "unknown key"),
        ({"below": 0.9}, "malformed second_look"),
    ],
)
def test_model_file_second_look_is_checked_on_load(tmp_path, tiny_model_file, setting, message):
    from dataclasses import replace

    path = save_model(replace(tiny_model_file, second_look=setting), tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match=message):
        read_model(path)


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp())


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, (w, h) in enumerate([(120, 90), (64, 96), (200, 150), (90, 90), (150, 100)]):
        a = rng.normal(60, 20, (h, w, 3))  # a dark, noisy photo with one bright, striped thing on it
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        a[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.uniform(120, 255, 3)
        a[y0 : y0 + h // 3 : 3, x0 : x0 + w // 3] = 0
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        paths.append(str(tmp_path / f"p{i}.png"))
        img.save(paths[-1])
    return paths


def _looking_model(tmp_path, tiny_model_file, below=1.01):
    """The tiny model, told to look again at every photo (any class, any confidence)."""
    from dataclasses import replace

    look = SecondLook(tuple(tiny_model_file.classes), below, cam_frac=0.3, margin=0.5)
    tensors = dict(tiny_model_file.tensors)  # sharper logits: the two looks' probabilities differ visibly
    tensors["head.3.weight"] = tensors["head.3.weight"] * 40
    mf = replace(tiny_model_file, tensors=tensors, second_look=look.to_dict())
    return save_model(mf, tmp_path / "look.safetensors")


def test_predictor_averages_the_first_look_with_the_same_model_on_the_cam_region(tmp_path, tiny_model_file, photos):
    path = _looking_model(tmp_path, tiny_model_file)
    p = Predictor.load(path)
    got = list(p.predict_paths(photos, batch_size=2))
    first_only = list(Predictor.load(path, second_look=False).predict_paths(photos))
    cfg, T, look = p.preprocess_config, p.model_file.temperature, p.second_look
    for photo, r, r1 in zip(photos, got, first_only, strict=True):
        # the same steps, one photo at a time, from the public pieces
        x, geom = preprocess_with_geometry(photo, cfg)
        logits, features = p.engine.logits_and_features(x)
        first = softmax(logits, T)[0]
        cam = class_activation_maps(features, head_weight(p.model_file), list(range(len(first))))[0]
        region = cam_region(cam, geom, cfg.input_size, look.cam_frac, look.margin)
        assert region is not None
        second = softmax(p.engine.logits(to_array(load_fitted(photo, cfg, region=region)[0], cfg)), T)[0]
        want = combine(first, second)
        assert r.second_look and not r1.second_look
        np.testing.assert_allclose([r.probabilities[c] for c in p.model_file.classes], want, atol=1e-5)
        np.testing.assert_allclose([r1.probabilities[c] for c in p.model_file.classes], first, atol=1e-5)
    assert any(abs(a.confidence - b.confidence) > 1e-4 for a, b in zip(got, first_only, strict=True))


def test_predictor_without_a_second_look_setting_never_looks_twice(tmp_path, tiny_model_path, photos):
    assert not any(r.second_look for r in Predictor.load(tiny_model_path).predict_paths(photos))


def test_a_photo_gone_before_its_second_look_keeps_its_first(tmp_path, tiny_model_file, photos):
    p = Predictor.load(_looking_model(tmp_path, tiny_model_file))
    x, geom = preprocess_with_geometry(photos[0], p.preprocess_config)
    logits, features = p.engine.logits_and_features(x)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        first = softmax(logits, p.model_file.temperature)
        assert list(p.look_again([photos[0]], first, features, [geom], pool)) == [0]
        assert p.look_again([str(tmp_path / "gone.png")], first, features, [geom], pool) == {}


def test_predict_json_says_which_photos_were_looked_at_twice(tmp_path, tiny_model_file, photos):
    path = _looking_model(tmp_path, tiny_model_file)
    r = run_cli("predict", *photos, "--model", str(path), "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["second_look"] for line in r.stdout.splitlines()] == [True] * len(photos)
    r = run_cli("predict", *photos, "--model", str(path), "--json", "--no-second-look")
    assert [json.loads(line)["second_look"] for line in r.stdout.splitlines()] == [False] * len(photos)


def test_calibrate_writes_a_model_with_its_fitted_values(tmp_path, tiny_model_path):
    data = make_toy_dataset(tmp_path / "val", per_class=6, classes=("document", *DEVICES))
    out = tmp_path / "cal.safetensors"
    r = run_cli("calibrate", str(data), "--model", str(tiny_model_path), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    mf = read_model(out)
    assert mf.second_look == {"classes": list(DEVICES), "below": report["below"], "cam_frac": 0.1, "margin": 0.25}
    assert report["below"] in BELOW_GRID and report["n"] == 18 and not report["failures"]
    assert mf.temperature == pytest.approx(report["temperature"]) and mf.threshold == pytest.approx(report["threshold"])
    assert 0.5 <= mf.threshold <= 1.0 and mf.temperature > 0
    assert mf.metrics["calibration"]["below"] == report["below"]
    # the table, on a terminal-less stdout
    r = run_cli("calibrate", str(data), "--model", str(tiny_model_path), "--out", str(tmp_path / "b.safetensors"))
    assert r.returncode == 0 and "look again below" in r.stdout and "wrote" in r.stdout


def test_calibrate_refuses_a_vit_and_a_folder_of_unknown_classes(tmp_path, tiny_model_path):
    from tinytriage.data.routes import DEFAULT_ROUTES
    from tinytriage.models.file import ModelFile
    from tinytriage.models.vit import ViTConfig, build_vit

    cfg = ViTConfig(num_classes=len(DEFAULT_ROUTES), img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    vit = save_model(
        ModelFile(
            arch="vit", config=cfg.to_dict(), classes=list(DEFAULT_ROUTES), routes=dict(DEFAULT_ROUTES),
            preprocess={"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "letterbox"},
            tensors=build_vit(cfg, np.random.default_rng(0)).state_dict(),
        ),
        tmp_path / "vit.safetensors",
    )  # fmt: skip
    data = make_toy_dataset(tmp_path / "val", per_class=2, classes=("document", "cats"))
    for model, message in [(vit, "needs a CNN"), (tiny_model_path, "cats")]:
        r = run_cli("calibrate", str(data), "--model", str(model), "--out", str(tmp_path / "x.safetensors"))
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "x.safetensors").exists()


def test_second_looks_gathered_across_batches_keep_input_order_and_values(tmp_path, tiny_model_file, photos):
    """Close-ups wait for half a batch of them, so results must come back reordered into
    input order, the bad photo in place, and equal to one-photo-at-a-time results."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    paths = [photos[0], photos[1], str(bad), *photos[2:], photos[0]]
    first = Predictor.load(_looking_model(tmp_path, tiny_model_file), second_look=False)
    confidences = [r.confidence for r in first.predict_paths(photos)]  # look again at the less sure half
    p = Predictor.load(_looking_model(tmp_path, tiny_model_file, below=float(np.mean(sorted(confidences)[2:4]))))
    for batch_size in (1, 2, 4, 64):
        got = list(p.predict_paths(paths, batch_size=batch_size))
        assert [r.path for r in got] == paths
        assert type(got[2]).__name__ == "PhotoFailure"
        if batch_size == 1:
            one = got
            continue
        for a, b in zip(got, one, strict=True):
            if a is not got[2]:
                assert a.second_look == b.second_look and a.label == b.label
                assert a.confidence == pytest.approx(b.confidence, abs=1e-6)
    assert any(r.second_look for r in one if hasattr(r, "second_look"))
    assert not all(r.second_look for r in one if hasattr(r, "second_look"))  # the gate let some through


def test_the_torch_engine_takes_the_same_second_look(tmp_path, tiny_model_file, photos):
    pytest.importorskip("torch")
    path = _looking_model(tmp_path, tiny_model_file)
    x = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32)
    by = {b: Predictor.load(path, backend=b) for b in ("numpy", "torch")}
    (ln, fn), (lt, ft) = (by[b].engine.logits_and_features(x) for b in ("numpy", "torch"))
    np.testing.assert_allclose(fn, ft, rtol=1e-4, atol=1e-5)  # the map the CAM is read from
    np.testing.assert_allclose(ln, lt, rtol=1e-4, atol=1e-5)
    numpy_results, torch_results = (list(by[b].predict_paths(photos)) for b in ("numpy", "torch"))
    for a, b in zip(numpy_results, torch_results, strict=True):
        assert a.second_look and b.second_look and a.label == b.label
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)


def test_close_ups_are_the_regions_a_second_look_sees(tmp_path, tiny_model_path):
    from tinytriage.models.file import read_model

    data = make_toy_dataset(tmp_path / "data", per_class=3, classes=("document", *DEVICES))
    (data / "screen_damage" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "out"
    r = run_cli("close-ups", str(data), "--model", str(tiny_model_path), "--out", str(out), "--link-originals",
                "--max-side", "40")  # fmt: skip
    assert r.returncode == 1 and "broken.jpg" in r.stderr and "Traceback" not in r.stderr
    assert "wrote 6 close-ups, linked 9 photos" in r.stderr
    assert sorted(p.name for p in (out / "document").iterdir()) == sorted(p.name for p in (data / "document").iterdir())
    close_ups = sorted((out / "intact_device").glob("closeup_*.jpg"))
    assert len(close_ups) == 3 and not list((out / "document").glob("closeup_*"))
    # one of them, recomputed from the public pieces
    original = data / "intact_device" / close_ups[0].name.removeprefix("closeup_").replace(".jpg", ".png")
    p = Predictor.load(tiny_model_path)
    x, geom = preprocess_with_geometry(str(original), p.preprocess_config)
    _, features = p.engine.logits_and_features(x)
    mf = read_model(tiny_model_path)
    idx = [mf.classes.index(c) for c in DEVICES]
    region = cam_region(class_activation_maps(features, head_weight(mf), idx)[0], geom, 32, 0.1, 0.25)
    want = Image.open(original).convert("RGB").crop(tuple(int(round(v)) for v in region))
    want.thumbnail((40, 40))
    got = Image.open(close_ups[0])
    assert got.size == want.size and max(got.size) <= 40
    assert np.abs(np.asarray(got, dtype=np.int16) - np.asarray(want, dtype=np.int16)).mean() < 8  # JPEG
