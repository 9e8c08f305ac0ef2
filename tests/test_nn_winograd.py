"""Winograd's F(2x2, 3x3) (tinytriage.nn.fast.winograd) against the direct convolution and PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from tinytriage.nn.fast import winograd
from tinytriage.nn.fast.im2col import conv2d_fused_forward
from tinytriage.nn.fast.memory import layout, nchw
from tinytriage.nn.fast.winograd import fits, kernel_transform, winograd_conv3x3

# (N, C, O, H, W, bias, relu, pool, channels-last input): chunks of one image and of several
CASES = [
    pytest.param(2, 32, 8, 6, 10, True, True, True, False, id="pool-relu"),
    pytest.param(3, 32, 5, 8, 4, False, False, False, True, id="plain-cl"),
    pytest.param(5, 40, 16, 16, 16, True, False, True, True, id="pool-no-relu-cl"),
    pytest.param(1, 33, 7, 2, 2, True, True, False, False, id="one-tile"),
    pytest.param(40, 32, 4, 4, 6, True, True, True, False, id="many-images"),
]  # fmt: skip


def _inputs(N, C, O, H, W, bias, cl, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    x = nchw(x) if cl else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    w = rng.standard_normal((O, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)], ids=["f64", "f32"])
@pytest.mark.parametrize("N, C, O, H, W, bias, relu, pool, cl", CASES)
def test_equals_the_direct_convolution(N, C, O, H, W, bias, relu, pool, cl, dtype, tol):
    x, w, b = _inputs(N, C, O, H, W, bias, cl, dtype)
    want = conv2d_fused_forward(x, w, b, 1, 1, 1, 1, None, relu=relu, pool=((2, 2), (2, 2)) if pool else None)
    got = winograd_conv3x3(x, w, b, relu, pool)
    assert got.shape == want.shape and got.dtype == dtype and layout(got) == "channels-last"
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("N, C, O, H, W, bias, relu, pool, cl", CASES[:3])
def test_matches_torch(N, C, O, H, W, bias, relu, pool, cl):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b = _inputs(N, C, O, H, W, bias, cl, np.float64)
    t = F.conv2d(
        torch.from_numpy(np.ascontiguousarray(x)),
        torch.from_numpy(w),
        None if b is None else torch.from_numpy(b),
        padding=1,
    )
    t = F.max_pool2d(t, 2) if pool else t
    t = F.relu(t) if relu else t
    np.testing.assert_allclose(winograd_conv3x3(x, w, b, relu, pool), t.numpy(), rtol=1e-10, atol=1e-12)


def test_kernel_transform_is_g_g_gt():
    w = np.random.default_rng(1).standard_normal((5, 4, 3, 3))
    u = kernel_transform(w).reshape(4, 4, 4, 5)  # (a, b, c, o)
    for o, c in [(0, 0), (4, 3), (2, 1)]:
        np.testing.assert_allclose(u[:, :, c, o], winograd.G @ w[o, c] @ winograd.G.T, atol=1e-14)


def test_one_dimension_is_exact():
    """F(2, 3): the two outputs of a 3-tap filter from 4 multiplies, as the docstring writes them."""
    d, g = np.array([1.0, -2.0, 3.5, 0.25]), np.array([0.5, -1.0, 2.0])
    y = winograd.A_T @ ((winograd.G @ g) * (winograd.B_T @ d))
    np.testing.assert_allclose(y, [d[0:3] @ g, d[1:4] @ g], atol=1e-14)


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, padding, dilation, groups, pool, ok",
    [
        ((1, 32, 8, 8), (4, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, ((2, 2), (2, 2)), True),
        ((1, 32, 8, 8), (4, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, None, True),
        ((1, 16, 8, 8), (4, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1, None, False),  # too few channels
        ((1, 32, 7, 8), (4, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, None, False),  # odd height
        ((1, 32, 8, 8), (4, 32, 3, 3), (2, 2), (1, 1), (1, 1), 1, None, False),  # stride
        ((1, 32, 8, 8), (4, 32, 3, 3), (1, 1), (0, 0), (1, 1), 1, None, False),  # no padding
        ((1, 32, 8, 8), (4, 32, 3, 3), (1, 1), (1, 1), (2, 2), 1, None, False),  # dilation
        ((1, 32, 8, 8), (4, 16, 3, 3), (1, 1), (1, 1), (1, 1), 2, None, False),  # groups
        ((1, 32, 8, 8), (4, 32, 5, 5), (1, 1), (1, 1), (1, 1), 1, None, False),  # 5x5
        ((1, 32, 8, 8), (4, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, ((3, 3), (2, 2)), False),  # 3x3 pool
    ],
)  # fmt: skip
def test_fits_only_what_it_computes(x_shape, w_shape, stride, padding, dilation, groups, pool, ok):
    assert fits(x_shape, w_shape, stride, padding, dilation, groups, pool) is ok


def test_nan_propagates_through_the_pool():
    x, w, b = _inputs(1, 32, 3, 4, 4, True, False, np.float32)
    x[0, 0, 0, 0] = np.nan
    out = winograd_conv3x3(x, w, b, relu=True, pool=True)
    assert np.isnan(out[0, :, 0, 0]).all() and not np.isnan(out[0, :, 1, 1]).any()
