"""Shared fixtures: a tiny model file and a tiny generated dataset, made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TINYTRIAGE_NO_COLOR", "1")


def run_cli(
    *args: str, input: str | bytes | None = None, env: dict | None = None, cwd=None
) -> subprocess.CompletedProcess:
    """Run `python -m tinytriage ...` as a user would, capturing stdout and stderr as text."""
    e = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tinytriage", *args],
        input=input,
        capture_output=True,
        text=not isinstance(input, bytes),
        env=e,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture(scope="session")
def tiny_model_file():
    """A small, untrained CNN model file (random weights) with the default classes."""
    from tinytriage.data.routes import DEFAULT_ROUTES
    from tinytriage.models.cnn import CNNConfig, TriageCNN
    from tinytriage.models.file import ModelFile

    cfg = CNNConfig(num_classes=len(DEFAULT_ROUTES), input_size=32, widths=(4, 8))
    model = TriageCNN(cfg, rng=np.random.default_rng(0))
    return ModelFile(
        arch="cnn",
        config=cfg.to_dict(),
        classes=list(DEFAULT_ROUTES),
        routes=dict(DEFAULT_ROUTES),
        preprocess={"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "letterbox"},
        tensors=model.state_dict(),
        threshold=0.3,
    )


@pytest.fixture
def tiny_model_path(tmp_path, tiny_model_file):
    from tinytriage.models.file import save_model

    return save_model(tiny_model_file, tmp_path / "tiny.safetensors")
