"""Optimizers with PyTorch's exact update rules, over a flat ``{name: array}`` dict.

Each updates the parameter arrays *in place* (the layers keep computing with the very
same arrays). For a parameter p with gradient g, learning rate lr, step t = 1, 2, ...:

SGD (torch/optim/sgd.py):
    g = g + weight_decay * p                                   (L2 penalty)
    b = g  (first step)  or  b = momentum * b + (1 - dampening) * g
    g = g + momentum * b  (nesterov)  or  g = b
    p = p - lr * g

Adam (Kingma & Ba, 2015; torch/optim/adam.py):
    g = g + weight_decay * p                                   (Adam: L2 penalty)
    p = p * (1 - lr * weight_decay)                            (AdamW: decoupled decay,
                                                                Loshchilov & Hutter, 2019)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

``state_dict()`` is one flat dict (``"lr"``, ``"step"``, ``"exp_avg.0.weight"``, ...) so a
training checkpoint can store it beside the model's and resume exactly.
"""

from __future__ import annotations

import numpy as np


class Optimizer:
    """Base class: ``params`` by name, a settable ``lr``, per-parameter state by name."""

    state_names: tuple[str, ...] = ()  # the per-parameter buffers, e.g. ("exp_avg", "exp_avg_sq")

    def __init__(self, params: dict[str, np.ndarray], lr: float) -> None:
        if lr < 0:
            raise ValueError(f"{type(self).__name__}: lr must be non-negative, got {lr}")
        self.params = dict(params)
        self.lr = lr
        self.step_count = 0
        self.state: dict[str, dict[str, np.ndarray]] = {name: {} for name in self.state_names}

    def step(self, grads: dict[str, np.ndarray]) -> None:
        """Update every parameter in place from ``grads`` (same keys as ``params``)."""
        missing = [name for name in self.params if name not in grads]
        if missing:
            raise KeyError(f"{type(self).__name__}.step: no gradient for {', '.join(missing)}")
        self.step_count += 1
        for name, p in self.params.items():
            self._update(name, p, grads[name])

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray | float | int]:
        """Flat copy of everything needed to resume: lr, step, and every buffer by name."""
        out: dict[str, np.ndarray | float | int] = {"lr": self.lr, "step": self.step_count}
        for kind, buffers in self.state.items():
            for name, value in buffers.items():
                out[f"{kind}.{name}"] = value.copy()
        return out

    def load_state_dict(self, state: dict[str, np.ndarray | float | int]) -> None:
        """Restore from ``state_dict()``; unknown keys raise KeyError."""
        self.lr = float(state["lr"])
        self.step_count = int(state["step"])
        self.state = {kind: {} for kind in self.state_names}
        for key, value in state.items():
            if key in ("lr", "step"):
                continue
            kind, _, name = key.partition(".")
            if kind not in self.state or name not in self.params:
                raise KeyError(f"{type(self).__name__}.load_state_dict: unexpected key {key!r}")
            self.state[kind][name] = np.array(value, dtype=self.params[name].dtype)


class SGD(Optimizer):
    """``torch.optim.SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)``."""

    state_names = ("momentum_buffer",)

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        if self.weight_decay != 0:
            g = g + self.weight_decay * p  # L2 penalty: d/dp (wd/2 * p^2) = wd * p
        if self.momentum != 0:
            b = self.state["momentum_buffer"].get(name)
            if b is None:  # the first step starts the buffer at g itself (no dampening)
                b = self.state["momentum_buffer"][name] = np.array(g, dtype=p.dtype)
            else:
                b *= self.momentum
                b += (1 - self.dampening) * g
            g = g + self.momentum * b if self.nesterov else b
        p -= self.lr * g


class Adam(Optimizer):
    """``torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)``."""

    state_names = ("exp_avg", "exp_avg_sq")
    decoupled_weight_decay = False  # AdamW sets this

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        beta1, beta2 = self.betas
        t = self.step_count
        if self.weight_decay != 0:
            if self.decoupled_weight_decay:
                p *= 1 - self.lr * self.weight_decay  # AdamW: shrink p directly
            else:
                g = g + self.weight_decay * p  # Adam: L2 penalty through the gradient
        m = self.state["exp_avg"].setdefault(name, np.zeros_like(p))
        v = self.state["exp_avg_sq"].setdefault(name, np.zeros_like(p))
        m += (1 - beta1) * (g - m)  # m = beta1 * m + (1 - beta1) * g, as torch's lerp
        v *= beta2
        v += (1 - beta2) * g * g
        bias_correction1 = 1 - beta1**t  # m and v start at 0 and are biased towards it
        bias_correction2 = 1 - beta2**t
        step_size = self.lr / bias_correction1
        denom = np.sqrt(v) / bias_correction2**0.5 + self.eps
        p -= step_size * (m / denom)


class AdamW(Adam):
    """``torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)``."""

    decoupled_weight_decay = True

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)
