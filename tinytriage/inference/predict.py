"""Predict: photos in, routing decisions out.

For each photo: the class, its calibrated confidence, the top-3 probabilities and the
queue. A photo goes to ``human_review`` when the model is unsure (confidence below the
threshold stored in the model, chosen on validation data) or when it is none of the
ticket classes (the ``other`` class, whose route is human review). A model file may ask
for a second, closer look at the devices it is unsure about (``tinytriage.inference.second_look``).

Photos stream through: paths are expanded lazily (files, folders, globs, stdin) and
results come back in input order. Many photos on Linux go a batch at a time to forked
worker processes ("lanes", one per core), each decoding and predicting its batch on a
single thread; otherwise a thread pool decodes a few batches ahead of the network
(Pillow releases the GIL while it decodes, so decoding overlaps with inference). A photo
that fails gives a ``PhotoFailure`` and the rest carry on.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinytriage.data.routes import HUMAN_REVIEW, OPEN_SET, route_of
from tinytriage.errors import ConfigError, ImageError, TinyTriageError
from tinytriage.inference import lanes
from tinytriage.inference.inputs import IMAGE_EXTENSIONS, PhotoFailure, expand_inputs, load_routes  # noqa: F401 (re-exported)
from tinytriage.inference.second_look import SecondLook, cam_region, class_activation_maps, combine, gate, head_weight
from tinytriage.models.file import ModelFile, read_model_or_bundled
from tinytriage.training.calibration import softmax
from tinytriage.training.ood import REASON as OOD_REASON
from tinytriage.training.ood import ResidualGate


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
    # "low confidence", "not a ticket photo", "routed to review", "unlike the training photos", or None
    review_reason: str | None
    backend: str
    model: str
    second_look: bool = False  # probabilities are the mean of the whole photo's and a closer look's

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
            "second_look": self.second_look,
        }


@dataclass
class Predictor:
    """A loaded model on an engine, ready to route photos."""

    model_file: ModelFile
    model_path: Path
    engine: Any
    backend: str
    threshold: float
    routes: dict[str, str] = field(default_factory=dict)
    second_look: SecondLook | None = None  # from the model file, unless switched off
    model_name: str = ""  # the model as the user gave it (a file or a run folder); the bundled file's name
    ood: ResidualGate | None = None  # the model file's out-of-distribution gate (training.ood), if it has one

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
        second_look: bool = True,
    ) -> Predictor:
        """``model``: a model file, or None for the bundled model of ``arch`` (default efficientnet_lite0).
        The file records its architecture; ``arch`` only checks it. ``second_look=False``
        ignores the file's second-look setting (first look only)."""
        from tinytriage.engines import load_engine

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
            raise ConfigError(f"must be between 0 and 1, got {t}", option="--threshold")
        look = SecondLook.from_dict(mf.second_look) if second_look and mf.second_look else None
        gate = ResidualGate.from_ood(mf.ood)
        return cls(mf, path, engine, backend, t, merged, look, str(model) if model else path.name, gate)

    @property
    def preprocess_config(self):
        from tinytriage.data.preprocess import Preprocess

        return Preprocess.from_dict(self.model_file.preprocess)

    def decide_probs(self, path: str, probs: np.ndarray, second_look: bool = False, unlike: bool = False) -> Prediction:
        """Calibrated probabilities of one photo (K,) -> class, route, review flag. ``unlike``:
        the photo's features lie beyond the model's out-of-distribution gate (``training.ood``):
        a person looks at it, whatever the confidence."""
        classes = self.model_file.classes
        order = np.argsort(-probs)
        label, confidence = classes[order[0]], float(probs[order[0]])
        route = route_of(label, self.routes)
        reason = None
        if route == HUMAN_REVIEW:  # the open set, or a class a team routes to a person
            reason = "not a ticket photo" if label == OPEN_SET else "routed to review"
        elif unlike:
            reason, route = OOD_REASON, HUMAN_REVIEW
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
            model=self.model_name or self.model_path.name,
            second_look=second_look,
        )

    def predict_paths(
        self, paths: Iterable[str | PhotoFailure], batch_size: int = 32, workers: int | None = None
    ) -> Iterator[Prediction | PhotoFailure]:
        """Results in input order.

        More than one batch of photos, on Linux with the NumPy engine: the batches are
        shared out over ``workers`` forked processes (*lanes*; default one per core, as
        ``nn.parallel.default_num_threads``), each decoding and predicting its own batch on one thread.
        Otherwise (or ``workers=1``) in this process: ``workers`` threads decode ahead of
        the network."""
        if workers is None:
            from tinytriage.nn.fast.parallel import default_num_threads

            workers = default_num_threads()
        items = iter(paths)
        head = list(itertools.islice(items, batch_size + 1))
        rest = itertools.chain(head, items)
        if workers > 1 and len(head) > batch_size and self._lanes_possible():
            yield from lanes.run_in_lanes(self, rest, batch_size, workers)
            return
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            yield from self._pipeline(rest, batch_size, pool)

    def _lanes_possible(self) -> bool:
        """Forking is cheap and safe here: Linux (macOS's system libraries do not survive a
        fork), NumPy (torch keeps thread pools and devices that a fork does not copy)."""
        return sys.platform.startswith("linux") and self.backend == "numpy"

    def _pipeline(
        self, paths: Iterable[str | PhotoFailure], batch_size: int, pool: Any
    ) -> Iterator[Prediction | PhotoFailure]:
        """Decode on ``pool`` (a thread pool, or ``_Inline``) about two batches ahead of the
        network; first looks a batch at a time; second looks gathered (``_ready``)."""
        from tinytriage.data.preprocess import preprocess_with_geometry

        cfg = self.preprocess_config

        def load(p: str):
            try:
                return preprocess_with_geometry(p, cfg)  # (x (1, 3, S, S), where the photo sits in x)
            except ImageError as err:
                return PhotoFailure(p, str(err))
            except MemoryError:
                return PhotoFailure(p, f"{p}: out of memory while decoding")

        pending: list[tuple[str, Any]] = []
        queue: deque[Prediction | PhotoFailure | _Waiting] = deque()  # results, in input order
        for item in paths:
            if isinstance(item, PhotoFailure):
                pending.append((item.path, item))
            else:
                pending.append((item, pool.submit(load, item)))
            if len(pending) >= batch_size * 2:  # keep about two batches decoding ahead
                queue.extend(self._run(pending[:batch_size], pool))
                pending = pending[batch_size:]
                yield from self._ready(queue, batch_size)
        while pending:
            queue.extend(self._run(pending[:batch_size], pool))
            pending = pending[batch_size:]
        yield from self._ready(queue, batch_size, final=True)

    def _run(self, chunk: list[tuple[str, Any]], pool: Any) -> list[Prediction | PhotoFailure | _Waiting]:
        """The first look at a batch; a photo the gate picks waits for its close-up, which
        starts decoding on ``pool`` at once."""
        loaded = [(p, f if isinstance(f, PhotoFailure) else f.result()) for p, f in chunk]
        good = [i for i, (_, x) in enumerate(loaded) if not isinstance(x, PhotoFailure)]
        out: list[Prediction | PhotoFailure | _Waiting] = [x for _, x in loaded]  # failures stay as they are
        if not good:
            return out
        x = np.concatenate([loaded[i][1][0] for i in good])  # (B, 3, S, S)
        unlike = np.zeros(len(x), bool)
        if self.second_look is None and self.ood is None:
            first, regions = softmax(self.engine.logits(x), self.model_file.temperature), {}
        else:
            logits, features = self.engine.logits_and_features(x)  # features (B, C, h, w)
            first = softmax(logits, self.model_file.temperature)
            if self.ood is not None:
                unlike = self.ood.unlike(features.mean(axis=(2, 3)))  # on the pooled features (B, C)
            if self.second_look is not None:
                regions = self._regions(first, features, [loaded[i][1][1] for i in good])
            else:
                regions = {}
        for j, i in enumerate(good):
            path = loaded[i][0]
            if j in regions:
                out[i] = _Waiting(path, first[j], pool.submit(self._close_up, path, regions[j]), bool(unlike[j]))
            else:
                out[i] = self.decide_probs(path, first[j], unlike=bool(unlike[j]))
        return out

    def _ready(self, queue: deque, batch_size: int, final: bool = False) -> Iterator[Prediction | PhotoFailure]:
        """Yield the results at the front of ``queue`` that are decided. Second looks run
        together, once half a batch of them waits (small batches cost the network up to
        twice as much per photo), or when the queue gets long, or at the end."""
        waiting = [r for r in queue if isinstance(r, _Waiting) and r.result is None]
        if waiting and (final or len(waiting) >= max(1, batch_size // 2) or len(queue) >= 8 * batch_size):
            arrays = [w.close_up.result() for w in waiting]
            shown = [(w, a) for w, a in zip(waiting, arrays, strict=True) if a is not None]
            second = softmax(self._close_up_logits([a for _, a in shown]), self.model_file.temperature) if shown else []
            for (w, _), p2 in zip(shown, second, strict=True):
                w.result = self.decide_probs(w.path, combine(w.first, p2), second_look=True, unlike=w.unlike)
            for w, a in zip(waiting, arrays, strict=True):
                if a is None:  # read once already; if it fails now, the first look decides
                    w.result = self.decide_probs(w.path, w.first, unlike=w.unlike)
        while queue and not (isinstance(queue[0], _Waiting) and queue[0].result is None):
            r = queue.popleft()
            yield r.result if isinstance(r, _Waiting) else r

    # -- the second look's pieces (tinytriage.inference.second_look explains the method) -----------

    def _regions(self, first: np.ndarray, features: np.ndarray, geoms: list) -> dict[int, tuple]:
        """{row: region in the photo} for the rows of ``first`` that the gate picks and
        whose class activation map points somewhere. first: (B, K) calibrated;
        features: (B, C, h, w), the first look's last conv map."""
        look, mf, S = self.second_look, self.model_file, self.preprocess_config.input_size
        idx = [mf.classes.index(c) for c in look.classes]
        rows = np.nonzero(gate(first, idx, look.below))[0]
        if not len(rows):
            return {}
        cams = class_activation_maps(features[rows], head_weight(mf), idx)  # (G, h, w)
        return {
            int(r): region
            for r, cam in zip(rows, cams, strict=True)
            if (region := cam_region(cam, geoms[r], S, look.cam_frac, look.margin)) is not None
        }

    def _close_up(self, path: str, region: tuple) -> np.ndarray | None:
        """The region, decoded at the resolution it needs: uint8 (S, S, 3); None if the
        photo no longer decodes."""
        from tinytriage.data.preprocess import load_fitted

        try:
            return np.asarray(load_fitted(path, self.preprocess_config, region=region)[0])
        except (ImageError, MemoryError):
            return None

    def _close_up_logits(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Logits (G, K) of close-ups, uint8 (S, S, 3) each."""
        from tinytriage.data.preprocess import normalize

        return self.engine.logits(normalize(np.stack(arrays), self.preprocess_config))

    def look_again(
        self, paths: list[str], first: np.ndarray, features: np.ndarray, geoms: list, pool: ThreadPoolExecutor
    ) -> dict[int, np.ndarray]:
        """All of a batch's second looks at once, as logits {row: (K,)} (for
        ``tuning.calibrate_folder``, which needs them at every temperature)."""
        regions = self._regions(first, features, geoms)
        arrays = dict(
            zip(regions, pool.map(lambda r: self._close_up(paths[r], regions[r]), list(regions)), strict=True)
        )
        arrays = {r: a for r, a in arrays.items() if a is not None}
        if not arrays:
            return {}
        return dict(zip(arrays, self._close_up_logits(list(arrays.values())), strict=True))


@dataclass(eq=False)
class _Waiting:
    """A photo whose close-up is decoding: its first look, and the result once decided."""

    path: str
    first: np.ndarray  # (K,) calibrated probabilities of the first look
    close_up: Future  # -> uint8 (S, S, 3), or None if the photo no longer decodes
    unlike: bool = False  # beyond the out-of-distribution gate (first look)
    result: Prediction | None = None
