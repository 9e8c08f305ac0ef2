"""Many photos on Linux run in forked lanes: same results, same order, nothing lost."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from test_second_look import _looking_model

import tinytriage.inference.lanes as lanes
from tinytriage.inference.predict import PhotoFailure, Predictor, expand_inputs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lanes are forked: Linux only")

_lane_run = lanes._lane_run  # the real one, for _dies_on_marker


def _dies_on_marker(batch):
    """A lane killed while it holds the batch with die.png (module-level: the pool pickles
    the function it runs by name)."""
    if any(str(p).endswith("die.png") for p in batch):
        os._exit(1)
    return _lane_run(batch)


@pytest.fixture
def many(tmp_path):
    """17 photos with a broken one and a missing one among them."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(15):
        a = rng.uniform(0, 255, (int(rng.integers(30, 80)), int(rng.integers(30, 80)), 3)).astype(np.uint8)
        paths.append(str(tmp_path / ("die.png" if i == 9 else f"p{i}.png")))
        Image.fromarray(a).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return [*paths[:4], str(tmp_path / "bad.jpg"), *paths[4:11], str(tmp_path / "missing.png"), *paths[11:]]


def _spy_lanes(monkeypatch) -> list:
    calls = []
    real = lanes.run_in_lanes

    def spy(predictor, *args):
        calls.append(args[1:])
        yield from real(predictor, *args)

    monkeypatch.setattr(lanes, "run_in_lanes", spy)
    return calls


def _same(got, want):
    assert [r.path for r in got] == [r.path for r in want]
    for a, b in zip(got, want, strict=True):
        assert type(a) is type(b)
        if isinstance(a, PhotoFailure):
            assert a.reason == b.reason
        else:
            fields = ("label", "route", "review_reason", "second_look")
            assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
            np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-6)


def test_lanes_give_the_in_process_results_in_input_order(tmp_path, tiny_model_file, many, monkeypatch):
    first = Predictor.load(_looking_model(tmp_path, tiny_model_file), second_look=False)
    confidences = [r.confidence for r in first.predict_paths(many) if not isinstance(r, PhotoFailure)]
    p = Predictor.load(
        _looking_model(tmp_path, tiny_model_file, below=float(np.median(confidences)))
    )  # half looked at twice
    here = list(p.predict_paths(expand_inputs(many, recursive=False, null=False), batch_size=3, workers=1))
    calls = _spy_lanes(monkeypatch)
    lanes = list(p.predict_paths(expand_inputs(many, recursive=False, null=False), batch_size=3, workers=2))
    assert calls == [(3, 2)]  # it did run in lanes
    _same(lanes, here)
    assert sum(isinstance(r, PhotoFailure) for r in lanes) == 2
    assert 0 < sum(getattr(r, "second_look", False) for r in lanes) < len(many) - 2
    assert multiprocessing.active_children() == []


def test_few_photos_stay_in_this_process(tiny_model_path, many, monkeypatch):
    calls = _spy_lanes(monkeypatch)
    p = Predictor.load(tiny_model_path)
    assert len(list(p.predict_paths(many[:3], batch_size=3, workers=2))) == 3  # one batch: no fork
    assert len(list(p.predict_paths(many, batch_size=3, workers=1))) == len(many)  # asked for one
    assert calls == []


@pytest.mark.parametrize("slow_input", [False, True])
def test_a_lane_that_dies_loses_nothing(tiny_model_path, many, monkeypatch, slow_input):
    """Found dead when its results are asked for, or (paths arriving slowly, as from
    ``find | tinytriage predict -``) already when the next batch is handed out."""
    if slow_input:
        die = next(p for p in many if p.endswith("die.png"))
        many = [die, *(p for p in many if p != die)]

    def paths():
        for i, path in enumerate(many):
            if slow_input and i == 3:
                time.sleep(1.0)  # the first batch's lane is dead by now
            yield path

    p = Predictor.load(tiny_model_path)
    want = list(p.predict_paths(many, batch_size=2, workers=1))
    monkeypatch.setattr(lanes, "_lane_run", _dies_on_marker)
    got = list(p.predict_paths(paths(), batch_size=2, workers=2))
    _same(got, want)
    assert multiprocessing.active_children() == []


def test_stopping_early_stops_the_lanes(tiny_model_path, many):
    results = Predictor.load(tiny_model_path).predict_paths(many * 4, batch_size=2, workers=2)
    assert next(results).path == many[0]
    assert multiprocessing.active_children() != []
    results.close()  # what `| head -1` comes to
    assert multiprocessing.active_children() == []


def test_head_ends_a_forked_run_quietly(tmp_path, tiny_model_path, many):
    (tmp_path / "bad.jpg").unlink()  # every photo good: exit code 0
    cmd = f"{sys.executable} -m tinytriage predict {tmp_path} --json --batch-size 2 --model {tiny_model_path} | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.count("\n") == 1 and '"path"' in r.stdout


def test_two_folders_in_lanes_at_once_keep_their_own_predictor(tiny_model_path, many):
    """Each run's lanes predict with their own run's predictor (handed to them when they
    are forked), even while another run's lanes are busy: thresholds 0 and 1 route every
    photo differently."""
    routes = {"other": "order_support"}  # the tiny model calls these photos "other": route them somewhere
    loose, strict = (Predictor.load(tiny_model_path, threshold=t, routes=routes) for t in (0.0, 1.0))
    want = [list(p.predict_paths(many, batch_size=2, workers=1)) for p in (loose, strict)]
    runs = [p.predict_paths(many, batch_size=2, workers=2) for p in (loose, strict)]
    got: list[list] = [[], []]
    for pair in zip(*runs, strict=True):  # one result from each run in turn
        for i, r in enumerate(pair):
            got[i].append(r)
    for g, w in zip(got, want, strict=True):
        _same(g, w)
    reasons = [{r.review_reason for r in g if not isinstance(r, PhotoFailure)} for g in got]
    assert reasons == [{None}, {"low confidence"}]
    assert lanes._LANE is None  # the parent keeps none
    assert multiprocessing.active_children() == []
