"""Hard-label distillation (Touvron et al. 2021, DeiT, section 4): a teacher's class for
every training photo, for the distillation token of a distilled ViT to learn.

    y_teacher = argmax_c teacher(photo)_c                      (a class index, not a softmax)
    loss      = 1/2 CE(head(class token), y) + 1/2 CE(head_dist(distillation token), y_teacher)

DeiT found the hard labels of a convnet teacher better than its softened probabilities,
and better than a transformer teacher: the convnet's inductive biases reach the student
through the labels it gives (the paper's Table 2 and section 5.1). The loss itself is
the engines' (train-mode logits (N, 2, K) against targets (N, 2), mean over the 2N rows).

DeiT asks the teacher about each augmented crop as it is drawn. Here the teacher labels
each training photo once, as its own preprocessing sees the photo (its input size, its
normalisation, any architecture the tool has), before the loop starts: the augmentations
of the loop (crops, flips, colour) keep a photo's class, and a teacher of another input
size could not read the student's batches anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytriage.data.datasets import Dataset, cache_resized
from tinytriage.data.preprocess import Preprocess, normalize
from tinytriage.engines import load_engine
from tinytriage.errors import TrainingError
from tinytriage.models import ARCHS
from tinytriage.models.file import read_model_or_bundled

CHUNK = 512  # photos decoded at a time: a teacher at 224 px holds 77 MB of uint8 per chunk


@dataclass(frozen=True)
class TeacherLabels:
    """The teacher's class for each training photo, in the student's class indices."""

    path: str  # the teacher's model file
    arch: str  # its architecture
    labels: np.ndarray  # (N,) int64, aligned with the training photos
    agreement: float  # share of training photos where the teacher's class is the true one


def teacher_labels(
    teacher: str | None, paths: list[Path], y_true: np.ndarray, classes: list[str], *, workers: int = 2
) -> TeacherLabels:
    """Run the teacher (a model file, or an architecture name for its bundled model; None:
    the bundled default) over ``paths`` and map its classes onto ``classes`` by name. Every
    student class must be one of the teacher's: a teacher that cannot name a class cannot teach it."""
    if teacher in ARCHS and not Path(teacher).exists():
        mf, path = read_model_or_bundled(None, arch=teacher)
    else:
        mf, path = read_model_or_bundled(teacher)
    missing = [c for c in classes if c not in mf.classes]
    if missing:
        raise TrainingError(
            f"--teacher {path}: it knows the classes {', '.join(mf.classes)}, not {', '.join(missing)}; "
            "a teacher must have been trained on the same classes"
        )
    engine = load_engine("numpy", mf)
    pcfg = Preprocess.from_dict(mf.preprocess)
    # the teacher's class index -> the student's (a teacher class the student lacks: -1, and
    # the teacher's choice is made among the student's classes only)
    to_student = np.array([classes.index(c) if c in classes else -1 for c in mf.classes])
    known = to_student >= 0
    labels = np.empty(len(paths), dtype=np.int64)
    for start in range(0, len(paths), CHUNK):
        chunk = paths[start : start + CHUNK]
        data = Dataset(root=Path("."), classes=list(mf.classes), samples=[(p, 0) for p in chunk])
        cache = cache_resized(data, pcfg, size=pcfg.input_size, workers=workers)
        if cache.errors:  # the student's decode read these photos a moment ago
            bad, why = cache.errors[0]
            raise TrainingError(f"--teacher: could not read {bad} at the teacher's input size: {why}")
        x = normalize(cache.images, pcfg)  # (n, 3, S, S) at the teacher's own size
        logits = np.concatenate([engine.logits(x[i : i + 64]) for i in range(0, len(x), 64)])  # (n, K_teacher)
        logits = np.where(known, logits, -np.inf)
        labels[start : start + len(chunk)] = to_student[logits.argmax(axis=1)]
    agreement = float((labels == y_true).mean()) if len(labels) else float("nan")
    return TeacherLabels(path=str(path), arch=mf.arch, labels=labels, agreement=agreement)
