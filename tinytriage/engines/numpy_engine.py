"""The NumPy engine: tinytriage's own layers (``tinytriage.nn``), forward and backward by hand.

Inference runs a fused copy of the model (each conv-BatchNorm-ReLU folded into one
convolution, ``nn.fast.fuse``); training runs the layers as written.
"""

from __future__ import annotations

import numpy as np

from tinytriage import nn
from tinytriage.engines.base import OptimConfig, check_head_targets, class_logits
from tinytriage.errors import TinyTriageError
from tinytriage.models import Architecture


def _blas_one_thread_limit():
    """``nn``'s threads run BLAS single-threaded inside them (``nn.fast.parallel``): the
    switch is threadpoolctl's, made once, on first use. Without threadpoolctl: none."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: nn then keeps multiplies on the calling thread
        return None
    controller = None

    def limit():
        nonlocal controller
        if controller is None:
            controller = ThreadpoolController()
        return controller.limit(limits=1, user_api="blas")

    return limit


nn.fast.parallel.set_blas_limit(_blas_one_thread_limit())


class NumpyEngine:
    """Our own engine: hand-written forward and backward passes (``tinytriage.nn``)."""

    name = "numpy"

    def __init__(self, model: nn.Module, optim: OptimConfig | None = None, *, arch: Architecture) -> None:
        self.model = model
        self.arch = arch  # its row of the architecture table (layer names for explain)
        self.optim_cfg = optim or OptimConfig()
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=self.optim_cfg.label_smoothing)
        self.optimizer = None
        self._inference_model: tuple[nn.Module, nn.Module] | None = None  # (model, its fused twin)
        self.damage_head = None  # training-only task (``attach_damage_head``), never saved with the model
        self.damage_loss = float("nan")  # its loss at the last step

    def attach_damage_head(self, head: nn.Module) -> None:
        """Train with a second task on the features (``tinytriage.training.damage_maps``):
        ``head.forward(features, targets) -> loss`` and ``head.backward() -> d features``.
        Before the optimizer exists, so it updates the head's weights too."""
        if self.arch.features_module is None:
            raise TinyTriageError(f"damage maps train conv nets only (their last spatial map), not a {self.arch.name}")
        if self.optimizer is not None:
            raise TinyTriageError("attach_damage_head() must come before the first step or optimizer load")
        self.damage_head = head

    def damage_state_dict(self) -> dict[str, np.ndarray]:
        """The damage head's weights (for checkpoints; empty without one)."""
        return {} if self.damage_head is None else self.damage_head.state_dict()

    def load_damage_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.damage_head.load_state_dict(state)

    def _with_damage_head(self, model_arrays: dict[str, np.ndarray], head_arrays: dict[str, np.ndarray]):
        """The model's parameters (or gradients) and, named ``damage_head.*``, the head's."""
        return {**model_arrays, **{f"damage_head.{k}": v for k, v in head_arrays.items()}}

    def _make_optimizer(self):
        o = self.optim_cfg
        params = (
            self.model.params
            if self.damage_head is None
            else self._with_damage_head(self.model.params, self.damage_head.params)
        )
        if o.name == "sgd":
            return nn.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
        if o.name == "adamw":
            return nn.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        raise TinyTriageError(f"unknown optimizer {o.name!r} (known: sgd, adamw)")

    def _fused(self) -> nn.Module:
        """The model with each conv-BatchNorm-ReLU folded into one convolution
        (``tinytriage.nn.fast.fuse``; it reads the live weights, so it is never stale)."""
        self.model.eval()
        if self._inference_model is None or self._inference_model[0] is not self.model:
            self._inference_model = (self.model, nn.fuse_for_inference(self.model))
        return self._inference_model[1]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Inference, on the fused model."""
        return self._fused()(x)

    def logits_and_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inference, also returning the last conv stage's map (N, C, h, w), for the
        class activation maps of ``tinytriage.inference.second_look``. CNN only."""
        fused = self._fused()
        features = fused.features(x)
        return fused.head(features), features

    def logits_and_attention(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (N, classes) and each block's attention probabilities (N, heads, T, T),
        in eval mode, for attention rollout. Transformers only."""
        self.model.eval()
        logits = self.model(x)
        return logits, [a.copy() for a in self.model.attention_maps()]

    def layer_outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every ``features`` layer's output for the first photo, (C, h, w) each, by name,
        in eval mode (the layers as written, not the fused copy: explain shows each step)."""
        self.model.eval()
        names = self.arch.layer_names(self.model.cfg)
        outs, a = {}, x
        for name, layer in zip(names, self.model.features, strict=True):
            a = layer(a)
            outs[name] = a[0]
        return outs

    def block_outputs(self, x: np.ndarray, layer: str) -> dict[str, np.ndarray]:
        """A ``features`` block's input and each child's output, by name, for the first photo,
        in eval mode (explain computes one of their cells by hand)."""
        self.model.eval()
        layers = list(self.model.features)
        i = self.arch.layer_names(self.model.cfg).index(layer)
        a = x
        for earlier in layers[:i]:
            a = earlier(a)
        outs = {"input": a[0]}
        for name, child in layers[i].children():
            a = child(a)
            outs[name] = a[0]
        return outs

    def activations_and_gradients(
        self, x: np.ndarray, class_index: np.ndarray, layer_index: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A, d y_c / d A, logits) at ``features[layer_index]``, for Grad-CAM: forward to
        the layer, the rest forward, then our own backward passes from a one-hot d logits."""
        model = self.model
        model.eval()
        layers = list(model.features)
        a = x
        for layer in layers[: layer_index + 1]:
            a = layer(a)
        A = a  # (N, K, h, w)
        for layer in layers[layer_index + 1 :]:
            a = layer(a)
        logits = model.head(a)  # (N, classes)
        # y = sum_n y_{c_n}(photo n): in eval mode the photos do not interact, so the gradient of
        # the sum with respect to photo n's activations is that photo's own d y_c / d A
        dlogits = np.zeros_like(logits)
        dlogits[np.arange(len(x)), class_index] = 1.0  # d y / d logits: one-hot per photo
        g = model.head.backward(dlogits)
        for layer in reversed(layers[layer_index + 1 :]):
            g = layer.backward(g)
        return A, g, logits

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """Forward and backward in training mode, no optimizer step (used by ``compare``).
        The logits returned are (N, classes): the class head's, for a model with several."""
        self.model.train()
        logits = self.model(x)  # (N, K), or (N, H, K) from H heads (a distilled ViT: H = 2)
        loss, dlogits = self._loss(logits, y)
        self.model.backward(dlogits)
        return float(loss), class_logits(logits), self.model.grads

    def _loss(self, logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cross-entropy of (N, K) logits and (N,) class indices; of (N, H, K) logits, one row
        per head, and (N, H) targets, the mean over all N*H rows (with a distilled ViT that is
        DeiT's hard distillation: half the class head's loss on the labels, half the
        distillation head's on the teacher's)."""
        if logits.ndim == 2:
            return self.loss_fn(logits, y)
        N, H, K = logits.shape
        y = check_head_targets(logits, y)
        loss, dlogits = self.loss_fn(logits.reshape(N * H, K), y.reshape(N * H))
        return loss, dlogits.reshape(N, H, K)

    def damage_loss_and_grads(
        self, x: np.ndarray, y: np.ndarray, coverage: np.ndarray
    ) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """``loss_and_grads`` plus the damage-map task on the features (``tinytriage.training.damage_maps``):
        the features' gradient is the sum of the classifier's and the damage head's."""
        self.model.train()
        f = self.model.features(x)  # (N, C, h, w)
        logits = self.model.head(f)  # (N, classes)
        loss, dlogits = self.loss_fn(logits, y)
        self.damage_loss = self.damage_head.forward(f, coverage)
        df = self.model.head.backward(dlogits) + self.damage_head.backward()  # (N, C, h, w)
        self.model.features.backward(df)
        return float(loss), logits, self._with_damage_head(self.model.grads, self.damage_head.grads)

    def train_step(
        self, x: np.ndarray, y: np.ndarray, lr: float, coverage: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        """Forward, backward, optimizer step; ``coverage`` (N, h, w): the damage-map task's
        targets, with ``attach_damage_head``. Returns the classification loss and the logits."""
        if coverage is None:
            loss, logits, grads = self.loss_and_grads(x, y)
        else:
            loss, logits, grads = self.damage_loss_and_grads(x, y, coverage)
        if self.optimizer is None:
            self.optimizer = self._make_optimizer()
        self.optimizer.lr = lr
        self.optimizer.step(grads)
        return loss, logits

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.model.load_state_dict(state)

    def optimizer_state(self) -> dict:
        if self.optimizer is None:
            self.optimizer = self._make_optimizer()
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict) -> None:
        if self.optimizer is None:
            self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state)

    def use_float64(self) -> None:
        """Compute in float64 from now on (``compare``'s gradient and training checks);
        before the first step: the optimizer is made afresh."""
        self.model.astype(np.float64)
        self._inference_model, self.optimizer = None, None

    def reseed(self, seed_seq: list[int]) -> None:
        """Give every Dropout layer a fresh generator (per epoch, so resuming is exact)."""
        for i, (_, m) in enumerate(self.model.named_modules()):
            if isinstance(m, nn.Dropout):
                m.rng = np.random.default_rng([*seed_seq, i])
