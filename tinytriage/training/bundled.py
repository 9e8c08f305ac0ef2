"""The model tinytriage ships for ``predict``: EfficientNet-Lite0 with ImageNet's weights,
frozen, under a ``PriorClassifier`` learnt from generated photos alone.

    features  f = mean over cells of the frozen backbone(photo)                 (1280,)
    prior     log p_imagenet(group k | f)      ImageNet's own classifier, summed over each
                                               ticket class's group (training.prior)
    logits_k  = w_k . f + b_k + prior_k        w, b: logistic regression on generated photos,
                                               the prior a fixed offset (finetune.fit_linear_head)

Then, on generated photos the head did not learn from: the temperature and the review
threshold (``calibration.calibrate_logits``), and the out-of-distribution gate's
threshold (``training.ood``). ``models/make_triage_effnet.py`` generates the photos and
calls ``build_prior_model``; docs/MODEL_CARD.md records the run.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinytriage.data.datasets import cache_resized, scan_folder, stratified_split
from tinytriage.data.preprocess import Preprocess
from tinytriage.data.routes import route_of
from tinytriage.engines import load_engine
from tinytriage.errors import TrainingError
from tinytriage.models import get_arch
from tinytriage.models.file import ModelFile, read_model
from tinytriage.nn import GroupLogSoftmax
from tinytriage.training.calibration import calibrate_logits
from tinytriage.training.finetune import fit_linear_head, pooled_features
from tinytriage.training.ood import OOD_DIMS, fit_residual_gate
from tinytriage.training.prior import group_members


@dataclass
class PriorRecipe:
    """How the bundled model is made from a folder of generated photos (one per class)."""

    input_size: int = 224  # the backbone's input side; 160 and 192 measured worse on real photos (model card)
    weight_decay: float = 0.5  # L2 on the head (standardised features): keeps it a correction to the prior
    steps: int = 1000  # full-batch Adam steps (as many as L-BFGS needs to converge, measured)
    lr: float = 0.02
    label_smoothing: float = 0.05
    val_fraction: float = 0.2  # held out for the temperature, the review threshold and the ood gate
    target_precision: float = 0.99  # auto-routed generated validation photos must be this often right
    ood_dims: int = OOD_DIMS
    seed: int = 0  # the split


@dataclass
class PriorReport:
    """What ``build_prior_model`` measured, on the generated validation photos."""

    n_train: int
    n_val: int
    val_accuracy: float
    val_routed: float  # share auto-routed at the review threshold
    seconds: float


def prior_log_probs(features: np.ndarray, weight: np.ndarray, bias: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(N, C) pooled features -> (N, K) log p_pretrained(group k): the PriorClassifier's prior."""
    groups = GroupLogSoftmax(members.shape[1], members.shape[0], dtype=np.float64)
    groups.load_state_dict({"members": members.astype(np.float64)})
    return groups(np.asarray(features, np.float64) @ weight.T.astype(np.float64) + bias)  # (N, J) -> (N, K)


def build_prior_model(
    data_dir: str | Path, pretrained_path: str | Path, recipe: PriorRecipe | None = None, log=print
) -> tuple[ModelFile, PriorReport]:
    """The bundled model from DATA_DIR/<class>/ (the ticket classes) and the pretrained
    ImageNet model file: a ModelFile (not yet saved) and its validation numbers."""
    recipe = recipe or PriorRecipe()
    t0 = time.perf_counter()
    dataset = scan_folder(str(data_dir))
    classes = list(dataset.classes)
    train_set, val_set = stratified_split(dataset, val_fraction=recipe.val_fraction, seed=recipe.seed)
    pretrained = read_model(pretrained_path)
    spec = get_arch(pretrained.arch)
    if pretrained.config.get("prior_classes") or "classifier.weight" not in pretrained.tensors:
        raise TrainingError(f"{pretrained_path}: expected a plain pretrained classifier (ImageNet's)")
    S = recipe.input_size
    pcfg = Preprocess.from_dict({**pretrained.preprocess, "input_size": S})
    pretrained.config = spec.full_config({**pretrained.config, "input_size": S})
    engine = load_engine("numpy", pretrained)

    log(f"features of {len(train_set.samples)} training and {len(val_set.samples)} validation photos at {S} px")
    train_cache = cache_resized(train_set, pcfg, size=S, workers=2)
    val_cache = cache_resized(val_set, pcfg, size=S, workers=2)
    if train_cache.errors or val_cache.errors:
        raise TrainingError(f"unreadable photos: {(train_cache.errors + val_cache.errors)[:3]}")
    train_f = pooled_features(engine, train_cache.images, train_cache.labels, pcfg, 1, recipe.seed)
    val_f = pooled_features(engine, val_cache.images, val_cache.labels, pcfg, 1, recipe.seed)

    members = group_members(classes, pretrained.classes)
    W_in, b_in = pretrained.tensors["classifier.weight"], pretrained.tensors["classifier.bias"]
    prior_train = prior_log_probs(train_f.x, W_in, b_in, members)
    prior_val = prior_log_probs(val_f.x, W_in, b_in, members)
    log(f"fitting the head ({recipe.steps} steps, weight decay {recipe.weight_decay}) on the prior")
    head = fit_linear_head(
        train_f.x,
        train_f.y,
        len(classes),
        steps=recipe.steps,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        label_smoothing=recipe.label_smoothing,
        offset=prior_train,
    )
    val_logits = head.logits(val_f.x) + prior_val
    cal = calibrate_logits(val_logits, val_f.y, recipe.target_precision, photos="generated validation photos")
    gate = fit_residual_gate(train_f.x, val_f.x, recipe.ood_dims)
    probs = np.exp(val_logits / cal.temperature - val_logits.max(axis=1, keepdims=True) / cal.temperature)
    probs /= probs.sum(axis=1, keepdims=True)
    report = PriorReport(
        n_train=len(train_f.y),
        n_val=len(val_f.y),
        val_accuracy=float((val_logits.argmax(1) == val_f.y).mean()),
        val_routed=float(np.mean((probs.max(1) >= cal.threshold) & (np.array(classes)[probs.argmax(1)] != "other"))),
        seconds=time.perf_counter() - t0,
    )

    tensors = {k: v for k, v in pretrained.tensors.items() if not k.startswith("classifier.")}
    tensors |= {
        "classifier.fc.weight": head.weight.astype(np.float32),
        "classifier.fc.bias": head.bias.astype(np.float32),
        "classifier.pretrained.weight": W_in.astype(np.float32),
        "classifier.pretrained.bias": b_in.astype(np.float32),
        "classifier.groups.members": members,
    }
    about: dict[str, Any] = {"fitted_on": f"{report.n_train} generated photos", "threshold_on": cal.photos}
    model_file = ModelFile(
        arch=pretrained.arch,
        config=spec.full_config(
            {**pretrained.config, "num_classes": len(classes), "prior_classes": len(pretrained.classes)}
        ),
        classes=classes,
        routes={c: route_of(c, {}) for c in classes},
        preprocess=pcfg.to_dict(),
        tensors=tensors,
        threshold=cal.threshold,
        temperature=cal.temperature,
        ood=gate.to_ood(**about),
        training={
            "method": "PriorClassifier on frozen ImageNet features, its head fitted on generated photos",
            "pretrained": Path(pretrained_path).name,
            "pretrained_source": pretrained.training.get("source"),
            "data": str(data_dir),
            "recipe": asdict(recipe),
            "n_train": report.n_train,
            "n_val": report.n_val,
            "train_seconds": report.seconds,
        },
        metrics={
            "val_acc": report.val_accuracy,
            "val_routed": report.val_routed,
            "ece_before": cal.ece_before,
            "ece_after": cal.ece_after,
            "ood_threshold": gate.threshold,
            "val_photos": "generated (no real photo)",
        },
    )
    if not math.isfinite(cal.threshold):
        raise TrainingError("calibration failed: no finite review threshold")
    return model_file, report
