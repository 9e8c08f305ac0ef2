"""Training-time augmentation on small uint8 images, NumPy and Pillow only.

Each image gets one random geometric transform (random resized crop, small rotation,
horizontal flip: all one affine map, so one resampling pass) and one random colour
transform (brightness, contrast, saturation: all linear in the pixel values, so one
3x3 matrix plus an offset), and now and then a Gaussian blur. The random numbers for a
whole batch are drawn up front from one ``np.random.Generator``, so a seed fixes the
result whatever the number of worker threads.

The crop follows torchvision's ``RandomResizedCrop`` (area fraction, log-uniform aspect
ratio) but mild, because the cue can be small and near an edge (a cracked corner): a crop
that cuts the damage out turns a screen_damage photo into a mislabelled intact one. With
at least 80% of the area kept and blur on 5% of photos (instead of 60% and 10%), a
12-epoch run on 1,500 photos per class reached 0.782 validation accuracy against 0.778.

Horizontal flips are label-safe here: a mirrored phone, parcel or receipt is still the
same class. Mirrored text on documents is fine too: at 112 pixels the network sees the
layout of a page (lines of print, a logo, a table), not readable letters.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from tinytriage.data.preprocess import Preprocess

#: Colour for areas a rotation uncovers, when the caller gives none: the default
#: config's letterbox fill (the ImageNet mean colour), which normalises to ~0.
DEFAULT_FILL = Preprocess().fill

# ITU-R 601 luma, the weights Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Augment:
    """Random augmentation settings; ``Augment()`` is the training default."""

    crop_scale: tuple[float, float] = (0.8, 1.0)  # area of the random crop, as a fraction of the image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # width/height of that crop (log-uniform)
    rotation: float = 10.0  # rotate by up to this many degrees either way
    hflip: float = 0.5  # probability of a horizontal flip
    brightness: float = 0.2  # multiply pixels by a factor in [1 - b, 1 + b]
    contrast: float = 0.2  # scale distances from the mean grey by [1 - c, 1 + c]
    saturation: float = 0.2  # scale distances from each pixel's grey by [1 - s, 1 + s]
    blur: float = 0.05  # probability of a Gaussian blur (a shaky or out-of-focus photo)
    blur_radius: tuple[float, float] = (0.3, 1.2)  # its standard deviation, in output pixels

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        for name in ("hflip", "blur"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability, got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0 < self.blur_radius[0] <= self.blur_radius[1]:
            raise ValueError(f"blur_radius must satisfy 0 < low <= high, got {self.blur_radius}")


# Columns of the per-image random table (all uniform in [0, 1)).
_SCALE, _RATIO, _X, _Y, _ANGLE, _FLIP, _BRIGHT, _CONTRAST, _SAT, _BLUR, _RADIUS = range(11)


def _lerp(lo_hi: tuple[float, float], u: float) -> float:
    lo, hi = lo_hi
    return float(lo + (hi - lo) * u)


def _affine(w: int, h: int, size: int, aug: Augment, u: np.ndarray) -> tuple[float, ...]:
    """Pillow AFFINE coefficients mapping output (size x size) points to input points.

    input = centre + R(angle) @ diag(flip * cw / size, ch / size) @ (output - size / 2),
    i.e. the crop box (cw x ch around `centre`) stretched onto the output, turned and
    maybe mirrored about its centre."""
    area = w * h * _lerp(aug.crop_scale, u[_SCALE])
    ratio = math.exp(_lerp((math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1])), u[_RATIO]))
    cw = min(float(w), math.sqrt(area * ratio))
    ch = min(float(h), math.sqrt(area / ratio))
    cx = cw / 2 + u[_X] * (w - cw)
    cy = ch / 2 + u[_Y] * (h - ch)
    theta = math.radians(_lerp((-aug.rotation, aug.rotation), u[_ANGLE]))
    sx = (-1.0 if u[_FLIP] < aug.hflip else 1.0) * cw / size
    sy = ch / size
    cos, sin = math.cos(theta), math.sin(theta)
    a, b = cos * sx, -sin * sy  # first row of R @ diag(sx, sy)
    d, e = sin * sx, cos * sy  # second row
    half = size / 2
    return (a, b, cx - (a + b) * half, d, e, cy - (d + e) * half)


def _colour(x: np.ndarray, aug: Augment, u: np.ndarray) -> np.ndarray:
    """Brightness, then contrast, then saturation, as one linear map of each pixel.

    brightness: x1 = b x;  contrast: x2 = c x1 + (1 - c) mean_grey(x1);
    saturation: x3 = s x2 + (1 - s) grey(x2) = S x2 with S = s I + (1 - s) 1 luma^T.
    Since S 1 = 1 (luma sums to 1): x3 = c b S x + (1 - c) b mean_grey(x).
    Clipping happens once at the end (torchvision clips after each step)."""
    b = _lerp((1 - aug.brightness, 1 + aug.brightness), u[_BRIGHT])
    c = _lerp((1 - aug.contrast, 1 + aug.contrast), u[_CONTRAST])
    s = _lerp((1 - aug.saturation, 1 + aug.saturation), u[_SAT])
    H, W, _ = x.shape
    pixels = x.reshape(H * W, 3).astype(np.float32)  # (H*W, 3)
    mean_grey = float((pixels @ _LUMA).mean())  # (mean over axis 0 of (H*W, 3) is 20x slower)
    S = s * np.eye(3, dtype=np.float32) + (1 - s) * np.outer(np.ones(3, np.float32), _LUMA)  # (3, 3)
    out = pixels @ (c * b * S).T.astype(np.float32)  # (H*W, 3)
    out += (1 - c) * b * mean_grey + 0.5  # + 0.5: round, not truncate, in astype below
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8).reshape(H, W, 3)


def _augment_one(
    image: np.ndarray, size: int, aug: Augment, u: np.ndarray, coeffs: tuple[float, ...], fill: tuple[int, int, int]
) -> np.ndarray:
    """One uint8 (H, W, 3) image, its row of random numbers and its affine map (``_affine``)
    -> uint8 (size, size, 3)."""
    img = Image.fromarray(image)
    out = img.transform(
        (size, size),
        Image.Transform.AFFINE,
        coeffs,
        resample=Image.Resampling.BILINEAR,
        fillcolor=fill,  # corners uncovered by the rotation: the same fill as the letterbox
    )
    if u[_BLUR] < aug.blur:
        out = out.filter(ImageFilter.GaussianBlur(_lerp(aug.blur_radius, u[_RADIUS])))
    return _colour(np.asarray(out), aug, u)


def augment_batch(
    images: np.ndarray,
    size: int,
    aug: Augment,
    rng: np.random.Generator,
    *,
    fill: tuple[int, int, int] = DEFAULT_FILL,
    workers: int = 1,
    rows: slice = slice(None),
    return_maps: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Augment uint8 (N, H, W, 3) images into uint8 (N, size, size, 3).

    ``fill`` colours areas a rotation uncovers (use ``Preprocess.fill``). The same
    ``rng`` state gives the same output for any ``workers``. ``rows`` augments only
    ``images[rows]`` but draws the random numbers of all N, so each comes out as it does
    in the whole batch (a distributed rank's share of the global batch). ``return_maps``
    also returns each image's affine map, (N, 6) Pillow coefficients taking output points
    to input points, so labels tied to places (damage boxes) can follow the pixels."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    N = images.shape[0]
    table = rng.random((N, 11))  # (N, 11): every random number this batch needs
    keep = range(N)[rows]

    H, W = images.shape[1:3]
    maps = np.array([_affine(W, H, size, aug, table[i]) for i in keep], dtype=np.float64).reshape(-1, 6)

    def one(k: int) -> np.ndarray:  # the k-th kept image
        i = keep[k]
        return _augment_one(images[i], size, aug, table[i], tuple(maps[k]), fill)

    if workers > 1 and len(keep) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outs = list(pool.map(one, range(len(keep))))
    else:
        outs = [one(k) for k in range(len(keep))]
    out = np.stack(outs) if outs else np.zeros((0, size, size, 3), dtype=np.uint8)  # (len(keep), size, size, 3)
    return (out, maps) if return_maps else out  # (len(keep), size, size, 3), (len(keep), 6)


def augment_image(
    image: np.ndarray | Image.Image,
    size: int,
    aug: Augment,
    rng: np.random.Generator,
    *,
    fill: tuple[int, int, int] = DEFAULT_FILL,
) -> np.ndarray:
    """Augment one RGB image (PIL or uint8 (H, W, 3)) into uint8 (size, size, 3)."""
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
    return augment_batch(arr[None], size, aug, rng, fill=fill)[0]
