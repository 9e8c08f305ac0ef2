"""The model file: round trip, and every way a file can be wrong or hostile."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from tinytriage.errors import ModelFileError
from tinytriage.files import atomic_write_bytes
from tinytriage.models.file import FORMAT_VERSION, METADATA_KEY, read_model, save_model


def test_round_trip(tiny_model_file, tmp_path):
    path = save_model(tiny_model_file, tmp_path / "m.safetensors")
    back = read_model(path)
    assert back.classes == tiny_model_file.classes and back.arch == "cnn"
    assert back.threshold == pytest.approx(0.3)
    for k, v in tiny_model_file.tensors.items():
        np.testing.assert_array_equal(back.tensors[k], v)
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt", "evil.npz", "evil.pkl"])
@pytest.mark.parametrize("kind", ["pickle", "zip"])
def test_pickle_payload_never_runs(tmp_path, name, kind):
    marker = tmp_path / "PWNED"
    path = tmp_path / name
    if kind == "pickle":
        path.write_bytes(pickle.dumps(_Payload(str(marker))))
    else:
        import zipfile

        with zipfile.ZipFile(path, "w") as z:  # what torch.save and np.savez write
            z.writestr("archive/data.pkl", pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ModelFileError, match="never unpickles"):
        read_model(path)
    assert not marker.exists()


def _corrupt(path, data):
    path.write_bytes(data)
    return path


def test_truncated_and_garbage(tiny_model_path, tmp_path):
    data = tiny_model_path.read_bytes()
    for cut in (0, 4, 8, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(ModelFileError):
            read_model(_corrupt(tmp_path / f"cut{cut}.safetensors", data[:cut]))
    with pytest.raises(ModelFileError, match="not a safetensors|truncated"):
        read_model(_corrupt(tmp_path / "text.safetensors", b"hello world, not a model at all"))
    with pytest.raises(ModelFileError, match="not found"):
        read_model(tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError, match="folder"):
        read_model(tmp_path)


def _rewrite(mf, tmp_path, **changes):
    from safetensors.numpy import save

    meta = mf.metadata()
    tensors = changes.pop("tensors", mf.tensors)
    meta.update(changes)
    path = tmp_path / "edited.safetensors"
    path.write_bytes(save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
    return path


def test_wrong_tensors_named_exactly(tiny_model_file, tmp_path):
    t = dict(tiny_model_file.tensors)
    first = next(iter(t))
    bad_shape = {**t, first: np.zeros((1, 2, 3), np.float32)}
    with pytest.raises(ModelFileError, match=rf"{first} has shape \(1, 2, 3\)"):
        read_model(_rewrite(tiny_model_file, tmp_path, tensors=bad_shape))
    missing = {k: v for k, v in t.items() if k != first}
    with pytest.raises(ModelFileError, match=f"missing tensor {first}"):
        read_model(_rewrite(tiny_model_file, tmp_path, tensors=missing))
    extra = {**t, "sneaky.weight": np.zeros(3, np.float32)}
    with pytest.raises(ModelFileError, match="unexpected tensor sneaky.weight"):
        read_model(_rewrite(tiny_model_file, tmp_path, tensors=extra))
    as_int = {**t, first: t[first].astype(np.int32)}
    with pytest.raises(ModelFileError, match=f"{first} has dtype int32"):
        read_model(_rewrite(tiny_model_file, tmp_path, tensors=as_int))
    nan = {**t, first: np.full_like(t[first], np.nan)}
    with pytest.raises(ModelFileError, match=f"{first} contains NaN or Inf"):
        read_model(_rewrite(tiny_model_file, tmp_path, tensors=nan))


def test_class_count_and_version(tiny_model_file, tmp_path):
    with pytest.raises(ModelFileError, match="class names but the output layer has"):
        read_model(_rewrite(tiny_model_file, tmp_path, classes=["a", "b"]))
    with pytest.raises(ModelFileError, match="newer than this tinytriage"):
        read_model(_rewrite(tiny_model_file, tmp_path, format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="unknown architecture"):
        read_model(_rewrite(tiny_model_file, tmp_path, arch="resnet9000"))


def test_head_pool_is_checked_against_the_linear_layer(tiny_model_file, tmp_path):
    cfg = tiny_model_file.config
    with pytest.raises(ModelFileError, match="cannot build architecture 'cnn' .*pool must be one of avg, avgmax"):
        read_model(_rewrite(tiny_model_file, tmp_path, config={**cfg, "pool": "median"}))
    # avgmax wants twice the linear layer's inputs: the avg model's weight is named exactly
    with pytest.raises(ModelFileError, match=r"head.3.weight has shape \(\d+, \d+\), expected"):
        read_model(_rewrite(tiny_model_file, tmp_path, config={**cfg, "pool": "avgmax"}))


def test_stage_depths_are_stored_and_checked(tiny_model_file, tmp_path):
    from tinytriage.models.cnn import CNNConfig, TriageCNN

    assert "depths" not in tiny_model_file.config  # the plain network's files are as before
    cfg = CNNConfig(num_classes=5, input_size=32, widths=(4, 8), depths=(2, 1))
    deep = replace(tiny_model_file, config=cfg.to_dict(), tensors=TriageCNN(cfg).state_dict())
    back = read_model(save_model(deep, tmp_path / "deep.safetensors"))
    assert back.config["depths"] == [2, 1] and set(back.tensors) == set(deep.tensors)
    # the plain network's tensors under a deeper config: the missing block is named
    with pytest.raises(ModelFileError, match=r"features\.\d+\.weight"):
        read_model(_rewrite(tiny_model_file, tmp_path, config={**tiny_model_file.config, "depths": [2, 1]}))
    with pytest.raises(ModelFileError, match="depths must give one count >= 1 per stage"):
        read_model(_rewrite(tiny_model_file, tmp_path, config={**tiny_model_file.config, "depths": [2]}))


def test_refuses_to_save_nan(tiny_model_file, tmp_path):
    first = next(iter(tiny_model_file.tensors))
    bad = replace(tiny_model_file, tensors={**tiny_model_file.tensors, first: np.full((2,), np.inf, np.float32)})
    with pytest.raises(ModelFileError, match="non-finite"):
        save_model(bad, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_disk_full_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "m.bin"
    target.write_bytes(b"old model")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ModelFileError, match="No space left"):
        atomic_write_bytes(target, b"new model" * 1000)
    assert target.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"], "temporary file left behind"


def test_killed_during_save_leaves_previous_file(tmp_path):
    """SIGKILL a process in the middle of a (slowed-down) save: the old file is intact and
    nothing partial sits under the final name."""
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous")
    code = f"""
import os, time
from tinytriage import files as model_io
real = os.fsync
def slow(fd):
    print("writing", flush=True); time.sleep(30); real(fd)
os.fsync = slow
model_io.atomic_write_bytes({str(target)!r}, b"x" * 10_000_000)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert target.read_bytes() == b"previous"


def test_header_length_lies(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelFileError, match="truncated"):
        read_model(path)


def test_second_ctrl_c_during_save_does_not_corrupt(tmp_path):
    """SIGINT arriving while the file is being written is held until the file is whole."""
    import signal
    import time

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous")
    code = f"""
import os, time
from tinytriage import files as model_io
real = os.fsync
def slow(fd):
    print("writing", flush=True); time.sleep(1.5); real(fd)
os.fsync = slow
try:
    model_io.atomic_write_bytes({str(target)!r}, b"n" * 1_000_000)
except KeyboardInterrupt:
    print("interrupted after save", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert "interrupted after save" in rest
    assert target.read_bytes() == b"n" * 1_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_a_model_built_for_loading_has_the_same_tensors_all_zero(tiny_model_file, arch):
    from tinytriage import nn
    from tinytriage.models.file import build_numpy_model

    config = tiny_model_file.config if arch == "cnn" else {"num_classes": 5, "img_size": 32, "patch_size": 8,
                                                            "embed_dim": 16, "depth": 1, "num_heads": 2}  # fmt: skip
    drawn, empty = (build_numpy_model(arch, config, seed=3, init=i).state_dict() for i in (True, False))
    assert {k: (v.shape, v.dtype) for k, v in drawn.items()} == {k: (v.shape, v.dtype) for k, v in empty.items()}
    weights = [k for k, v in drawn.items() if v.ndim >= 2]  # conv and linear kernels, the ViT's embeddings
    assert weights and all(np.any(drawn[k]) and not np.any(empty[k]) for k in weights)
    # what is drawn later (Dropout's masks) comes from a real generator with that seed
    np.testing.assert_array_equal(nn.NoInit(3).random(4), np.random.default_rng(3).random(4))
