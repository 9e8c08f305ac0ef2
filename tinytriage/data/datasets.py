"""Folder datasets: scan, split, find duplicates, decode once, batch.

The folder layout is torchvision's ``ImageFolder``: one subfolder per class, the class
index is the position of its name in sorted order, and files are matched by extension
(case-insensitive). The scan opens every file's header, so a broken photo is reported
up front ("3,412 images in 5 classes (...), 3 unreadable") instead of crashing training mid-epoch.

Training decodes each photo once (``cache_resized``) into a small uint8 letterboxed
square a little larger than the model input; every epoch then augments those small
arrays, which is cheap, instead of decoding JPEGs again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tinytriage.data.augment import Augment, augment_batch
from tinytriage.data.preprocess import (
    DEFAULT_MAX_PIXELS,
    LetterboxGeometry,
    Preprocess,
    check_image,
    display_name,
    load_fitted,
    map_threads,
    normalize,
)
from tinytriage.errors import DatasetError, ImageError

#: torchvision's IMG_EXTENSIONS plus .gif, compared lower-case.
IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
#: The cache keeps photos this much larger than the model input, so a random crop of
#: 0.6-1.0 of the area is resampled from real pixels rather than upscaled much.
CACHE_MARGIN = 1.15
#: Folders that are never classes: macOS zip archives carry their resource forks here.
_NOT_CLASSES = frozenset({"__MACOSX"})


@dataclass
class Dataset:
    """Photos and their class indices, as found in a folder (or a split of one)."""

    root: Path  # the dataset folder
    classes: list[str]  # class names, sorted; index = label
    samples: list[tuple[Path, int]]  # (photo path, class index), readable photos only
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason) skipped by the scan

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> np.ndarray:
        """Class index of every sample, int64 (N,)."""
        return np.array([c for _, c in self.samples], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        """Number of samples per class name."""
        n = Counter(c for _, c in self.samples)
        return {name: n[i] for i, name in enumerate(self.classes)}

    def summary(self) -> str:
        """One line for a person: '412 images in 3 classes (a 200, b 112, c 100), 3 unreadable'."""
        per_class = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        return (
            f"{len(self.samples):,} images in {len(self.classes)} classes ({per_class}), "
            f"{len(self.unreadable):,} unreadable"
        )

    def subset(self, indices: Sequence[int]) -> Dataset:
        """The samples at ``indices``, same classes (unreadable is left empty)."""
        return Dataset(self.root, list(self.classes), [self.samples[i] for i in indices])


# ---------------------------------------------------------------------------------------
# Scanning


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _list_images(class_dir: Path, unreadable: list[tuple[Path, str]]) -> list[Path]:
    """Image files under class_dir, recursively, sorted.

    Directory symlinks are followed (datasets are often assembled with links) but each
    real folder is visited once, keyed by (device, inode), so a link loop cannot hang."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [class_dir]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            entries = list(os.scandir(folder))
        except OSError as err:
            unreadable.append((folder, f"cannot list folder ({err.strerror or err})"))
            continue
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(path)
            elif path.suffix.lower() in IMG_EXTENSIONS:
                found.append(path)
    return sorted(found)


def _check_one(path: Path, max_pixels: int) -> str | None:
    """None if the header looks fine, else the reason (without the file name)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "broken symbolic link" if path.is_symlink() else "file not found"
    except OSError as err:
        return f"cannot read ({err.strerror or err})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        check_image(path, max_pixels=max_pixels)
    except ImageError as err:
        return _reason(path, err)
    return None


def _reason(path: Path, err: ImageError) -> str:
    """An ImageError's message without the leading 'name: '."""
    text, prefix = str(err), display_name(path) + ": "
    return text[len(prefix) :] if text.startswith(prefix) else text


def bundled_samples() -> Path | None:
    """The sample photos that ship with tinytriage (``samples/<class>/*.jpg``): the
    repository's in a source checkout or an editable install, the copy pyproject's
    ``data-files`` put under ``<prefix>/share/tinytriage/samples`` in a regular install.
    None where neither is."""
    import sys

    for candidate in (
        Path(__file__).resolve().parents[2] / "samples",
        Path(sys.prefix) / "share" / "tinytriage" / "samples",
    ):
        if candidate.is_dir():
            return candidate
    return None


def scan_folder(
    root: str | os.PathLike[str], *, check: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 1
) -> Dataset:
    """Find the classes and photos of a folder dataset (torchvision ImageFolder layout).

    With ``check`` (default) every file's header is opened (no full decode) and files
    that fail go to ``unreadable`` with the reason instead of into ``samples``. Hidden
    files and folders are skipped. Raises ``DatasetError`` for a missing root, no class
    folders, no images, an empty class, or a single class."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give the folder that holds one subfolder per class")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as err:
        raise DatasetError(f"{root}: cannot list folder ({err.strerror or err})") from None
    classes = [e.name for e in entries if not _is_hidden(e.name) and e.name not in _NOT_CLASSES and e.is_dir()]
    if not classes:
        raise DatasetError(
            f"{root}: no class folders; expected one subfolder per class, e.g. {root / 'parcel' / 'photo1.jpg'}"
        )

    unreadable: list[tuple[Path, str]] = []
    files = {name: _list_images(root / name, unreadable) for name in classes}
    if not any(files.values()):
        raise DatasetError(
            f"{root}: no images found in {len(classes)} class folders (looked for {', '.join(IMG_EXTENSIONS)})"
        )
    empty = [name for name in classes if not files[name]]
    if empty:
        names = ", ".join(repr(n) for n in empty)
        raise DatasetError(f"{root}: class folder(s) with no images: {names}; add photos or remove the folder")
    if len(classes) < 2:
        raise DatasetError(f"{root}: needs at least 2 classes, found 1 ({classes[0]!r})")

    samples = [(path, ci) for ci, name in enumerate(classes) for path in files[name]]
    if check:
        reasons = map_threads(lambda s: _check_one(s[0], max_pixels), samples, workers)
        bad = [(path, ci, r) for (path, ci), r in zip(samples, reasons, strict=True) if r is not None]
        unreadable += [(path, r) for path, _, r in bad]
        samples = [s for s, r in zip(samples, reasons, strict=True) if r is None]
        left = Counter(ci for _, ci in samples)
        for ci, name in enumerate(classes):
            if left[ci] == 0:
                path, _, why = next(b for b in bad if b[1] == ci)
                raise DatasetError(
                    f"{root}: class {name!r} has no readable images ({len(files[name])} unreadable, "
                    f"e.g. {display_name(path)}: {why})"
                )
    return Dataset(root, classes, samples, unreadable)


# ---------------------------------------------------------------------------------------
# Splitting and duplicates


def stratified_split(dataset: Dataset, val_fraction: float = 0.15, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split into (train, val) with ``val_fraction`` of each class in val.

    Deterministic by seed. Every class with at least 2 photos gets at least one in each
    part; a class with one photo keeps it in train. Each class is shuffled with its own
    generator seeded by (seed, class index), so adding a class leaves the other classes'
    splits unchanged."""
    if not 0 < val_fraction < 1:
        raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (_, ci) in enumerate(dataset.samples):
        by_class[ci].append(i)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for ci, idx in sorted(by_class.items()):
        n = len(idx)
        k = min(n - 1, max(1, round(n * val_fraction))) if n >= 2 else 0
        order = np.random.default_rng([seed, ci]).permutation(n)
        val_idx += [idx[j] for j in order[:k]]
        train_idx += [idx[j] for j in order[k:]]
    return dataset.subset(sorted(train_idx)), dataset.subset(sorted(val_idx))


def _digest(path: Path) -> bytes | None:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.digest()


def find_duplicates(train: Dataset, val: Dataset) -> list[tuple[Path, Path]]:
    """(train_path, val_path) pairs whose file bytes are identical.

    A photo in both parts makes validation accuracy look better than it is. Only files
    whose size occurs in both parts are hashed (BLAKE2b), so this is cheap."""

    def sizes(ds: Dataset) -> dict[Path, int]:
        out = {}
        for p, _ in ds.samples:
            try:
                out[p] = p.stat().st_size
            except OSError:
                pass
        return out

    train_sizes, val_sizes = sizes(train), sizes(val)
    common = set(train_sizes.values()) & set(val_sizes.values())
    val_by_hash: dict[bytes, list[Path]] = defaultdict(list)
    for p, n in val_sizes.items():
        if n in common and (d := _digest(p)) is not None:
            val_by_hash[d].append(p)
    pairs = []
    for p, n in train_sizes.items():
        if n in common and (d := _digest(p)) is not None:
            pairs += [(p, q) for q in val_by_hash.get(d, [])]
    return sorted(pairs)


# ---------------------------------------------------------------------------------------
# Decoding once, then batches


def cache_size(cfg: Preprocess) -> int:
    """Side of the cached squares used for augmentation: input_size * CACHE_MARGIN."""
    return math.ceil(cfg.input_size * CACHE_MARGIN)


@dataclass
class ResizedCache:
    """Every photo of a dataset decoded once, letterboxed into a small uint8 square."""

    images: np.ndarray  # (N, size, size, 3) uint8
    labels: np.ndarray  # (N,) int64
    paths: list[Path]  # (N,) where each image came from
    classes: list[str]
    errors: list[tuple[Path, str]]  # photos that failed to decode: (path, reason)
    geometries: list[LetterboxGeometry] = field(default_factory=list)  # (N,) where each photo sits in its square

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        """Side of the cached squares, pixels."""
        return int(self.images.shape[1])

    def arrays(
        self,
        cfg: Preprocess,
        *,
        augment: Augment | None = None,
        rng: np.random.Generator | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        workers: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs for the images at ``indices`` (default all): (X float32
        (n, 3, S, S), y int64 (n,)). With ``augment``, a fresh random augmentation
        from ``rng``; without, the plain letterboxed photo resized to S."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        S = cfg.input_size
        if augment is not None:
            rng = np.random.default_rng() if rng is None else rng
            u8 = augment_batch(self.images[idx], S, augment, rng, fill=cfg.fill, workers=workers)
        elif self.size == S:
            u8 = self.images[idx]
        else:  # a letterboxed square resized to S is the letterbox at S
            resize = Image.Resampling.BILINEAR
            u8 = np.stack([np.asarray(Image.fromarray(self.images[i]).resize((S, S), resize)) for i in idx])
        if len(idx) == 0:
            return np.zeros((0, 3, S, S), dtype=np.float32), np.zeros(0, dtype=np.int64)
        return normalize(u8, cfg), self.labels[idx]

    def batches(
        self,
        cfg: Preprocess,
        batch_size: int,
        *,
        augment: Augment | None = None,
        rng: np.random.Generator | None = None,
        shuffle: bool = False,
        workers: int = 1,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of (X, y) mini-batches; order shuffled by ``rng`` if ``shuffle``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng() if rng is None else rng
        order = rng.permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            yield self.arrays(cfg, augment=augment, rng=rng, indices=order[start : start + batch_size], workers=workers)


def cache_resized(dataset: Dataset, cfg: Preprocess, size: int | None = None, *, workers: int = 1) -> ResizedCache:
    """Decode every photo once into a ``size`` x ``size`` uint8 letterboxed square
    (default ``cache_size(cfg)``, a little larger than the input, for augmentation;
    pass ``cfg.input_size`` for a validation set). Photos that fail are listed in
    ``errors`` and left out. ``workers`` > 1 decodes on a thread pool."""
    size = cache_size(cfg) if size is None else size

    def one(sample: tuple[Path, int]) -> np.ndarray | str:
        try:
            image, geom = load_fitted(sample[0], cfg, size=size)
            return np.asarray(image), geom
        except ImageError as err:
            return _reason(sample[0], err)

    results = map_threads(one, dataset.samples, workers)
    keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
    errors = [(dataset.samples[i][0], r) for i, r in enumerate(results) if isinstance(r, str)]
    images = np.stack([results[i][0] for i in keep]) if keep else np.zeros((0, size, size, 3), np.uint8)
    labels = np.array([dataset.samples[i][1] for i in keep], dtype=np.int64)
    paths = [dataset.samples[i][0] for i in keep]
    return ResizedCache(images, labels, paths, list(dataset.classes), errors, [results[i][1] for i in keep])


def load_arrays(
    dataset: Dataset | ResizedCache,
    cfg: Preprocess,
    *,
    augment: Augment | None = None,
    rng: np.random.Generator | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray, list[tuple[Path, str]]]:
    """The whole dataset as (X float32 (N, 3, S, S), y int64 (N,), errors).

    Photos that fail to decode are left out and listed in errors as (path, reason).
    Without ``augment`` each photo is decoded straight to the input size, exactly as
    ``preprocess`` does. With it, photos are decoded into a cache first (or pass a
    ``ResizedCache`` to reuse one across epochs)."""
    if isinstance(dataset, ResizedCache):
        X, y = dataset.arrays(cfg, augment=augment, rng=rng, workers=workers)
        return X, y, list(dataset.errors)
    size = cfg.input_size if augment is None else None
    cache = cache_resized(dataset, cfg, size, workers=workers)
    X, y = cache.arrays(cfg, augment=augment, rng=rng, workers=workers)
    return X, y, cache.errors


def read_damage_box(photo: Path) -> tuple[int, int, int, int] | str:
    """The ``damage_bbox`` of a photo's ``NAME.json`` sidecar, or why there is none."""
    side = photo.with_suffix(".json")
    if not side.is_file():
        return "no damage box (no sidecar .json)"
    try:
        box = json.loads(side.read_text()).get("damage_bbox")
    except (OSError, ValueError, AttributeError) as err:
        return f"unreadable sidecar {side.name} ({err})"
    if box is None:
        return "sidecar has no damage box"
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError):
        return f"malformed damage_bbox in {side.name}: {box!r}"
    if x1 <= x0 or y1 <= y0:
        return f"empty damage_bbox in {side.name}: {box!r}"
    return (x0, y0, x1, y1)
