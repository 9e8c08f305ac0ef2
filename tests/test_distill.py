"""DeiT's hard-label distillation in training (``training.distill``, ``train --teacher``):
the teacher's classes mapped by name, the loop feeding (class, teacher) targets, the
distilled ViT it writes, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from tinytriage.data.synth import generate_dataset
from tinytriage.errors import TrainingError
from tinytriage.models.file import ModelFile, read_model, save_model
from tinytriage.training.distill import teacher_labels
from tinytriage.training.loop import TrainConfig, train

TINY_VIT = {"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill") / "photos"
    generate_dataset(root, 6, seed=3, size_range=(64, 96))  # 30 photos, 5 classes
    return root


def _constant_teacher(tmp_path, tiny_model_file, classes: list[str], favourite: str):
    """The tiny CNN with its head rewired to always answer ``favourite``, its classes in ``classes`` order."""
    tensors = dict(tiny_model_file.tensors)
    head = [k for k in tensors if k.endswith("weight") and tensors[k].ndim == 2][-1]
    bias = head.replace("weight", "bias")
    tensors[head] = np.zeros_like(tensors[head])
    tensors[bias] = np.where(np.array(classes) == favourite, 10.0, 0.0).astype(tensors[bias].dtype)
    mf = ModelFile(**{**tiny_model_file.__dict__, "classes": classes, "tensors": tensors})
    return save_model(mf, tmp_path / "teacher.safetensors")


def test_teacher_classes_are_mapped_by_name(tmp_path, tiny_model_file, photos):
    student_classes = sorted(p.name for p in photos.iterdir())
    teacher_classes = list(reversed(student_classes))  # another order: indices differ, names don't
    path = _constant_teacher(tmp_path, tiny_model_file, teacher_classes, favourite="parcel")
    paths = sorted(photos.glob("*/*.jpg"))
    y = np.array([student_classes.index(p.parent.name) for p in paths])
    taught = teacher_labels(str(path), paths, y, student_classes)
    assert (taught.labels == student_classes.index("parcel")).all()
    assert taught.agreement == pytest.approx(np.mean(y == student_classes.index("parcel")))


def test_a_teacher_must_know_every_class(tmp_path, tiny_model_file, photos):
    classes = sorted(p.name for p in photos.iterdir())
    path = _constant_teacher(tmp_path, tiny_model_file, classes, favourite="parcel")
    with pytest.raises(TrainingError, match="not kittens"):
        teacher_labels(str(path), sorted(photos.glob("*/*.jpg"))[:2], np.zeros(2, int), [*classes[:4], "kittens"])


def test_train_with_a_teacher_writes_a_distilled_vit(tmp_path, tiny_model_file, photos):
    classes = sorted(p.name for p in photos.iterdir())
    teacher = _constant_teacher(tmp_path, tiny_model_file, classes, favourite="document")
    seen = []
    cfg = TrainConfig(
        data_dir=str(photos), out=str(tmp_path / "run"), arch="vit", epochs=8, batch_size=8, input_size=32,
        lr=0.01, model_config=TINY_VIT, teacher=str(teacher), seed=0,
    )  # fmt: skip
    result = train(cfg, seen.append)
    mf = read_model(result.model_path)
    assert mf.config["distilled"] is True
    assert {"dist_token", "head_dist.weight", "head_dist.bias"} <= set(mf.tensors)
    taught = [e for e in seen if type(e).__name__ == "Teacher"]
    assert len(taught) == 1 and taught[0].path == str(teacher) and 0 < taught[0].agreement < 1
    assert mf.training["args"]["teacher"] == str(teacher)

    # the distillation head learnt the teacher's one answer: after 24 steps it gives
    # "document" for any input
    from tinytriage.engines import load_engine

    engine = load_engine("numpy", mf)
    engine.model.train()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    both = engine.model(x)  # (4, 2, K) in training mode
    engine.model.eval()
    assert both.shape == (4, 2, len(classes))
    assert (both[:, 1].argmax(1) == classes.index("document")).all()


def test_teacher_refused_for_a_cnn_and_from_the_cli(tmp_path, photos, tiny_model_path):
    with pytest.raises(TrainingError, match="--teacher trains a distilled transformer"):
        train(TrainConfig(data_dir=str(photos), out=str(tmp_path / "r"), arch="cnn", teacher=str(tiny_model_path)))
    p = run_cli("train", str(photos), "--arch", "cnn", "--teacher", str(tiny_model_path), "--out", str(tmp_path / "c"))
    assert p.returncode != 0 and "Traceback" not in p.stderr and "--teacher" in p.stderr


def test_train_cli_takes_conv_stem_and_teacher(tmp_path, photos, tiny_model_file):
    classes = sorted(p.name for p in photos.iterdir())
    teacher = _constant_teacher(tmp_path, tiny_model_file, classes, favourite="document")
    out = tmp_path / "run"
    p = run_cli(
        "train", str(photos), "--arch", "vit", "--conv-stem", "8,8", "--teacher", str(teacher), "--epochs", "1",
        "--batch-size", "8", "--input-size", "32", "--out", str(out), "--json", "--quiet",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    cfg = read_model(out / "model.safetensors").config
    assert cfg["conv_stem"] == [8, 8] and cfg["patch_size"] == 4 and cfg["distilled"] is True
    assert json.loads((out / "metrics.json").read_text())["args"]["teacher"] == str(teacher)
    p = run_cli("train", str(photos), "--arch", "cnn", "--conv-stem", "8", "--out", str(tmp_path / "x"))
    assert p.returncode != 0 and "--conv-stem" in p.stderr and "Traceback" not in p.stderr


def test_compare_covers_a_distilled_conv_stem_vit(tmp_path, photos, tiny_model_file):
    """compare trains both heads: the distillation head's targets stand in for a teacher's."""
    pytest.importorskip("torch")
    classes = sorted(p.name for p in photos.iterdir())
    teacher = _constant_teacher(tmp_path, tiny_model_file, classes, favourite="document")
    out = tmp_path / "run"
    cfg = TrainConfig(
        data_dir=str(photos), out=str(out), arch="vit", epochs=1, batch_size=8, input_size=32, teacher=str(teacher),
        model_config={**TINY_VIT, "conv_stem": [8, 8], "patch_size": 4},
    )  # fmt: skip
    train(cfg)
    p = run_cli("compare", "--model", str(out / "model.safetensors"), "--data", str(photos), "--batch", "4",
                "--steps", "2", "--repeats", "1", "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["ok"], result["flags"]
    assert {"head_dist.weight", "dist_token", "patch_embed.stem.0.conv.weight"} <= set(result["backward"]["grads"])
