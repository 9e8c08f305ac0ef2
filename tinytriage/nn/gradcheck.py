"""Gradient checking by central differences, in float64:

    df/dx_i ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)        error O(eps^2)

``gradcheck`` turns a module into the scalar f = sum(module(x) * g) for a fixed random g, so
its analytic gradients are exactly what ``backward(g)`` returns, and compares them with
the numerical ones for the input and every parameter.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tinytriage.nn.module import Module


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the numerical one."""


def numerical_grad(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of scalar ``f`` at ``x``.

    ``x`` is nudged *in place* (and restored), so it may be a parameter array that ``f``
    reads through its module rather than through its argument."""
    if x.dtype != np.float64:
        raise TypeError(f"numerical_grad needs float64 (float32 differences are noise), got {x.dtype}")
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        f_plus = f(x)
        x[i] = old - eps
        f_minus = f(x)
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def gradcheck(
    module: Module,
    x: np.ndarray,
    *extra: np.ndarray,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    seed: int = 0,
) -> dict[str, float]:
    """Compare ``module``'s analytic gradients of the input and every parameter with
    central differences. ``extra`` are non-differentiable forward arguments (e.g. targets).

    Returns the max abs error per name; raises ``GradcheckError`` on a mismatch. The module
    must be float64 (``module.astype(np.float64)``) and deterministic (no Dropout in train)."""
    for name, p in {"input": x, **module.params}.items():
        if p.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64, {name} is {p.dtype}")
    out = module.forward(x, *extra)
    g = np.random.default_rng(seed).standard_normal(np.shape(out))  # the fixed upstream gradient

    def f(_: np.ndarray) -> float:
        return float(np.sum(module.forward(x, *extra) * g))  # d f / d out = g

    dx = module.backward(g)
    analytic = {"input": dx, **{k: v.copy() for k, v in module.grads.items()}}
    arrays = {"input": x, **module.params}
    errors = {}
    for name, array in arrays.items():
        if analytic.get(name) is None:
            continue  # e.g. Conv2d with needs_input_grad=False
        numeric = numerical_grad(f, array, eps)
        errors[name] = float(np.max(np.abs(numeric - analytic[name]), initial=0.0))
        if not np.allclose(analytic[name], numeric, rtol=rtol, atol=atol):
            raise GradcheckError(
                f"{type(module).__name__}: gradient of {name} is off by up to {errors[name]:.3g} "
                f"(analytic vs central differences, rtol={rtol}, atol={atol})"
            )
    return errors
