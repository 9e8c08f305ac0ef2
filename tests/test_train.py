"""The training loop: determinism, checkpoints, Ctrl-C and resume, NaN, bad datasets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image, ImageDraw

from tinytriage.errors import DatasetError, TrainingError
from tinytriage.models.file import read_model
from tinytriage.training.events import Duplicates, Scan
from tinytriage.training.loop import TrainConfig, train

CLASSES = ("document", "parcel", "screen_damage")


def make_toy_dataset(root, per_class=12, seed=0, classes=CLASSES):
    """Three easily told apart kinds of picture, with size and colour noise."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(60, 90)), int(rng.integers(50, 80))
            img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(60, 200, 3)))
            draw = ImageDraw.Draw(img)
            if k == 0:
                for y in range(5, h - 5, 8):
                    draw.line([(5, y), (w - 5, y)], fill=(20, 20, 20), width=2)
            elif k == 1:
                draw.rectangle([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(150, 110, 60))
            else:
                draw.line([(0, 0), (w, h)], fill=(250, 250, 250), width=3)
                draw.line([(w, 0), (0, h)], fill=(250, 250, 250), width=3)
            img.save(d / f"{name}_{i:03d}.png")
    return root


def cfg_for(data, out, **kw):
    base = dict(data_dir=str(data), out=str(out), arch="cnn", epochs=3, batch_size=8, lr=0.05, input_size=24, seed=0,
                model_config={"widths": [4, 8]})  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"))


def test_trains_and_writes_run_folder(toy, tmp_path):
    r = train(cfg_for(toy, tmp_path / "run", epochs=4))
    for name in ("model.safetensors", "last.safetensors", "checkpoint.safetensors", "metrics.json", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    mf = read_model(r.model_path)
    assert mf.classes == sorted(CLASSES)
    assert mf.metrics["val_acc"] == r.best_val_acc
    assert len(mf.training["history"]) == 4 and mf.training["seed"] == 0
    assert 0.5 <= mf.threshold <= 1.0 and mf.temperature > 0
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]  # it learned something


def test_deterministic_for_a_seed(toy, tmp_path):
    a = read_model(train(cfg_for(toy, tmp_path / "a")).model_path).tensors
    b = read_model(train(cfg_for(toy, tmp_path / "b")).model_path).tensors
    c = read_model(train(cfg_for(toy, tmp_path / "c", seed=1)).model_path).tensors
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_interrupt_then_resume_equals_uninterrupted(toy, tmp_path, monkeypatch):
    full = read_model(train(cfg_for(toy, tmp_path / "full")).run_dir / "last.safetensors").tensors

    from tinytriage.engines import numpy_engine as engine_mod

    real_step = engine_mod.NumpyEngine.train_step
    calls = {"n": 0}

    def flaky(self, x, y, lr):
        calls["n"] += 1
        if calls["n"] == 5:  # in the middle of epoch 2 (3 steps per epoch)
            raise KeyboardInterrupt
        return real_step(self, x, y, lr)

    monkeypatch.setattr(engine_mod.NumpyEngine, "train_step", flaky)
    r = train(cfg_for(toy, tmp_path / "cut"))
    assert r.interrupted and len(r.history) == 1
    monkeypatch.setattr(engine_mod.NumpyEngine, "train_step", real_step)
    resumed = train(cfg_for(toy, tmp_path / "cut", resume=True))
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    last = read_model(tmp_path / "cut" / "last.safetensors").tensors
    for k in full:
        np.testing.assert_array_equal(last[k], full[k], err_msg=k)


def test_nan_loss_stops_with_a_clear_message(toy, tmp_path, monkeypatch):
    from tinytriage.engines import numpy_engine as engine_mod

    real_step = engine_mod.NumpyEngine.train_step
    calls = {"n": 0}

    def poisoned(self, x, y, lr):
        calls["n"] += 1
        loss, logits = real_step(self, x, y, lr)
        return (float("nan") if calls["n"] == 2 else loss), logits

    monkeypatch.setattr(engine_mod.NumpyEngine, "train_step", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 2"):
        train(cfg_for(toy, tmp_path / "nan"))
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_resume_without_checkpoint(toy, tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(cfg_for(toy, tmp_path / "none", resume=True))


def test_resume_with_other_settings_names_what_differs(toy, tmp_path):
    train(cfg_for(toy, tmp_path / "run", epochs=1))
    with pytest.raises(TrainingError, match=r"input_size 24 -> 32; widths \[4, 8\] -> \[4, 8, 8\]"):
        train(cfg_for(toy, tmp_path / "run", resume=True, input_size=32, model_config={"widths": [4, 8, 8]}))
    # validating on other photos would pick the best epoch by another yardstick, maybe on photos it trained on
    with pytest.raises(TrainingError, match=r"validated on --val-fraction 0.15 .*seed 0.*, this one on --val-dir "):
        train(cfg_for(toy, tmp_path / "run", resume=True, val_dir=str(toy)))
    with pytest.raises(TrainingError, match=r"seed 0\), this one on --val-fraction 0.3 of the data \(seed 0"):
        train(cfg_for(toy, tmp_path / "run", resume=True, val_fraction=0.3))


def test_init_starts_from_a_model_files_weights(toy, tmp_path):
    first = read_model(train(cfg_for(toy, tmp_path / "first", epochs=2)).model_path).tensors
    # a learning rate of ~0 leaves the weights where --init put them (BatchNorm's running
    # statistics still move: they are averages, not learned)
    tuned = train(cfg_for(toy, tmp_path / "tuned", epochs=1, lr=1e-12, init=str(tmp_path / "first/model.safetensors")))
    fresh = train(cfg_for(toy, tmp_path / "fresh", epochs=1, lr=1e-12))
    kernels = [k for k, v in first.items() if v.ndim == 4]
    assert kernels
    for run, same in ((tuned, True), (fresh, False)):
        last = read_model(run.model_path.parent / "last.safetensors").tensors
        assert all(np.allclose(last[k], first[k], atol=1e-9) for k in kernels) is same
    assert tuned.best_val_acc >= fresh.best_val_acc
    assert json.loads((tmp_path / "tuned/metrics.json").read_text())["args"]["init"].endswith("model.safetensors")


def test_init_with_another_architecture_or_classes_says_what_differs(toy, tmp_path):
    model = str(train(cfg_for(toy, tmp_path / "a", epochs=1)).model_path)
    with pytest.raises(TrainingError, match=r"--init .*widths \[4, 8\] -> \[4, 16\]"):
        train(cfg_for(toy, tmp_path / "b", init=model, model_config={"widths": [4, 16]}))
    renamed = make_toy_dataset(tmp_path / "renamed", classes=("document", "parcel", "zebra"))
    with pytest.raises(TrainingError, match="classes .*screen_damage.* are not this dataset's .*zebra"):
        train(cfg_for(renamed, tmp_path / "c", init=model))
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").glob("*.safetensors"))
    r = run_cli(
        "train", str(toy), "--arch", "cnn", "--out", str(tmp_path / "d"), "--init", str(tmp_path / "nope.safetensors")
    )
    assert r.returncode == 1 and "model file not found" in r.stderr and "Traceback" not in r.stderr


def test_init_at_another_input_size_carries_every_cnn_weight_over(toy, tmp_path):
    first_path = train(cfg_for(toy, tmp_path / "first", epochs=1)).model_path
    first = read_model(first_path)
    tuned = train(cfg_for(toy, tmp_path / "big", epochs=1, lr=1e-12, input_size=32, init=str(first_path)))
    last = read_model(tuned.model_path.parent / "last.safetensors")
    assert last.config["input_size"] == 32 and first.config["input_size"] == 24
    kernels = [k for k, v in first.tensors.items() if v.ndim in (2, 4)]  # conv kernels and the linear layer
    for k in kernels:
        np.testing.assert_allclose(last.tensors[k], first.tensors[k], atol=1e-9)
    # a ViT's position embedding has one row per patch, so its input size stays fixed
    vit = cfg_for(toy, tmp_path / "vit", arch="vit", epochs=1, model_config={"embed_dim": 16, "depth": 1, "num_heads": 2},
                  input_size=24)  # fmt: skip
    vit_path = train(vit).model_path
    with pytest.raises(TrainingError, match=r"img_size 24 -> 36"):
        train(replace(vit, out=str(tmp_path / "vit2"), input_size=36, init=str(vit_path)))


def test_init_takes_the_files_architecture_and_a_distilled_vit_tunes_without_a_teacher(toy, tmp_path):
    """``train photos --init FILE`` fine-tunes the file's model as it is: no --arch, no shape
    options. A distilled ViT without --teacher trains both heads on the true classes."""
    shape = {"embed_dim": 16, "depth": 1, "num_heads": 2, "conv_stem": [4, 6], "patch_size": 4, "distilled": True}
    vit = cfg_for(toy, tmp_path / "vit", arch="vit", epochs=1, model_config=shape, input_size=16, lr=1e-3)
    first = read_model(train(vit).model_path)  # no teacher: both heads on the true classes
    assert first.config["distilled"] and first.config["embed_dim"] == 16
    tuned = train(TrainConfig(data_dir=str(toy), out=str(tmp_path / "tuned"), epochs=1, batch_size=8, lr=1e-12,
                              init=str(tmp_path / "vit" / "model.safetensors")))  # fmt: skip
    last = read_model(tuned.model_path.parent / "last.safetensors")
    assert last.arch == "vit" and last.config == first.config
    assert last.preprocess["input_size"] == 16
    np.testing.assert_allclose(last.tensors["head_dist.weight"], first.tensors["head_dist.weight"], atol=1e-9)
    # an option given still wins, and a shape the weights do not fit is refused by name
    with pytest.raises(TrainingError, match=r"--init .*embed_dim 16 -> 24"):
        train(replace(vit, out=str(tmp_path / "wider"), model_config={**shape, "embed_dim": 24},
                      init=str(tmp_path / "vit" / "model.safetensors")))  # fmt: skip


def test_init_from_an_avg_head_into_avgmax_starts_as_the_same_function(toy, tmp_path):
    from tinytriage.models.file import build_numpy_model
    from tinytriage.training.checkpoint import init_weights
    from tinytriage.training.run import RunState

    first_path = train(cfg_for(toy, tmp_path / "first", epochs=2)).model_path
    first = read_model(first_path)
    avgmax = cfg_for(toy, tmp_path / "wide", model_config={"widths": [4, 8], "pool": "avgmax"})
    arch_config = {**first.config, "pool": "avgmax"}
    run = RunState(cfg=avgmax, arch_config=arch_config, classes=list(first.classes), routes=first.routes)
    weights = init_weights(first_path, run)
    assert weights["head.3.weight"].shape == (3, 16)  # [means | maxima] of 8 channels
    np.testing.assert_array_equal(weights["head.3.weight"][:, 8:], 0)
    old, new = build_numpy_model("cnn", first.config).eval(), build_numpy_model("cnn", arch_config).eval()
    old.load_state_dict(first.tensors)
    new.load_state_dict(weights)
    x = np.random.default_rng(0).standard_normal((4, 3, 24, 24)).astype(np.float32)
    np.testing.assert_allclose(new(x), old(x), rtol=1e-6, atol=1e-6)  # the maxima add exactly zero
    # ...and back: avgmax -> avg keeps the means' columns
    wide = train(cfg_for(toy, tmp_path / "wide", epochs=1, init=str(first_path), model_config=avgmax.model_config))
    w = read_model(wide.model_path).tensors["head.3.weight"]
    assert read_model(wide.model_path).config["pool"] == "avgmax" and w.shape == (3, 16)
    assert np.abs(w[:, 8:]).max() > 0  # training gave the maxima weight
    run = RunState(cfg=cfg_for(toy, tmp_path / "x"), arch_config=first.config | {"pool": "avg"},
                   classes=list(first.classes), routes=first.routes)  # fmt: skip
    back = init_weights(wide.model_path, run)
    np.testing.assert_array_equal(back["head.3.weight"], w[:, :8])


def test_pool_option_is_checked_before_any_work(toy, tmp_path):
    r = run_cli("train", str(toy), "--arch", "cnn", "--out", str(tmp_path / "a"), "--pool", "median")
    assert r.returncode == 2 and "choose one of avg, avgmax" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", str(toy), "--arch", "cnn", "--out", str(tmp_path / "b"), "--arch", "vit", "--pool", "avgmax")
    assert r.returncode == 2 and "only for --arch cnn" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_depths_option_trains_a_deeper_stage(toy, tmp_path):
    r = run_cli("train", str(toy), "--arch", "cnn", "--out", str(tmp_path / "d"), "--epochs", "1", "--batch-size", "8",
                "--input-size", "24", "--widths", "4,8", "--depths", "1,2", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    mf = read_model(tmp_path / "d" / "model.safetensors")
    assert mf.config["depths"] == [1, 2]
    assert mf.tensors["features.7.weight"].shape == (8, 8, 3, 3)  # conv2b: right after conv2, bn2, relu2
    for bad, why in (("1,x", "expected positive integers"), ("1,2,1", "one count >= 1 per stage (2 stages)"),
                     ("1,27", "at most 26")):  # fmt: skip
        r = run_cli(
            "train", str(toy), "--arch", "cnn", "--out", str(tmp_path / "bad"), "--widths", "4,8", "--depths", bad
        )
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "arch, options, option, message",
    [
        ("vit", {"widths": "4,8"}, "--widths", "only for --arch cnn"),
        ("vit", {"pool": "avgmax"}, "--pool", "only for --arch cnn"),
        ("cnn", {"widths": "4,x"}, "--widths", "expected positive integers"),
        ("cnn", {"widths": "4,8", "depths": "1,2,1"}, "--depths", r"one count >= 1 per stage \(2 stages\)"),
        ("cnn", {"pool": "median"}, "--pool", "choose one of avg, avgmax"),
    ],
)
def test_model_options_are_checked_by_the_library(arch, options, option, message):
    """``train``'s --widths, --depths and --pool become the model config beside TrainConfig;
    the error names the option, which the CLI turns into a usage error."""
    from tinytriage.errors import ConfigError
    from tinytriage.training.run import model_config_from_options

    with pytest.raises(ConfigError, match=message) as caught:
        model_config_from_options(arch, **options)
    assert caught.value.option == option
    both = model_config_from_options("cnn", widths="4,8", depths="1,2", pool="avgmax")
    assert both == {"widths": [4, 8], "depths": [1, 2], "pool": "avgmax"}


def test_a_model_file_from_before_the_pool_option_reads_as_avg(toy, tmp_path):
    """Files written before CNNConfig.pool existed have no "pool" key: --init and --resume take them."""
    from tinytriage.models.file import save_model

    mf = read_model(train(cfg_for(toy, tmp_path / "run", epochs=1)).model_path)
    old = {k: v for k, v in mf.config.items() if k != "pool"}
    path = save_model(replace(mf, config=old), tmp_path / "old.safetensors")
    data = path.read_bytes()
    assert b"pool" not in data[8 : 8 + int.from_bytes(data[:8], "little")]  # the header, as an old file's
    assert read_model(path).config["pool"] == "avg"
    tuned = train(cfg_for(toy, tmp_path / "tuned", epochs=1, init=str(path)))
    assert read_model(tuned.model_path).config["pool"] == "avg"


def test_val_dir_validates_on_another_folder_and_trains_on_all_of_data_dir(toy, tmp_path):
    val = make_toy_dataset(tmp_path / "val", per_class=5, seed=1)
    events = []
    r = train(cfg_for(toy, tmp_path / "r", epochs=1, val_dir=str(val)), progress=events.append)
    mf = read_model(r.model_path)
    assert (mf.training["n_train"], mf.training["n_val"]) == (3 * 12, 3 * 5)  # no photo of toy held out
    assert [e.name for e in events if isinstance(e, Scan)] == ["dataset", "validation"]
    # the same folder for both is a leak, and is reported like any duplicate across the split
    assert train(cfg_for(toy, tmp_path / "same", epochs=1, val_dir=str(toy))).duplicates
    other = make_toy_dataset(tmp_path / "other", per_class=3, classes=("document", "parcel", "zebra"))
    with pytest.raises(TrainingError, match=r"--val-dir .*classes \(document, parcel, zebra\) are not"):
        train(cfg_for(toy, tmp_path / "bad", val_dir=str(other)))
    for folder in (other, tmp_path / "missing"):
        r = run_cli("train", str(toy), "--arch", "cnn", "--out", str(tmp_path / "cli"), "--val-dir", str(folder))
        assert r.returncode == 1 and "--val-dir" in r.stderr and "Traceback" not in r.stderr


def test_bad_datasets(tmp_path):
    make_toy_dataset(tmp_path / "one", classes=("parcel",))
    with pytest.raises(DatasetError, match="at least 2 classes"):
        train(cfg_for(tmp_path / "one", tmp_path / "r1"))
    make_toy_dataset(tmp_path / "empty", per_class=4)
    for p in (tmp_path / "empty" / "parcel").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="parcel"):
        train(cfg_for(tmp_path / "empty", tmp_path / "r2"))


def test_duplicates_across_split_are_reported(tmp_path):
    root = make_toy_dataset(tmp_path / "dup", per_class=10)
    for name in CLASSES:  # every photo twice: some copies must straddle the split
        for p in list((root / name).iterdir()):
            (root / name / f"copy_{p.name}").write_bytes(p.read_bytes())
    events = []
    r = train(cfg_for(root, tmp_path / "r", epochs=1), progress=events.append)
    assert r.duplicates and any(isinstance(e, Duplicates) for e in events)


def test_ctrl_c_from_the_cli_leaves_a_checkpoint(toy, tmp_path):
    """A real SIGINT to a real `tinytriage train`: exit 130, checkpoint kept, --resume works."""
    out = tmp_path / "sig"
    args = [sys.executable, "-m", "tinytriage", "train", str(toy), "--arch", "cnn", "--out", str(out), "--epochs", "60",
            "--batch-size", "8", "--input-size", "24", "-q"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    r = subprocess.run(
        [*args[:10], "2", "--batch-size", "8", "--input-size", "24", "-q", "--resume"], capture_output=True, text=True
    )
    # the checkpoint may already be past epoch 2: then resume has nothing left to do but save
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file()
    assert os.path.getsize(out / "checkpoint.safetensors") > 0


def test_widths_option_sets_the_cnn_stages(tmp_path):
    from conftest import run_cli

    toy = make_toy_dataset(tmp_path / "toy")
    out = tmp_path / "run"
    p = run_cli("train", str(toy), "--arch", "cnn", "-o", str(out), "-q", "--epochs", "1", "--batch-size", "8",
                "--input-size", "32", "--widths", "4,8,8,16,16")  # fmt: skip
    assert p.returncode == 0, p.stderr
    mf = read_model(out / "model.safetensors")
    assert mf.config["widths"] == [4, 8, 8, 16, 16]
    assert mf.tensors["features.16.weight"].shape == (16, 16, 3, 3)  # the fifth conv
    for bad in ("4,x", "0,8", ""):
        p = run_cli("train", str(toy), "--arch", "cnn", "-o", str(tmp_path / "bad"), "--widths", bad)
        assert p.returncode == 2 and "--widths" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("train", str(toy), "--arch", "cnn", "-o", str(tmp_path / "bad"), "--arch", "vit", "--widths", "4,8")
    assert p.returncode == 2 and "only for --arch cnn" in p.stderr
