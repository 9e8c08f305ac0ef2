"""Training: the loop (``loop``), the run as data (``run``), checkpoints (``checkpoint``),
the learning-rate schedule, calibration maths and the damage-map task."""

from tinytriage.training.loop import (
    EpochMetrics,
    TrainConfig,
    TrainResult,
    convert_head_weight,
    evaluate_arrays,
    train,
    with_arch_defaults,
)
from tinytriage.training.run import RunState, model_config_from_options

__all__ = [
    "EpochMetrics",
    "RunState",
    "TrainConfig",
    "TrainResult",
    "convert_head_weight",
    "evaluate_arrays",
    "model_config_from_options",
    "train",
    "with_arch_defaults",
]
