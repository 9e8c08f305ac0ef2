"""One model file, two engines: train with one, predict with the other; compare agrees."""

from __future__ import annotations

import numpy as np
import pytest
from test_train import cfg_for, make_toy_dataset

pytest.importorskip("torch")

from tinytriage.explain.compare import compare  # noqa: E402
from tinytriage.inference.predict import PhotoFailure, Predictor  # noqa: E402
from tinytriage.training.loop import train  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy_engines"), per_class=8)


@pytest.mark.parametrize("trained_by", ["numpy", "torch"])
def test_train_with_one_engine_predict_with_the_other(toy, tmp_path, trained_by):
    model = train(cfg_for(toy, tmp_path / trained_by, backend=trained_by, epochs=2)).model_path
    photos = sorted(str(p) for p in toy.rglob("*.png"))
    results = {}
    for backend in ("numpy", "torch"):
        out = list(Predictor.load(model, backend=backend).predict_paths(photos))
        assert not any(isinstance(r, PhotoFailure) for r in out)
        results[backend] = out
    for a, b in zip(results["numpy"], results["torch"], strict=True):
        assert a.label == b.label and a.route == b.route
        pa, pb = np.array(list(a.probabilities.values())), np.array(list(b.probabilities.values()))
        np.testing.assert_allclose(pa, pb, atol=1e-5)


def test_compare_on_a_cnn_is_within_tolerance(toy, tmp_path):
    model = train(cfg_for(toy, tmp_path / "c", epochs=1)).model_path
    res = compare(["numpy", "torch"], str(model), str(toy), batch=8, steps=3, repeats=1, cold_start=False)
    assert res.ok, res.flags
    assert res.forward["labels_agree"] == res.forward["n"] == 8
    from tinytriage.models.file import build_numpy_model, read_model

    mf = read_model(model)
    assert set(res.backward["grads"]) == set(build_numpy_model(mf.arch, mf.config).params)  # every parameter
    assert len(res.training["loss"]["numpy"]) == 3
    assert res.accuracy is not None and set(res.accuracy) == {"numpy", "torch"}
