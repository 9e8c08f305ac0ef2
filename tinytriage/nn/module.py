"""The Module base class and Sequential: parameters, gradients and state dicts by name.

Every layer keeps its own parameters in ``self.params`` (a dict of NumPy arrays) and,
after ``backward``, their gradients in ``self.grads`` under the same keys. Containers
expose the same two dicts with flat dotted keys (``"0.weight"``, ``"features.3.bias"``),
built from their children, so an optimizer sees one flat dict whatever the nesting.

Optimizers update parameter arrays *in place*, so the arrays in ``params`` stay the very
objects the layers compute with. ``state_dict()`` returns parameters plus buffers
(BatchNorm's running statistics) with exactly the keys PyTorch's twin uses, so weights
move between engines by name.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tinytriage.errors import ShapeError

DEFAULT_DTYPE = np.float32


class NoInit:
    """Stands in for a ``np.random.Generator`` when a model is built only to receive saved
    weights (``load_state_dict`` right after): every initial draw is zeros. Building then
    draws no random numbers and never imports ``numpy.random`` (about 20 ms of a one-photo
    ``predict``). Anything drawn later (Dropout's masks, in training mode) comes from a
    real generator seeded with ``seed``, made on first use."""

    def __init__(self, seed: int = 0) -> None:
        self.seed, self._real = seed, None

    def uniform(self, low=0.0, high=1.0, size=None) -> np.ndarray:
        return np.zeros(size)

    def standard_normal(self, size=None, dtype=np.float64) -> np.ndarray:
        return np.zeros(size, dtype)

    def __getattr__(self, name: str):  # any other draw: the real generator's
        if name.startswith("__"):
            raise AttributeError(name)
        if self._real is None:
            self._real = np.random.default_rng(self.seed)
        return getattr(self._real, name)


class Module:
    """Base class: ``forward(x)`` (also ``module(x)``) and ``backward(grad_out) -> grad_in``."""

    def __init__(self) -> None:
        self.training = True
        self._params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._modules: dict[str, Module] = {}

    # -- the two passes ---------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    # -- children ---------------------------------------------------------------------
    def add_module(self, name: str, module: Module) -> Module:
        self._modules[name] = module
        return module

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant, depth first, with dotted names."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    # -- parameters, gradients, buffers, as flat dotted dicts ----------------------------
    def _flat(self, attr: str) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for prefix, module in self.named_modules():
            for key, value in getattr(module, attr).items():
                out[f"{prefix}.{key}" if prefix else key] = value
        return out

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameters (the arrays themselves, not copies), flat dotted keys."""
        return self._flat("_params")

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Gradients from the last ``backward``, same keys as ``params``."""
        return self._flat("_grads")

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trained state (BatchNorm running statistics), flat dotted keys."""
        return self._flat("_buffers")

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def zero_grad(self) -> None:
        for _, module in self.named_modules():
            module._grads = {k: np.zeros_like(v) for k, v in module._params.items()}

    # -- modes ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def astype(self, dtype: np.dtype | type) -> Module:
        """Cast every parameter and floating buffer (e.g. to float64 for gradient checks)."""
        for _, module in self.named_modules():
            module._params = {k: v.astype(dtype) for k, v in module._params.items()}
            module._buffers = {
                k: (v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v) for k, v in module._buffers.items()
            }
            module._grads = {}
        return self

    # -- state dicts ------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers, copied, with the PyTorch twin's keys."""
        out = {}
        for prefix, module in self.named_modules():
            for key, value in {**module._params, **module._buffers}.items():
                out[f"{prefix}.{key}" if prefix else key] = value.copy()
        return out

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays in by name. With ``strict``, missing or unexpected keys and
        shape mismatches raise ``ShapeError`` naming every problem."""
        problems = []
        seen = set()
        for prefix, module in self.named_modules():
            for store in (module._params, module._buffers):
                for key in list(store):
                    full = f"{prefix}.{key}" if prefix else key
                    if full not in state:
                        problems.append(f"missing {full}")
                        continue
                    seen.add(full)
                    value = np.asarray(state[full])
                    if value.shape != store[key].shape:
                        problems.append(f"{full}: shape {tuple(value.shape)}, expected {tuple(store[key].shape)}")
                        continue
                    if value.dtype == store[key].dtype:
                        # copy INTO the existing array: an optimizer holding it keeps working
                        store[key][...] = value
                        continue
                    # keep the dtype of floats as given (float64 checks) but ints as ints
                    store[key] = value.astype(
                        value.dtype if np.issubdtype(value.dtype, np.floating) else store[key].dtype,
                        copy=True,
                    )
        unexpected = sorted(set(state) - seen)
        problems += [f"unexpected {k}" for k in unexpected]
        if problems and strict:
            raise ShapeError("state dict does not match the model: " + "; ".join(problems))

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse (the chain rule, link by link)."""

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        # dL/dx_0 = dL/dx_n · dx_n/dx_{n-1} · ... · dx_1/dx_0
        for layer in reversed(self._modules.values()):
            grad_out = layer.backward(grad_out)
        return grad_out


def check_ndim(x: np.ndarray, ndim: int, layer: str, layout: str) -> None:
    """Raise a clear ShapeError when ``x`` is not ``ndim``-dimensional."""
    if x.ndim != ndim:
        raise ShapeError(f"{layer} expects a {ndim}-D {layout} array, got shape {tuple(x.shape)}")


def take_cache(cache, layer: str) -> tuple:
    """``(cache, None)``: backward takes what forward saved and lets go of it, so the big
    activations it held are free (for the next step's reused buffers) once backward is done,
    as PyTorch frees saved tensors. A second backward without a forward is an error."""
    if cache is None:
        raise RuntimeError(f"{layer}.backward: no saved forward pass (call forward before each backward)")
    return cache, None
