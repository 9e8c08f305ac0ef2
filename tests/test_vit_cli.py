"""The ViT behind the CLI: ``--backend vit``, ``--arch vit``, per-architecture training
defaults, and a ViT trained in one engine predicting identically in the other."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from test_train import make_toy_dataset

from tinytriage.engines import resolve_backend
from tinytriage.errors import ModelFileError, TinyTriageError
from tinytriage.inference.predict import Predictor
from tinytriage.models import file as model_io
from tinytriage.models.file import read_model, read_model_or_bundled
from tinytriage.training.loop import TrainConfig, train, with_arch_defaults

torch = pytest.importorskip("torch")


# fmt: off
@pytest.mark.parametrize("backend, arch, expected", [
    ("numpy", None,  ("numpy", None)),
    ("torch", "vit", ("torch", "vit")),
    ("vit",   None,  ("numpy", "vit")),   # the model card's shorthand
    ("vit",   "vit", ("numpy", "vit")),
])
# fmt: on
def test_backend_vit_is_arch_vit_on_numpy(backend, arch, expected):
    assert resolve_backend(backend, arch) == expected


@pytest.mark.parametrize("backend, arch", [("vit", "cnn"), ("jax", None), ("numpy", "resnet")])
def test_backend_and_arch_that_clash_or_are_unknown(backend, arch):
    with pytest.raises(TinyTriageError):
        resolve_backend(backend, arch)


def test_training_defaults_follow_the_arch_unless_given():
    vit = with_arch_defaults(TrainConfig(data_dir=".", arch="vit"))
    assert (vit.optimizer, vit.lr, vit.weight_decay) == ("adamw", 1e-3, 0.05) and vit.warmup_epochs > 0
    cnn = with_arch_defaults(TrainConfig(data_dir=".", arch="cnn"))
    assert (cnn.optimizer, cnn.lr, cnn.weight_decay) == ("sgd", 0.05, 5e-4)
    mine = with_arch_defaults(TrainConfig(data_dir=".", arch="vit", lr=3e-4, optimizer="sgd"))
    assert (mine.optimizer, mine.lr, mine.weight_decay) == ("sgd", 3e-4, 0.05)


@pytest.fixture(scope="module")
def vit_runs(tmp_path_factory):
    """A tiny ViT trained by the CLI on the NumPy engine and by the library on PyTorch."""
    root = tmp_path_factory.mktemp("vit")
    toy = make_toy_dataset(root / "toy")
    common = dict(epochs=2, batch_size=8, input_size=24)  # the default ViT on a 2 x 2 grid of 12-px patches
    p = run_cli("train", str(toy), "--backend", "vit", "-o", str(root / "np"), "-q", "--json",
                *[f"--{k.replace('_', '-')}={v}" for k, v in common.items()])  # fmt: skip
    assert p.returncode == 0, p.stderr
    by_torch = train(TrainConfig(data_dir=str(toy), out=str(root / "torch"), arch="vit", backend="torch", **common))
    return toy, root / "np" / "model.safetensors", by_torch.model_path


def test_both_engines_train_a_vit_with_adamw(vit_runs):
    _toy, by_numpy, by_torch = vit_runs
    for path, engine in ((by_numpy, "numpy"), (by_torch, "torch")):
        mf = read_model(path)
        args = mf.training["args"]
        assert mf.arch == "vit" and mf.config["img_size"] == 24
        assert (args["backend"], args["optimizer"], args["lr"]) == (engine, "adamw", 1e-3)


def _probs(predictions) -> tuple[list[str], np.ndarray]:
    rows = list(predictions)
    return [r.label for r in rows], np.array([list(r.probabilities.values()) for r in rows])


@pytest.mark.parametrize("which", ["numpy-trained", "torch-trained"])
def test_a_vit_predicts_the_same_in_the_other_engine(vit_runs, which):
    toy, by_numpy, by_torch = vit_runs
    model = by_numpy if which == "numpy-trained" else by_torch
    photos = sorted(str(p) for p in toy.rglob("*.png"))
    labels_np, probs_np = _probs(Predictor.load(model, backend="numpy").predict_paths(photos))
    labels_t, probs_t = _probs(Predictor.load(model, backend="torch", arch="vit").predict_paths(photos))
    assert labels_np == labels_t
    np.testing.assert_allclose(probs_np, probs_t, atol=1e-5)


def test_cli_predict_backend_vit_matches_torch(vit_runs):
    toy, _by_numpy, by_torch = vit_runs
    p = run_cli("predict", str(toy / "parcel"), "--model", str(by_torch), "--backend", "vit", "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    expected = {r.path: r for r in Predictor.load(by_torch, backend="torch").predict_paths([r["path"] for r in rows])}
    for r in rows:
        assert r["backend"] == "numpy" and r["label"] == expected[r["path"]].label
        for c, prob in r["probabilities"].items():
            assert abs(prob - expected[r["path"]].probabilities[c]) < 1e-5


def test_compare_covers_the_vit(vit_runs):
    toy, by_numpy, _ = vit_runs
    p = run_cli("compare", "--model", str(by_numpy), "--arch", "vit", "--data", str(toy), "--batch", "4",
                "--steps", "2", "--repeats", "1", "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["ok"] and result["forward"]["labels_agree"] == 4
    assert "blocks.0.attn.qkv.weight" in result["backward"]["grads"]


def test_arch_that_does_not_match_the_file_or_the_backend(vit_runs):
    toy, by_numpy, _ = vit_runs
    p = run_cli("predict", str(toy / "parcel"), "--model", str(by_numpy), "--arch", "cnn")
    assert p.returncode == 1 and "holds a vit model" in p.stderr
    p = run_cli("evaluate", str(toy), "--backend", "vit", "--arch", "cnn")
    assert p.returncode == 2 and "--backend vit means --arch vit" in p.stderr


def test_arch_picks_the_bundled_model(vit_runs, monkeypatch):
    _toy, by_numpy, _ = vit_runs
    asked = []
    monkeypatch.setattr(model_io, "bundled_model_path", lambda arch="cnn": asked.append(arch) or by_numpy)
    mf, path = read_model_or_bundled(None, "vit")
    assert asked == ["vit"] and path == by_numpy and mf.arch == "vit"
    with pytest.raises(ModelFileError, match="holds a vit model"):
        read_model_or_bundled(None, "cnn")
