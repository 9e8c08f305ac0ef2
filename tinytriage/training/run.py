"""A training run as data: its arguments, what each epoch measured, where it stands, how it ended.

``TrainConfig`` is what the CLI's options fill and the run folder records; ``RunState`` is
what the loop (``training.loop``) updates after every epoch and a checkpoint
(``training.checkpoint``) saves and restores; ``TrainResult`` is what ``train`` returns.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from tinytriage.errors import ConfigError, TinyTriageError, TrainingError
from tinytriage.models import ARCHS, get_arch
from tinytriage.models.cnn import HEAD_POOLS
from tinytriage.models.file import bundled_file, read_model
from tinytriage.training.calibration import Calibration


@dataclass
class TrainConfig:
    """Arguments of one training run (the CLI's options fill it; stored in the run)."""

    data_dir: str  # folder with one subfolder per class
    out: str | None = None  # run folder; None: runs/train, numbered past the runs already there (run_folder)
    exist_ok: bool = False  # write into an --out that already holds a run (otherwise refused)
    # an ARCHS name: efficientnet_lite0 (pretrained), cnn or vit; None: chosen from the photos
    # (training.folders.choose_for_photos), DEFAULT_ARCH unless they are small
    arch: str | None = None
    backend: str = "numpy"  # engine: "numpy" or "torch"
    device: str = "cpu"  # torch backend only
    epochs: int = 12
    batch_size: int = 64
    lr: float | None = None  # peak learning rate; None: the arch's default (models.ARCHS)
    warmup_epochs: float | None = None  # linear warm-up; None: the arch's default
    optimizer: str | None = None  # "sgd" or "adamw"; None: the arch's default
    weight_decay: float | None = None  # None: the arch's default
    label_smoothing: float = 0.05
    seed: int = 0
    val_fraction: float = 0.15
    val_dir: str | None = None  # validate on this folder (same classes) instead of a split of data_dir
    input_size: int | None = None  # square input side in pixels; None: the arch's default
    augment: bool | None = None  # None: yes, except for small photos (training.folders.choose_for_photos)
    resume: bool = False
    init: str | None = None  # start from this model file's weights (same classes); new optimizer and schedule
    # "auto": the architecture's bundled pretrained weights (models.ARCHS), when it has some;
    # a model file: its frozen backbone under a new head for this folder's classes
    # (training.finetune); None: train every weight from random ones (the loop)
    pretrained: str | None = "auto"
    target_precision: float = 0.99  # auto-routed photos must be this often right on validation
    routes: dict[str, str] | None = None  # class -> queue (train --routes); None: each class's default
    damage_weight: float = 0.0  # > 0: also learn where the damage boxes are (tinytriage.training.damage_maps)
    model_config: dict[str, Any] = field(default_factory=dict)  # overrides of the arch's config
    # a model file (or the name of a bundled model's architecture, e.g. "cnn") whose class for
    # each training photo a distilled ViT's distillation token learns (training.distill);
    # None for a distilled model (--init from one): its distillation token learns the true classes
    teacher: str | None = None


DEFAULT_ARCH = "efficientnet_lite0"  # what train fine-tunes when --arch is not given


def with_arch_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every option left at None filled from its architecture's
    ``train_defaults`` (``models.ARCHS``) and config's input size."""
    if cfg.init is not None and not cfg.resume:
        cfg = _shaped_as_init(cfg)
    cfg = replace(cfg, arch=cfg.arch or DEFAULT_ARCH, augment=True if cfg.augment is None else cfg.augment)
    try:
        spec = get_arch(cfg.arch)
    except TinyTriageError as err:
        raise TrainingError(str(err)) from None
    defaults = {**spec.train_defaults, "input_size": spec.default_input_size}
    unset = {k: v for k, v in defaults.items() if getattr(cfg, k) is None}
    pretrained = cfg.pretrained
    if cfg.teacher is not None:  # DeiT's distillation: a distilled model, trained by the loop
        distillable = _archs_with("distilled")
        if cfg.arch not in distillable:
            raise TrainingError(
                f"--teacher trains a distilled transformer (--arch {', '.join(distillable)}), not {cfg.arch}"
            )
        cfg = replace(cfg, model_config={**cfg.model_config, "distilled": True})
        pretrained = None
    if cfg.init is not None or cfg.resume:  # the loop continues from those weights
        pretrained = None
    elif pretrained == "auto":
        pretrained = None if spec.pretrained is None else str(bundled_file(spec.pretrained))
    return replace(cfg, **unset, pretrained=pretrained)


def _shaped_as_init(cfg: TrainConfig) -> TrainConfig:
    """``--init FILE``: the architecture, its shape and the input size are the file's, so
    ``train photos/ --init models/triage_vit.safetensors`` fine-tunes that model as it is.
    What the command sets itself (--arch, --widths, --input-size, ...) still wins, and
    ``init_weights`` then refuses weights that do not fit it, naming the difference."""
    mf = read_model(cfg.init)
    if cfg.arch not in (None, mf.arch):
        return cfg  # another architecture: init_weights says so
    spec = get_arch(mf.arch)
    shape = {k: v for k, v in mf.config.items() if k not in ("num_classes", spec.input_size_field)}
    return replace(
        cfg,
        arch=mf.arch,
        model_config={**shape, **cfg.model_config},
        input_size=cfg.input_size if cfg.input_size is not None else spec.input_size(mf.config),
    )


DEFAULT_RUNS = "runs/train"  # train's run folder when --out is not given: runs/train, runs/train2, ...
RUN_FILES = ("model.safetensors", "checkpoint.safetensors", "metrics.json")  # what makes a folder a run


def run_folder(cfg: TrainConfig) -> str:
    """Where the run goes. ``--out`` as given: refused if it names a model file, or a run
    folder already there (unless ``exist_ok`` or ``resume``). No ``--out``: ``runs/train``,
    or the first of ``runs/train2``, ``runs/train3``, ... not yet a run; with ``resume``,
    the newest of them."""
    if cfg.out is None:
        numbered = itertools.chain([DEFAULT_RUNS], (f"{DEFAULT_RUNS}{n}" for n in itertools.count(2)))
        if cfg.resume:  # the newest run: the last one there before a gap
            runs = list(itertools.takewhile(lambda d: _holds_run(Path(d)), numbered))
            return runs[-1] if runs else DEFAULT_RUNS
        return next(d for d in numbered if not _holds_run(Path(d)))
    out = Path(cfg.out)
    if out.suffix == ".safetensors":
        raise ConfigError(
            f"{cfg.out} is a file name, but --out is the run folder (model.safetensors, checkpoint, metrics and "
            f"curves go inside it): give a folder, e.g. --out {out.with_suffix('')}",
            option="--out",
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{cfg.out} is a file, not a folder; give a folder for the run", option="--out")
    if not cfg.resume and not cfg.exist_ok and (held := _holds_run(out)):
        raise ConfigError(
            f"{cfg.out} already holds a run ({held}); pass --exist-ok to overwrite it, --resume to continue it, "
            "or another --out",
            option="--out",
        )
    return cfg.out


def _holds_run(folder: Path) -> str | None:
    """The first file that makes ``folder`` a run folder, or None."""
    return next((name for name in RUN_FILES if (folder / name).exists()), None)


def model_config_from_options(
    arch: str,
    *,
    widths: str | None = None,
    depths: str | None = None,
    pool: str | None = None,
    conv_stem: str | None = None,
) -> dict[str, Any]:
    """``TrainConfig.model_config`` from ``train``'s --widths, --depths, --pool and
    --conv-stem as typed (``"16,32,64"``), checked before any photo is read: each sets a
    field of the architecture's config (the CNN's the first three, the ViT's the last),
    --depths gives one count per stage, --pool names a head pooling, --conv-stem the
    channels of the ViT's 3x3 stride-2 stem convolutions (its patch size follows: 2 per
    convolution). Raises ``ConfigError`` naming the option."""
    model_config: dict[str, Any] = {}
    if conv_stem is not None:
        _takes(arch, "conv_stem")
        model_config["conv_stem"] = _counts(conv_stem, "--conv-stem")
        model_config["patch_size"] = 2 ** len(model_config["conv_stem"])  # the stem's total stride
    if widths is not None:
        _takes(arch, "widths")
        model_config["widths"] = _counts(widths, "--widths")
    if depths is not None:
        _takes(arch, "depths")
        model_config["depths"] = _counts(depths, "--depths")
        try:
            get_arch(arch).from_dict(model_config)  # one count per stage of --widths (or the default widths)
        except ValueError as err:
            raise ConfigError(str(err), option="--depths") from None
    if pool is not None:
        _takes(arch, "pool")
        if pool not in HEAD_POOLS:
            raise ConfigError(f"choose one of {', '.join(HEAD_POOLS)}, got {pool!r}", option="--pool")
        model_config["pool"] = pool
    return model_config


def _archs_with(name: str) -> list[str]:
    """The architectures whose config has a field ``name``."""
    return [a for a, spec in ARCHS.items() if name in {f.name for f in fields(spec.config)}]


def _takes(arch: str, name: str) -> None:
    """--NAME sets the config field NAME: refused for an architecture whose config has none."""
    takers = _archs_with(name)
    if arch not in takers:
        raise ConfigError(
            f"only for {' or '.join(f'--arch {a}' for a in takers)}", option=f"--{name.replace('_', '-')}"
        )


def _counts(text: str, option: str) -> list[int]:
    """``--widths`` / ``--depths``: positive integers separated by commas."""
    try:
        counts = [int(w) for w in text.split(",")]
    except ValueError:
        counts = []
    if not counts or any(w < 1 for w in counts):
        raise ConfigError(f"expected positive integers separated by commas, got {text!r}", option)
    return counts


@dataclass
class EpochMetrics:
    """What one epoch measured: one row of the run's history."""

    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's batches (with augmentation, label smoothing, dropout)
    train_acc: float
    val_loss: float  # on the validation photos, in eval mode
    val_acc: float
    lr: float  # the learning rate of the epoch's last step
    seconds: float  # the training steps alone, not validation
    images_per_s: float
    damage_loss: float | None = None  # mean damage-map loss (unweighted), with --damage-weight


@dataclass
class RunState:
    """One run: what it trains (fixed when it starts) and where it stands (after every epoch).

    A checkpoint holds the second part with the engine's weights and optimizer, and the
    first to check that ``--resume`` continues the same run."""

    cfg: TrainConfig  # the arguments, the architecture's defaults filled in
    arch_config: dict[str, Any]  # the model's full config (models.ARCHS: the arch's config dataclass)
    classes: list[str]  # the dataset's classes, in label order
    routes: dict[str, str]  # class -> queue, stored in the model file
    epoch: int = 0  # epochs completed
    history: list[EpochMetrics] = field(default_factory=list)  # one row per completed epoch
    best_acc: float = -1.0  # the best validation accuracy so far (-1: no epoch yet)
    best_epoch: int = 0  # the epoch it came from (1-based; 0: none yet)
    best_state: dict[str, np.ndarray] | None = None  # that epoch's weights (None: no epoch completed)
    interrupted: bool = False  # Ctrl-C ended the loop early


@dataclass
class TrainResult:
    """Where a run went and how it did."""

    run_dir: Path
    model_path: Path  # the best epoch's weights, calibrated: the model to use
    history: list[EpochMetrics]
    best_epoch: int
    best_val_acc: float
    temperature: float  # softmax(logits / T), fitted on validation
    threshold: float  # photos below this calibrated confidence go to a person
    ece_before: float  # expected calibration error on validation at T = 1
    ece_after: float  # ... and at T, on photos the temperature was not fitted on
    duplicates: list[tuple[str, str]]  # (training photo, validation photo) pairs with the same bytes
    scan_summary: str  # the training folder, for a person
    interrupted: bool = False
    train_seconds: float = 0.0
    calibration: Calibration | None = None  # the temperature's check and what the review threshold reached
    routes: dict[str, str] = field(default_factory=dict)  # class -> queue, as stored in the model file
