"""Photos from strangers: every odd but real case is made here, in tmp_path, no downloads."""

from __future__ import annotations

import io
import struct
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tinytriage.data.preprocess import (
    ALLOWED_FORMATS,
    LetterboxGeometry,
    Preprocess,
    check_image,
    fit,
    load_fitted,
    load_image,
    normalize,
    preprocess,
    preprocess_batch,
    preprocess_with_geometry,
    to_array,
)
from tinytriage.errors import ImageError

CFG = Preprocess(input_size=32)


def photo(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """A smooth, asymmetric RGB test photo (gradients plus a red block top-left)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([x / w * 200, y / h * 200, (x + y) / (w + h) * 255], axis=-1)
    a += np.random.default_rng(seed).normal(0, 3, a.shape)
    a[: h // 4, : w // 4] = (250, 10, 10)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def saved(img: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h pixels, with a tiny IDAT: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def pixels(src, cfg: Preprocess = CFG) -> np.ndarray:
    """The uint8 (S, S, 3) model-input image, before normalisation."""
    return np.asarray(load_fitted(src, cfg)[0]).astype(np.int16)


# ---------------------------------------------------------------------------------------
# Config and output


def test_config_round_trips_and_refuses_unknown_keys():
    cfg = Preprocess(input_size=96, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize_mode="crop")
    d = cfg.to_dict()
    assert d["mean"] == [0.5, 0.5, 0.5] and Preprocess.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown"):
        Preprocess.from_dict({**d, "colour_space": "lab"})
    with pytest.raises(ValueError, match="missing"):
        Preprocess.from_dict({"input_size": 96})
    for bad in (dict(input_size=0), dict(std=(1, 0, 1)), dict(resize_mode="stretch"), dict(max_pixels=0)):
        with pytest.raises(ValueError):
            Preprocess(**bad)


def test_output_is_normalised_float32_nchw(tmp_path):
    cfg = Preprocess(input_size=32, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    p = saved(Image.new("RGB", (40, 40), (255, 0, 51)), tmp_path / "flat.png")
    x = preprocess(p, cfg)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0, :, 5, 5], [(1 - 0.5) / 0.5, (0 - 0.25) / 0.25, 0.2], atol=1e-6)


def test_normalize_batches_and_rejects_wrong_input():
    u8 = np.zeros((2, 8, 8, 3), np.uint8)
    assert normalize(u8, CFG).shape == (2, 3, 8, 8)
    assert normalize(u8[0], CFG).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError):
        normalize(u8.astype(np.float32), CFG)


# ---------------------------------------------------------------------------------------
# Geometry


def test_letterbox_keeps_everything_and_pads_with_the_mean():
    img, geom = fit(Image.new("RGB", (200, 100), (0, 0, 0)), Preprocess(input_size=100))
    a = np.asarray(img)
    assert geom == LetterboxGeometry(scale=0.5, pad_x=0.0, pad_y=25.0, orig_w=200, orig_h=100, scale_y=0.5)
    assert (a[25:75] == 0).all()  # the photo
    assert (a[:25] == Preprocess().fill).all() and (a[75:] == Preprocess().fill).all()
    # ... and the padding normalises to ~0: the most neutral input there is
    assert np.abs(to_array(img, Preprocess(input_size=100))[0, :, :25]).max() < 0.01
    assert geom.content_box(100) == (0.0, 25.0, 100.0, 75.0)


def test_geometry_maps_model_points_back_to_the_original_photo(tmp_path):
    # A bright dot at a known spot of an EXIF-rotated photo must be found at
    # to_model(spot), and to_original must bring it back.
    upright = Image.new("RGB", (300, 120), (0, 0, 0))
    upright.paste((255, 255, 255), (240, 90, 250, 100))  # dot centred at (245, 95)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = saved(upright.transpose(Image.Transpose.ROTATE_90), tmp_path / "rot.png", exif=exif.tobytes())
    cfg = Preprocess(input_size=60)
    img, geom = load_fitted(p, cfg)
    assert (geom.orig_w, geom.orig_h) == (300, 120)
    u, v = geom.to_model(245.0, 95.0)
    grey = np.asarray(img).mean(axis=2)
    assert grey[int(v), int(u)] > 100  # the dot is there
    np.testing.assert_allclose(geom.to_original(u, v), (245.0, 95.0))
    xs, ys = geom.to_original(np.array([0.0, 60.0]), np.array([geom.pad_y, 60 - geom.pad_y]))
    np.testing.assert_allclose(xs, [0, 300]) and np.testing.assert_allclose(ys, [0, 120])


@pytest.mark.parametrize(("mode", "pad"), [("crop", (-20.0, 0.0)), ("squash", (0.0, 0.0))])
def test_crop_and_squash_modes(mode, pad):
    cfg = Preprocess(input_size=40, resize_mode=mode)
    img, geom = fit(photo(80, 40), cfg)
    assert img.size == (40, 40) and (geom.pad_x, geom.pad_y) == pad
    assert geom.to_original(20.0, 20.0) == pytest.approx((40.0, 20.0))  # centre stays the centre


# ---------------------------------------------------------------------------------------
# Colour modes


def test_cmyk_jpeg_matches_its_rgb_original(tmp_path):
    rgb = photo()
    # Pillow writes CMYK JPEGs in the Adobe (inverted) convention and reads them back.
    p = saved(rgb.convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(p).mode == "CMYK"
    diff = np.abs(np.asarray(load_image(p), np.int16) - np.asarray(rgb, np.int16))
    assert diff.mean() < 4


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    a = np.full((20, 20), 40000, np.uint16)
    a[:, 10:] = 65535
    p = saved(Image.fromarray(a), tmp_path / "grey16.png")
    assert Image.open(p).mode.startswith("I")
    out = np.asarray(load_image(p))
    assert tuple(out[0, 0]) == (156, 156, 156)  # round(40000 / 257), not 255
    assert tuple(out[0, 19]) == (255, 255, 255)


def test_16_bit_pgm_is_scaled(tmp_path):
    p = tmp_path / "grey16.pgm"
    p.write_bytes(b"P5\n2 1\n65535\n" + np.array([[1285, 65535]], ">u2").tobytes())
    assert np.asarray(load_image(p))[0, :, 0].tolist() == [5, 255]


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    p = saved(Image.fromarray(np.full((8, 8), 0.5, np.float32)), tmp_path / "f.tif")
    assert np.asarray(load_image(p))[0, 0, 0] in (127, 128)


def test_palette_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (10, 10), 1)
    img.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    img.paste(0, (0, 0, 5, 10))  # left half: index 0 = black, made transparent below
    p = saved(img, tmp_path / "pal.png", transparency=0)
    out = np.asarray(load_image(p))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 9]) == (200, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    colour = (0, 0, 0, 0) if mode == "RGBA" else (0, 0)
    img = Image.new(mode, (10, 10), colour)
    half = (0, 0, 0, 128) if mode == "RGBA" else (0, 128)
    img.paste(half, (5, 0, 10, 10))
    out = np.asarray(load_image(saved(img, tmp_path / f"{mode}.png")))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert abs(int(out[0, 9, 0]) - 127) <= 1  # half-transparent black on white


def test_one_bit_and_grey(tmp_path):
    img = Image.new("1", (8, 8), 0)
    img.paste(1, (4, 0, 8, 8))
    out = np.asarray(load_image(saved(img, tmp_path / "bw.png")))
    assert out.shape == (8, 8, 3) and out[0, 0].tolist() == [0, 0, 0] and out[0, 7].tolist() == [255] * 3
    grey = np.asarray(load_image(saved(Image.new("L", (4, 4), 77), tmp_path / "l.jpg", quality=100)))
    assert np.abs(grey.astype(int) - 77).max() <= 1


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(p).n_frames == 3
    assert tuple(np.asarray(load_image(p))[8, 8]) == (255, 0, 0)


# ---------------------------------------------------------------------------------------
# EXIF orientation

# stored = upright.transpose(T) where the EXIF orientation undoes T.
STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_png_equals_the_upright_photo(tmp_path, orientation):
    upright = photo(90, 60)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = saved(upright.transpose(STORED_AS[orientation]), tmp_path / "r.png", exif=exif.tobytes())
    q = saved(upright, tmp_path / "u.png")
    assert np.array_equal(np.asarray(load_image(p)), np.asarray(upright))  # full resolution: exact
    # Model input: resized before the transpose, so equal up to resampler rounding.
    assert np.abs(pixels(p) - pixels(q)).max() <= 2


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_matches_upright_within_jpeg_tolerance(tmp_path, orientation):
    upright = photo(96, 64)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = saved(upright.transpose(STORED_AS[orientation]), tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    q = saved(upright, tmp_path / "u.jpg", quality=95)
    assert np.abs(pixels(p) - pixels(q)).mean() < 2


# every EXIF orientation: the upright photo transposed by the inverse of what undoes it
UNDO = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # undone by ROTATE_270
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # undone by ROTATE_90
}


@pytest.mark.parametrize("orientation", [1, *UNDO])
def test_region_is_the_same_part_of_the_upright_photo_in_every_orientation(tmp_path, orientation):
    upright, region = photo(90, 60), (17, 9, 61, 41)  # the red block's corner and the gradients
    stored = upright if orientation == 1 else upright.transpose(UNDO[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = saved(stored, tmp_path / "r.png", exif=exif.tobytes())
    img, geom = load_fitted(p, CFG, region=region)
    want = np.asarray(fit(upright.crop(region), CFG)[0]).astype(np.int16)
    assert np.abs(np.asarray(img).astype(np.int16) - want).max() <= 2
    assert (geom.orig_w, geom.orig_h) == (44, 32)  # the region's own size


def test_region_of_a_large_jpeg_is_drafted_and_matches_a_full_decode(tmp_path):
    big = photo(1024, 768).resize((1024, 768))
    p = saved(big, tmp_path / "big.jpg", quality=95)
    region = (300.4, 200.0, 556.0, 392.9)  # 256 x 193 pixels: at 32 px a 1/8 draft is enough
    img, _ = load_fitted(p, CFG, region=region)
    want = np.asarray(fit(load_image(p).crop((300, 200, 556, 393)), CFG)[0]).astype(np.int16)
    assert np.abs(np.asarray(img).astype(np.int16) - want).mean() < 2
    # off the photo: clipped to it, never empty
    img, geom = load_fitted(p, CFG, region=(-50, -50, 0.2, 2000))
    assert (geom.orig_w, geom.orig_h) == (1, 768) and img.size == (32, 32)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_is_ignored_not_fatal(tmp_path):
    p = saved(photo(), tmp_path / "x.jpg", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff\x01\x12garbage")
    assert load_image(p).size == (64, 48)
    assert preprocess(p, CFG).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------
# Refusals: every one an ImageError naming the file and the reason


def test_zero_byte_text_missing_and_directory(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("dear support, my phone broke\n")
    (tmp_path / "folder.jpg").mkdir()
    cases = {
        "empty.jpg": "empty file (0 bytes)",
        "notes.jpg": "not an image (unrecognised format)",
        "missing.jpg": "file not found",
        "folder.jpg": "is a folder",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageError) as err:
            preprocess(tmp_path / name, CFG)
        assert str(err.value).startswith(str(tmp_path / name) + ": ") and reason in str(err.value)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs are POSIX")
def test_fifo_is_refused_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path / "pipe.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_raises(tmp_path, fmt, monkeypatch):
    data = io.BytesIO()
    photo(200, 150).save(data, fmt)
    p = tmp_path / "cut.jpg"
    p.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated|corrupt"):
        preprocess(p, CFG)
    # Even if some other library switched Pillow to "load truncated images".
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="truncated|corrupt"):
        load_image(p)


def test_decompression_bomb_is_refused_from_the_header_with_bounded_memory(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(30000, 30000))  # 900 Mpx: 2.7 GB if decoded
    q = tmp_path / "over_our_limit.png"
    q.write_bytes(png_header_only(8000, 8000))  # 64 Mpx: over our 50 Mpx, under Pillow's 89 Mpx
    rss_before = _peak_rss_kib()
    tracemalloc.start()
    t = time.perf_counter()
    for path, max_pixels in ((p, 50_000_000), (p, 10**12), (q, 50_000_000)):
        with pytest.raises(ImageError, match="too large"):
            load_image(path, max_pixels=max_pixels)
        with pytest.raises(ImageError, match="too large"):
            preprocess(path, Preprocess(max_pixels=max_pixels))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - t < 2
    assert peak < 5_000_000
    assert _peak_rss_kib() - rss_before < 500_000  # decoding would add ~2.6 GiB


def _peak_rss_kib() -> int:
    """Peak resident memory of this process so far (0 where `resource` is missing).
    tracemalloc does not see Pillow's C allocations; this does."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_is_configurable_and_pillow_bomb_warning_is_an_error(tmp_path):
    p = saved(photo(100, 100), tmp_path / "p.png")
    with pytest.raises(ImageError, match="too large"):
        preprocess(p, Preprocess(input_size=32, max_pixels=9_999))
    assert preprocess(p, Preprocess(input_size=32, max_pixels=10_000)).shape == (1, 3, 32, 32)
    # 100 Mpx is over Pillow's warning threshold (89 Mpx) but under our raised limit:
    # the warning must still refuse it, never decode it.
    (tmp_path / "big.png").write_bytes(png_header_only(10000, 10000))
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "big.png", max_pixels=10**9)


@pytest.mark.parametrize(("w", "h", "reason"), [(5100, 100, "aspect ratio"), (100, 5100, "aspect ratio")])
def test_absurd_dimensions(tmp_path, w, h, reason):
    (tmp_path / "thin.png").write_bytes(png_header_only(w, h))
    with pytest.raises(ImageError, match=reason):
        check_image(tmp_path / "thin.png")


def _psd(w=4, h=4) -> bytes:
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + b"\x80" * (3 * w * h)


def _fits() -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2"]
    cards += ["NAXIS1  =                    4", "NAXIS2  =                    4", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode()
    return header + bytes(16).ljust(2880, b"\0")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nnewpath 0 0 moveto showpage\n%%EOF\n"


def _refused_files(tmp_path: Path) -> dict[str, Path]:
    files = {"PSD": _psd(), "FITS": _fits(), "EPS": EPS}
    out = {}
    for fmt, data in files.items():
        out[fmt] = tmp_path / f"{fmt.lower()}.jpg"
        out[fmt].write_bytes(data)
    for fmt in ("PDF", "TGA", "ICO"):
        out[fmt] = saved(photo(32, 32), tmp_path / f"{fmt.lower()}.jpg", fmt)
    return out


def test_formats_outside_the_allow_list_are_refused_even_renamed_jpg(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    called = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: called.append("open"))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: called.append("gs"))
    for fmt, p in _refused_files(tmp_path).items():
        with pytest.raises(ImageError) as err:
            preprocess(p, CFG)
        assert str(err.value).startswith(str(p) + ": "), fmt
        if fmt in ("PSD", "PDF", "EPS", "FITS", "ICO"):
            assert "unsupported format" in str(err.value) and fmt in str(err.value)
    assert called == []  # the EPS plugin (and so Ghostscript) was never even tried


def test_refused_fixtures_are_real_files_pillow_would_open(tmp_path):
    # Guards the test above: without the allow-list, Pillow does recognise these.
    files = _refused_files(tmp_path)
    for fmt in ("PSD", "FITS", "EPS", "ICO"):
        assert Image.open(files[fmt]).format == fmt
    assert Image.open(files["TGA"], formats=["TGA"]).format == "TGA"


def test_heic_is_named_in_the_refusal():
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100)
    with pytest.raises(ImageError, match="unsupported format HEIC"):
        load_image(data, name="IMG_0001.HEIC")


def test_every_allowed_format_loads(tmp_path):
    img = photo(40, 30)
    for fmt in ALLOWED_FORMATS:
        p = saved(img, tmp_path / f"x.{fmt.lower()}", fmt)
        assert check_image(p).format == fmt
        assert load_image(p).size == (40, 30)
    # A multi-picture JPEG (two-lens phones) opens as MPO and counts as a JPEG.
    mpo = tmp_path / "stereo.jpg"
    img.save(mpo, "MPO", save_all=True, append_images=[photo(40, 30, seed=1)])
    assert check_image(mpo).format == "MPO" and load_image(mpo).size == (40, 30)


# ---------------------------------------------------------------------------------------
# Paths, bytes, batches


@pytest.mark.parametrize("name", ["with space.jpg", "fotó_ñ_写真.jpg", "new\nline.jpg"])
def test_odd_paths(tmp_path, name):
    p = saved(photo(), tmp_path / name, "JPEG")
    assert preprocess(p, CFG).shape == (1, 3, 32, 32)
    with pytest.raises(ImageError) as err:
        preprocess(tmp_path / ("missing " + name), CFG)
    assert "\n" not in str(err.value)  # a newline in a name cannot forge a line of output


def test_bytes_input_and_name_in_messages(tmp_path):
    data = io.BytesIO()
    photo().save(data, "PNG")
    assert preprocess(data.getvalue(), CFG).shape == (1, 3, 32, 32)
    with pytest.raises(ImageError, match=r"^ticket-42\.jpg: not an image"):
        load_image(b"hello", name="ticket-42.jpg")
    with pytest.raises(ImageError, match=r"^<bytes>: "):
        load_image(b"hello")


def test_batch_keeps_going_past_bad_photos(tmp_path):
    good = [saved(photo(seed=i), tmp_path / f"{i}.png") for i in range(3)]
    (tmp_path / "bad.jpg").write_text("nope")
    paths = [good[0], tmp_path / "bad.jpg", good[1], tmp_path / "gone.jpg", good[2]]
    X, errors = preprocess_batch(paths, CFG, workers=2)
    assert X.shape == (3, 3, 32, 32) and sorted(errors) == [1, 3]
    assert "bad.jpg" in str(errors[1]) and "file not found" in str(errors[3])
    np.testing.assert_array_equal(X[2], preprocess(good[2], CFG)[0])
    X0, errors0 = preprocess_batch([tmp_path / "bad.jpg"], CFG)
    assert X0.shape == (0, 3, 32, 32) and list(errors0) == [0]


def test_preprocess_with_geometry_matches_preprocess(tmp_path):
    p = saved(photo(64, 32), tmp_path / "p.png")
    x, geom = preprocess_with_geometry(p, CFG)
    np.testing.assert_array_equal(x, preprocess(p, CFG))
    assert (geom.orig_w, geom.orig_h, geom.pad_y) == (64, 32, 8.0)


# ---------------------------------------------------------------------------------------
# JPEG draft decoding


def test_draft_decoding_is_used_and_matches_full_decode(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1800, 0:2400].astype(np.float32)
    a = np.stack([x / 10, y / 8, (x + y) / 17], -1) % 256 + rng.normal(0, 8, (1800, 2400, 3))
    p = saved(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), tmp_path / "big.jpg", quality=90)
    cfg = Preprocess(input_size=112)

    scales = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        out = real_draft(self, mode, size)
        scales.append(self.decoderconfig[0])
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    fast = np.asarray(load_fitted(p, cfg)[0]).astype(np.int16)
    assert scales == [8]  # 2400x1800 -> 300x225, still over 112
    slow = np.asarray(fit(load_image(p), cfg)[0]).astype(np.int16)
    assert np.abs(fast - slow).mean() < 1.5
    assert np.percentile(np.abs(fast - slow), 99) <= 8
