"""The photo folders of a training run: scanned, split into training and validation
(``--val-fraction``, or ``--val-dir``), duplicates between the two reported. Nothing is
decoded here; both the training loop and fine-tuning start from this.

Before that, ``choose_for_photos`` looks at a few of the photos to pick what to train
when ``--arch`` is not given. Photos of a few dozen pixels (scans of digits, icons,
thumbnails) are not what ImageNet features were learnt on: EfficientNet-Lite0 sees them
blown up 28 times at 224 px. On scikit-learn's 8x8 digits (1,257 training photos, 540
held out) its fine-tuned head reached 0.804 (0.896 without augmentation), a logistic
regression on the 64 pixels 0.961, the CNN from scratch at 32 px without augmentation
0.996 in 12 s (0.989 with the flips and rotations made for photos of objects); on 30
photos per class, 0.950 against the logistic regression's 0.909 (docs/EXPERIMENTS.md).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tinytriage.data.datasets import IMG_EXTENSIONS, Dataset, find_duplicates, scan_folder, stratified_split
from tinytriage.data.preprocess import check_image, load_image
from tinytriage.data.routes import route_of
from tinytriage.errors import DatasetError, ImageError, TrainingError, listed
from tinytriage.training import events
from tinytriage.training.events import ProgressFn
from tinytriage.training.run import TrainConfig


@dataclass
class Folders:
    """The photo folders scanned and split into training and validation; nothing decoded yet."""

    train: Dataset
    val: Dataset
    classes: list[str]  # in label order
    summary: str  # DATA_DIR's scan, for a person
    duplicates: list[tuple[str, str]]  # (training photo, validation photo) pairs with the same bytes


def scan_folders(cfg: TrainConfig, emit: ProgressFn) -> Folders:
    """DATA_DIR scanned, then split (``--val-fraction``) or checked against ``--val-dir``."""
    dataset = scan_folder(cfg.data_dir)
    emit(events.Scan(summary=dataset.summary(), unreadable=dataset.unreadable))
    if cfg.val_dir is None:
        train_set, val_set = stratified_split(dataset, val_fraction=cfg.val_fraction, seed=cfg.seed)
    else:  # a separate validation folder: every photo of data_dir trains
        try:
            val_set = scan_folder(cfg.val_dir)
        except DatasetError as err:
            raise DatasetError(f"--val-dir: {err}") from None
        train_set = dataset
        emit(events.Scan(summary=val_set.summary(), unreadable=val_set.unreadable, name="validation"))
        if val_set.classes != dataset.classes:
            raise TrainingError(
                f"--val-dir {cfg.val_dir}: its classes ({', '.join(val_set.classes)}) are not the training "
                f"data's ({', '.join(dataset.classes)})"
            )
    duplicates = [(str(a), str(b)) for a, b in find_duplicates(train_set, val_set)]
    if duplicates:
        emit(events.Duplicates(pairs=duplicates))
    return Folders(
        train=train_set, val=val_set, classes=list(dataset.classes), summary=dataset.summary(), duplicates=duplicates
    )


def default_routes(classes: list[str], overrides: dict[str, str] | None = None) -> dict[str, str]:
    """class -> queue stored in a new model file: the ticket classes keep their queues, any
    other class goes to the queue of its own name; ``overrides`` (``train --routes``) on top."""
    routes = {c: route_of(c, {}) for c in classes}
    unknown = sorted(set(overrides or {}) - set(classes))
    if unknown:
        raise DatasetError(f"routes: unknown class(es) {listed(unknown)}; the folder's classes are {listed(classes)}")
    return routes | (overrides or {})


SMALL_PHOTOS = 64  # photos whose long side is at most this, in the middle of those looked at, are small
PEEK = 48  # photos looked at, spread over the classes
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


@dataclass(frozen=True)
class PhotoSizes:
    """What a look at a few of a folder's photos found."""

    n: int  # photos looked at (that opened)
    width: int  # median width, pixels
    height: int  # median height
    grayscale: bool  # every one of them grey: one channel, or three equal ones

    @property
    def small(self) -> bool:
        return max(self.width, self.height) <= SMALL_PHOTOS


def peek_photos(data_dir: str, n: int = PEEK) -> PhotoSizes | None:
    """Sizes and colour of up to ``n`` photos of ``data_dir``, taken in turn from each class
    folder: headers only, and the small photos decoded to see if they are grey. None when
    no photo opens (the scan that follows says why)."""
    root = Path(data_dir)
    try:
        folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return None
    per_class = [
        sorted(p for p in d.iterdir() if p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith("."))
        for d in folders
    ]
    picked = [files[i] for i in range(n) for files in per_class if i < len(files)][:n]
    sizes, grey = [], []
    for path in picked:
        try:
            info = check_image(path)
            if info.mode in _GRAY_MODES:
                grey.append(True)
            elif max(info.width, info.height) <= SMALL_PHOTOS:  # cheap to decode: are its channels equal?
                rgb = np.asarray(load_image(path), dtype=np.int16)
                grey.append(bool(np.abs(rgb - rgb[..., :1]).max() <= 2))
            else:
                grey.append(False)
            sizes.append((info.width, info.height))
        except (ImageError, OSError):
            continue
    if not sizes:
        return None
    return PhotoSizes(
        len(sizes), int(statistics.median(w for w, _ in sizes)), int(statistics.median(h for _, h in sizes)), all(grey)
    )


def choose_for_photos(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """``cfg`` with what ``--arch`` left open chosen from the photos, and a line saying so.

    Photos of ordinary size: EfficientNet-Lite0's ImageNet features under a new head (the
    default, which says what it does itself: None). Small photos (``SMALL_PHOTOS``): the
    CNN from scratch at 32 px (64 px for photos over 32 px), without augmentation unless
    asked for, as the module docstring's measurements chose. Only what was left open
    changes: an ``--arch``, ``--pretrained`` or ``--init`` of the user's keeps the default
    (a ``--resume`` chooses again, and the same)."""
    if cfg.arch is not None or cfg.pretrained != "auto" or cfg.init is not None:
        return cfg, None
    seen = peek_photos(cfg.data_dir)
    if seen is None or not seen.small:
        return cfg, None
    size = cfg.input_size or (32 if max(seen.width, seen.height) <= 32 else 64)
    augment = False if cfg.augment is None else cfg.augment
    grey = "grayscale " if seen.grayscale else ""
    line = (
        f"small {grey}photos (about {seen.width}x{seen.height} px, {seen.n} looked at): training the CNN from "
        f"scratch at {size} px, {'with' if augment else 'without'} augmentation; ImageNet features want photos of "
        "100 px and more, and flips and rotations are for photos of objects (--arch efficientnet_lite0 to "
        "fine-tune anyway, --augment to augment)"
    )
    return replace(cfg, arch="cnn", pretrained=None, input_size=size, augment=augment), line
