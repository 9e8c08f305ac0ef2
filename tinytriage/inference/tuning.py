"""Fitting and inspecting the second look (``second_look.py``) on a labelled folder.

``calibrate_folder`` fits a CNN model file's temperature, its second look's ``below`` and
its review threshold, each on the one before (``tinytriage calibrate``);
``write_close_ups`` writes the regions a second look would see, to train on
(``tinytriage close-ups``). Both run the first look a batch at a time (``_first_looks``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tinytriage.inference.predict import Predictor
from tinytriage.inference.second_look import (
    DEVICE_CLASSES,
    cam_region,
    class_activation_maps,
    combine,
    gate,
    head_weight,
    tune_below,
)
from tinytriage.models import get_arch
from tinytriage.models.file import DEFAULT_CAM_FRAC, DEFAULT_MARGIN, SecondLook
from tinytriage.training.calibration import ReviewThreshold

if TYPE_CHECKING:
    from tinytriage.data.preprocess import LetterboxGeometry


# -- calibrating a model file on a labelled folder -----------------------------------


@dataclass
class Calibration:
    """What ``calibrate_folder`` fitted, and how the validation photos scored."""

    model_file: Any  # the ModelFile, with temperature, threshold and second_look replaced
    n: int  # validation photos that decoded
    failures: list[tuple[str, str]]  # (path, why) for the photos that did not
    temperature: float
    threshold: float
    below: float
    rows: list[dict[str, float]]  # tune_below's table: below, accuracy, looked
    ece_before: float  # first look, T = 1
    ece_after: float  # first look at T, each photo at a temperature fitted without it (held out)
    accuracy_first: float  # first look only
    accuracy: float  # with the second look
    temperature_fitted: float = float("nan")  # what the fit gave (NaN: too few photos to fit)
    temperature_note: str | None = None  # why T = 1 was kept instead; None: the fit is used
    review: ReviewThreshold | None = None  # what the threshold reached on these photos

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "model_file"}
        return {**d, "review": None if self.review is None else self.review.to_json()}


def calibrate_folder(
    model: Any,
    data_dir: str,
    *,
    classes: tuple[str, ...] = DEVICE_CLASSES,
    target_precision: float = 0.99,
    batch_size: int = 64,
    workers: int = 2,
    progress: Callable[..., None] | None = None,
) -> Calibration:
    """Fit a CNN model file's temperature, second look and review threshold on labelled
    photos (one subfolder per class), in that order, each on the one before:

    1. temperature: on the first look's logits, checked on photos it was not fitted on
       (``calibration.fit_temperature_checked``: T = 1 where the fit does harm);
    2. ``below``: ``tune_below`` on first and second looks, at that temperature;
    3. threshold: ``calibration.review_threshold`` on the final probabilities.

    Use photos the model was not trained on. ``progress(n, total=)`` hears of each batch done."""
    from concurrent.futures import ThreadPoolExecutor

    from tinytriage.data.datasets import scan_folder
    from tinytriage.errors import DatasetError
    from tinytriage.training.calibration import fit_temperature_checked, review_threshold, softmax

    predictor, idx = _cnn_predictor(model, classes, "calibrate")
    mf = predictor.model_file
    dataset = scan_folder(data_dir)
    unknown = [c for c in dataset.classes if c not in mf.classes]
    if unknown:
        raise DatasetError(f"{data_dir}: class folder(s) {', '.join(unknown)} are not classes of this model")
    predictor.second_look = SecondLook(classes, below=1.01)  # look again at every device, for tuning
    labels, first_logits, second_logits = [], [], []
    failures = [(str(p), str(why)) for p, why in dataset.unreadable]
    samples = [(str(p), mf.classes.index(dataset.classes[y])) for p, y in dataset.samples]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for ok, logits, features, geoms in _first_looks(predictor, samples, failures, batch_size, workers, progress):
            # the gate at below > 1 depends only on the top class, so the temperature can wait
            closer = predictor.look_again([p for p, _ in ok], softmax(logits), features, geoms, pool)
            labels += [y for _, y in ok]
            first_logits.append(logits)
            second_logits.append(np.stack([closer.get(j, logits[j]) for j in range(len(ok))]))
    if not labels:
        raise DatasetError(f"{data_dir}: no photo could be read")
    y = np.array(labels)
    L1, L2 = np.concatenate(first_logits), np.concatenate(second_logits)  # (N, K) each

    fit = fit_temperature_checked(L1, y)
    temperature = fit.temperature
    first, second = softmax(L1, temperature), softmax(L2, temperature)
    below, rows = tune_below(first, second, y, idx)
    final = np.where(gate(first, idx, below)[:, None], combine(first, second), first)
    review = review_threshold(final, y, target_precision)
    threshold = review.threshold

    mf.temperature, mf.threshold = temperature, threshold
    mf.second_look = SecondLook(classes, below).to_dict()
    result = Calibration(
        model_file=mf,
        n=len(y),
        failures=failures,
        temperature=temperature,
        threshold=threshold,
        below=below,
        rows=rows,
        ece_before=fit.ece_before,
        ece_after=fit.ece_after,
        accuracy_first=float((first.argmax(1) == y).mean()),
        accuracy=float((final.argmax(1) == y).mean()),
        temperature_fitted=fit.fitted,
        temperature_note=fit.note,
        review=review,
    )
    mf.metrics = {**mf.metrics, "calibration": result.to_json() | {"failures": len(failures)}}
    return result


# -- close-ups to train on -------------------------------------------------------------


@dataclass
class CloseUps:
    """What ``write_close_ups`` wrote."""

    written: int  # close-up photos
    linked: int  # links to the original photos (with link_originals)
    skipped: list[tuple[str, str]]  # (path, why): unreadable, or a map pointing nowhere
    seconds: float


def write_close_ups(
    model: Any,
    data_dir: str,
    out_dir: str,
    *,
    classes: tuple[str, ...] = DEVICE_CLASSES,
    max_side: int = 320,
    link_originals: bool = False,
    batch_size: int = 64,
    workers: int = 2,
    progress: Callable[..., None] | None = None,
) -> CloseUps:
    """For each photo of ``classes`` in ``data_dir``, the region its second look would see
    (the model's CAM box, whatever the photo's confidence), saved as
    ``out_dir/<class>/closeup_<name>.jpg`` (long side at most ``max_side``, JPEG quality
    95), so that a model can be fine-tuned on close-ups as well as whole photos.
    ``link_originals`` also links every photo of ``data_dir`` into ``out_dir``, which then
    is a training folder by itself. A class folder is made only when a photo goes into it
    (an empty one would stop ``train``). ``progress(n, total=)`` hears of each batch done."""
    import io
    import os
    import time
    from pathlib import Path

    from tinytriage.data.datasets import scan_folder
    from tinytriage.data.preprocess import load_image, map_threads
    from tinytriage.files import atomic_write_bytes

    t0 = time.perf_counter()
    predictor, idx = _cnn_predictor(model, classes, "close-ups")
    mf, cfg = predictor.model_file, predictor.preprocess_config
    dataset = scan_folder(data_dir)
    out = Path(out_dir)
    skipped = [(str(p), str(why)) for p, why in dataset.unreadable]
    linked = 0
    if link_originals:
        for path, y in dataset.samples:
            link = out / dataset.classes[y] / Path(path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(Path(path).resolve(), link)
                linked += 1
    todo = [(str(p), dataset.classes[y]) for p, y in dataset.samples if dataset.classes[y] in classes]

    def close_up(job: tuple[str, str, tuple]) -> tuple[str, str] | None:
        path, name, region = job
        try:
            img = load_image(path, max_pixels=cfg.max_pixels).crop(tuple(int(round(v)) for v in region))
        except Exception as err:  # ImageError, MemoryError: skipped, the rest carry on
            return (path, str(err))
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95)
        atomic_write_bytes(out / name / f"closeup_{Path(path).stem}.jpg", buf.getvalue())  # makes out/name
        return None

    written = 0
    for ok, _, features, geoms in _first_looks(predictor, todo, skipped, batch_size, workers, progress):
        cams = class_activation_maps(features, head_weight(mf), idx)  # (B, h, w)
        jobs = []
        for (path, name), geom, cam in zip(ok, geoms, cams, strict=True):
            region = cam_region(cam, geom, cfg.input_size, DEFAULT_CAM_FRAC, DEFAULT_MARGIN)
            if region is None:
                skipped.append((path, "its class activation map is zero everywhere"))
            else:
                jobs.append((path, name, region))
        failed = [r for r in map_threads(close_up, jobs, workers) if r is not None]
        skipped += failed
        written += len(jobs) - len(failed)
    return CloseUps(written, linked, skipped, time.perf_counter() - t0)


# -- shared by calibrate_folder and write_close_ups --------------------------------------


def _cnn_predictor(model: Any, classes: tuple[str, ...], what: str) -> tuple[Predictor, list[int]]:
    """The model, first look only, and the indices of ``classes``; a CNN with those classes
    or a clear error (class activation maps need the CNN's head)."""
    from tinytriage.errors import TinyTriageError

    predictor = Predictor.load(model, second_look=False)
    mf = predictor.model_file
    if get_arch(mf.arch).features_module is None:
        raise TinyTriageError(f"{what}: the second look needs a CNN (class activation maps); this model is a {mf.arch}")
    missing = [c for c in classes if c not in mf.classes]
    if missing:
        raise TinyTriageError(f"{what}: the model has no class {', '.join(missing)}")
    return predictor, [mf.classes.index(c) for c in classes]


def _first_looks(
    predictor: Predictor,
    items: list[tuple[str, Any]],
    failures: list[tuple[str, str]],
    batch_size: int,
    workers: int,
    progress: Callable[..., None] | None = None,
) -> Iterator[tuple[list[tuple[str, Any]], np.ndarray, np.ndarray, list[LetterboxGeometry]]]:
    """First looks at ``items`` ((path, anything) pairs), a batch at a time: yields (the
    batch's items that decoded, logits (B, K), features (B, C, h, w), geometries). A photo
    that does not decode is appended to ``failures`` as (path, why); the rest carry on.
    ``progress(n, total=)`` hears of each batch once the caller is done with it."""
    from tinytriage.data.preprocess import map_threads, preprocess_with_geometry

    cfg = predictor.preprocess_config
    advance = progress or (lambda n=1, total=None: None)
    advance(0, total=len(items))

    def load(path: str):
        try:
            return preprocess_with_geometry(path, cfg)
        except Exception as err:  # ImageError, MemoryError: recorded, the rest carry on
            return err

    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        loaded = map_threads(load, [path for path, _ in chunk], workers)
        failures += [(item[0], str(r)) for item, r in zip(chunk, loaded, strict=True) if isinstance(r, BaseException)]
        ok = [(item, r) for item, r in zip(chunk, loaded, strict=True) if not isinstance(r, BaseException)]
        if ok:
            logits, features = predictor.engine.logits_and_features(np.concatenate([r[0] for _, r in ok]))
            yield [item for item, _ in ok], logits, features, [r[1] for _, r in ok]
        advance(len(chunk))
