"""Cross-entropy on logits, with PyTorch's label smoothing.

With p = softmax(z) computed stably as log p = z - max(z) - log(sum(exp(z - max(z)))), and
the target distribution q = (1 - eps) * onehot(y) + eps / C (label smoothing eps, C classes):

    loss_n = -sum_c q_c log p_c        dloss_n / dz = p - q

``reduction="mean"`` averages over the batch (and so divides the gradient by N).
"""

from __future__ import annotations

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.module import Module, check_ndim


class CrossEntropyLoss(Module):
    """``torch.nn.CrossEntropyLoss(label_smoothing=0.0, reduction="mean")`` for class indices.

    ``loss, dlogits = loss_fn(logits, targets)``; or ``forward(logits, targets)`` then
    ``backward(grad_out=1.0)``, like a layer. With ``reduction="none"`` the loss is (N,)
    and ``dlogits`` is the gradient of its sum."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing, self.reduction = label_smoothing, reduction
        self._dlogits: np.ndarray | None = None

    def __call__(self, logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        loss = self.forward(logits, targets)
        return loss, self.backward()

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:  # type: ignore[override]
        check_ndim(logits, 2, "CrossEntropyLoss", "(N, classes) logits")
        N, C = logits.shape
        targets = np.asarray(targets)
        if targets.shape != (N,) or not np.issubdtype(targets.dtype, np.integer):
            raise ShapeError(
                f"CrossEntropyLoss: targets must be {N} integer class indices, got {targets.dtype} shape {tuple(targets.shape)}"
            )
        if N and (targets.min() < 0 or targets.max() >= C):
            raise ShapeError(f"CrossEntropyLoss: targets must lie in [0, {C}), got {targets.min()}..{targets.max()}")
        shifted = logits - logits.max(axis=1, keepdims=True)  # (N, C), max 0: exp cannot overflow
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # log softmax
        eps = self.label_smoothing
        q = np.full_like(logits, eps / C)  # smoothing spreads eps over all C classes...
        q[np.arange(N), targets] += 1 - eps  # ...and the true class keeps the rest
        losses = -(q * log_probs).sum(axis=1)  # (N,)
        dlogits = np.exp(log_probs) - q  # (N, C): softmax - q
        if self.reduction == "mean":
            self._dlogits = dlogits / N
            return losses.mean()
        self._dlogits = dlogits
        return losses.sum() if self.reduction == "sum" else losses

    def backward(self, grad_out: np.ndarray | float = 1.0) -> np.ndarray:
        grad_out = np.asarray(grad_out, dtype=self._dlogits.dtype)
        if grad_out.ndim == 1:  # reduction="none": one upstream gradient per sample
            grad_out = grad_out[:, None]
        return self._dlogits * grad_out

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


class BCEWithLogitsLoss(Module):
    """``torch.nn.BCEWithLogitsLoss(reduction="mean")``: a sigmoid and binary cross-entropy
    in one, per element, for targets t in [0, 1] (soft targets allowed).

    With log sigma(z) = -softplus(-z) and log(1 - sigma(z)) = -softplus(z), both stable:

        loss = -t log sigma(z) - (1 - t) log(1 - sigma(z)) = softplus(z) - t z
        dloss/dz = sigma(z) - t            dloss/dt = -z

    ``forward(logits, targets)`` then ``backward(grad_out)`` gives both gradients, as
    PyTorch's autograd does; ``loss, dlogits = loss_fn(logits, targets)`` is the usual call."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"BCEWithLogitsLoss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        loss = self.forward(logits, targets)
        return loss, self.backward()[0]

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:  # type: ignore[override]
        targets = np.asarray(targets, dtype=logits.dtype)
        if targets.shape != logits.shape:
            raise ShapeError(f"BCEWithLogitsLoss: targets {targets.shape} must have the logits' shape {logits.shape}")
        losses = softplus(logits) - targets * logits  # (...) one loss per element
        self._cache = (logits, targets)
        if self.reduction == "mean":
            return losses.mean() if losses.size else np.asarray(np.nan, logits.dtype)
        return losses.sum() if self.reduction == "sum" else losses

    def backward(self, grad_out: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        z, t = self._cache
        g = np.asarray(grad_out, dtype=z.dtype)  # a scalar, or one value per element ("none")
        if self.reduction == "mean":
            g = g / max(z.size, 1)
        sigma = np.exp(-softplus(-z))  # sigmoid(z), stable at both ends
        return (sigma - t) * g, -z * g  # (d logits, d targets)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
