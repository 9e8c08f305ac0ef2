"""Folder datasets, splits, duplicates, the decode-once cache and augmentation."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytriage.data.augment import Augment, augment_batch, augment_image
from tinytriage.data.datasets import (
    Dataset,
    cache_resized,
    cache_size,
    find_duplicates,
    load_arrays,
    scan_folder,
    stratified_split,
)
from tinytriage.data.preprocess import Preprocess, preprocess
from tinytriage.errors import DatasetError

CFG = Preprocess(input_size=24)


def photo(seed: int, w: int = 40, h: int = 30) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 200, 3)
    a = base + np.stack([x * 2, y * 3, (x + y)], -1) + rng.integers(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_dataset(root: Path, counts: dict[str, int], ext: str = ".jpg") -> Path:
    seed = 0
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed += 1
            photo(seed).save(root / name / f"img{i:03d}{ext}", "PNG" if ext.lower() == ".png" else "JPEG")
    return root


# ---------------------------------------------------------------------------------------
# Scanning


def test_scan_follows_imagefolder_conventions(tmp_path):
    root = make_dataset(tmp_path / "ds", {"parcel": 3, "document": 2})
    photo(99).save(root / "parcel" / "UPPER.JPG", "JPEG")
    photo(98).save(root / "parcel" / "mixed.PnG", "PNG")
    (root / "document" / "nested").mkdir()
    photo(97).save(root / "document" / "nested" / "deep.webp", "WEBP")
    photo(96).save(root / "document" / ".hidden.jpg", "JPEG")  # hidden: skipped
    (root / ".cache").mkdir()  # hidden folder: not a class
    (root / "__MACOSX").mkdir()  # zip artefact: not a class
    (root / "document" / "notes.txt").write_text("not an image")  # other extension: ignored
    (root / "README.md").write_text("files in the root are ignored")

    ds = scan_folder(root)
    assert ds.classes == ["document", "parcel"]  # sorted: index = position
    assert ds.counts() == {"document": 3, "parcel": 5}
    assert all(ci == ds.classes.index(p.relative_to(root).parts[0]) for p, ci in ds.samples)
    assert ds.targets.dtype == np.int64 and len(ds) == 8
    assert ds.summary() == "8 images in 2 classes (document 3, parcel 5), 0 unreadable"


def test_scan_reports_unreadable_files_instead_of_crashing(tmp_path):
    root = make_dataset(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "a" / "text.jpg").write_text("hello")
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "b" / "broken.jpg").symlink_to(root / "b" / "nowhere.jpg")
    ds = scan_folder(root)
    reasons = {p.name: r for p, r in ds.unreadable}
    assert reasons == {
        "text.jpg": "not an image (unrecognised format)",
        "empty.png": "empty file (0 bytes)",
        "broken.jpg": "broken symbolic link",
    }
    assert len(ds) == 6 and ds.summary().endswith("3 unreadable")
    assert len(scan_folder(root, check=False)) == 9  # without the check they are kept


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlink_loop_does_not_hang(tmp_path):
    root = make_dataset(tmp_path / "ds", {"a": 2, "b": 2})
    (root / "a" / "loop").symlink_to(root / "a")  # a/loop/loop/loop/... forever
    (root / "b" / "up").symlink_to(root)  # up to the dataset root, which contains b again
    outside = make_dataset(tmp_path / "elsewhere", {"c": 1}) / "c"
    (root / "linked").symlink_to(outside, target_is_directory=True)  # a class folder that is a link
    t = time.perf_counter()
    ds = scan_folder(root)
    assert time.perf_counter() - t < 5
    assert ds.classes == ["a", "b", "linked"]
    assert ds.counts()["a"] == 2 and ds.counts()["linked"] == 1


def test_dataset_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        scan_folder(tmp_path / "file.txt")

    flat = tmp_path / "flat"
    flat.mkdir()
    photo(1).save(flat / "x.jpg")
    with pytest.raises(DatasetError, match="no class folders"):
        scan_folder(flat)

    no_images = tmp_path / "no_images"
    (no_images / "a").mkdir(parents=True)
    (no_images / "b").mkdir()
    (no_images / "b" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images found"):
        scan_folder(no_images)

    empty_class = make_dataset(tmp_path / "empty_class", {"a": 2, "b": 2})
    (empty_class / "screen_damage").mkdir()
    with pytest.raises(DatasetError, match="'screen_damage'"):
        scan_folder(empty_class)

    single = make_dataset(tmp_path / "single", {"a": 3})
    with pytest.raises(DatasetError, match="needs at least 2 classes"):
        scan_folder(single)

    unreadable_class = make_dataset(tmp_path / "unreadable_class", {"a": 2})
    (unreadable_class / "b").mkdir()
    (unreadable_class / "b" / "x.jpg").write_text("x")
    with pytest.raises(DatasetError, match="class 'b' has no readable images"):
        scan_folder(unreadable_class)


# ---------------------------------------------------------------------------------------
# Split and duplicates


def fake_dataset(counts: list[int]) -> Dataset:
    samples = [(Path(f"c{ci}/{i}.jpg"), ci) for ci, n in enumerate(counts) for i in range(n)]
    return Dataset(Path("."), [f"c{ci}" for ci in range(len(counts))], samples)


def test_stratified_split_is_deterministic_and_stratified():
    ds = fake_dataset([100, 40, 7, 2, 1])
    train, val = stratified_split(ds, 0.15, seed=3)
    again_train, again_val = stratified_split(ds, 0.15, seed=3)
    assert train.samples == again_train.samples and val.samples == again_val.samples
    assert stratified_split(ds, 0.15, seed=4)[1].samples != val.samples
    assert sorted(train.samples + val.samples) == sorted(ds.samples)  # a partition
    assert not set(train.samples) & set(val.samples)
    assert list(val.counts().values()) == [15, 6, 1, 1, 0]  # each class ~15%, at least 1 ...
    assert list(train.counts().values()) == [85, 34, 6, 1, 1]  # ... and at least 1 left in train


def test_split_of_one_class_is_unchanged_when_a_class_is_added():
    val_before = stratified_split(fake_dataset([50, 30]), seed=0)[1].samples
    val_after = stratified_split(fake_dataset([50, 30, 20]), seed=0)[1].samples
    assert [s for s in val_after if s[1] < 2] == val_before


def test_split_rejects_bad_fraction():
    with pytest.raises(DatasetError, match="val_fraction"):
        stratified_split(fake_dataset([5, 5]), val_fraction=1.0)


def test_find_duplicates_across_the_split(tmp_path):
    root = make_dataset(tmp_path / "ds", {"a": 4, "b": 4})
    shutil.copy(root / "a" / "img000.jpg", root / "b" / "copy_of_a0.jpg")
    ds = scan_folder(root)
    train = ds.subset([i for i, (p, _) in enumerate(ds.samples) if p.name != "copy_of_a0.jpg"])
    val = ds.subset([i for i, (p, _) in enumerate(ds.samples) if p.name == "copy_of_a0.jpg"])
    assert find_duplicates(train, val) == [(root / "a" / "img000.jpg", root / "b" / "copy_of_a0.jpg")]
    # Same size, different bytes: not a duplicate.
    same_size = root / "b" / "copy_of_a0.jpg"
    data = bytearray(same_size.read_bytes())
    data[-3] ^= 0xFF
    same_size.write_bytes(bytes(data))
    assert find_duplicates(train, val) == []


# ---------------------------------------------------------------------------------------
# Loading, cache, augmentation


def test_load_arrays_matches_preprocess_and_reports_bad_photos(tmp_path):
    root = make_dataset(tmp_path / "ds", {"a": 3, "b": 2})
    cut = root / "b" / "cut.jpg"
    photo(5, 300, 200).save(cut, "JPEG")
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # the header is fine, the scan cannot tell
    ds = scan_folder(root)
    assert len(ds) == 6
    X, y, errors = load_arrays(ds, CFG, workers=2)
    assert X.shape == (5, 3, 24, 24) and X.dtype == np.float32 and y.dtype == np.int64
    assert errors == [(cut, "truncated file (the photo is incomplete)")]
    assert y.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(X[0], preprocess(ds.samples[0][0], CFG)[0])


def test_cache_and_augmented_epochs(tmp_path):
    ds = scan_folder(make_dataset(tmp_path / "ds", {"a": 5, "b": 4}))
    cache = cache_resized(ds, CFG)
    assert cache.images.shape == (9, cache_size(CFG), cache_size(CFG), 3) == (9, 28, 28, 3)
    assert cache.images.dtype == np.uint8 and cache.labels.tolist() == [0] * 5 + [1] * 4
    aug = Augment()
    X1, y1 = cache.arrays(CFG, augment=aug, rng=np.random.default_rng(7))
    X2, y2 = cache.arrays(CFG, augment=aug, rng=np.random.default_rng(7), workers=2)
    X3, _ = cache.arrays(CFG, augment=aug, rng=np.random.default_rng(8))
    assert X1.shape == (9, 3, 24, 24) and X1.dtype == np.float32 and X1.flags.c_contiguous
    np.testing.assert_array_equal(X1, X2)  # same seed, same epoch, whatever the threads
    assert not np.array_equal(X1, X3)
    assert np.array_equal(y1, y2)

    seen = []
    for Xb, yb in cache.batches(CFG, 4, augment=aug, rng=np.random.default_rng(0), shuffle=True):
        assert Xb.shape[1:] == (3, 24, 24) and len(Xb) == len(yb) <= 4
        seen += yb.tolist()
    assert sorted(seen) == sorted(cache.labels.tolist())

    # A cache at the input size gives exactly the plain preprocessing.
    val_cache = cache_resized(ds, CFG, size=CFG.input_size)
    X_val, _, _ = load_arrays(val_cache, CFG)
    np.testing.assert_array_equal(X_val, load_arrays(ds, CFG)[0])


def test_augment_identity_and_flip_are_exact():
    img = np.asarray(photo(1, 32, 32))
    still = dict(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=0, brightness=0, contrast=0, saturation=0, blur=0)
    rng = np.random.default_rng(0)
    assert np.array_equal(augment_image(img, 32, Augment(hflip=0, **still), rng), img)
    assert np.array_equal(augment_image(img, 32, Augment(hflip=1, **still), rng), img[:, ::-1])


def test_augment_output_and_determinism():
    imgs = np.stack([np.asarray(photo(i, 28, 28)) for i in range(6)])
    a = augment_batch(imgs, 24, Augment(blur=1.0), np.random.default_rng(1), fill=CFG.fill)
    b = augment_batch(imgs, 24, Augment(blur=1.0), np.random.default_rng(1), fill=CFG.fill)
    assert a.shape == (6, 24, 24, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert augment_batch(imgs[:0], 24, Augment(), np.random.default_rng(1)).shape == (0, 24, 24, 3)
    for bad in (dict(crop_scale=(0.0, 1.0)), dict(hflip=2.0), dict(brightness=1.5), dict(rotation=-1)):
        with pytest.raises(ValueError):
            Augment(**bad)


def test_colour_jitter_brightness_only_scales_pixels():
    img = np.full((8, 8, 3), 100, np.uint8)
    still = dict(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=0, hflip=0, contrast=0, saturation=0, blur=0)
    out = augment_image(img, 8, Augment(brightness=0.5, **still), np.random.default_rng(3))
    assert len(np.unique(out)) == 1 and 50 <= out[0, 0, 0] <= 150


def test_unlistable_subfolder_is_reported(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", {"a": 2, "b": 2})
    locked = root / "a" / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path):  # as if `locked` had no read permission (tests may run as root)
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr("tinytriage.data.datasets.os.scandir", scandir)
    ds = scan_folder(root)
    assert ds.unreadable == [(locked, "cannot list folder (Permission denied)")] and len(ds) == 4
