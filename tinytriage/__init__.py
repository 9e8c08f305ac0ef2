"""tinytriage: route support-ticket photos with a CNN written from first principles in NumPy.

The package's subpackages are the layers of its design, each importing only those
before it (``tests/test_layout.py`` holds them to that):

    nn         the layers as a textbook: formula, reference loop, forward and backward
    nn.fast    the engine room: im2col, channels-last pooling, fused inference, threads
    models     the CNN and the ViT (NumPy and PyTorch twins) and ARCHS, the one table
               where architectures differ; the safetensors model file
    engines    the Engine protocol and its NumPy and PyTorch engines, torchrun
    data       safe decoding, preprocessing, datasets, augmentation, the photo generator
    training   the loop, checkpoints, schedule, calibration
    inference  predict, its inputs and lanes, the second look, evaluate
    explain    summaries, the hand computation, Grad-CAM, rollout, demo, lesson, compare
    cli        the Typer commands, rendering, JSON lines, process handling
"""

import sys

__version__ = "0.1.0"

# Modules that moved into the subpackages (0.1's flat layout): ``import tinytriage.cnn``
# and ``from tinytriage.predict import Predictor`` keep working, as views of the new
# modules (their names resolve there; nothing is imported until asked for).
MOVED = {
    "augment": "data.augment",
    "calibrate": "training.calibration",
    "cnn": "models.cnn",
    "compare": "explain.compare",
    "damage_maps": "training.damage_maps",
    "data": "data.datasets",
    "demo": "explain.demo",
    "distributed": "engines.distributed",
    "engine": "engines",
    "evaluate": "inference.evaluate",
    "explain": "explain.photo",
    "gradcam": "explain.gradcam",
    "lesson": "explain.lesson",
    "lines": "cli.lines",
    "model_io": "models.file",
    "predict": "inference.predict",
    "preprocess": "data.preprocess",
    "receptive": "explain.receptive",
    "render": "cli.render",
    "rollout": "explain.rollout",
    "routing": "data.routes",
    "schedule": "training.schedule",
    "second_look": "inference.second_look",
    "synth": "data.synth",
    "torch_backend": "engines.torch_engine",
    "torch_vit": "models.torch_vit",
    "train": "training.loop",
    "vit": "models.vit",
}


class _MovedModules:
    """A finder and loader (``sys.meta_path``'s protocol, without importing importlib.abc:
    8 ms of every ``predict``) for ``tinytriage.<old name>``. Finds ``tinytriage.<old name>`` for the names in MOVED, ahead of the package's own
    folders (``tinytriage.data`` and ``tinytriage.explain`` are packages now: only their
    old *contents* are reached through the old name's attributes, not their import)."""

    def find_spec(self, name, path=None, target=None):
        old = name.removeprefix("tinytriage.")
        if name.startswith("tinytriage.") and old in MOVED and old not in ("data", "explain"):
            from importlib.util import spec_from_loader  # only when an old name is imported

            return spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return None  # a plain module, filled in below

    def exec_module(self, module):
        from importlib import import_module

        target = "tinytriage." + MOVED[module.__name__.removeprefix("tinytriage.")]
        module.__doc__ = f"Moved to ``{target}``: this name is kept for old imports."
        module.__getattr__ = lambda attr: getattr(import_module(target), attr)
        module.__dir__ = lambda: dir(import_module(target))


sys.meta_path.insert(0, _MovedModules())
