"""Fine-tuning a pretrained network on a team's own photos: a new head on frozen features.

A network pretrained on ImageNet has already learnt what photos are made of; what a team's
folder of labelled photos has to teach it is only which of *its* classes each photo shows.
So the backbone stays as it is (BatchNorm in eval mode, every weight frozen) and only a new
linear classifier is trained, on the pooled features of the last conv stage (1280 numbers
per photo for EfficientNet-Lite0): a "linear probe" (Kornblith et al. 2019, "Do Better
ImageNet Models Transfer Better?"). It needs few photos (30 per class reach 97% balanced
accuracy on real ticket photos, ``benchmarks/realphotos.py``), it cannot overfit the
backbone, and it takes seconds, because the network runs forward only, once per view:

    for each training photo: V views (the photo, then V-1 random augmentations)
        f = mean over cells of backbone(view)              (1280,)
    standardise the features, then fit softmax(W f + b) by gradient descent (weight decay)
    fold the standardisation into W and b: the model file's classifier reads raw features

V is larger for small folders (more views of few photos) and 1 for large ones, so the
forward passes stay about ``VIEW_BUDGET``. The classifier's steps are full-batch Adam on
(N*V, 1280) features: a few milliseconds each.

Calibration needs photos the head has not seen, and the validation split of a small
folder is small: 20 photos of 150, often all right, which say nothing about how sure the
head should be. The head is cheap to fit, so the training photos serve too: ``FOLDS``
heads, each fitted without one fold of them, score that fold ("out-of-fold", as
cross-validation does), and the temperature and review threshold are fitted on those
scores and the validation photos' together (``out_of_fold_logits``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinytriage import __version__
from tinytriage.data.augment import Augment, augment_batch
from tinytriage.data.datasets import cache_resized
from tinytriage.data.preprocess import Preprocess, normalize
from tinytriage.engines import Engine, load_engine
from tinytriage.errors import TrainingError
from tinytriage.files import atomic_write_bytes, finite_json
from tinytriage.models import get_arch
from tinytriage.models.file import ModelFile, read_model, save_model
from tinytriage.training import events
from tinytriage.training.calibration import calibrate_logits, stratified_folds
from tinytriage.training.events import ProgressFn
from tinytriage.training.folders import default_routes, scan_folders
from tinytriage.training.run import EpochMetrics, TrainConfig, TrainResult

VIEW_BUDGET = 2400  # forward passes the views of the training photos may take, at most ~8 per photo
MAX_VIEWS = 8
# view 0: the cached square resized to the input, nothing random
PLAIN = Augment(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    rotation=0.0,
    hflip=0.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    blur=0.0,
)
HEAD_STEPS = 400  # full-batch Adam steps on the features
HEAD_LR = 0.05  # on standardised features
HEAD_WEIGHT_DECAY = 1e-3  # L2 on W (standardised units): on 30 photos per class the features outnumber the photos
# heads fitted for the training photos' out-of-fold scores (calibration). On 30 real photos
# per class (the other 313 held out): 3 folds T=0.453, held-out ECE 0.023; 5 folds T=0.435,
# ECE 0.023 for two more heads; the validation photos alone: T=1 (all 20 right), ECE 0.139
FOLDS = 3


def views_per_photo(n_train: int) -> int:
    """1 for a large folder, up to MAX_VIEWS for a small one."""
    return int(min(MAX_VIEWS, max(1, VIEW_BUDGET // max(n_train, 1))))


@dataclass
class Features:
    """Pooled backbone features of a folder's photos."""

    x: np.ndarray  # (N*V, C) float64, view v of photo i at row v*N + i
    y: np.ndarray  # (N*V,) class indices
    views: int  # V


def pooled_features(
    engine: Engine, images: np.ndarray, labels: np.ndarray, pcfg: Preprocess, views: int, seed: int, batch: int = 32
) -> Features:
    """``views`` views of each uint8 (N, s, s, 3) image through the frozen backbone:
    view 0 the image resized to the input, the others augmented (``Augment()``)."""
    S, aug = pcfg.input_size, Augment()
    out = []
    for v in range(views):
        rng = np.random.default_rng([seed, v])
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch]
            if v == 0:
                x_u8 = chunk if chunk.shape[1] == S else augment_batch(chunk, S, PLAIN, rng)
            else:
                x_u8 = augment_batch(chunk, S, aug, rng)
            _, fmap = engine.logits_and_features(normalize(x_u8, pcfg))  # (n, C, h, w)
            out.append(fmap.mean(axis=(2, 3), dtype=np.float64))  # (n, C): what global pooling hands on
    return Features(np.concatenate(out), np.tile(labels, views), views)


@dataclass
class LinearHead:
    """softmax(x @ weight.T + bias) on raw features: the model file's classifier."""

    weight: np.ndarray  # (K, C)
    bias: np.ndarray  # (K,)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias  # (N, K)


def fit_linear_head(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    *,
    steps: int = HEAD_STEPS,
    lr: float = HEAD_LR,
    weight_decay: float = HEAD_WEIGHT_DECAY,
    label_smoothing: float = 0.05,
    offset: np.ndarray | None = None,
) -> LinearHead:
    """Multinomial logistic regression by full-batch Adam on standardised features, then
    the standardisation folded in: W (x - mu) / sd + b = (W / sd) x + (b - W (mu / sd)).

    ``offset`` (N, K), fixed logits added before the softmax: what the head learns is then
    a correction to them (a ``PriorClassifier``'s prior, ``training.prior``)."""
    N, C = x.shape
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mu) / sd  # (N, C)
    target = np.full((N, num_classes), label_smoothing / num_classes)
    target[np.arange(N), y] += 1.0 - label_smoothing
    W, b = np.zeros((C, num_classes)), np.zeros(num_classes)
    m = [np.zeros_like(W), np.zeros_like(b)]
    v = [np.zeros_like(W), np.zeros_like(b)]
    fixed = 0.0 if offset is None else offset
    for t in range(1, steps + 1):
        logits = z @ W + b + fixed  # (N, K)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d = (p - target) / N  # d mean cross-entropy / d logits
        grads = (z.T @ d + weight_decay * W, d.sum(axis=0))  # (C, K), (K,)
        for i, (param, g) in enumerate(zip((W, b), grads, strict=True)):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            param -= lr * (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
    weight = (W / sd[:, None]).T  # (K, C)
    return LinearHead(weight=weight, bias=b - (mu / sd) @ W)


def out_of_fold_logits(f: Features, num_classes: int, label_smoothing: float, folds: int = FOLDS) -> np.ndarray:
    """Logits (N, K) of each training photo's view 0 by a head fitted without that photo
    (without any view of it): ``folds`` heads, each left one stratified fold out."""
    n = len(f.y) // f.views
    y = f.y[:n]
    fold = stratified_folds(y, min(folds, n))
    logits = np.zeros((n, num_classes))
    for k in np.unique(fold):
        held = fold == k
        rows = np.tile(~held, f.views)  # every view of the photos the head may see
        if len(np.unique(f.y[rows])) < 2:  # a fold so large that one class is left: no head to fit
            continue
        head = fit_linear_head(f.x[rows], f.y[rows], num_classes, label_smoothing=label_smoothing)
        logits[held] = head.logits(f.x[:n][held])
    return logits


@dataclass
class HeadRun:
    """What ``train_head`` made: the model file (not yet calibrated or saved) and its numbers."""

    model_file: ModelFile
    val_logits: np.ndarray  # (M, K) on the validation photos, one view each
    y_val: np.ndarray
    oof_logits: np.ndarray  # (N, K) on the training photos, each by a head that did not see it
    y_train: np.ndarray
    metrics: EpochMetrics
    views: int
    seconds: float


def train_head(
    cfg: TrainConfig, classes: list[str], routes: dict[str, str], train_set, val_set, emit: ProgressFn
) -> HeadRun:
    """The pretrained model file ``cfg.pretrained``'s backbone, frozen; a new classifier for
    ``classes`` fitted on the training photos' features; the validation photos scored."""
    t0 = time.perf_counter()
    pretrained = read_model(cfg.pretrained)
    spec = get_arch(pretrained.arch)
    if spec.features_module is None:
        raise TrainingError(f"--pretrained {cfg.pretrained}: a {pretrained.arch} has no conv features to build on")
    size = cfg.input_size or spec.input_size(pretrained.config)
    pcfg = Preprocess.from_dict({**pretrained.preprocess, "input_size": size})
    pretrained.config = spec.full_config({**pretrained.config, spec.input_size_field: size})
    engine = load_engine(cfg.backend, pretrained, device=cfg.device)

    emit(events.Cache(n=len(train_set.samples) + len(val_set.samples)))
    train_cache = cache_resized(train_set, pcfg, size=None if cfg.augment else size, workers=2)
    val_cache = cache_resized(val_set, pcfg, size=size, workers=2)
    for path, why in train_cache.errors + val_cache.errors:
        emit(events.Unreadable(path=str(path), reason=why))
    if len(train_cache.labels) == 0:
        raise TrainingError(f"{cfg.data_dir}: no training photo could be read")
    views = views_per_photo(len(train_cache.labels)) if cfg.augment else 1
    train_f = pooled_features(engine, train_cache.images, train_cache.labels, pcfg, views, cfg.seed)
    val_f = pooled_features(engine, val_cache.images, val_cache.labels, pcfg, 1, cfg.seed)
    head = fit_linear_head(train_f.x, train_f.y, len(classes), label_smoothing=cfg.label_smoothing)
    oof = out_of_fold_logits(train_f, len(classes), cfg.label_smoothing)

    train_logits, val_logits = head.logits(train_f.x), head.logits(val_f.x)
    seconds = time.perf_counter() - t0
    metrics = EpochMetrics(
        epoch=1,
        train_loss=_cross_entropy(train_logits, train_f.y),
        train_acc=float((train_logits.argmax(1) == train_f.y).mean()),
        val_loss=_cross_entropy(val_logits, val_f.y),
        val_acc=float((val_logits.argmax(1) == val_f.y).mean()) if len(val_f.y) else math.nan,
        lr=HEAD_LR,
        seconds=seconds,
        images_per_s=len(train_f.y) / max(seconds, 1e-9),
    )
    emit(events.Epoch(metrics=metrics))

    config = {**pretrained.config, "num_classes": len(classes)}
    tensors = dict(pretrained.tensors)  # read_model made them float32 (num_batches_tracked stays int64)
    if config.get("prior_classes"):  # a PriorClassifier's groups are its own classes': a plain Linear instead
        tensors = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
        config["prior_classes"], w_name = 0, "classifier.weight"
    else:
        (w_name,) = [k for k, v in tensors.items() if k.endswith(".weight") and v.ndim == 2]  # the classifier
    tensors[w_name] = head.weight.astype(np.float32)
    tensors[w_name.removesuffix("weight") + "bias"] = head.bias.astype(np.float32)
    model_file = ModelFile(
        arch=pretrained.arch,
        config=spec.full_config(config),
        classes=list(classes),
        routes=routes,
        preprocess=pcfg.to_dict(),
        tensors=tensors,
        training={
            "method": "linear head on frozen pretrained features",
            "pretrained": str(cfg.pretrained),
            "pretrained_source": pretrained.training.get("source"),
            "views": views,
            "args": asdict(cfg),
            "n_train": int(len(train_cache.labels)),
            "n_val": int(len(val_cache.labels)),
            "train_seconds": seconds,
            "backend": cfg.backend,
        },
    )
    return HeadRun(model_file, val_logits, val_f.y, oof, train_cache.labels, metrics, views, seconds)


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return math.nan
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def train_pretrained(cfg: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """``train``'s default: scan, a new head on ``cfg.pretrained``'s frozen features,
    calibrate on the validation photos, write the run folder (model.safetensors, metrics.json)."""
    emit = progress or (lambda event: None)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    folders = scan_folders(cfg, emit)
    n_train = len(folders.train.samples)
    views = views_per_photo(n_train) if cfg.augment else 1
    emit(
        events.Plan(
            f"fine-tuning {cfg.pretrained}: its backbone frozen, a new head for {len(folders.classes)} classes "
            f"on {n_train} photos x {views} view(s) ({'the photo and augmented copies' if views > 1 else 'as they are'}), "
            f"validated and calibrated on {len(folders.val.samples)} (--from-scratch trains every weight instead)"
        )
    )
    routes = default_routes(folders.classes, cfg.routes)
    head = train_head(cfg, folders.classes, routes, folders.train, folders.val, emit)
    # on every photo: the training photos' out-of-fold logits and the validation photos'
    cal = calibrate_logits(
        np.concatenate([head.oof_logits, head.val_logits]), np.concatenate([head.y_train, head.y_val]),
        cfg.target_precision, f"{len(head.y_train)} training photos scored out of fold and "
        f"{len(head.y_val)} validation photos",
    )  # fmt: skip
    mf = head.model_file
    mf.temperature, mf.threshold = cal.temperature, cal.threshold
    mf.metrics = {"val_acc": head.metrics.val_acc, "best_epoch": 1, **cal.to_json()}
    mf.training["history"] = [asdict(head.metrics)]
    model_path = save_model(mf, run_dir / "model.safetensors")
    summary = {"args": asdict(cfg), "history": mf.training["history"], **mf.metrics}
    summary |= {"threshold": cal.threshold, "tinytriage_version": __version__}
    atomic_write_bytes(run_dir / "metrics.json", json.dumps(finite_json(summary), indent=2).encode())
    return TrainResult(
        run_dir=run_dir,
        model_path=model_path,
        history=[head.metrics],
        best_epoch=1,
        best_val_acc=head.metrics.val_acc,
        temperature=cal.temperature,
        threshold=cal.threshold,
        ece_before=cal.ece_before,
        ece_after=cal.ece_after,
        duplicates=folders.duplicates,
        scan_summary=folders.summary,
        train_seconds=head.seconds,
        calibration=cal,
        routes=routes,
    )
