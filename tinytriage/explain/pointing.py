"""The pointing game (Zhang et al., 2016, "Top-down Neural Attention by Excitation
Backprop"): does a heatmap's peak fall inside the annotated damage box?

``evaluate --explain`` runs it on a generated folder, whose ``screen_damage`` photos come
with a ``NAME.json`` sidecar holding the box the generator drew. The heatmap is what
``explain`` shows for the architecture: Grad-CAM for a conv net, attention rollout for a
transformer (``photo.heat_maps``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinytriage.data.datasets import read_damage_box
from tinytriage.errors import DatasetError, ImageError, TinyTriageError, listed
from tinytriage.explain.gradcam import localize
from tinytriage.explain.photo import heat_maps
from tinytriage.models import get_arch

POINTING_CLASS = "screen_damage"


@dataclass
class PointingPhoto:
    path: str
    box: tuple[int, int, int, int]  # damage box (x0, y0, x1, y1), photo pixels, x1/y1 exclusive
    peak: tuple[int, int] | None  # the heatmap's peak, photo pixels; None if the map is all zero
    hit: bool  # x0 <= x < x1 and y0 <= y < y1
    center_hit: bool  # would the photo's centre pixel have hit?
    predicted: str  # the model's class for the photo


@dataclass
class PointingResult:
    """The pointing game (Zhang et al., 2016, "Top-down Neural Attention by Excitation
    Backprop"): a hit when the heatmap's maximum falls inside the annotated box.

    We use **no tolerance**: the peak pixel itself must lie in the box (Zhang et al. allow
    15 pixels at a 224-pixel input; our inputs are 64-112 pixels and the boxes are tight
    pixel boxes, so any margin would be a guess). Two baselines keep the rate honest: the
    photo's centre pixel, and ``box_fraction``, the mean share of the photo the boxes
    cover (what a uniformly random point would score)."""

    data_dir: str
    class_name: str  # the heatmaps are for this class (screen_damage)
    method: str  # grad-cam or attention rollout
    tolerance_px: int  # always 0, see above
    hits: int
    total: int
    rate: float  # hits / total (NaN when total is 0)
    center_hits: int
    center_rate: float
    box_fraction: float  # mean box area / photo area
    photos: list[PointingPhoto]
    skipped: list[tuple[str, str]]  # (path, why): no sidecar, no box, unreadable

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["photos"] = [p.__dict__ for p in self.photos]
        return d


def _in_box(point: tuple[int, int] | None, box: tuple[int, int, int, int]) -> bool:
    """Pixel (x, y) lies in the box [x0, x1) x [y0, y1)."""
    x0, y0, x1, y1 = box
    return point is not None and x0 <= point[0] < x1 and y0 <= point[1] < y1


def pointing_game(data_dir: str | os.PathLike, predictor, *, batch_size: int = 32) -> PointingResult:
    """For every ``screen_damage`` photo of ``data_dir`` with a ``NAME.json`` damage box
    (EXIF-upright photo pixels): does the heatmap's peak for screen_damage fall in the box?"""
    from tinytriage.data.preprocess import preprocess_with_geometry
    from tinytriage.inference.inputs import expand_inputs

    mf = predictor.model_file
    if POINTING_CLASS not in mf.classes:
        raise TinyTriageError(f"pointing game: the model has no {POINTING_CLASS} class ({listed(mf.classes)})")
    folder = Path(data_dir) / POINTING_CLASS
    if not folder.is_dir():
        raise DatasetError(f"{data_dir}: no {POINTING_CLASS} folder, so no damage boxes to point at")
    cfg = predictor.preprocess_config
    target = mf.classes.index(POINTING_CLASS)
    jobs, skipped = [], []
    for p in expand_inputs([str(folder)]):
        if not isinstance(p, str):
            skipped.append((p.path, p.reason))
            continue
        box = read_damage_box(Path(p))
        if isinstance(box, str):
            skipped.append((p, box))
        else:
            jobs.append((p, box))

    photos: list[PointingPhoto] = []
    fractions = []
    for start in range(0, len(jobs), batch_size):
        loaded = []
        for p, box in jobs[start : start + batch_size]:
            try:
                x, geom = preprocess_with_geometry(p, cfg)
            except ImageError as err:
                skipped.append((p, str(err)))
                continue
            loaded.append((p, box, x, geom))
        if not loaded:
            continue
        hm = heat_maps(predictor, np.concatenate([x for _, _, x, _ in loaded]), target)
        for (p, box, x, geom), cam, z in zip(loaded, hm["cams"], hm["logits"], strict=True):
            peak = localize(cam, geom, x.shape[-1]).peak
            centre = (geom.orig_w // 2, geom.orig_h // 2)
            label = mf.classes[int(np.argmax(z))]
            photos.append(PointingPhoto(p, box, peak, _in_box(peak, box), _in_box(centre, box), label))
            x0, y0, x1, y1 = box
            area = (min(x1, geom.orig_w) - max(x0, 0)) * (min(y1, geom.orig_h) - max(y0, 0))
            fractions.append(max(area, 0) / (geom.orig_w * geom.orig_h))
    n = len(photos)
    hits, centre_hits = sum(p.hit for p in photos), sum(p.center_hit for p in photos)
    nan = float("nan")
    return PointingResult(
        str(data_dir), POINTING_CLASS, get_arch(mf.arch).heatmap, 0,
        hits, n, hits / n if n else nan, centre_hits, centre_hits / n if n else nan,
        float(np.mean(fractions)) if fractions else nan, photos, skipped,
    )  # fmt: skip
