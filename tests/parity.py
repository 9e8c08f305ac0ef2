"""The one parity helper: a NumPy layer against its PyTorch twin, forward and every gradient.

    assert_matches_torch(Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3), [(2, 3, 5, 5)],
                         dtype=np.float64, rtol=1e-10, atol=1e-12)

copies the NumPy layer's weights into the twin by their state-dict keys, runs both on the
same random inputs, backpropagates the same random upstream gradient through both, and
compares the output, the gradient of every floating input and the gradient of every
parameter by name (and the buffers afterwards, e.g. BatchNorm's running statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tinytriage.nn.module import Module  # noqa: E402

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def make_inputs(specs: Sequence[Any], dtype: type, rng: np.random.Generator) -> list[np.ndarray]:
    """A shape tuple becomes standard-normal data; an integer array (class indices) stays
    as it is; a float array is cast to ``dtype``; a callable is called as ``spec(rng, dtype)``."""
    out = []
    for spec in specs:
        if callable(spec):
            out.append(np.asarray(spec(rng, dtype)))
        elif isinstance(spec, np.ndarray):
            out.append(spec if np.issubdtype(spec.dtype, np.integer) else spec.astype(dtype))
        else:
            out.append(rng.standard_normal(tuple(spec)).astype(dtype))
    return out


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def assert_close(what: str, ours: Any, theirs: Any, *, rtol: float, atol: float) -> None:
    """Shapes equal and |ours - theirs| <= atol + rtol |theirs| everywhere; the message
    gives the max abs and rel differences."""
    ours, theirs = np.asarray(ours), _to_numpy(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape}, torch {theirs.shape}"
    if ours.size == 0:
        return
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    scale = np.abs(theirs.astype(np.float64))
    max_abs = float(np.max(diff))
    max_rel = float(np.max(diff / np.maximum(scale, np.finfo(np.float64).tiny)))
    ok = bool(np.all(diff <= atol + rtol * scale))  # False for any NaN
    assert ok, f"{what}: max abs diff {max_abs:.3g}, max rel diff {max_rel:.3g} (rtol={rtol:g}, atol={atol:g})"


def assert_matches_torch(
    np_fn: Module,
    torch_fn: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    dtype: type,
    rtol: float,
    atol: float,
    params: dict[str, np.ndarray] | None = None,
    train: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Compare ``np_fn`` (a Module, or anything with ``forward(*inputs)`` and
    ``backward(grad_out)``) with ``torch_fn`` (a ``torch.nn.Module`` or a function of tensors).

    ``params``: state (parameters or buffers) to load into both before the pass, e.g. running
    statistics; otherwise the NumPy layer's own initial weights are copied into the twin.
    ``train`` picks train or eval mode in both. Returns the NumPy output and gradients."""
    rng = np.random.default_rng(seed)
    xs = make_inputs(inputs, dtype, rng)
    is_float = [np.issubdtype(x.dtype, np.floating) for x in xs]

    # the same weights on both sides, by name
    if isinstance(np_fn, Module):
        np_fn.astype(dtype)
        if params:
            cast = {
                k: (v.astype(dtype) if np.issubdtype(np.asarray(v).dtype, np.floating) else v)
                for k, v in params.items()
            }
            np_fn.load_state_dict({**np_fn.state_dict(), **cast})
        np_fn.train(train)
    if isinstance(torch_fn, torch.nn.Module):
        torch_fn.to(TORCH_DTYPE[np.dtype(dtype)])
        torch_fn.train(train)
        torch_fn.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in np_fn.state_dict().items()}, strict=True)
        torch_params = dict(torch_fn.named_parameters())
    else:
        torch_params = {}
    assert set(torch_params) == set(np_fn.params), (
        f"parameters differ: NumPy {sorted(np_fn.params)}, torch {sorted(torch_params)}"
    )

    # forward
    txs = [torch.tensor(x, requires_grad=f) for x, f in zip(xs, is_float, strict=True)]
    out = np_fn.forward(*xs)
    tout = torch_fn(*txs)
    assert_close("output", out, tout, rtol=rtol, atol=atol)
    assert np.asarray(out).dtype == np.dtype(dtype), f"output is {np.asarray(out).dtype}, expected {np.dtype(dtype)}"

    # backward: the same random upstream gradient through both
    g = rng.standard_normal(np.shape(out)).astype(dtype)
    dxs = np_fn.backward(g)
    tout.backward(torch.from_numpy(g))
    dxs = dxs if isinstance(dxs, tuple) else (dxs,)
    float_txs = [t for t, f in zip(txs, is_float, strict=True) if f]
    assert len(dxs) == len(float_txs), f"backward gave {len(dxs)} input gradients for {len(float_txs)} float inputs"
    for k, (dx, tx) in enumerate(zip(dxs, float_txs, strict=True)):
        assert_close(f"d input {k}", dx, tx.grad, rtol=rtol, atol=atol)
        assert dx.dtype == np.dtype(dtype), f"d input {k} is {dx.dtype}, expected {np.dtype(dtype)}"
    grads = np_fn.grads
    for name, tp in torch_params.items():
        assert name in grads, f"no gradient for parameter {name}"
        assert_close(f"d {name}", grads[name], tp.grad, rtol=rtol, atol=atol)
        assert grads[name].dtype == np.dtype(dtype), f"d {name} is {grads[name].dtype}, expected {np.dtype(dtype)}"

    # buffers after the pass (BatchNorm's running statistics)
    if isinstance(torch_fn, torch.nn.Module):
        tstate = torch_fn.state_dict()
        for name, value in np_fn.state_dict().items():
            assert_close(f"state {name}", value, tstate[name], rtol=rtol, atol=atol)
    return {
        "output": out,
        **{f"d input {k}": dx for k, dx in enumerate(dxs)},
        **{f"d {k}": v for k, v in grads.items()},
    }
