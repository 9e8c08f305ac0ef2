"""Checkpoints, and the weights a run may start from.

A checkpoint is one flat dict of arrays in a safetensors file, each key prefixed by what
it holds:

    model.*   the weights after the last completed epoch
    best.*    the weights of the best epoch so far (by validation accuracy)
    damage.*  the training-only damage head (``--damage-weight``)
    optim.*   the optimizer's arrays (momentum, Adam's moments); its scalars go in the metadata

with the rest of ``RunState`` (epoch, history, best accuracy and epoch) and the run's
arguments in its JSON metadata. ``--resume`` reads it back, once it has checked that the
checkpoint was made by the same run: same architecture, data, validation and damage weight.

``--init`` starts a new run from a model file's weights instead (fine-tuning): same
architecture and classes, a new optimizer and learning-rate schedule.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinytriage.engines import Engine
from tinytriage.errors import TrainingError, listed
from tinytriage.files import atomic_write_bytes
from tinytriage.models import get_arch
from tinytriage.models.file import ModelFile
from tinytriage.training.run import EpochMetrics, RunState

CHECKPOINT = "checkpoint.safetensors"  # its name in the run folder


@dataclass
class Checkpoint:
    """A checkpoint as read back (``read_checkpoint``), checked to fit the run."""

    tensors: dict[str, np.ndarray]  # the flat dict: model.*, best.*, damage.*, optim.*
    training: dict[str, Any]  # epoch, best_acc, best_epoch, history, optim_scalars, args


def save_checkpoint(path: Path, engine: Engine, run: RunState) -> None:
    """Write the engine's weights and optimizer state with ``run``'s progress to ``path``, atomically."""
    tensors = {f"model.{k}": v for k, v in engine.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in run.best_state.items()})
    if run.cfg.damage_weight > 0:  # the training-only damage head (NumPy CNN): resumed with the rest
        tensors.update({f"damage.{k}": v for k, v in engine.damage_state_dict().items()})
    extra = {}
    for k, v in engine.optimizer_state().items():
        if isinstance(v, np.ndarray):
            tensors[f"optim.{k}"] = v
        else:
            extra[k] = v
    mf = ModelFile(
        arch=run.cfg.arch,
        config=run.arch_config,
        classes=run.classes,
        routes=run.routes,
        preprocess={},
        tensors={},
        training={
            "checkpoint": {
                "epoch": run.epoch,
                "best_acc": run.best_acc,
                "best_epoch": run.best_epoch,
                "history": [asdict(h) for h in run.history],
                "optim_scalars": extra,
                "args": asdict(run.cfg),
            }
        },
    )
    from safetensors.numpy import save

    meta = json.dumps(mf.metadata(), allow_nan=False)
    atomic_write_bytes(
        path,
        save(
            {k: np.array(v, order="C", copy=None) for k, v in tensors.items()}, metadata={"tinytriage_checkpoint": meta}
        ),
    )


def read_checkpoint(path: Path, run: RunState) -> Checkpoint:
    """The run folder's checkpoint, checked to fit ``run`` (``--resume``)."""
    from safetensors.numpy import load

    from tinytriage.models.file import _sniff, full_config

    cfg = run.cfg
    if not path.is_file():
        raise TrainingError(f"--resume: no checkpoint at {path} (train without --resume first)")
    data = path.read_bytes()
    _sniff(path, data[:16], len(data))
    try:
        tensors = load(data)
        (n,) = np.frombuffer(data[:8], "<u8")
        meta = json.loads(json.loads(data[8 : 8 + int(n)])["__metadata__"]["tinytriage_checkpoint"])
    except Exception as err:
        raise TrainingError(f"{path}: unreadable checkpoint ({err})") from None
    saved = full_config(meta["arch"], meta["config"])  # checkpoints from before a config field
    if saved != run.arch_config or meta["arch"] != cfg.arch:
        diff = _config_diff({"arch": meta["arch"], **saved}, {"arch": cfg.arch, **run.arch_config})
        raise TrainingError(
            f"{path}: checkpoint was made for a different architecture or dataset ({diff}); "
            "train with the checkpoint's settings or start a new --out"
        )
    ck = meta["training"]["checkpoint"]
    saved_weight = ck["args"].get("damage_weight", 0.0)  # .get: checkpoints from before --damage-weight
    if saved_weight != cfg.damage_weight:
        raise TrainingError(
            f"{path}: the run trained with --damage-weight {saved_weight}, this one with {cfg.damage_weight}; "
            "resume with the run's settings"
        )
    saved, now = _validation_source(ck["args"]), _validation_source(asdict(cfg))
    if saved != now:
        raise TrainingError(f"{path}: the run validated on {saved}, this one on {now}; resume with the run's settings")
    return Checkpoint(tensors=tensors, training=ck)


def restore_checkpoint(engine: Engine, run: RunState, checkpoint: Checkpoint) -> None:
    """Put a checkpoint's weights and optimizer state into ``engine`` and its progress into ``run``."""
    tensors, ck = checkpoint.tensors, checkpoint.training
    engine.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    damage = {k[7:]: v for k, v in tensors.items() if k.startswith("damage.")}
    if damage:  # --damage-weight's head (read_checkpoint checked this run has one too)
        engine.load_damage_state_dict(damage)
    optim = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
    optim.update(ck["optim_scalars"])
    engine.load_optimizer_state(optim)
    run.epoch = int(ck["epoch"])
    run.history = [EpochMetrics(**h) for h in ck["history"]]
    run.best_acc = float(ck["best_acc"])
    run.best_epoch = int(ck["best_epoch"])
    run.best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}


def _config_diff(saved: dict, now: dict) -> str:
    """'key saved -> now' for each setting that differs, for error messages."""
    keys = sorted(saved.keys() | now.keys())
    return "; ".join(
        f"{k} {saved.get(k, '(none)')} -> {now.get(k, '(none)')}" for k in keys if saved.get(k) != now.get(k)
    )


def _validation_source(args: dict) -> str:
    """Where a run's validation photos come from, for a person: --val-dir, or the split."""
    if args.get("val_dir") is not None:  # .get: checkpoints from before --val-dir lack the key
        return f"--val-dir {args['val_dir']}"
    return f"--val-fraction {args['val_fraction']} of the data (seed {args['seed']})"


# -- --init: a model file's weights, for fine-tuning ---------------------------------------


def init_weights(path: Path, run: RunState) -> dict[str, np.ndarray]:
    """The weights of model file ``path``, checked to fit ``run`` (``--init``: fine-tuning)."""
    from tinytriage.models.file import read_model

    cfg, arch_config = run.cfg, run.arch_config
    mf = read_model(path)  # every tensor checked: names, shapes, dtypes, finite
    saved = mf.config  # read_model fills in fields added since the file was written
    # all settings but the architecture's finetune_free ones must match (models.ARCHS says why)
    free = dict.fromkeys(get_arch(cfg.arch).finetune_free)
    if mf.arch == cfg.arch and list(mf.classes) != list(run.classes):  # before num_classes, which then differs too
        raise TrainingError(
            f"--init {path}: the model's {len(mf.classes)} classes ({listed(mf.classes)}) are not this dataset's "
            f"{len(run.classes)} ({listed(run.classes)}); --init trains on the model's own classes only "
            f"(for new classes, --pretrained {path} trains a new head on its frozen features)"
        )
    if mf.arch != cfg.arch or {**saved, **free} != {**arch_config, **free}:
        diff = _config_diff({"arch": mf.arch, **saved}, {"arch": cfg.arch, **arch_config})
        raise TrainingError(f"--init {path}: the model has a different architecture ({diff}); train with its settings")
    tensors = dict(mf.tensors)
    if saved.get("pool") != arch_config.get("pool"):
        tensors["head.3.weight"] = convert_head_weight(tensors["head.3.weight"], saved["pool"], arch_config["pool"])
    return tensors


def convert_head_weight(weight: np.ndarray, old_pool: str, new_pool: str) -> np.ndarray:
    """The CNN's linear-layer weight (classes, features) for another head pooling.

    ``avgmax`` features are [means | maxima], ``avg`` features the means alone. avg -> avgmax
    keeps the means' columns and gives the maxima zero weight, so the new model starts out
    computing exactly what the old one did (its logits are equal) and training decides how
    much the maxima count. avgmax -> avg keeps the means' columns and drops the maxima's."""
    n, F = weight.shape  # (classes, features)
    C = F // 2 if old_pool == "avgmax" else F  # channels of the last conv stage
    means = weight[:, :C]
    if new_pool == "avg":
        return np.ascontiguousarray(means)
    maxima = weight[:, C:] if old_pool == "avgmax" else np.zeros_like(means)
    return np.concatenate([means, maxima], axis=1)
