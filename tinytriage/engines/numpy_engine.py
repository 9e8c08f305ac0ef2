"""Engines: the same model run by NumPy (ours, by hand) or by PyTorch (autograd).

An engine wraps one model and its optimizer behind the handful of calls the training
loop, ``predict`` and ``compare`` need, so those are written once:

    logits = engine.logits(x)                    # eval mode, no gradients
    loss, logits = engine.train_step(x, y, lr)   # forward, backward, optimizer step
    engine.state_dict() / engine.load_state_dict(sd)
    engine.optimizer_state() / engine.load_optimizer_state(st)

This module holds the NumPy engine; ``tinytriage.engines.torch_engine`` holds the PyTorch one
(imported only when asked for, since ``import torch`` alone takes about a second).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytriage import nn
from tinytriage.errors import BackendUnavailable, TinyTriageError

BACKENDS = ("numpy", "torch")
ARCHS = ("cnn", "vit")

# ``--backend vit`` is the model card's name for the NumPy ViT: a shorthand for
# ``--arch vit --backend numpy``. The engine and the model stay two separate choices
# (``--arch vit --backend torch`` is the ViT's PyTorch twin).
BACKEND_SHORTHANDS = {"vit": ("numpy", "vit")}


def resolve_backend(backend: str, arch: str | None = None) -> tuple[str, str | None]:
    """``(engine, arch)`` for a ``--backend``/``--arch`` pair: expands the ``vit`` shorthand.

    ``arch`` stays None when neither names one (then the model file, or the CNN, decides)."""
    if backend in BACKEND_SHORTHANDS:
        engine, implied = BACKEND_SHORTHANDS[backend]
        if arch is not None and arch != implied:
            raise TinyTriageError(
                f"--backend {backend} means --arch {implied} --backend {engine}, but --arch {arch} was given; "
                f"use --arch {arch} --backend numpy|torch"
            )
        return engine, implied
    if backend not in BACKENDS:
        known = ", ".join([*BACKENDS, *BACKEND_SHORTHANDS])
        raise TinyTriageError(f"unknown backend {backend!r} (choose from: {known})")
    if arch is not None and arch not in ARCHS:
        raise TinyTriageError(f"unknown architecture {arch!r} (choose from: {', '.join(ARCHS)})")
    return backend, arch


@dataclass
class OptimConfig:
    """The optimizer both engines build, with PyTorch's semantics."""

    name: str = "sgd"  # "sgd" (momentum, nesterov) or "adamw"
    lr: float = 0.05  # peak learning rate; the schedule scales it per step
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05


class NumpyEngine:
    """Our own engine: hand-written forward and backward passes (``tinytriage.nn``)."""

    name = "numpy"

    def __init__(self, model: nn.Module, optim: OptimConfig | None = None) -> None:
        self.model = model
        self.optim_cfg = optim or OptimConfig()
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=self.optim_cfg.label_smoothing)
        self.optimizer = None
        self._inference_model: tuple[nn.Module, nn.Module] | None = None  # (model, its fused twin)
        self.damage_head = None  # training-only task (``attach_damage_head``), never saved with the model
        self.damage_loss = float("nan")  # its loss at the last step

    def attach_damage_head(self, weight: float, seed: int = 0) -> None:
        """Train with the damage-map task of ``tinytriage.training.damage_maps`` (CNN only); before
        the optimizer exists, so it updates the head's weights too."""
        from tinytriage.models.cnn import TriageCNN
        from tinytriage.training.damage_maps import DamageMapHead

        if not isinstance(self.model, TriageCNN):
            raise TinyTriageError("damage maps train the CNN only (its last conv stage's map)")
        if self.optimizer is not None:
            raise TinyTriageError("attach_damage_head() must come before the first step or optimizer load")
        rng = np.random.default_rng([seed, 1])
        dtype = self.model.features[0].params["weight"].dtype  # the first conv's: the model's float type
        self.damage_head = DamageMapHead(self.model.cfg.widths[-1], weight, rng=rng).astype(dtype)

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
        (``tinytriage.nn.fuse``; it reads the live weights, so it is never stale)."""
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

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """Forward and backward in training mode, no optimizer step (used by ``compare``)."""
        self.model.train()
        logits = self.model(x)
        loss, dlogits = self.loss_fn(logits, y)
        self.model.backward(dlogits)
        return float(loss), logits, self.model.grads

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

    def reseed(self, seed_seq: list[int]) -> None:
        """Give every Dropout layer a fresh generator (per epoch, so resuming is exact)."""
        for i, (_, m) in enumerate(self.model.named_modules()):
            if isinstance(m, nn.Dropout):
                m.rng = np.random.default_rng([*seed_seq, i])


def torch_available() -> bool:
    """Cheap check (no import): is PyTorch installed?"""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def make_engine(
    backend: str,
    arch: str,
    config: dict,
    *,
    optim: OptimConfig | None = None,
    device: str = "cpu",
    seed: int = 0,
    init: bool = True,
):
    """A fresh engine with freshly initialised weights for ``arch``/``config``
    (``init=False``, NumPy: zeros, for weights about to be loaded)."""
    from tinytriage.models.file import build_numpy_model

    if backend == "numpy":
        if device != "cpu":
            raise TinyTriageError("the numpy backend runs on the CPU only (drop --device or use --backend torch)")
        model = build_numpy_model(arch, config, seed=seed, init=init)
        return NumpyEngine(model, optim)
    if backend == "torch":
        if not torch_available():
            raise BackendUnavailable(
                "the torch backend needs PyTorch: pip install 'tinytriage[torch]' "
                "(CPU build: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)"
            )
        from tinytriage.engines.torch_engine import TorchEngine

        return TorchEngine.create(arch, config, optim=optim, device=device, seed=seed)
    raise TinyTriageError(f"unknown backend {backend!r} (choose from: {', '.join(BACKENDS)})")


def load_engine(backend: str, model_file, *, device: str = "cpu"):
    """An engine running the weights of a loaded ``ModelFile``."""
    engine = make_engine(backend, model_file.arch, model_file.config, device=device, init=False)
    engine.load_state_dict(model_file.tensors)
    return engine
