"""torchrun: two processes with DDP train exactly what one process trains on the whole batch.

The run is launched as a user would (``torchrun -m tinytriage train``), on CPU with gloo.
A ``sitecustomize`` audit hook in the children records every file write under the run
folder by rank, so "only rank 0 writes" is checked, not assumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import run_cli

from tinytriage.errors import TrainingError

pytest.importorskip("torch")

# Two processes sum in a different order than one (gradient buckets, BatchNorm sums), so
# float32 results differ in the last bits: measured ~2e-6 of each tensor's largest value
# after 2 epochs. Without the global-batch BatchNorm and dropout the difference is O(1).
WEIGHT_RTOL = 1e-4  # of the largest |value| in each tensor
LOSS_ATOL = 1e-5

ARGS = [
    "--arch",
    "cnn",
    "--backend",
    "torch",
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--input-size",
    "32",
    "--seed",
    "0",
    "-q",
]

SPY = """
import os, sys

_out, _log, _rank = os.environ.get("SPY_OUT"), os.environ.get("SPY_LOG"), os.environ.get("RANK")
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writes = any(c in (mode or "") for c in "wax+") or (mode is None and flags & _WRITE)
    elif event in ("os.rename", "os.mkdir", "os.remove"):
        path, writes = (args[1] if event == "os.rename" else args[0]), True
    else:
        return
    if writes and isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(_out):
        with open(f"{_log}.{_rank}", "a") as f:
            f.write(f"{event} {path}\\n")


if _out and _log and _rank is not None:
    sys.addaudithook(_hook)
"""


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from tinytriage.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("ddp") / "data"
    generate_dataset(root, 12, 0, size_range=(160, 240))  # 60 photos: 51 train (6 batches of 8), 9 val
    return root


def torchrun(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*cmd, "-m", "tinytriage", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        timeout=300,
    )


def test_two_processes_train_what_one_process_trains(photos, tmp_path):
    from tinytriage.models.file import read_model

    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    (spy_dir / "sitecustomize.py").write_text(textwrap.dedent(SPY))
    out_ddp, out_one = tmp_path / "ddp", tmp_path / "one"
    env = {
        "PYTHONPATH": os.pathsep.join([str(spy_dir), os.environ.get("PYTHONPATH", "")]),
        "SPY_OUT": str(out_ddp),
        "SPY_LOG": str(tmp_path / "writes"),
    }
    # augmentation on: each rank augments only its rows, from the shared random stream
    r = torchrun("train", str(photos), *ARGS, "--out", str(out_ddp), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    one = run_cli("train", str(photos), *ARGS, "--out", str(out_one))
    assert one.returncode == 0, one.stderr[-3000:]

    # weights: best and last model files, every tensor (BatchNorm running statistics too)
    for name in ("model.safetensors", "last.safetensors"):
        a, b = read_model(out_ddp / name), read_model(out_one / name)
        assert a.tensors.keys() == b.tensors.keys()
        for k, want in b.tensors.items():
            scale = float(np.abs(want).max()) or 1.0
            np.testing.assert_allclose(a.tensors[k], want, rtol=0, atol=WEIGHT_RTOL * scale, err_msg=f"{name} {k}")

    # per-epoch metrics: losses equal, accuracies identical (the same predictions)
    h_ddp = json.loads((out_ddp / "metrics.json").read_text())["history"]
    h_one = json.loads((out_one / "metrics.json").read_text())["history"]
    assert len(h_ddp) == len(h_one) == 2
    for a, b in zip(h_ddp, h_one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=LOSS_ATOL)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=LOSS_ATOL)
        assert (a["train_acc"], a["val_acc"]) == (b["train_acc"], b["val_acc"])

    # rank 0 alone printed and wrote
    assert r.stdout.count("saved ") == 1, r.stdout
    assert r.stderr.count("dataset: 60 images") == 1
    assert (tmp_path / "writes.0").read_text().count("model.safetensors") >= 1
    assert not (tmp_path / "writes.1").exists(), (tmp_path / "writes.1").read_text()
    assert sorted(p.name for p in out_ddp.iterdir()) == sorted(p.name for p in out_one.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "numpy", "--batch-size", "8"], "the numpy backend trains in one process only"),
        (["--backend", "torch", "--batch-size", "7"], "use a --batch-size that is a multiple of 2"),
    ],
)
def test_refuses_clearly_before_any_rank_waits(photos, tmp_path, args, message):
    r = torchrun(
        "train",
        str(photos),
        "--arch",
        "cnn",
        *args,
        "--epochs",
        "1",
        "--input-size",
        "32",
        "--out",
        str(tmp_path / "run"),
    )
    assert r.returncode != 0
    assert "tinytriage: error: " in r.stderr and message in r.stderr
    assert not (tmp_path / "run").exists()


def test_shard_and_augment_rows(monkeypatch):
    from tinytriage.data.augment import Augment, augment_batch
    from tinytriage.engines import distributed

    images = np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    whole = augment_batch(images, 32, Augment(), np.random.default_rng(1))
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        rows = distributed.shard(6)
        parts.append(augment_batch(images, 32, Augment(), np.random.default_rng(1), rows=rows))
    np.testing.assert_array_equal(np.concatenate(parts), whole)  # shares in rank order = the whole batch
    with pytest.raises(TrainingError, match="multiple of 3"):
        distributed.shard(8)


def test_no_torch_import_for_rank_helpers():
    code = "import sys, tinytriage.cli.app, tinytriage.training.loop, tinytriage.engines.distributed; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
