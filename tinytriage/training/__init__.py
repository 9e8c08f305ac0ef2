"""Training: the loop (``loop``), fine-tuning a pretrained network (``finetune``), the run
as data (``run``), checkpoints (``checkpoint``), the learning-rate schedule, calibration
maths and the damage-map task.

The public names below are looked up on first use: ``predict`` imports
``training.calibration`` (softmax) and must not pay for the loop's imports (~50 ms)."""

_PUBLIC = {
    "EpochMetrics": "tinytriage.training.run",
    "RunState": "tinytriage.training.run",
    "TrainConfig": "tinytriage.training.run",
    "TrainResult": "tinytriage.training.run",
    "model_config_from_options": "tinytriage.training.run",
    "with_arch_defaults": "tinytriage.training.run",
    "convert_head_weight": "tinytriage.training.checkpoint",
    "evaluate_arrays": "tinytriage.training.loop",
    "train": "tinytriage.training.loop",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'tinytriage.training' has no attribute {name!r}")
    from importlib import import_module  # not `from tinytriage.training import ...`: that asks this function again

    return getattr(import_module(_PUBLIC[name]), name)
