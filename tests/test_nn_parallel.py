"""The fast layers on several threads (tinytriage.nn.fast.parallel): the same numbers as on one."""

from __future__ import annotations

import numpy as np
import pytest

from tinytriage.engines.numpy_engine import NumpyEngine
from tinytriage.models import ARCHS
from tinytriage.models.cnn import CNNConfig, TriageCNN
from tinytriage.nn import (
    Conv2d,
    DepthwiseSeparableConv,
    InvertedResidual,
    Sequential,
    fuse_for_inference,
    get_num_threads,
    set_num_threads,
)
from tinytriage.nn.fast import depthwise, im2col, norm, parallel, pointwise


@pytest.fixture
def tiny_tasks(monkeypatch):
    """Tasks of a few KB, so that even a small batch makes many of them."""
    monkeypatch.setattr(parallel, "TASK_BYTES", 2**12)
    monkeypatch.setattr(im2col, "CHUNK_BYTES", 2**12)
    monkeypatch.setattr(norm, "BLOCK_BYTES", 2**10)
    monkeypatch.setattr(depthwise, "BAND_BYTES", 2**9)
    monkeypatch.setattr(pointwise, "CHUNK_BYTES", 2**10)
    before = get_num_threads()
    yield
    set_num_threads(before)


def train(threads: int, steps: int = 3) -> tuple[list, dict, np.ndarray]:
    set_num_threads(threads)
    cfg = CNNConfig(input_size=24, widths=(4, 8, 8))
    engine = NumpyEngine(TriageCNN(cfg, rng=np.random.default_rng(0)), arch=ARCHS["cnn"])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 24, 24), dtype=np.float32)
    y = rng.integers(0, cfg.num_classes, 6)
    losses = [engine.train_step(x, y, 0.05)[0] for _ in range(steps)]
    return losses, engine.state_dict(), engine.logits(x)


@pytest.mark.parametrize("threads", [2, 3])
def test_training_gives_the_same_numbers_on_any_thread_count(tiny_tasks, threads):
    losses, state, logits = train(1)
    losses_t, state_t, logits_t = train(threads)
    assert losses == losses_t
    for name in state:
        np.testing.assert_array_equal(state_t[name], state[name], err_msg=name)
    np.testing.assert_array_equal(logits_t, logits)


def mobile_pass(threads: int) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
    """A training pass and a fused inference pass through depthwise and pointwise layers."""
    set_num_threads(threads)
    rng = np.random.default_rng(0)
    model = Sequential(
        InvertedResidual(8, 8, 3, 1, 6.0, rng=rng),
        DepthwiseSeparableConv(8, 8, 5, 2, rng=rng),
        Conv2d(8, 8, 3, stride=2, padding=1, groups=8, rng=rng),  # with a bias: db's band sums too
    )
    x = rng.standard_normal((4, 8, 13, 12)).astype(np.float32)
    out = model(x).copy()
    dx = model.backward(rng.standard_normal(out.shape).astype(np.float32)).copy()
    grads = {k: v.copy() for k, v in model.grads.items()}
    model.eval()
    return out, dx, grads, fuse_for_inference(model)(x).copy()


@pytest.mark.parametrize("threads", [2, 3])
def test_depthwise_and_pointwise_give_the_same_numbers_on_any_thread_count(tiny_tasks, threads):
    out, dx, grads, fused = mobile_pass(1)
    out_t, dx_t, grads_t, fused_t = mobile_pass(threads)
    np.testing.assert_array_equal(out_t, out)
    np.testing.assert_array_equal(dx_t, dx)
    for name in grads:
        np.testing.assert_array_equal(grads_t[name], grads[name], err_msg=name)
    np.testing.assert_array_equal(fused_t, fused)


def test_without_threadpoolctl_matrix_work_stays_on_the_calling_thread(tiny_tasks, monkeypatch):
    import threading

    set_num_threads(2)
    monkeypatch.setattr(parallel, "_blas_limit", None)  # as when threadpoolctl is missing
    caller = threading.get_ident()
    assert set(parallel.parallel_map(lambda _: threading.get_ident(), range(8), blas=True)) == {caller}
    assert parallel.parallel_map(lambda t: t * t, range(5)) == [0, 1, 4, 9, 16]  # in task order


def test_the_numpy_engine_hands_nn_threadpoolctls_blas_limit():
    """nn imports NumPy alone; the engine gives it the switch that makes BLAS single-threaded."""
    from threadpoolctl import threadpool_info

    import tinytriage.engines.numpy_engine  # noqa: F401

    with parallel._blas_single_threaded():
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)


def test_split_depends_on_sizes_only():
    assert parallel.split(10, 1, task_bytes=4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert parallel.split(3, 100, task_bytes=4) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    with pytest.raises(ValueError):
        set_num_threads(0)


def test_the_thread_count_follows_omp_num_threads_not_blas_own(monkeypatch):
    """OPENBLAS_NUM_THREADS is BLAS's own count (predict sets it to 1): the engine's threads,
    and predict's lanes, still take every core."""
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert parallel.default_num_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert parallel.default_num_threads() == 3
