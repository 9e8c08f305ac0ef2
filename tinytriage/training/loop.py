"""Training: a plain, visible loop.

    for epoch in epochs:
        for batch in shuffled(train):            # seeded by (seed, epoch): resumable, exact
            x = normalize(augment(batch))
            loss, logits = engine.train_step(x, y, lr_at(step))   # forward, backward, step
        validate; keep best and last weights; write a checkpoint

``_fit`` is that loop; ``_train`` runs the rest in order, each step its own function:
scan the folders (``_scan``), check the settings (``_new_run``), decode every photo once
(``_decode``), build the engine, run the loop (its batches from ``_Batches``, one batch
ahead on a thread), then calibrate the probabilities on the validation split (temperature
scaling) and choose the human-review threshold there too (``_calibrate``, with
``tinytriage.training.calibration``), and write the run folder. The run's state is one
dataclass (``training.run.RunState``); ``training.checkpoint`` saves and restores it, and
the progress the loop reports is ``training.events``.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from tinytriage import __version__
from tinytriage.data.augment import Augment, augment_batch
from tinytriage.data.datasets import (
    ResizedCache,
    cache_resized,
)
from tinytriage.data.preprocess import Preprocess, normalize
from tinytriage.engines import Engine, OptimConfig, distributed, make_engine
from tinytriage.errors import TrainingError
from tinytriage.files import atomic_write_bytes, finite_json
from tinytriage.models import ARCHS, get_arch
from tinytriage.models.file import ModelFile, save_model
from tinytriage.training import events
from tinytriage.training.calibration import Calibration, calibrate_logits, softmax
from tinytriage.training.checkpoint import (
    CHECKPOINT,
    convert_head_weight,
    init_weights,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from tinytriage.training.damage_maps import boxes_in_cache, cell_coverage, damage_head_for
from tinytriage.training.distill import teacher_labels
from tinytriage.training.events import ProgressFn
from tinytriage.training.finetune import train_pretrained
from tinytriage.training.folders import Folders, choose_for_photos, default_routes, scan_folders
from tinytriage.training.run import EpochMetrics, RunState, TrainConfig, TrainResult, run_folder, with_arch_defaults
from tinytriage.training.schedule import lr_at

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "EpochMetrics",
    "TrainConfig",
    "TrainResult",
    "convert_head_weight",
    "evaluate_arrays",
    "train",
    "with_arch_defaults",
]

# Pixels in [0, 1] are mapped to about [-2, 2]. A neutral choice rather than dataset
# statistics: the first BatchNorm re-centres every channel anyway, and a fixed value keeps
# a model's input contract simple. Stored in the model file like everything else.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)


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
    cfg, chosen = choose_for_photos(cfg)  # what --arch left open, from a look at the photos
    if chosen and progress is not None:
        progress(events.Plan(chosen))
    cfg = with_arch_defaults(cfg)  # the run folder records the values actually used
    # before any rank of a torchrun job makes the folder, so that every rank picks the same one
    cfg = replace(cfg, out=run_folder(cfg))
    if cfg.pretrained is not None:  # a new head on a pretrained network: seconds, not epochs
        if distributed.launched():
            raise TrainingError(
                "fine-tuning a pretrained network runs in one process (drop torchrun, or --from-scratch)"
            )
        return train_pretrained(cfg, progress)
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
    """Prepare the photos and the engine, run the loop (``_fit``), calibrate, write the run folder."""
    emit = progress or _ignore
    run_dir = Path(cfg.out)
    main = distributed.is_main()  # the process that writes files (the only one, without torchrun)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    folders = scan_folders(cfg, emit)
    run = _new_run(cfg, folders.classes)
    # --init and --resume: read and checked before the slow decode below; a resumed run's
    # checkpoint holds newer weights than --init
    checkpoint = read_checkpoint(run_dir / CHECKPOINT, run) if cfg.resume else None
    start_weights = init_weights(Path(cfg.init), run) if cfg.init and not cfg.resume else None
    data = _decode(cfg, folders, emit)
    if cfg.teacher is not None:  # DeiT: the distillation token learns the teacher's classes
        taught = teacher_labels(cfg.teacher, data.train.paths, data.train.labels, folders.classes)
        data.teacher = taught.labels
        emit(events.Teacher(path=taught.path, arch=taught.arch, agreement=taught.agreement))
    elif run.arch_config.get("distilled"):  # a distilled model, no teacher (--init from one): both heads
        data.teacher = data.train.labels  # learn the true classes, as compare trains one
    optim = OptimConfig(
        name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing
    )
    engine = make_engine(cfg.backend, cfg.arch, run.arch_config, optim=optim, device=device, seed=cfg.seed)
    damage = _attach_damage_head(engine, run, data, emit) if cfg.damage_weight > 0 else None
    if distributed.launched():
        engine.distribute()  # DDP: gradients averaged over ranks, BatchNorm over the global batch
    if start_weights is not None:
        engine.load_state_dict(start_weights)
        emit(events.Init(path=cfg.init))
    if checkpoint is not None:
        restore_checkpoint(engine, run, checkpoint)
        emit(events.Resume(epoch=run.epoch))

    train_seconds = _fit(engine, run, data, _Batches(cfg, data, damage), emit)
    if run.best_state is None:  # interrupted before the first epoch ended: nothing to save
        raise KeyboardInterrupt

    last_state = engine.state_dict()
    engine.load_state_dict(run.best_state)  # the weights the model file keeps are the ones calibrated
    calibration = _calibrate(engine, data, cfg.target_precision)
    result = TrainResult(
        run_dir=run_dir,
        model_path=run_dir / "model.safetensors",
        history=run.history,
        best_epoch=run.best_epoch,
        best_val_acc=run.best_acc,
        temperature=calibration.temperature,
        threshold=calibration.threshold,
        ece_before=calibration.ece_before,
        ece_after=calibration.ece_after,
        duplicates=folders.duplicates,
        scan_summary=folders.summary,
        interrupted=run.interrupted,
        train_seconds=train_seconds,
        calibration=calibration,
        routes=run.routes,
    )
    if main:  # the other ranks hold the same weights and results: they write nothing
        _write_run_folder(result, run, data, last_state)
    return result


def _fit(engine: Engine, run: RunState, data: TrainingData, batches: _Batches, emit: ProgressFn) -> float:
    """The loop: from ``run.epoch`` to the last epoch, shuffled batches, then validation, the
    best weights kept and a checkpoint written. Ctrl-C ends it after a message. Returns its seconds."""
    cfg = run.cfg
    y_train = data.train.labels
    steps_per_epoch = max(1, len(y_train) // cfg.batch_size)  # drop the last partial batch (BatchNorm)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    ckpt_path = Path(cfg.out) / CHECKPOINT
    # One thread augments ahead of the training step. It is the only user of each epoch's
    # ``rng`` after the shuffle, in batch order: the same numbers as augmenting inline.
    ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="augment")
    t_start = time.perf_counter()
    try:
        for epoch in range(run.epoch, cfg.epochs):
            rng = np.random.default_rng([cfg.seed, epoch])
            engine.reseed([cfg.seed, epoch])
            order = rng.permutation(len(y_train))
            t0 = time.perf_counter()
            loss_sum, correct, seen, damage_sum = 0.0, 0, 0, 0.0
            upcoming = ahead.submit(batches.make, order, rng, 0)
            for b in range(steps_per_epoch):
                batch = upcoming.result()
                if b + 1 < steps_per_epoch:  # batch b+1 is augmented while batch b trains
                    upcoming = ahead.submit(batches.make, order, rng, b + 1)
                yb = y_train[batch.idx]  # the whole batch's labels; this process trains on yb[batch.mine]
                targets = yb if data.teacher is None else np.stack([yb, data.teacher[batch.idx]], axis=1)  # (n, 2)
                lr = lr_at(epoch * steps_per_epoch + b, total_steps, cfg.lr, warmup)
                if batch.coverage is None:
                    loss, logits = engine.train_step(batch.x, targets[batch.mine], lr)  # the whole batch's
                else:
                    loss, logits = engine.train_step(batch.x, targets[batch.mine], lr, coverage=batch.coverage)
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
                emit(events.Step(
                    epoch=epoch + 1, epochs=cfg.epochs, step=b + 1, steps=steps_per_epoch, loss=loss_sum / seen,
                    acc=correct / seen, images_per_s=seen / max(elapsed, 1e-9),
                    eta_s=elapsed / (b + 1) * (steps_per_epoch * (cfg.epochs - epoch) - b - 1),
                ))  # fmt: skip
            seconds = time.perf_counter() - t0
            val_loss, val_acc, _ = evaluate_arrays(engine, data.x_val, data.y_val)
            m = EpochMetrics(
                epoch=epoch + 1, train_loss=loss_sum / seen, train_acc=correct / seen, val_loss=val_loss,
                val_acc=val_acc, lr=lr, seconds=seconds, images_per_s=seen / seconds,
                damage_loss=None if batches.damage is None else damage_sum / seen,
            )  # fmt: skip
            run.history.append(m)
            run.epoch = epoch + 1
            if val_acc > run.best_acc:
                run.best_acc, run.best_epoch, run.best_state = val_acc, epoch + 1, engine.state_dict()
            if distributed.is_main():
                save_checkpoint(ckpt_path, engine, run)
            emit(events.Epoch(metrics=m))
    except KeyboardInterrupt:
        run.interrupted = True
        kept = str(ckpt_path) if run.history else None
        emit(events.Interrupted(completed_epochs=len(run.history), checkpoint=kept))
    finally:
        ahead.shutdown(wait=True, cancel_futures=True)  # at most one batch still augmenting
    return time.perf_counter() - t_start


def _ignore(event: events.Event) -> None:
    """Progress nobody asked for."""


# -- before the loop: the photos, the settings, the damage maps -------------------------------


def _new_run(cfg: TrainConfig, classes: list[str]) -> RunState:
    """The run's fixed part: the model's full config and the routes, with the settings
    checked before any photo is decoded."""
    routes = default_routes(classes, cfg.routes)
    arch_config = get_arch(cfg.arch).config_for(cfg.model_config, len(classes), cfg.input_size)
    if cfg.damage_weight < 0 or not math.isfinite(cfg.damage_weight):
        raise TrainingError(f"--damage-weight must be >= 0, got {cfg.damage_weight}")
    if cfg.damage_weight > 0 and (get_arch(cfg.arch).features_module is None or cfg.backend != "numpy"):
        conv_nets = ", ".join(name for name, spec in ARCHS.items() if spec.features_module is not None)
        raise TrainingError(f"--damage-weight trains the NumPy CNN only (--arch {conv_nets}; --backend numpy)")
    return RunState(cfg=cfg, arch_config=arch_config, classes=classes, routes=routes)


@dataclass
class TrainingData:
    """A run's photos, decoded once (``_decode``)."""

    preprocess: Preprocess  # letterbox and normalisation: the model file records it
    train: ResizedCache  # (N, S, S, 3) uint8 squares, S a little larger than the input when augmenting
    x_val: np.ndarray  # (M, 3, input_size, input_size) float32, normalised
    y_val: np.ndarray  # (M,) class indices
    teacher: np.ndarray | None = None  # (N,) the teacher's class for each training photo (--teacher)


def _decode(cfg: TrainConfig, folders: Folders, emit: ProgressFn) -> TrainingData:
    """Every photo decoded once, a little larger than the input, as uint8: augmented per epoch."""
    emit(events.Cache(n=len(folders.train.samples) + len(folders.val.samples)))
    pcfg = Preprocess(input_size=cfg.input_size, mean=DEFAULT_MEAN, std=DEFAULT_STD, resize_mode="letterbox")
    train_cache = cache_resized(folders.train, pcfg, size=None if cfg.augment else cfg.input_size, workers=2)
    val_cache = cache_resized(folders.val, pcfg, size=cfg.input_size, workers=2)
    for path, why in train_cache.errors + val_cache.errors:
        emit(events.Unreadable(path=str(path), reason=why))
    return TrainingData(
        preprocess=pcfg, train=train_cache, x_val=normalize(val_cache.images, pcfg), y_val=val_cache.labels
    )


@dataclass(frozen=True)
class _DamageMaps:
    """``--damage-weight``'s targets (``tinytriage.training.damage_maps``)."""

    boxes: np.ndarray  # (N, 4) each training photo's damage box in its cached square; NaN: none
    grid: int  # side of the map the damage head predicts (the last conv stage's)


def _attach_damage_head(engine: Engine, run: RunState, data: TrainingData, emit: ProgressFn) -> _DamageMaps:
    """The training photos' damage boxes, and the head that learns them (attached before any
    optimizer state is made or restored)."""
    cfg = run.cfg
    grid = get_arch(cfg.arch).feature_map_shape(run.arch_config)[-1]
    boxes = boxes_in_cache(data.train.paths, data.train.geometries)
    n_boxes = int(np.isfinite(boxes).all(axis=1).sum())
    if n_boxes == 0:
        raise TrainingError(
            f"--damage-weight: no training photo of {cfg.data_dir} has a damage box (a NAME.json sidecar "
            "with a damage_bbox, as `tinytriage samples` writes for screen_damage photos)"
        )
    emit(events.DamageBoxes(n=n_boxes, of=len(boxes)))
    engine.attach_damage_head(damage_head_for(engine.model, cfg.damage_weight, cfg.seed))
    return _DamageMaps(boxes=boxes, grid=grid)


# -- in the loop: the batches ------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    idx: np.ndarray  # the batch's rows of the training set (the same on every rank)
    mine: slice  # this process's share of them (all of them, without torchrun)
    x: np.ndarray  # (n, 3, input_size, input_size) float32: this share, augmented and normalised
    coverage: np.ndarray | None  # (n, grid, grid) damage-map targets, with --damage-weight


@dataclass
class _Batches:
    """Batch ``b`` of an epoch from the epoch's shuffled ``order`` and ``rng``."""

    cfg: TrainConfig
    data: TrainingData
    damage: _DamageMaps | None
    aug: Augment | None = field(init=False)

    def __post_init__(self) -> None:
        self.aug = Augment() if self.cfg.augment else None

    def make(self, order: np.ndarray, rng: np.random.Generator, b: int) -> _Batch:
        cfg, images = self.cfg, self.data.train.images
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]  # same on every rank
        mine = distributed.shard(len(idx))  # this rank's rows (all of them in one process)
        maps = None  # without augmentation the cache is the input itself
        if self.aug:
            xb_u8, maps = augment_batch(images[idx], cfg.input_size, self.aug, rng, rows=mine, return_maps=True)
        else:
            xb_u8 = images[idx[mine]]
        coverage = None
        if self.damage is not None:
            coverage = cell_coverage(self.damage.boxes[idx[mine]], maps, cfg.input_size, self.damage.grid)
        return _Batch(idx=idx, mine=mine, x=normalize(xb_u8, self.data.preprocess), coverage=coverage)


# -- after the loop: calibration, the result, the run folder ----------------------------------


def _calibrate(engine: Engine, data: TrainingData, target_precision: float) -> Calibration:
    """Temperature, then the review threshold, fitted on the validation photos."""
    _, _, val_logits = evaluate_arrays(engine, data.x_val, data.y_val)
    return calibrate_logits(val_logits, data.y_val, target_precision)


def _write_run_folder(
    result: TrainResult, run: RunState, data: TrainingData, last_state: dict[str, np.ndarray]
) -> None:
    """The best and the last weights as model files, metrics.json and curves.png."""
    cfg = run.cfg
    preprocess = data.preprocess.to_dict()
    training = {
        "seed": cfg.seed,
        "args": asdict(cfg),
        "history": [asdict(h) for h in run.history],
        "train_seconds": result.train_seconds,
        "backend": cfg.backend,
        "n_train": int(len(data.train.labels)),
        "n_val": int(len(data.y_val)),
        "duplicates": len(result.duplicates),
        "interrupted": result.interrupted,
    }
    metrics = {"val_acc": result.best_val_acc, "best_epoch": result.best_epoch, **result.calibration.to_json()}

    def model_file(state: dict[str, np.ndarray]) -> ModelFile:
        return ModelFile(
            arch=cfg.arch,
            config=run.arch_config,
            classes=run.classes,
            routes=run.routes,
            preprocess=preprocess,
            tensors=state,
            threshold=result.threshold,
            temperature=result.temperature,
            training=training,
            metrics=metrics,
        )

    save_model(model_file(run.best_state), result.model_path)
    save_model(model_file(last_state), result.run_dir / "last.safetensors")
    atomic_write_bytes(
        result.run_dir / "metrics.json",
        json.dumps(
            finite_json(
                {
                    "args": asdict(cfg),
                    "history": training["history"],
                    **metrics,
                    "threshold": result.threshold,
                    "tinytriage_version": __version__,
                }
            ),
            indent=2,
        ).encode(),
    )
    try:
        from tinytriage.plots import training_curves_png

        atomic_write_bytes(result.run_dir / "curves.png", training_curves_png(run.history))
    except ImportError:
        pass
