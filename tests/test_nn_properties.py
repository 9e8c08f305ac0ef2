"""Property tests over random shapes: output sizes, fast == reference, clear shape errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional

from parity import assert_matches_torch  # noqa: E402

from tinytriage.errors import ShapeError  # noqa: E402
from tinytriage.nn import (  # noqa: E402
    AdaptiveAvgPool2d,
    Conv2d,
    avgpool2d_backward,
    avgpool2d_backward_reference,
    avgpool2d_forward,
    avgpool2d_reference,
    batch_norm_backward,
    batch_norm_backward_reference,
    batch_norm_forward,
    batch_norm_reference,
    conv2d_backward,
    conv2d_backward_reference,
    conv2d_forward,
    conv2d_reference,
    conv_output_size,
    maxpool2d_backward,
    maxpool2d_backward_reference,
    maxpool2d_forward,
    maxpool2d_reference,
)

SETTINGS = settings(max_examples=40, deadline=None)
small = st.integers


@st.composite
def conv_configs(draw, fits: bool = True):
    """A random convolution: x shape, weight shape, stride, padding, dilation, groups. With
    ``fits=False`` the dilated kernel is larger than the padded input along one axis."""
    groups = draw(small(1, 3))
    C, O = groups * draw(small(1, 2)), groups * draw(small(1, 2))
    kernel = [draw(small(1, 4)), draw(small(1, 4))]
    stride = (draw(small(1, 3)), draw(small(1, 3)))
    padding = (draw(small(0, 2)), draw(small(0, 2)))
    dilation = (draw(small(1, 2)), draw(small(1, 2)))

    def span(a: int) -> int:  # the dilated kernel's extent along axis a
        return dilation[a] * (kernel[a] - 1) + 1

    size = [draw(small(max(1, span(a) - 2 * padding[a]), span(a) + 5)) for a in (0, 1)]  # H + 2P >= span
    if not fits:
        a = draw(small(0, 1))
        kernel[a] = draw(small(2 * padding[a] + 2, 2 * padding[a] + 4))  # so even H = 1 can be too small
        size[a] = draw(small(1, span(a) - 2 * padding[a] - 1))  # H + 2P < span
    N = draw(small(1, 2))
    return (N, C, *size), (O, C // groups, *kernel), stride, padding, dilation, groups


@SETTINGS
@given(conv_configs())
def test_conv_output_shape_follows_the_rule_and_torch(config):
    x_shape, w_shape, stride, padding, dilation, groups = config
    x, w = np.zeros(x_shape), np.zeros(w_shape)
    out, _ = conv2d_forward(x, w, None, stride, padding, dilation, groups)
    rule = tuple(
        conv_output_size(s, k, st_, p, d)
        for s, k, st_, p, d in zip(x_shape[2:], w_shape[2:], stride, padding, dilation, strict=True)
    )
    theirs = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, stride, padding, dilation, groups)
    assert out.shape == (x_shape[0], w_shape[0], *rule) == tuple(theirs.shape)
    layer = Conv2d(x_shape[1], w_shape[0], w_shape[2:], stride, padding, dilation, groups)
    assert layer(x.astype(np.float32)).shape == out.shape


def channels_last(a: np.ndarray) -> np.ndarray:
    """The same (N, C, H, W) numbers as the channels-last view the fast layers hand on."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@SETTINGS
@given(conv_configs(), st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_conv_fast_equals_reference(config, seed, x_channels_last, dout_channels_last):
    x_shape, w_shape, stride, padding, dilation, groups = config
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    args = (stride, padding, dilation, groups)
    out, cache = conv2d_forward(channels_last(x) if x_channels_last else x, w, b, *args)
    np.testing.assert_allclose(out, conv2d_reference(x, w, b, *args), rtol=1e-10, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    grads = conv2d_backward(channels_last(dout) if dout_channels_last else dout, cache)
    for name, fast, ref in zip(("dx", "dw", "db"), grads, conv2d_backward_reference(x, w, dout, *args), strict=True):
        np.testing.assert_allclose(fast, ref, rtol=1e-10, atol=1e-12, err_msg=name)


@SETTINGS
@given(conv_configs(fits=False))
def test_a_kernel_larger_than_the_padded_input_raises_a_clear_error(config):
    x_shape, w_shape, stride, padding, dilation, groups = config
    x, w = np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32)
    message = r"Conv2d: kernel \d+x\d+.* does not fit the padded input \d+x\d+ \([HW] \+ 2P = \d+ < .* = \d+\)"
    for call in (conv2d_forward, conv2d_reference):
        with pytest.raises(ShapeError, match=message):
            call(x, w, None, stride, padding, dilation, groups)
    with pytest.raises(RuntimeError):  # torch refuses too
        F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, stride, padding, dilation, groups)


@SETTINGS
@given(
    conv_configs(),
    st.integers(1, 3),
    st.sampled_from(["channels", "ndim", "groups"]),
)
def test_mismatched_inputs_raise_shape_errors(config, extra, kind):
    x_shape, w_shape, stride, padding, dilation, groups = config
    if kind == "channels":
        x_shape = (x_shape[0], x_shape[1] + extra * groups + (groups == 1), *x_shape[2:])
        match = "channels"
    elif kind == "ndim":
        x_shape = x_shape[1:]
        match = "4-D"
    else:
        groups = w_shape[0] + extra  # more groups than output channels cannot divide them
        match = "groups"
    with pytest.raises(ShapeError, match=match):
        conv2d_forward(np.zeros(x_shape), np.zeros(w_shape), None, stride, padding, dilation, groups)


@st.composite
def pool_configs(draw):
    kernel = (draw(small(1, 4)), draw(small(1, 4)))
    stride = (draw(small(1, 3)), draw(small(1, 3)))
    padding = tuple(draw(small(0, k // 2)) for k in kernel)
    H, W = (draw(small(max(1, k - 2 * p), k + 5)) for k, p in zip(kernel, padding, strict=True))
    return (draw(small(1, 2)), draw(small(1, 3)), H, W), kernel, stride, padding


@SETTINGS
@given(pool_configs(), st.booleans(), st.integers(0, 2**32 - 1), st.booleans())
def test_maxpool_fast_equals_reference_and_torch(config, ties, seed, x_channels_last):
    x_shape, kernel, stride, padding = config
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, x_shape).astype(np.float64) if ties else rng.standard_normal(x_shape)
    out, cache = maxpool2d_forward(channels_last(x) if x_channels_last else x, kernel, stride, padding)
    ref, winners = maxpool2d_reference(x, kernel, stride, padding)
    np.testing.assert_array_equal(out, ref)
    xt = torch.tensor(x, requires_grad=True)
    theirs = F.max_pool2d(xt, kernel, stride, padding)
    np.testing.assert_array_equal(out, theirs.detach().numpy())
    dout = rng.standard_normal(out.shape)
    theirs.backward(torch.from_numpy(dout))
    dx = maxpool2d_backward(dout, cache)
    np.testing.assert_allclose(dx, maxpool2d_backward_reference(dout, winners, x.shape), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)  # ties: the same winner


@SETTINGS
@given(pool_configs(), st.integers(0, 2**32 - 1))
def test_avgpool_fast_equals_reference_and_torch(config, seed):
    x_shape, kernel, stride, padding = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    out, cache = avgpool2d_forward(x, kernel, stride, padding)
    np.testing.assert_allclose(out, avgpool2d_reference(x, kernel, stride, padding), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        out, F.avg_pool2d(torch.from_numpy(x), kernel, stride, padding).numpy(), rtol=1e-12, atol=1e-12
    )
    dout = rng.standard_normal(out.shape)
    ref = avgpool2d_backward_reference(dout, x.shape, kernel, stride, padding)
    np.testing.assert_allclose(avgpool2d_backward(dout, cache), ref, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(
    st.tuples(small(1, 3), small(1, 5), small(1, 6), small(1, 6)),
    st.sampled_from([0.0, 1.0, -300.0, 1e4]),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_batchnorm_fast_equals_reference(x_shape, offset, seed, x_channels_last):
    N, C, H, W = x_shape
    if N * H * W == 1:
        return  # one value per channel: no variance to normalise by
    rng = np.random.default_rng(seed)
    x = offset + rng.standard_normal(x_shape)
    weight, bias, dy = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(x_shape)
    y, mean, var, cache = batch_norm_forward(channels_last(x) if x_channels_last else x, weight, bias, 1e-5)
    ref_y, ref_mean, ref_var, ref_cache = batch_norm_reference(x, weight, bias, 1e-5)
    for name, fast, ref in (("y", y, ref_y), ("mean", mean, ref_mean), ("var", var, ref_var)):
        np.testing.assert_allclose(fast, ref, rtol=1e-8, atol=1e-8, err_msg=name)
    fast = batch_norm_backward(dy, cache)
    for name, a, r in zip(("dx", "dw", "db"), fast, batch_norm_backward_reference(dy, ref_cache), strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-8, atol=1e-8, err_msg=name)


@SETTINGS
@given(small(1, 9), small(1, 9), small(1, 5), small(1, 5))
def test_adaptive_avgpool_matches_torch_for_any_sizes(H, W, Ho, Wo):
    assert_matches_torch(
        AdaptiveAvgPool2d((Ho, Wo)),
        torch.nn.AdaptiveAvgPool2d((Ho, Wo)),
        [(2, 2, H, W)],
        dtype=np.float64,
        rtol=1e-10,
        atol=1e-12,
    )
