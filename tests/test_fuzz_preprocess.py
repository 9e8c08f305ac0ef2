"""Fuzz the photo loader: random bytes and mutated valid images.

Whatever the bytes, ``check_image``, ``load_image`` and ``preprocess`` either succeed or
raise ``ImageError``; any other exception, a hang, or a non-finite output is a bug.

The number of examples per test defaults to 200 (CI). For a longer hunt set the
``TINYTRIAGE_FUZZ_EXAMPLES`` environment variable, e.g.::

    TINYTRIAGE_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_preprocess.py
"""

from __future__ import annotations

import io
import os
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tinytriage.data.preprocess import Preprocess, check_image, load_image, preprocess
from tinytriage.errors import ImageError

# Pillow warns about some damaged metadata ("Corrupt EXIF data"); expected for this input.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXAMPLES = int(os.environ.get("TINYTRIAGE_FUZZ_EXAMPLES", "200"))
CFG = Preprocess(input_size=16, max_pixels=1_000_000)  # small limit: a mutated header cannot make a big decode
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),  # a hang shows up as a deadline failure, not a stuck CI job
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= 200,  # CI runs are repeatable; long hunts explore
)


def _seed_images() -> list[bytes]:
    """Small valid files of every allowed format and a few modes, to mutate."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    out = []

    def save(img: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out.append(buf.getvalue())

    save(rgb, "PNG")
    save(rgb.convert("P"), "PNG", transparency=0)
    save(Image.fromarray((rng.integers(0, 65535, (12, 16))).astype(np.uint16)), "PNG")
    save(rgb.convert("RGBA"), "PNG")
    save(rgb, "JPEG", quality=80)
    save(rgb, "JPEG", progressive=True)
    save(rgb.convert("CMYK"), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    save(rgb, "JPEG", exif=exif.tobytes())
    big = rgb.resize((64, 48))  # larger than the input: exercises JPEG draft decoding
    save(big, "JPEG", exif=exif.tobytes())
    save(big.convert("L"), "JPEG", progressive=True)
    save(rgb, "GIF", save_all=True, append_images=[rgb.rotate(90)])
    save(rgb, "BMP")
    save(rgb.convert("1"), "BMP")
    save(rgb, "WEBP", quality=50)
    save(rgb, "WEBP", lossless=True)
    save(rgb, "TIFF", compression="tiff_lzw")
    save(rgb.convert("L"), "PPM")
    return out


SEEDS = _seed_images()

# One mutation: (kind, position as a fraction of the file, a byte value, a length)
mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]),
    st.floats(0, 1, allow_nan=False),
    st.integers(0, 255),
    st.integers(1, 64),
)


def mutate(data: bytes, mutations: list[tuple[str, float, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, where, value, length in mutations:
        if not buf:
            break
        i = min(int(where * len(buf)), len(buf) - 1)
        if kind == "flip":
            buf[i] ^= 1 << (value % 8)
        elif kind == "set":
            buf[i] = value
        elif kind == "insert":
            buf[i:i] = bytes([value]) * length
        elif kind == "delete":
            del buf[i : i + length]
        elif kind == "truncate":
            del buf[i:]
        else:  # duplicate a chunk in place, e.g. a PNG chunk or a JPEG segment
            buf[i:i] = buf[i : i + length]
    return bytes(buf)


mutated_images = st.builds(mutate, st.sampled_from(SEEDS), st.lists(mutation, min_size=1, max_size=6))
any_bytes = st.one_of(st.binary(min_size=0, max_size=512), mutated_images)


def _only_image_errors(fn, data: bytes) -> object:
    try:
        return fn(data)
    except ImageError:
        return None


@FUZZ
@given(any_bytes)
def test_load_image_raises_only_image_error(data):
    img = _only_image_errors(lambda d: load_image(d, max_pixels=CFG.max_pixels), data)
    if img is not None:
        assert img.mode == "RGB" and img.width > 0 and img.height > 0


@FUZZ
@given(any_bytes)
def test_preprocess_raises_only_image_error(data):
    x = _only_image_errors(lambda d: preprocess(d, CFG), data)
    if x is not None:
        assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32 and np.isfinite(x).all()


@FUZZ
@given(mutated_images)
def test_header_check_raises_only_image_error(data):
    _only_image_errors(lambda d: check_image(d, max_pixels=CFG.max_pixels), data)


def test_every_seed_is_valid():
    for data in SEEDS:
        assert preprocess(data, CFG).shape == (1, 3, 16, 16)
