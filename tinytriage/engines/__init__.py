"""Engines: the same model run by NumPy (ours, by hand) or by PyTorch (autograd).

``make_engine`` and ``load_engine`` give an object with the calls of ``base.Engine``;
the PyTorch engine is imported only when asked for (``import torch`` alone takes about
a second).
"""

from __future__ import annotations

from tinytriage.engines.base import Engine, OptimConfig
from tinytriage.errors import BackendUnavailable, TinyTriageError
from tinytriage.models import ARCHS, get_arch

BACKENDS = ("numpy", "torch")

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
) -> Engine:
    """A fresh engine with freshly initialised weights for ``arch``/``config``
    (``init=False``, NumPy: zeros, for weights about to be loaded)."""
    spec = get_arch(arch)
    if backend == "numpy":
        from tinytriage.engines.numpy_engine import NumpyEngine

        if device != "cpu":
            raise TinyTriageError("the numpy backend runs on the CPU only (drop --device or use --backend torch)")
        return NumpyEngine(spec.numpy_model(config, seed=seed, init=init), optim, arch=spec)
    if backend == "torch":
        if not torch_available():
            raise BackendUnavailable(
                "the torch backend needs PyTorch: pip install 'tinytriage[torch]' "
                "(CPU build: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)"
            )
        from tinytriage.engines.torch_engine import TorchEngine

        return TorchEngine.create(spec, config, optim=optim, device=device, seed=seed)
    raise TinyTriageError(f"unknown backend {backend!r} (choose from: {', '.join(BACKENDS)})")


def load_engine(backend: str, model_file, *, device: str = "cpu") -> Engine:
    """An engine running the weights of a loaded ``ModelFile``."""
    engine = make_engine(backend, model_file.arch, model_file.config, device=device, init=False)
    engine.load_state_dict(model_file.tensors)
    return engine


__all__ = ["BACKENDS", "Engine", "OptimConfig", "load_engine", "make_engine", "resolve_backend", "torch_available"]
