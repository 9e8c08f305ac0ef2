"""Synthetic ticket photos: tinytriage makes its own training data.

No data can be downloaded, so every photo is drawn from scratch. One photo
(``render_photo``) is made in four steps:

1. ``camera.sample_shot``: size, aspect, EXIF, JPEG quality, pose, surface, light,
   blur, noise, occluder. It never sees the class, so none of these is a cue.
2. A subject for the class (``devices``, ``parcels``, ``documents``, ``other``) is
   drawn at a modest internal size and placed on the surface by ``scenes.compose``;
   for ``screen_damage`` the damage mask rides along through every warp.
3. ``camera``: light, auto exposure and white balance, blur, sensor noise, resize.
4. ``camera.encode_jpeg``: JPEG with an EXIF orientation tag on some photos (the
   pixels stored rotated so that a viewer applying the tag shows the photo upright).

Each photo's random stream derives from (seed, class, index) alone, so a dataset is
byte-identical for a seed whatever the number of workers.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tinytriage.data.routes import DEFAULT_ROUTES
from tinytriage.data.synth import camera, devices, documents, other, parcels, scenes
from tinytriage.data.synth.damage import Damage
from tinytriage.errors import DatasetError

__all__ = ["CLASSES", "GenerateReport", "encode_photo", "generate_dataset", "photo_rng", "render_photo"]

#: The classes the generator makes, in routing order.
CLASSES: tuple[str, ...] = tuple(DEFAULT_ROUTES)

#: Default photo size range: long side in pixels (about 480x360 up to 1600x1200).
SIZE_RANGE = (480, 1600)


@dataclass(frozen=True)
class Subject:
    """One kind of thing a class's photo can show."""

    name: str
    draw: Callable[..., Any]  # object: (rng, px, damage) -> Model; full frame: (rng, w, h) -> Image
    weight: float
    full_frame: bool = False


_DEVICES = [Subject("phone", devices.phone, 0.6), Subject("laptop", devices.laptop, 0.4)]

#: class -> what its photos show. Both device classes share the same phones and laptops,
#: face up; an intact phone may also be shown from the back (a damaged screen never is).
SUBJECTS: dict[str, list[Subject]] = {
    "screen_damage": _DEVICES,
    "intact_device": [*_DEVICES[:1], Subject("phone_back", devices.phone_back, 0.15), *_DEVICES[1:]],
    "parcel": [Subject("box", parcels.box, 0.6), Subject("mailer", parcels.mailer, 0.4)],
    "document": [
        Subject("paperwork", documents.paperwork, 0.8),
        Subject("screenshot", documents.screenshot, 0.2, full_frame=True),
    ],
    "other": [
        Subject("selfie", other.selfie, 0.15, full_frame=True),
        Subject("landscape", other.landscape, 0.15, full_frame=True),
        Subject("pet", other.pet, 0.14),
        Subject("mug", other.mug, 0.11),
        Subject("plate", other.plate, 0.13),
        Subject("plant", other.plant, 0.11),
        Subject("fruit", other.fruit, 0.1),
        Subject("shoe", other.shoe, 0.11),
    ],
}


def photo_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The random stream of photo ``index`` of ``class_name``: a function of these three only."""
    return np.random.default_rng([seed, zlib.crc32(class_name.encode()), index])


def render_photo(
    class_name: str,
    rng: np.random.Generator,
    *,
    size_range: tuple[int, int] = SIZE_RANGE,
    damage: bool = True,
) -> tuple[Image.Image, dict[str, Any]]:
    """Render one upright photo of ``class_name``; returns (RGB image, meta).

    meta holds the nuisance draws (``size``, ``exif``, ``quality``, ``blur``...), the
    ``subject`` and, for screen_damage, ``damage_bbox`` = [x0, y0, x1, y1] in the
    returned image's pixels. ``damage=False`` renders the very same photo with the
    screen left intact (the bbox still says where the damage would be): for checks.
    """
    if class_name not in SUBJECTS:
        raise DatasetError(f"unknown class {class_name!r}; choose from {', '.join(CLASSES)}")
    for _ in range(16):  # re-draw the rare screen_damage photo whose damage ends up hidden
        image, meta = _render_once(class_name, rng, size_range, damage)
        if class_name != "screen_damage" or meta["damage_bbox"] is not None:
            return image, meta
    raise AssertionError("no visible damage in 16 tries")  # pragma: no cover


def _render_once(
    class_name: str, rng: np.random.Generator, size_range: tuple[int, int], show_damage: bool
) -> tuple[Image.Image, dict[str, Any]]:
    # separate streams, so that the damage (or its absence) leaves everything else unchanged
    shot_rng, scene_rng, damage_rng, noise_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, size=4))
    shot = camera.sample_shot(shot_rng, size_range)
    size = camera.render_size(shot.size)
    subjects = SUBJECTS[class_name]
    weights = np.array([s.weight for s in subjects])
    subject = subjects[int(scene_rng.choice(len(subjects), p=weights / weights.sum()))]
    mask = None
    if subject.full_frame:
        canvas = scenes.full_frame(subject.draw(scene_rng, *size), shot, scene_rng, size)
    else:
        px = shot.pose.fill * max(size)  # about the object's long side in the frame, in pixels
        # cracks at least 0.4% of the frame wide: still about half a pixel at 128 px
        dmg = Damage(damage_rng, 0.004 * max(size), show_damage) if class_name == "screen_damage" else None
        canvas, mask = scenes.compose(subject.draw(scene_rng, px, dmg), shot, scene_rng, size)

    image = camera.expose(canvas, shot, unmetered=mask)
    image = camera.blur(image, shot, shot.size)
    image = camera.add_noise(image, shot, noise_rng)
    if image.size != shot.size:
        image = image.resize(shot.size, Image.BILINEAR)

    meta: dict[str, Any] = {
        "class": class_name,
        "subject": subject.name,
        "size": list(shot.size),
        "exif": shot.exif,
        "quality": shot.quality,
        "blur": shot.blur,
        "surface": shot.surface,
    }
    if class_name == "screen_damage":
        meta["damage_bbox"] = _bbox(mask, size, shot.size)
    return image, meta


def _bbox(mask: Image.Image | None, canvas: tuple[int, int], out: tuple[int, int]) -> list[int] | None:
    """Bounding box of the visible damage, scaled from the canvas to the output photo."""
    if mask is None:
        return None
    m = np.asarray(mask) > 8  # any coverage: thin strokes come out of the warp faint
    if m.sum() < max(12, 0.0004 * m.size):  # hidden (occluded, out of frame): not a damage photo
        return None
    ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    sx, sy = out[0] / canvas[0], out[1] / canvas[1]
    return [
        max(0, int(np.floor(xs[0] * sx))),
        max(0, int(np.floor(ys[0] * sy))),
        min(out[0], int(np.ceil((xs[-1] + 1) * sx))),
        min(out[1], int(np.ceil((ys[-1] + 1) * sy))),
    ]


def encode_photo(image: Image.Image, meta: dict[str, Any]) -> bytes:
    """JPEG bytes for a rendered photo, with its EXIF orientation (pixels stored rotated)."""
    return camera.encode_jpeg(image, meta["quality"], meta["exif"])


@dataclass(frozen=True)
class GenerateReport:
    """What ``generate_dataset`` wrote."""

    out_dir: Path
    classes: tuple[str, ...]
    per_class: int
    seed: int
    n_photos: int
    n_bytes: int  # JPEG and sidecar bytes written
    seconds: float

    @property
    def photos_per_s(self) -> float:
        return self.n_photos / max(self.seconds, 1e-9)


def is_twin(index: int, twins: float) -> bool:
    """Whether intact_device photo ``index`` is a twin, when a share ``twins`` of them are.

    Spread evenly: with ``twins`` = 0.5 the odd-numbered photos are, with 1.0 all of them.
    """
    return int((index + 1) * twins + 1e-9) > int(index * twins + 1e-9)


def _write_photo(job: tuple[Path, int, str, int, tuple[int, int], float]) -> int:
    """Render and write one photo (and its sidecar); returns bytes written. Runs in workers."""
    out_dir, seed, class_name, index, size_range, twins = job
    if class_name == "intact_device" and is_twin(index, twins):
        # the very photo screen_damage `index` with its screen left intact: a pair that
        # differs only in the damage, so the damage is all that can tell the classes apart
        image, meta = render_photo(
            "screen_damage", photo_rng(seed, "screen_damage", index), size_range=size_range, damage=False
        )
        del meta["damage_bbox"]  # no damage drawn: no sidecar
    else:
        image, meta = render_photo(class_name, photo_rng(seed, class_name, index), size_range=size_range)
    stem = out_dir / class_name / f"{class_name}_{index:05d}"
    data = encode_photo(image, meta)
    stem.with_suffix(".jpg").write_bytes(data)
    n = len(data)
    if "damage_bbox" in meta:
        side = json.dumps({"damage_bbox": meta["damage_bbox"]}) + "\n"
        stem.with_suffix(".json").write_text(side)
        n += len(side)
    return n


def generate_dataset(
    out_dir: str | os.PathLike[str],
    per_class: int,
    seed: int,
    classes: list[str] | tuple[str, ...] | None = None,
    size_range: tuple[int, int] = SIZE_RANGE,
    workers: int = 1,
    twins: float = 0.0,
) -> GenerateReport:
    """Write ``out_dir/<class>/<class>_00000.jpg`` (+ ``.json`` damage boxes) for each class.

    ``size_range`` bounds the photo's long side in pixels. Same seed, same bytes, for
    any ``workers``: photo i of class c depends only on (seed, c, i) and, for
    intact_device, on ``twins``: that share of the intact photos (spread evenly, see
    ``is_twin``) are twins, photo i being screen_damage photo i with its screen intact.
    """
    classes = tuple(CLASSES if classes is None else classes)
    unknown = [c for c in classes if c not in SUBJECTS]
    if unknown:
        raise DatasetError(f"unknown class {unknown[0]!r}; choose from {', '.join(CLASSES)}")
    if not classes:
        raise DatasetError("no classes to generate")
    if not 0.0 <= twins <= 1.0:
        raise DatasetError(f"--twins must be between 0 and 1, got {twins}")
    if per_class < 1:
        raise DatasetError(f"--per-class must be at least 1, got {per_class}")
    if seed < 0:
        raise DatasetError(f"--seed must be 0 or more, got {seed}")
    lo, hi = size_range
    if not 16 <= lo <= hi:
        raise DatasetError(f"size range must satisfy 16 <= min <= max, got {lo}..{hi}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder; choose another output folder")
    for c in classes:
        (out / c).mkdir(parents=True, exist_ok=True)

    jobs = [(out, seed, c, i, (lo, hi), twins) for c in classes for i in range(per_class)]
    start = time.perf_counter()
    if workers <= 1:
        sizes = [_write_photo(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            sizes = list(pool.map(_write_photo, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    seconds = time.perf_counter() - start
    return GenerateReport(out, classes, per_class, seed, len(jobs), sum(sizes), seconds)
