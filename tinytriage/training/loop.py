"""Training: a plain, visible loop.

    for epoch in epochs:
        for batch in shuffled(train):            # seeded by (seed, epoch): resumable, exact
            x = normalize(augment(batch))
            loss, logits = engine.train_step(x, y, lr_at(step))   # forward, backward, step
        validate; keep best and last weights; write a checkpoint

Afterwards the probabilities are calibrated on the validation split (temperature scaling)
and the human-review threshold is chosen there too (`tinytriage.training.calibration`).

The run folder (``--out``) holds:
  model.safetensors       best weights by validation accuracy (the model to use)
  last.safetensors        weights after the last epoch
  checkpoint.safetensors  last weights + optimizer state + epoch, for ``--resume``
  metrics.json            the arguments and per-epoch metrics
  curves.png              training curves
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tinytriage import __version__
from tinytriage.data.routes import DEFAULT_ROUTES, HUMAN_REVIEW
from tinytriage.engines import OptimConfig, distributed, make_engine
from tinytriage.errors import DatasetError, TinyTriageError, TrainingError
from tinytriage.files import atomic_write_bytes
from tinytriage.models import get_arch
from tinytriage.models.cnn import CNNConfig, feature_map_size
from tinytriage.models.file import ModelFile, save_model
from tinytriage.training.calibration import expected_calibration_error, fit_temperature, pick_threshold, softmax
from tinytriage.training.schedule import lr_at

# Pixels in [0, 1] are mapped to about [-2, 2]. A neutral choice rather than dataset
# statistics: the first BatchNorm re-centres every channel anyway, and a fixed value keeps
# a model's input contract simple. Stored in the model file like everything else.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)


@dataclass
class TrainConfig:
    """Arguments of one training run (the CLI's options fill it; stored in the run)."""

    data_dir: str  # folder with one subfolder per class
    out: str = "runs/train"  # run folder
    arch: str = "cnn"  # "cnn" or "vit"
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
    augment: bool = True
    resume: bool = False
    init: str | None = None  # start from this model file's weights (fine-tuning); new optimizer and schedule
    target_precision: float = 0.99  # auto-routed photos must be this often right on validation
    damage_weight: float = 0.0  # > 0: also learn where the damage boxes are (tinytriage.training.damage_maps)
    model_config: dict[str, Any] = field(default_factory=dict)  # overrides of the arch's config


def with_arch_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every option left at None filled from its architecture's
    ``train_defaults`` (``models.ARCHS``) and config's input size."""
    try:
        spec = get_arch(cfg.arch)
    except TinyTriageError as err:
        raise TrainingError(str(err)) from None
    defaults = {**spec.train_defaults, "input_size": spec.default_input_size}
    unset = {k: v for k, v in defaults.items() if getattr(cfg, k) is None}
    return replace(cfg, **unset)


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_per_s: float
    damage_loss: float | None = None  # mean damage-map loss (unweighted), with --damage-weight


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    history: list[EpochMetrics]
    best_epoch: int
    best_val_acc: float
    temperature: float
    threshold: float
    ece_before: float
    ece_after: float
    duplicates: list[tuple[str, str]]
    scan_summary: str
    interrupted: bool = False
    train_seconds: float = 0.0


ProgressFn = Callable[[dict[str, Any]], None]


def _arch_config(cfg: TrainConfig, num_classes: int) -> dict:
    return get_arch(cfg.arch).config_for(cfg.model_config, num_classes, cfg.input_size)


def evaluate_arrays(engine, X: np.ndarray, y: np.ndarray, batch_size: int = 128) -> tuple[float, float, np.ndarray]:
    """Mean cross-entropy, accuracy and the logits of an engine on arrays, in eval mode."""
    logits = (
        np.concatenate([engine.logits(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])
        if len(X)
        else np.zeros((0, 1))
    )
    if len(y) == 0:
        return math.nan, math.nan, logits
    probs = softmax(logits)
    loss = float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean())
    return loss, float((probs.argmax(1) == y).mean()), logits


def train(cfg: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Train a model on a folder of photos; returns where it went and how it did.

    Under torchrun every process calls this: each trains on its share of every batch and
    rank 0 alone reports progress and writes the run folder (``tinytriage.engines.distributed``)."""
    cfg = with_arch_defaults(cfg)  # the run folder records the values actually used
    if not distributed.launched():
        return _train(cfg, progress, cfg.device)
    distributed.check(cfg.backend, cfg.batch_size)  # before any rank waits on another
    device = distributed.init(cfg.device)
    try:
        result = _train(cfg, progress if distributed.is_main() else None, device)
        distributed.barrier()  # every rank is done, and rank 0 has written the run folder
        return result
    finally:
        distributed.cleanup()


def _train(cfg: TrainConfig, progress: ProgressFn | None, device: str) -> TrainResult:
    from tinytriage.data.augment import Augment, augment_batch
    from tinytriage.data.datasets import cache_resized, find_duplicates, scan_folder, stratified_split
    from tinytriage.data.preprocess import Preprocess, normalize

    emit = progress or (lambda event: None)
    run_dir = Path(cfg.out)
    main = distributed.is_main()  # the process that writes files (the only one, without torchrun)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    dataset = scan_folder(cfg.data_dir)
    emit({"event": "scan", "summary": dataset.summary(), "unreadable": dataset.unreadable})
    if cfg.val_dir is None:
        train_set, val_set = stratified_split(dataset, val_fraction=cfg.val_fraction, seed=cfg.seed)
    else:  # a separate validation folder: every photo of data_dir trains
        try:
            val_set = scan_folder(cfg.val_dir)
        except DatasetError as err:
            raise DatasetError(f"--val-dir: {err}") from None
        train_set = dataset
        emit({"event": "scan", "name": "validation", "summary": val_set.summary(), "unreadable": val_set.unreadable})
        if val_set.classes != dataset.classes:
            raise TrainingError(
                f"--val-dir {cfg.val_dir}: its classes ({', '.join(val_set.classes)}) are not the training "
                f"data's ({', '.join(dataset.classes)})"
            )
    duplicates = [(str(a), str(b)) for a, b in find_duplicates(train_set, val_set)]
    if duplicates:
        emit({"event": "duplicates", "pairs": duplicates})

    classes = list(dataset.classes)
    routes = {c: DEFAULT_ROUTES.get(c, HUMAN_REVIEW) for c in classes}
    arch_config = _arch_config(cfg, len(classes))
    if cfg.damage_weight < 0 or not math.isfinite(cfg.damage_weight):
        raise TrainingError(f"--damage-weight must be >= 0, got {cfg.damage_weight}")
    if cfg.damage_weight > 0 and (get_arch(cfg.arch).features_module is None or cfg.backend != "numpy"):
        raise TrainingError("--damage-weight trains the NumPy CNN only (--arch cnn --backend numpy)")
    # --init and --resume: read and checked before the slow decode below; a resumed run's
    # checkpoint holds newer weights than --init
    ckpt_path = run_dir / "checkpoint.safetensors"
    checkpoint = _read_checkpoint(ckpt_path, arch_config, cfg) if cfg.resume else None
    init_weights = _init_weights(Path(cfg.init), arch_config, cfg, classes) if cfg.init and not cfg.resume else None

    # decode every photo once, a little larger than the input, as uint8; augment per epoch
    emit({"event": "cache", "n": len(train_set.samples) + len(val_set.samples)})
    pcfg = Preprocess(input_size=cfg.input_size, mean=DEFAULT_MEAN, std=DEFAULT_STD, resize_mode="letterbox")
    train_cache = cache_resized(train_set, pcfg, size=None if cfg.augment else cfg.input_size, workers=2)
    val_cache = cache_resized(val_set, pcfg, size=cfg.input_size, workers=2)
    for path, why in train_cache.errors + val_cache.errors:
        emit({"event": "unreadable", "path": str(path), "reason": why})
    X_train_u8, y_train = train_cache.images, train_cache.labels
    X_val, y_val = normalize(val_cache.images, pcfg), val_cache.labels

    optim = OptimConfig(
        name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing
    )
    engine = make_engine(cfg.backend, cfg.arch, arch_config, optim=optim, device=device, seed=cfg.seed)
    damage_boxes = None
    if cfg.damage_weight > 0:  # before any optimizer state is made or restored
        from tinytriage.training.damage_maps import boxes_in_cache, cell_coverage, damage_head_for

        grid = feature_map_size(CNNConfig.from_dict(arch_config))  # side of the map the head predicts
        damage_boxes = boxes_in_cache(train_cache.paths, train_cache.geometries)  # (n, 4), NaN: no box
        n_boxes = int(np.isfinite(damage_boxes).all(axis=1).sum())
        if n_boxes == 0:
            raise TrainingError(
                f"--damage-weight: no training photo of {cfg.data_dir} has a damage box (a NAME.json sidecar "
                "with a damage_bbox, as `tinytriage samples` writes for screen_damage photos)"
            )
        emit({"event": "damage_boxes", "n": n_boxes, "of": len(damage_boxes)})
        engine.attach_damage_head(damage_head_for(engine.model, cfg.damage_weight, cfg.seed))
    if distributed.launched():
        engine.distribute()  # DDP: gradients averaged over ranks, BatchNorm over the global batch

    n = len(y_train)
    steps_per_epoch = max(1, n // cfg.batch_size)  # drop the last partial batch (BatchNorm)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    history: list[EpochMetrics] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    start_epoch = 0

    if init_weights is not None:
        engine.load_state_dict(init_weights)
        emit({"event": "init", "path": cfg.init})
    if checkpoint is not None:
        start_epoch, history, best_acc, best_epoch, best_state = _restore_checkpoint(engine, *checkpoint)
        emit({"event": "resume", "epoch": start_epoch})

    aug = Augment() if cfg.augment else None

    def make_batch(order: np.ndarray, rng: np.random.Generator, b: int):
        """Batch b of an epoch: (its indices, this rank's rows of it, the normalised photos,
        the damage-map targets or None)."""
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]  # same on every rank
        mine = distributed.shard(len(idx))  # this rank's rows (all of them in one process)
        maps = None  # without augmentation the cache is the input itself
        if aug:
            xb_u8, maps = augment_batch(X_train_u8[idx], cfg.input_size, aug, rng, rows=mine, return_maps=True)
        else:
            xb_u8 = X_train_u8[idx[mine]]
        coverage = None
        if damage_boxes is not None:
            coverage = cell_coverage(damage_boxes[idx[mine]], maps, cfg.input_size, grid)  # (n, grid, grid)
        return idx, mine, normalize(xb_u8, pcfg), coverage

    # One thread augments ahead of the training step. It is the only user of each epoch's
    # ``rng`` after the shuffle, in batch order: the same numbers as augmenting inline.
    ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="augment")
    interrupted = False
    t_start = time.perf_counter()
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            rng = np.random.default_rng([cfg.seed, epoch])
            engine.reseed([cfg.seed, epoch])
            order = rng.permutation(n)
            t0 = time.perf_counter()
            loss_sum, correct, seen, damage_sum = 0.0, 0, 0, 0.0
            upcoming = ahead.submit(make_batch, order, rng, 0)
            for b in range(steps_per_epoch):
                idx, mine, xb, coverage = upcoming.result()
                if b + 1 < steps_per_epoch:  # batch b+1 is augmented while batch b trains
                    upcoming = ahead.submit(make_batch, order, rng, b + 1)
                yb = y_train[idx]
                step = epoch * steps_per_epoch + b
                lr = lr_at(step, total_steps, cfg.lr, warmup)
                if coverage is None:
                    loss, logits = engine.train_step(xb, yb[mine], lr)  # loss and logits of the whole batch
                else:
                    loss, logits = engine.train_step(xb, yb[mine], lr, coverage=coverage)
                    damage_sum += engine.damage_loss * len(yb)
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss} at epoch {epoch + 1}, step {b + 1} (lr {lr:.4g}); "
                        "try a lower --lr. No weights were saved from this step."
                    )
                loss_sum += loss * len(yb)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
                elapsed = time.perf_counter() - t0
                emit(
                    {
                        "event": "step",
                        "epoch": epoch + 1,
                        "epochs": cfg.epochs,
                        "step": b + 1,
                        "steps": steps_per_epoch,
                        "loss": loss_sum / seen,
                        "acc": correct / seen,
                        "images_per_s": seen / max(elapsed, 1e-9),
                        "eta_s": elapsed / (b + 1) * (steps_per_epoch * (cfg.epochs - epoch) - b - 1),
                    }
                )
            seconds = time.perf_counter() - t0
            val_loss, val_acc, _ = evaluate_arrays(engine, X_val, y_val)
            m = EpochMetrics(epoch + 1, loss_sum / seen, correct / seen, val_loss, val_acc, lr, seconds, seen / seconds)
            if damage_boxes is not None:
                m.damage_loss = damage_sum / seen
            history.append(m)
            if val_acc > best_acc:
                best_acc, best_epoch, best_state = val_acc, epoch + 1, engine.state_dict()
            if main:
                _save_checkpoint(
                    ckpt_path,
                    engine,
                    arch_config,
                    cfg,
                    epoch + 1,
                    history,
                    best_acc,
                    best_epoch,
                    best_state,
                    classes,
                    routes,
                )
            emit({"event": "epoch", "metrics": asdict(m)})
    except KeyboardInterrupt:
        interrupted = True
        emit(
            {
                "event": "interrupted",
                "completed_epochs": len(history),
                "checkpoint": str(ckpt_path) if history else None,
            }
        )
    finally:
        ahead.shutdown(wait=True, cancel_futures=True)  # at most one batch still augmenting
    train_seconds = time.perf_counter() - t_start

    if best_state is None:  # interrupted before the first epoch ended: nothing to save
        raise KeyboardInterrupt

    # calibrate on validation: temperature, then the review threshold
    last_state = engine.state_dict()
    engine.load_state_dict(best_state)
    _, _, val_logits = evaluate_arrays(engine, X_val, y_val)
    temperature = fit_temperature(val_logits, y_val)
    probs_raw, probs_cal = softmax(val_logits), softmax(val_logits, temperature)
    ece_before = expected_calibration_error(probs_raw, y_val)
    ece_after = expected_calibration_error(probs_cal, y_val)
    threshold = pick_threshold(probs_cal, y_val, cfg.target_precision)

    preprocess = pcfg.to_dict()
    training = {
        "seed": cfg.seed,
        "args": asdict(cfg),
        "history": [asdict(h) for h in history],
        "train_seconds": train_seconds,
        "backend": cfg.backend,
        "n_train": int(n),
        "n_val": int(len(y_val)),
        "duplicates": len(duplicates),
        "interrupted": interrupted,
    }
    metrics = {"val_acc": best_acc, "best_epoch": best_epoch, "ece_before": ece_before, "ece_after": ece_after}

    def model_file(state):
        return ModelFile(
            arch=cfg.arch,
            config=arch_config,
            classes=classes,
            routes=routes,
            preprocess=preprocess,
            tensors=state,
            threshold=threshold,
            temperature=temperature,
            training=training,
            metrics=metrics,
        )

    model_path = run_dir / "model.safetensors"
    if main:  # the other ranks hold the same weights and results: they write nothing
        save_model(model_file(best_state), model_path)
        save_model(model_file(last_state), run_dir / "last.safetensors")
        atomic_write_bytes(
            run_dir / "metrics.json",
            json.dumps(
                {
                    "args": asdict(cfg),
                    "history": training["history"],
                    **metrics,
                    "temperature": temperature,
                    "threshold": threshold,
                    "tinytriage_version": __version__,
                },
                indent=2,
            ).encode(),
        )
        try:
            from tinytriage.plots import training_curves_png

            atomic_write_bytes(run_dir / "curves.png", training_curves_png(history))
        except ImportError:
            pass
    return TrainResult(
        run_dir,
        model_path,
        history,
        best_epoch,
        best_acc,
        temperature,
        threshold,
        ece_before,
        ece_after,
        duplicates,
        dataset.summary(),
        interrupted,
        train_seconds,
    )


# -- checkpoints: one flat dict of arrays in a safetensors file --------------------------


def _save_checkpoint(
    path, engine, arch_config, cfg, epoch, history, best_acc, best_epoch, best_state, classes, routes
) -> None:
    tensors = {f"model.{k}": v for k, v in engine.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    if cfg.damage_weight > 0:  # the training-only damage head (NumPy CNN): resumed with the rest
        tensors.update({f"damage.{k}": v for k, v in engine.damage_state_dict().items()})
    extra = {}
    for k, v in engine.optimizer_state().items():
        if isinstance(v, np.ndarray):
            tensors[f"optim.{k}"] = v
        else:
            extra[k] = v
    mf = ModelFile(
        arch=cfg.arch,
        config=arch_config,
        classes=classes,
        routes=routes,
        preprocess={},
        tensors={},
        training={
            "checkpoint": {
                "epoch": epoch,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "history": [asdict(h) for h in history],
                "optim_scalars": extra,
                "args": asdict(cfg),
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


def _config_diff(saved: dict, now: dict) -> str:
    """'key saved -> now' for each setting that differs, for error messages."""
    keys = sorted(saved.keys() | now.keys())
    return "; ".join(
        f"{k} {saved.get(k, '(none)')} -> {now.get(k, '(none)')}" for k in keys if saved.get(k) != now.get(k)
    )


def _init_weights(path: Path, arch_config: dict, cfg: TrainConfig, classes: list[str]) -> dict[str, np.ndarray]:
    """The weights of model file ``path``, checked to fit this run (``--init``: fine-tuning)."""
    from tinytriage.models.file import read_model

    mf = read_model(path)  # every tensor checked: names, shapes, dtypes, finite
    saved = mf.config  # read_model fills in fields added since the file was written
    # all settings but the architecture's finetune_free ones must match (models.ARCHS says why)
    free = dict.fromkeys(get_arch(cfg.arch).finetune_free)
    if mf.arch != cfg.arch or {**saved, **free} != {**arch_config, **free}:
        diff = _config_diff({"arch": mf.arch, **saved}, {"arch": cfg.arch, **arch_config})
        raise TrainingError(f"--init {path}: the model has a different architecture ({diff}); train with its settings")
    if list(mf.classes) != list(classes):
        raise TrainingError(
            f"--init {path}: the model's classes ({', '.join(mf.classes)}) are not this dataset's "
            f"({', '.join(classes)})"
        )
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


def _validation_source(args: dict) -> str:
    """Where a run's validation photos come from, for a person: --val-dir, or the split."""
    if args.get("val_dir") is not None:  # .get: checkpoints from before --val-dir lack the key
        return f"--val-dir {args['val_dir']}"
    return f"--val-fraction {args['val_fraction']} of the data (seed {args['seed']})"


def _read_checkpoint(path: Path, arch_config, cfg) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, training state) of the run folder's checkpoint, checked to fit this run (``--resume``)."""
    from safetensors.numpy import load

    from tinytriage.models.file import _sniff, full_config

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
    if saved != arch_config or meta["arch"] != cfg.arch:
        diff = _config_diff({"arch": meta["arch"], **saved}, {"arch": cfg.arch, **arch_config})
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
    return tensors, ck


def _restore_checkpoint(engine, tensors: dict[str, np.ndarray], ck: dict):
    """Put a checkpoint's weights and optimizer state into ``engine``; returns the loop's state."""
    engine.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    damage = {k[7:]: v for k, v in tensors.items() if k.startswith("damage.")}
    if damage:  # --damage-weight's head (_read_checkpoint checked this run has one too)
        engine.load_damage_state_dict(damage)
    optim = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
    optim.update(ck["optim_scalars"])
    engine.load_optimizer_state(optim)
    best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    history = [EpochMetrics(**h) for h in ck["history"]]
    return int(ck["epoch"]), history, float(ck["best_acc"]), int(ck["best_epoch"]), best_state
