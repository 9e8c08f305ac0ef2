"""What an engine is: the calls that training, ``predict``, ``explain`` and ``compare``
make, written once for both engines.

    logits = engine.logits(x)                    # eval mode, no gradients
    loss, logits = engine.train_step(x, y, lr)   # forward, backward, optimizer step
    engine.state_dict() / engine.load_state_dict(sd)

Arrays in and out are NumPy, whatever the engine computes with. ``NumpyEngine``
(``numpy_engine.py``) runs tinytriage's own layers; ``TorchEngine`` (``torch_engine.py``)
runs their PyTorch twins with autograd. No caller asks which one it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tinytriage.errors import ShapeError


@dataclass
class OptimConfig:
    """The optimizer both engines build, with PyTorch's semantics."""

    name: str = "sgd"  # "sgd" (momentum, nesterov) or "adamw"
    lr: float = 0.05  # peak learning rate; the schedule scales it per step
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05


class Engine(Protocol):
    """A model and its optimizer behind the calls the rest of tinytriage makes."""

    name: str  # "numpy" or "torch", for people (reports, JSON); never branched on
    model: Any  # the engine's own model object
    arch: Any  # its row of the architecture table (``models.Architecture``): layer names, ...

    # -- inference (eval mode, no gradients) --
    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) photos -> (N, classes) logits."""
        ...

    def logits_and_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and the last spatial map (N, C, h, w), for class activation maps. Conv nets."""
        ...

    def logits_and_attention(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits and each block's attention probabilities (N, heads, T, T). Transformers."""
        ...

    def layer_outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every layer of ``features``, by name, for the first photo: (C, h, w) each. Conv nets."""
        ...

    def block_outputs(self, x: np.ndarray, layer: str) -> dict[str, np.ndarray]:
        """The input of ``features`` layer ``layer`` ("input") and the output of each of its
        children in order, by name (a block's branch, before any residual add), for the first
        photo: (C, h, w) each. Conv nets built of blocks."""
        ...

    def activations_and_gradients(
        self, x: np.ndarray, class_index: np.ndarray, layer_index: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A, d y_c / d A, logits) at ``features[layer_index]``, for Grad-CAM. Conv nets."""
        ...

    # -- training --
    # y is (N,) class indices for a model with one head. A model whose training-mode output
    # has several heads, (N, H, K) (a distilled ViT: H = 2, the class head and the
    # distillation head), takes (N, H) targets, one per head (the true label, the teacher's);
    # the loss is then the mean cross-entropy over all N*H rows. Either way the logits
    # returned are (N, K), the class head's ([:, 0]), so accuracy is computed as for one head.
    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """Forward and backward in training mode, no step: (loss, class-head logits (N, K), gradients by name)."""
        ...

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, np.ndarray]:
        """Forward, backward, optimizer step: (loss, class-head logits (N, K)) of the batch."""
        ...

    def use_float64(self) -> None:
        """Compute in float64 from now on (before the first step)."""
        ...

    def reseed(self, seed_seq: list[int]) -> None:
        """Fresh random generators for dropout (per epoch, so resuming is exact)."""
        ...

    # -- weights and optimizer state, as flat dicts of arrays with PyTorch's names --
    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...

    def optimizer_state(self) -> dict: ...

    def load_optimizer_state(self, state: dict) -> None: ...


def check_head_targets(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y`` as integer class indices, one per head of the (N, H, K) training logits: (N, H)."""
    N, H, K = logits.shape
    y = np.asarray(y)
    if y.shape != (N, H) or not np.issubdtype(y.dtype, np.integer):
        raise ShapeError(
            f"the model gives {H} heads' logits, (N, H, K) = {(N, H, K)}: targets must be (N, H) = {(N, H)} "
            f"integer class indices, one per head (a distilled ViT: the true label, then the teacher's), "
            f"got {y.dtype} shape {tuple(y.shape)}"
        )
    return y


def class_logits(logits):
    """The class head's (N, K) logits of (N, K) or (N, H, K) training logits (head 0);
    NumPy arrays and torch tensors alike."""
    return logits[:, 0] if logits.ndim == 3 else logits
