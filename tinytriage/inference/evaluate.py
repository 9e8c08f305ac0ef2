"""Evaluate a model on a labelled folder: accuracy, per-class precision/recall/F1, the
confusion matrix, calibration (ECE), and what routing would do (how many photos go to
human review, and how often an auto-routed photo lands in the right queue).

    precision_c = TP_c / (TP_c + FP_c)     recall_c = TP_c / (TP_c + FN_c)
    F1_c = 2 * precision_c * recall_c / (precision_c + recall_c)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinytriage.data.routes import HUMAN_REVIEW, OPEN_SET, route_of
from tinytriage.errors import DatasetError, listed
from tinytriage.inference.predict import PhotoFailure, Predictor
from tinytriage.training.calibration import expected_calibration_error


@dataclass
class EvalResult:
    classes: list[str]
    n: int
    accuracy: float
    per_class: dict[str, dict[str, float]]  # precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    ece: float
    review_rate: float  # share of photos sent to human review
    routed_accuracy: float  # among auto-routed photos, share whose queue is right
    open_set_review_rate: float | None  # share of 'other' photos that reach a human (None: no 'other' class)
    failures: list[tuple[str, str]] = field(default_factory=list)
    scan_summary: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_scores(cm: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        c: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(cm[i].sum()),
        }
        for i, c in enumerate(classes)
    }


def evaluate(
    data_dir: str, predictor: Predictor, batch_size: int = 64, progress: Callable[..., None] | None = None
) -> EvalResult:
    """Run the predictor over a class-per-folder dataset and score it. ``progress(n, total=)``
    hears of each photo done."""
    from tinytriage.data.datasets import scan_folder

    dataset = scan_folder(data_dir)
    classes = predictor.model_file.classes
    missing = [c for c in dataset.classes if c not in classes]
    if missing:
        raise DatasetError(
            f"{data_dir}: class folder(s) {', '.join(missing)} are not classes of this model ({listed(classes)})"
        )
    index = {c: i for i, c in enumerate(classes)}
    truth = {str(p): index[dataset.classes[y]] for p, y in dataset.samples}
    y_true, y_pred, probs, routes, failures = [], [], [], [], list(dataset.unreadable)
    advance = progress or (lambda n=1, total=None: None)
    advance(0, total=len(dataset.samples))
    for r in predictor.predict_paths([str(p) for p, _ in dataset.samples], batch_size=batch_size):
        advance()
        if isinstance(r, PhotoFailure):
            failures.append((r.path, r.reason))
            continue
        y_true.append(truth[r.path])
        y_pred.append(index[r.label])
        probs.append([r.probabilities[c] for c in classes])
        routes.append(r.route)
    if not y_true:
        raise DatasetError(f"{data_dir}: no photo could be predicted")
    yt, yp, pr = np.array(y_true), np.array(y_pred), np.array(probs)
    cm = confusion_matrix(yt, yp, len(classes))
    true_routes = [route_of(classes[t], predictor.routes) for t in yt]
    auto = [(r, t) for r, t in zip(routes, true_routes, strict=True) if r != HUMAN_REVIEW]
    others = [r for r, t in zip(routes, yt, strict=True) if classes[t] == OPEN_SET]
    return EvalResult(
        classes=classes,
        n=len(yt),
        accuracy=float((yt == yp).mean()),
        per_class=per_class_scores(cm, classes),
        confusion=cm.tolist(),
        ece=expected_calibration_error(pr, yt),
        review_rate=float(np.mean([r == HUMAN_REVIEW for r in routes])),
        routed_accuracy=float(np.mean([r == t for r, t in auto])) if auto else float("nan"),
        open_set_review_rate=float(np.mean([r == HUMAN_REVIEW for r in others])) if others else None,
        failures=[(str(p), str(why)) for p, why in failures],
        scan_summary=dataset.summary(),
    )
