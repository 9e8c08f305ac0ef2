"""The photo generator: reproducible bytes, the dataset layout, honest damage boxes, and
no trivial cue (colour, size, file size...) that gives the class away."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image, ImageOps

from tinytriage.data.routes import DEFAULT_ROUTES
from tinytriage.data.synth import CLASSES, camera, encode_photo, generate_dataset, is_twin, photo_rng, render_photo
from tinytriage.errors import DatasetError

SMALL = (200, 400)  # long-side range that keeps these tests fast


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- reproducibility and layout ----------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    generate_dataset(out, per_class=3, seed=7, size_range=SMALL)
    return out


def test_same_seed_same_bytes_any_worker_count(small_set, tmp_path):
    again = tmp_path / "again"
    generate_dataset(again, per_class=3, seed=7, size_range=SMALL, workers=2)
    assert _files(again) == _files(small_set)


def test_different_seed_different_photos(small_set, tmp_path):
    other = tmp_path / "other"
    generate_dataset(other, per_class=3, seed=8, size_range=SMALL)
    a, b = _files(small_set), _files(other)
    assert a.keys() == b.keys()
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != b[k] for k in jpgs)


def test_photo_depends_only_on_seed_class_index():
    # photo 2 of a class is the same whether or not other photos/classes are made
    a, _ = render_photo("parcel", photo_rng(5, "parcel", 2), size_range=SMALL)
    b, _ = render_photo("parcel", photo_rng(5, "parcel", 2), size_range=SMALL)
    c, _ = render_photo("parcel", photo_rng(5, "parcel", 3), size_range=SMALL)
    assert a.tobytes() == b.tobytes() != c.tobytes()


def test_layout_class_folders_names_and_sidecars(small_set):
    assert CLASSES == tuple(DEFAULT_ROUTES)
    assert sorted(p.name for p in small_set.iterdir()) == sorted(CLASSES)
    for c in CLASSES:
        names = sorted(p.name for p in (small_set / c).iterdir())
        jpgs = [f"{c}_{i:05d}.jpg" for i in range(3)]
        sidecars = [f"{c}_{i:05d}.json" for i in range(3)] if c == "screen_damage" else []
        assert names == sorted(jpgs + sidecars)
        for name in jpgs:
            with Image.open(small_set / c / name) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                im.load()
    for side in (small_set / "screen_damage").glob("*.json"):
        assert set(json.loads(side.read_text())) == {"damage_bbox"}


def test_classes_subset_and_errors(tmp_path):
    report = generate_dataset(tmp_path / "two", 1, 0, classes=["parcel", "document"], size_range=SMALL)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["document", "parcel"]
    assert report.n_photos == 2 and report.n_bytes > 0
    with pytest.raises(DatasetError, match="unknown class"):
        generate_dataset(tmp_path / "x", 1, 0, classes=["cat"])
    with pytest.raises(DatasetError, match="per-class"):
        generate_dataset(tmp_path / "x", 0, 0)
    (tmp_path / "file").write_text("")
    with pytest.raises(DatasetError, match="not a folder"):
        generate_dataset(tmp_path / "file", 1, 0)


def test_twins_are_damaged_photos_with_the_screen_intact(small_set, tmp_path):
    assert [i for i in range(6) if is_twin(i, 0.5)] == [1, 3, 5]
    assert all(is_twin(i, 1.0) for i in range(6)) and not any(is_twin(i, 0.0) for i in range(6))
    twins = tmp_path / "twins"
    generate_dataset(twins, per_class=3, seed=7, size_range=SMALL, twins=0.5)
    a, b = _files(small_set), _files(twins)
    assert a.keys() == b.keys()  # no sidecar for a twin: it has no damage
    changed = sorted(k for k in a if a[k] != b[k])
    assert changed == ["intact_device/intact_device_00001.jpg"]  # only the odd intact photos
    with Image.open(twins / changed[0]) as im:
        twin = np.asarray(ImageOps.exif_transpose(im).convert("L"), dtype=np.float32)
    with Image.open(small_set / "screen_damage/screen_damage_00001.jpg") as im:
        damaged = np.asarray(ImageOps.exif_transpose(im).convert("L"), dtype=np.float32)
    assert twin.shape == damaged.shape
    x0, y0, x1, y1 = json.loads((small_set / "screen_damage/screen_damage_00001.json").read_text())["damage_bbox"]
    diff = np.abs(twin - damaged)
    inside = diff[y0:y1, x0:x1].mean()
    outside = (diff.sum() - diff[y0:y1, x0:x1].sum()) / (diff.size - diff[y0:y1, x0:x1].size)
    assert inside > 3 * outside  # they differ where the damage is, and hardly anywhere else
    with pytest.raises(DatasetError, match="twins"):
        generate_dataset(tmp_path / "x", 1, 0, twins=1.5)


def test_sizes_aspects_exif_and_quality_ranges():
    shots = [camera.sample_shot(np.random.default_rng(i)) for i in range(2000)]
    longs = np.array([max(s.size) for s in shots])
    aspects = np.array([max(s.size) / min(s.size) for s in shots])
    assert longs.min() >= 480 and longs.max() <= 1600 and longs.max() > 1400 and longs.min() < 520
    assert np.all((aspects > 0.99) & (aspects < 1.8))
    portrait = np.mean([s.size[1] > s.size[0] for s in shots])
    assert 0.3 < portrait < 0.6
    assert {s.exif for s in shots} == {None, 1, 3, 6, 8}
    assert all(60 <= s.quality <= 95 for s in shots)
    capped = [camera.sample_shot(np.random.default_rng(i), (480, 640)) for i in range(200)]
    assert all(480 <= max(s.size) <= 640 for s in capped)


def test_stored_photo_matches_meta_size_after_exif(small_set):
    for c in CLASSES:
        for i in range(3):
            _, meta = render_photo(c, photo_rng(7, c, i), size_range=SMALL)
            with Image.open(small_set / c / f"{c}_{i:05d}.jpg") as im:
                stored = im.size
                tag = im.getexif().get(0x0112)
                upright = ImageOps.exif_transpose(im).size
            assert tag == meta["exif"]
            assert list(upright) == meta["size"]
            if tag in (6, 8):
                assert stored == upright[::-1]


# --- the damage box ----------------------------------------------------------------------


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), np.int16)


def test_damage_bbox_covers_exactly_the_damage_as_a_viewer_shows_it():
    """Compare each damaged photo with the same photo rendered with the screen left intact.

    Both are encoded (JPEG, EXIF orientation) and decoded as a viewer would
    (exif_transpose), so the only difference left is the damage. Every changed pixel
    must lie in the sidecar's box, give or take a JPEG block and the blur; and the box
    must fit the clearly changed region (IoU), for rotated photos too.
    """
    ious, orientations = [], set()
    for i in range(16):
        img, meta = render_photo("screen_damage", photo_rng(11, "screen_damage", i), size_range=SMALL)
        clean, _ = render_photo("screen_damage", photo_rng(11, "screen_damage", i), size_range=SMALL, damage=False)
        orientations.add(meta["exif"])
        diff = np.abs(_decoded(encode_photo(img, meta)) - _decoded(encode_photo(clean, meta))).max(2)  # (H, W)
        H, W = diff.shape
        x0, y0, x1, y1 = meta["damage_bbox"]
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        m = 16 + int(0.03 * max(W, H))  # a 16x16 JPEG block, plus motion/focus blur
        inside = np.zeros_like(diff, bool)
        inside[max(0, y0 - m) : y1 + m, max(0, x0 - m) : x1 + m] = True
        assert not np.any((diff > 2) & ~inside), f"photo {i}: damage outside its box"
        ys, xs = np.nonzero(diff > 16)
        if len(xs) == 0:
            ious.append(0.0)
            continue
        a = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        ix = max(0, min(x1, a[2]) - max(x0, a[0])) * max(0, min(y1, a[3]) - max(y0, a[1]))
        ious.append(ix / ((x1 - x0) * (y1 - y0) + (a[2] - a[0]) * (a[3] - a[1]) - ix))
    assert {6, 8} <= orientations, orientations  # photos stored rotated were among them
    assert np.mean(np.array(ious) > 0.6) >= 0.85, np.round(ious, 2)


def test_damage_visible_at_network_resolution():
    """Shrunk to 128 px, a damaged photo still differs visibly from its intact twin."""
    for i in range(8):
        img, _ = render_photo("screen_damage", photo_rng(12, "screen_damage", i))
        clean, _ = render_photo("screen_damage", photo_rng(12, "screen_damage", i), damage=False)
        s = 128 / max(img.size)
        size = (round(img.width * s), round(img.height * s))
        a = np.asarray(img.resize(size, Image.BOX), np.int16)
        b = np.asarray(clean.resize(size, Image.BOX), np.int16)
        assert (np.abs(a - b).max(2) > 24).sum() >= 3, f"photo {i}: damage invisible at 128 px"


# --- no trivial cue ----------------------------------------------------------------------


def _cue_features(path: Path) -> list[float]:
    """What a lazy model could use instead of the content: colour, size, shape, file, EXIF."""
    with Image.open(path) as im:
        has_exif = float(bool(im.getexif()))
        quality_proxy = float(np.mean(im.quantization[0]))  # JPEG quality, from its quant table
        im = ImageOps.exif_transpose(im)
        w, h = im.size
        mean = np.asarray(im.reduce(8), np.float32).reshape(-1, 3).mean(0)
    return [*mean, w, h, w / h, path.stat().st_size, has_exif, quality_proxy]


def _nearest_centroid(Xtr, ytr, Xte) -> np.ndarray:
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-9
    Ztr, Zte = (Xtr - mu) / sd, (Xte - mu) / sd
    centroids = np.stack([Ztr[ytr == k].mean(0) for k in range(len(CLASSES))])
    return np.argmin(((Zte[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)


def _logistic(Xtr, ytr, Xte, steps: int = 400, lr: float = 0.5) -> np.ndarray:
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-9
    Ztr = np.c_[(Xtr - mu) / sd, np.ones(len(Xtr))]
    Zte = np.c_[(Xte - mu) / sd, np.ones(len(Xte))]
    W = np.zeros((Ztr.shape[1], len(CLASSES)))
    Y = np.eye(len(CLASSES))[ytr]
    for _ in range(steps):  # softmax regression, full-batch gradient descent
        P = np.exp(Ztr @ W - (Ztr @ W).max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        W -= lr * (Ztr.T @ (P - Y) / len(Ztr) + 1e-3 * W)
    return np.argmax(Zte @ W, axis=1)


def test_no_trivial_cue_separates_the_classes(tmp_path):
    """Mean colour, size, aspect, file size, EXIF and JPEG quality predict the class at chance."""
    n_train, n_test = 40, 20
    generate_dataset(tmp_path, n_train + n_test, seed=2024, workers=2)
    X, y = [], []
    for k, c in enumerate(CLASSES):
        for p in sorted((tmp_path / c).glob("*.jpg")):
            X.append(_cue_features(p))
            y.append(k)
    X, y = np.array(X), np.array(y)
    train = np.tile(np.arange(n_train + n_test) < n_train, len(CLASSES))
    for fit in (_nearest_centroid, _logistic):
        acc = np.mean(fit(X[train], y[train], X[~train]) == y[~train])
        assert acc < 0.5, f"{fit.__name__}: {acc:.2f} on held-out photos (chance is 0.2)"


# --- the command line --------------------------------------------------------------------


def test_samples_command_end_to_end(tmp_path):
    out = tmp_path / "samples"
    r = run_cli("samples", str(out), "--per-class", "2", "--seed", "3", "--max-size", "320", "--no-other")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "wrote 8 photos" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(c for c in CLASSES if c != "other")
    assert len(list((out / "screen_damage").glob("*.json"))) == 2
    with Image.open(out / "parcel" / "parcel_00001.jpg") as im:
        assert max(ImageOps.exif_transpose(im).size) <= 320
    r = run_cli("samples", str(tmp_path / "x"), "--per-class", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli("samples", str(tmp_path / "x"), "--twins", "2")
    assert r.returncode == 2 and "--twins" in r.stderr and "Traceback" not in r.stderr
    twins = tmp_path / "twins"
    r = run_cli("samples", str(twins), "-n", "2", "--seed", "3", "--max-size", "320", "--no-other", "--twins", "1")
    assert r.returncode == 0, r.stderr
    same = [
        (out / c / f"{c}_00001.jpg").read_bytes() == (twins / c / f"{c}_00001.jpg").read_bytes() for c in CLASSES[:4]
    ]
    assert same == [c != "intact_device" for c in CLASSES[:4]]
