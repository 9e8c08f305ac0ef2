"""Reused buffers and channels-last layout (tinytriage.nn.fast.memory): fast, and never wrong."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from tinytriage.nn import BatchNorm2d, Conv2d, MaxPool2d, ReLU, Sequential
from tinytriage.nn.fast import memory
from tinytriage.nn.fast.memory import channels_last, empty, empty_like, layout, nchw


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_channels_last_is_free_for_the_layers_own_outputs():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    x_cl = channels_last(x)  # an NCHW array: one copy
    assert x_cl.shape == (2, 4, 5, 3) and x_cl.flags.c_contiguous and not np.shares_memory(x_cl, x)
    view = nchw(x_cl)
    np.testing.assert_array_equal(view, x)
    assert layout(view) == "channels-last" and layout(x) == "C"
    assert channels_last(view) is x_cl or np.shares_memory(channels_last(view), x_cl)  # no copy


def test_an_array_you_hold_is_never_handed_out_again():
    rng = np.random.default_rng(0)
    conv = Conv2d(3, 4, 3, padding=1)
    x1, x2 = rng.standard_normal((2, 3, 6, 6), dtype=np.float32), rng.standard_normal((2, 3, 6, 6), dtype=np.float32)
    y1 = conv(x1)
    kept = y1.copy()
    y2 = conv(x2)
    assert not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, kept)
    row = y2[0]  # a view keeps its base busy
    del y2
    y3 = conv(x1)
    assert not np.shares_memory(row, y3)


def test_an_array_nobody_holds_is_reused():
    a = empty((3, 5), np.float32)
    where = address(a)
    del a
    b = empty((3, 5), np.float32)
    assert address(b) == where
    c = empty((3, 5), np.float32)  # b is still held: a new one
    assert address(c) != where
    assert empty_like(nchw(np.zeros((2, 3, 4, 5)))).shape == (2, 5, 3, 4)
    assert layout(empty_like(nchw(np.zeros((2, 3, 4, 5))))) == "channels-last"


def test_the_pool_forgets_old_shapes():
    for n in range(memory.POOL_SHAPES + 5):
        empty((n + 1, 7), np.float64)
    assert len(memory._pool) <= memory.POOL_SHAPES
    memory.release_pool()
    assert memory.pooled_bytes() == 0


def small_net() -> Sequential:
    return Sequential(
        Conv2d(3, 8, 3, padding=1), BatchNorm2d(8), ReLU(), MaxPool2d(2),  # (N, 8, 16, 16)
        Conv2d(8, 16, 3, padding=1), BatchNorm2d(16), ReLU(), MaxPool2d(2),  # (N, 16, 8, 8)
    )  # fmt: skip


def test_training_steps_after_the_first_make_no_big_arrays():
    net = small_net()
    net[0].needs_input_grad = False
    x = np.random.default_rng(0).standard_normal((64, 3, 32, 32), dtype=np.float32)
    g = nchw(np.ones((64, 8, 8, 16), np.float32))  # d loss / d out, laid out as out is
    memory.release_pool()
    tracemalloc.start()
    try:
        made, pooled = [], []
        for _ in range(3):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            net(x)
            net.backward(g)
            made.append(tracemalloc.get_traced_memory()[1] - before)  # the step's peak, above what was there
            pooled.append(memory.pooled_bytes())
    finally:
        tracemalloc.stop()
    map_bytes = 64 * 8 * 32 * 32 * 4  # one of the first stage's maps: 2 MB
    assert made[0] > 4 * map_bytes and pooled[0] > 4 * map_bytes  # the first step makes the buffers...
    assert pooled[2] == pooled[0]  # ...later steps take them again
    assert made[2] < map_bytes / 4  # and make only small things (weight gradients, NumPy's loop buffers)


def test_backward_lets_go_of_the_forward_pass():
    relu = ReLU()
    relu(np.ones((2, 3), np.float32))
    relu.backward(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="ReLU.backward: no saved forward pass"):
        relu.backward(np.ones((2, 3), np.float32))
