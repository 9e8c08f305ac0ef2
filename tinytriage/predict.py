"""Predict: photos in, routing decisions out.

For each photo: the class, its calibrated confidence, the top-3 probabilities and the
queue. A photo goes to ``human_review`` when the model is unsure (confidence below the
threshold stored in the model, chosen on validation data) or when it is none of the
ticket classes (the ``other`` class, whose route is human review).

Photos stream through: paths are expanded lazily (files, folders, globs, stdin), decoded
by a thread pool a few batches ahead of the network (Pillow releases the GIL while it
decodes, so decoding overlaps with inference), and results come back in input order. A
photo that fails gives a ``PhotoFailure`` and the rest carry on.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from tinytriage.calibrate import softmax
from tinytriage.errors import ImageError, TinyTriageError
from tinytriage.model_io import ModelFile, read_model_or_bundled
from tinytriage.routing import HUMAN_REVIEW

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class Prediction:
    """One routing decision."""

    path: str
    label: str
    confidence: float  # calibrated probability of ``label``
    probabilities: dict[str, float]  # every class, calibrated
    top3: list[tuple[str, float]]
    route: str  # the queue the ticket goes to
    needs_review: bool
    review_reason: str | None  # "low confidence", "not a ticket photo", or None
    backend: str
    model: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "top3": [[k, round(v, 6)] for k, v in self.top3],
            "route": self.route,
            "needs_review": self.needs_review,
            "review_reason": self.review_reason,
            "backend": self.backend,
            "model": self.model,
        }


@dataclass
class PhotoFailure:
    """A photo that could not be predicted, and why."""

    path: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.reason}


@dataclass
class Predictor:
    """A loaded model on an engine, ready to route photos."""

    model_file: ModelFile
    model_path: Path
    engine: Any
    backend: str
    threshold: float
    routes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        *,
        backend: str = "numpy",
        device: str = "cpu",
        threshold: float | None = None,
        routes: dict[str, str] | None = None,
        arch: str | None = None,
    ) -> Predictor:
        """``model``: a model file, or None for the bundled model of ``arch`` (default cnn).
        The file records its architecture; ``arch`` only checks it."""
        from tinytriage.engine import load_engine

        mf, path = read_model_or_bundled(model, arch)
        engine = load_engine(backend, mf, device=device)
        merged = dict(mf.routes)
        if routes:
            unknown = sorted(set(routes) - set(mf.classes))
            if unknown:
                raise TinyTriageError(
                    f"routes: unknown class(es) {', '.join(unknown)}; the model's classes are {', '.join(mf.classes)}"
                )
            merged.update(routes)
        t = mf.threshold if threshold is None else threshold
        if not 0.0 <= t <= 1.0:
            raise TinyTriageError(f"--threshold must be between 0 and 1, got {t}")
        return cls(mf, path, engine, backend, t, merged)

    @property
    def preprocess_config(self):
        from tinytriage.preprocess import Preprocess

        return Preprocess.from_dict(self.model_file.preprocess)

    def decide(self, path: str, logits: np.ndarray) -> Prediction:
        """Logits of one photo -> calibrated probabilities -> class, route, review flag."""
        probs = softmax(logits[None], self.model_file.temperature)[0]
        classes = self.model_file.classes
        order = np.argsort(-probs)
        label, confidence = classes[order[0]], float(probs[order[0]])
        route = self.routes.get(label, HUMAN_REVIEW)
        reason = None
        if route == HUMAN_REVIEW:
            reason = "not a ticket photo"
        elif confidence < self.threshold:
            reason, route = "low confidence", HUMAN_REVIEW
        return Prediction(
            path=path,
            label=label,
            confidence=confidence,
            probabilities={c: float(p) for c, p in zip(classes, probs, strict=True)},
            top3=[(classes[i], float(probs[i])) for i in order[:3]],
            route=route,
            needs_review=reason is not None,
            review_reason=reason,
            backend=self.backend,
            model=self.model_path.name,
        )

    def predict_paths(
        self, paths: Iterable[str | PhotoFailure], batch_size: int = 32, workers: int = 2
    ) -> Iterator[Prediction | PhotoFailure]:
        """Results in input order; decoding runs ahead of inference in a thread pool."""
        from tinytriage.preprocess import preprocess

        cfg = self.preprocess_config

        def load(p: str):
            try:
                return preprocess(p, cfg)
            except ImageError as err:
                return PhotoFailure(p, str(err))
            except MemoryError:
                return PhotoFailure(p, f"{p}: out of memory while decoding")

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending: list[tuple[str, Any]] = []
            for item in paths:
                if isinstance(item, PhotoFailure):
                    pending.append((item.path, item))
                else:
                    pending.append((item, pool.submit(load, item)))
                if len(pending) >= batch_size * 2:  # keep about two batches decoding ahead
                    yield from self._run(pending[:batch_size])
                    pending = pending[batch_size:]
            while pending:
                yield from self._run(pending[:batch_size])
                pending = pending[batch_size:]

    def _run(self, chunk: list[tuple[str, Any]]) -> Iterator[Prediction | PhotoFailure]:
        loaded = [(p, f if isinstance(f, PhotoFailure) else f.result()) for p, f in chunk]
        good = [(i, x) for i, (_, x) in enumerate(loaded) if not isinstance(x, PhotoFailure)]
        logits = self.engine.logits(np.concatenate([x for _, x in good])) if good else None
        by_index = {i: logits[j] for j, (i, _) in enumerate(good)}
        for i, (p, x) in enumerate(loaded):
            yield x if isinstance(x, PhotoFailure) else self.decide(p, by_index[i])


# -- inputs: files, folders, globs, stdin ---------------------------------------------


def expand_inputs(
    args: list[str], *, recursive: bool = False, null: bool = False, stdin: TextIO | None = None
) -> Iterator[str | PhotoFailure]:
    """Each argument is a file, a folder (its images; ``recursive`` for subfolders), a glob,
    or ``-`` for paths read from stdin (one per line, or NUL-separated with ``null``)."""
    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin
            yield from _read_paths(stream, null)
            continue
        p = Path(arg)
        if p.is_dir():
            yield from _walk(p, recursive)
        elif p.exists() or p.is_symlink():
            yield arg
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=recursive))
            if not matches:
                yield PhotoFailure(arg, f"{arg}: no file matches this pattern")
            for m in matches:
                if Path(m).is_dir():
                    yield from _walk(Path(m), recursive)
                else:
                    yield m
        else:
            yield PhotoFailure(arg, f"{arg}: no such file")


def _read_paths(stream: TextIO, null: bool) -> Iterator[str]:
    if null:
        data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
        if isinstance(data, bytes):
            data = os.fsdecode(data)
        yield from (p for p in data.split("\0") if p)
        return
    for line in stream:
        line = line.rstrip("\r\n")
        if line:
            yield line


def _walk(root: Path, recursive: bool) -> Iterator[str]:
    """Images under a folder, sorted; never follows folder symlinks (no symlink loops)."""
    if not recursive:
        for p in sorted(root.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
                yield str(p)
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                yield os.path.join(dirpath, name)


def load_routes(path: str | os.PathLike) -> dict[str, str]:
    """A routes TOML file: ``[routes]`` table (or top-level keys) mapping class -> queue."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise TinyTriageError(f"{path}: routes file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise TinyTriageError(f"{path}: not valid TOML ({err})") from None
    table = data.get("routes", data)
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise TinyTriageError(f'{path}: expected a [routes] table of class = "queue" strings')
    return {str(k): v for k, v in table.items()}
