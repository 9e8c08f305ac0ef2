"""The phone camera: how a photo is taken, never what it is of.

``sample_shot`` draws every nuisance parameter of a photo: output size and aspect,
EXIF orientation, JPEG quality, camera pose, surface, light, blur, noise, occluder. It
takes no class argument, so these are distributed identically for every class and a
model cannot learn the class from them.

Geometry: objects are flat parts in 3-D (a phone's front, a box's faces). A pinhole
camera with tilt and roll projects each part's four corners; the homography that maps
the part's picture onto those corners warps it into the frame (and warps the damage mask
with it, so the damage box is measured, not guessed).

Photometry, in the order a phone applies it: uneven light and vignetting, auto exposure
and auto white balance (which pull every photo's mean colour toward what the camera
aims for, whatever the subject), a colour cast, focus or motion blur, sensor noise, the
resize to the output size, JPEG with an EXIF orientation tag.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops

from tinytriage.data.synth.textures import SURFACES, VARIANTS

#: Internal render size (long side, pixels): scenes are drawn this big, then resized.
RENDER_LONG = 400


@dataclass(frozen=True)
class Pose:
    """Where the camera stands relative to the object (all angles in degrees)."""

    tilt_x: float  # object plane tipped about its x axis (camera looking from above/below)
    tilt_y: float  # ... about its y axis (from the left/right)
    roll: float  # in-plane rotation of the object in the frame
    distance: float  # camera distance in object lengths: smaller = stronger perspective
    fill: float  # object's projected extent / frame on the limiting side; > 1 crops it
    shift: tuple[float, float]  # where the object sits in the free space, each in [-1, 1]


@dataclass(frozen=True)
class Shot:
    """Every nuisance parameter of one photo; sampled without looking at the class."""

    size: tuple[int, int]  # (width, height) of the photo as a viewer shows it
    exif: int | None  # EXIF orientation tag written (1, 3, 6, 8), None = no EXIF block
    quality: int  # JPEG quality
    pose: Pose
    surface: str  # background kind (textures.SURFACES)
    surface_variant: int  # which cached pattern of that kind
    exposure: float  # mean brightness (0-1) the auto exposure aims for
    cast: tuple[float, float, float]  # per-channel gain left after white balance (a colour cast)
    awb: float  # how far auto white balance neutralises the scene's own colour, 0-1
    contrast: float  # tone curve steepness around mid-grey
    vignette: float  # darkening at the corners, 0-1
    light_dir: tuple[float, float]  # direction of the light across the frame (unit vector)
    light_falloff: float  # brightness drop across the frame along light_dir
    shadow: float  # opacity of the object's cast shadow
    blur: str  # "none", "focus" or "motion"
    blur_amount: float  # blur sigma / motion length, as a fraction of the long side
    blur_angle: float  # motion direction, degrees
    noise: float  # sensor noise sigma (0-255 scale), luminance
    chroma_noise: float  # colour noise sigma
    occluder: str  # "none", "thumb", "pen" or "hand" (holding the object): between camera and subject
    backdrop: str = "none"  # "none" or "wall": a wall (a door, a bush) behind the surface, at the top of the frame
    step_back: float = 1.0  # < 1: the photographer stands back, if the object is one seen from afar (a parcel)


def sample_shot(rng: np.random.Generator, size_range: tuple[int, int] = (480, 1600)) -> Shot:
    """Draw a photo's nuisance parameters. Deliberately has no class argument."""
    lo, hi = size_range
    long = int(round(np.exp(rng.uniform(np.log(lo), np.log(max(lo, hi))))))  # log-uniform: small photos are common
    aspect = [4 / 3, 16 / 9, 3 / 2, 1.0][int(rng.choice(4, p=[0.7, 0.15, 0.05, 0.1]))]
    w, h = long, int(round(long / aspect))
    if rng.random() < 0.45:  # portrait
        w, h = h, w
    exif = None
    if rng.random() < 0.7:  # phones write EXIF; messengers and screenshots strip it
        exif = [1, 6, 8, 3][int(rng.choice(4, p=[0.6, 0.25, 0.08, 0.07]))]
    r = rng.random()
    if r < 0.6:
        roll = rng.normal(0, 8)
    elif r < 0.85:
        roll = rng.choice([-90, 90, 180]) + rng.normal(0, 8)
    else:
        roll = rng.uniform(-180, 180)
    pose = Pose(
        tilt_x=float(np.clip(rng.normal(0, 15), -35, 35)),
        tilt_y=float(np.clip(rng.normal(0, 10), -30, 30)),
        roll=float(roll),
        distance=float(rng.uniform(1.6, 4.0)),
        fill=float(rng.uniform(0.5, 1.1)),
        shift=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
    )
    kinds = sorted(SURFACES)
    surface = kinds[int(rng.integers(len(kinds)))]
    studio = surface == "studio"  # a product shot: exposed for the white backdrop
    blur = ["none", "focus", "motion"][int(rng.choice(3, p=[0.45, 0.4, 0.15]))]
    blur_amount = {"none": 0.0, "focus": rng.uniform(0.001, 0.006), "motion": rng.uniform(0.004, 0.02)}[blur]
    temperature = rng.normal(0, 0.08)  # warm (tungsten) to cool (shade) white-balance error
    tint = rng.normal(0, 0.03)  # green-magenta
    dim = rng.random() < 0.3
    noise = rng.uniform(3, 8) if dim else rng.uniform(0.5, 3)
    light_angle = rng.uniform(0, 2 * np.pi)
    return Shot(
        size=(w, h),
        exif=exif,
        quality=int(rng.integers(60, 96)),
        pose=pose,
        surface=surface,
        surface_variant=int(rng.integers(VARIANTS)),
        exposure=float(rng.uniform(0.22, 0.38) if dim else rng.uniform(0.36, 0.6)) * (1.4 if studio else 1.0),
        cast=(float(np.exp(temperature)), float(np.exp(-tint)), float(np.exp(-temperature))),
        awb=float(rng.uniform(0.5, 0.95)),
        contrast=float(rng.uniform(0.85, 1.25)),
        vignette=float(rng.uniform(0, 0.45)),
        light_dir=(float(np.cos(light_angle)), float(np.sin(light_angle))),
        light_falloff=float(rng.uniform(0, 0.45)),
        shadow=float(rng.uniform(0.15, 0.55)),
        blur=blur,
        blur_amount=float(blur_amount),
        blur_angle=float(rng.uniform(0, 180)),
        noise=float(noise),
        chroma_noise=float(noise * rng.uniform(0.3, 0.8)),
        occluder=["none", "thumb", "pen", "hand"][int(rng.choice(4, p=[0.62, 0.12, 0.08, 0.18]))],
        backdrop="wall" if rng.random() < 0.25 and not studio else "none",
        step_back=float(rng.uniform(0.25, 0.6) if rng.random() < 0.3 else 1.0),
    )


def render_size(size: tuple[int, int]) -> tuple[int, int]:
    """The internal canvas for an output ``size``: same aspect, long side at most RENDER_LONG."""
    w, h = size
    s = min(1.0, RENDER_LONG / max(w, h))
    return max(8, round(w * s)), max(8, round(h * s))


# --- geometry ---------------------------------------------------------------------------


def rotation(tilt_x: float, tilt_y: float, roll: float) -> np.ndarray:
    """3x3 rotation: tilt about x, then about y, then roll about the optical axis (degrees)."""
    a, b, c = np.radians([tilt_x, tilt_y, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: object point (x, y, z) -> pixel. Object z points at the camera."""

    R: np.ndarray  # (3, 3) object rotation
    distance: float  # object origin to camera
    f: float  # focal length in pixels
    centre: np.ndarray  # (2,) pixel where the object origin's axis lands

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) object points -> (N, 2) pixels (x right, y down)."""
        p = np.asarray(points, np.float64) @ self.R.T
        z = self.distance - p[:, 2]  # depth in front of the camera
        return self.centre + self.f * p[:, :2] / z[:, None]


def frame_camera(pose: Pose, points: np.ndarray, size: tuple[int, int]) -> Camera:
    """The camera for ``pose`` whose view of ``points`` fills ``pose.fill`` of a ``size`` frame."""
    R = rotation(pose.tilt_x, pose.tilt_y, pose.roll)
    raw = Camera(R, pose.distance, 1.0, np.zeros(2)).project(points)
    lo, hi = raw.min(0), raw.max(0)
    extent = np.maximum(hi - lo, 1e-6)
    wh = np.asarray(size, np.float64)
    f = pose.fill * float(np.min(wh / extent))
    slack = wh - f * extent  # free space around the object (negative: it is cropped)
    centre = wh / 2 - f * (lo + hi) / 2 + np.asarray(pose.shift) * slack / 2
    return Camera(R, pose.distance, f, centre)


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 H with dst ~ H @ src for four point pairs (direct linear transform, h33 = 1)."""
    A, b = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        A.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        A.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    h = np.linalg.solve(np.asarray(A, np.float64), np.asarray(b, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def apply_homography(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points -> (N, 2) points through H."""
    p = np.c_[points, np.ones(len(points))] @ H.T
    return p[:, :2] / p[:, 2:3]


def warp(image: Image.Image, H: np.ndarray, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]] | None:
    """Warp ``image`` by H into a ``size`` frame; returns the covered region and its offset.

    Only the bounding box of the warped corners is computed (cheap for small objects).
    Pillow's PERSPECTIVE wants the inverse map (output pixel -> input pixel).
    """
    w, h = image.size
    quad = apply_homography(H, np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64))
    x0, y0 = np.floor(np.maximum(quad.min(0), 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(quad.max(0), size)).astype(int)
    if x1 <= x0 or y1 <= y0:
        return None
    shift = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
    inv = np.linalg.inv(H) @ shift  # region pixel -> image pixel
    inv /= inv[2, 2]
    out = image.transform((int(x1 - x0), int(y1 - y0)), Image.PERSPECTIVE, tuple(inv.flatten()[:8]), Image.BILINEAR)
    return out, (int(x0), int(y0))


# --- photometry -------------------------------------------------------------------------


def light_field(shot: Shot, size: tuple[int, int]) -> Image.Image:
    """Illumination, mode "L" (255 = full light): a falloff along the light direction, times vignetting."""
    w, h = size
    gw, gh = 17, 13  # smooth, so a coarse grid resized up is exact enough
    y, x = np.mgrid[-1 : 1 : gh * 1j, -1 : 1 : gw * 1j]
    along = x * shot.light_dir[0] + y * shot.light_dir[1]
    field = (1 - shot.light_falloff * (along - along.min()) / np.ptp(along)) * (1 - shot.vignette * (x**2 + y**2) / 2)
    return Image.fromarray(np.clip(field * 255, 0, 255).astype(np.uint8), "L").resize((w, h), Image.BILINEAR)


def expose(image: Image.Image, shot: Shot, unmetered: Image.Image | None = None) -> Image.Image:
    """Light, auto exposure, auto white balance, colour cast and tone curve (RGB -> RGB).

    Auto exposure scales the image so its mean brightness lands on ``shot.exposure``;
    white balance moves each channel's mean toward grey by ``shot.awb`` (grey-world).
    Both use the image's own statistics, as a phone does. The per-channel gain and the
    tone curve are one lookup table; the light field is one multiply.

    ``unmetered`` ("L", nonzero = skip) leaves pixels out of the metering: the damage, so
    that a photo and its intact twin get the same exposure and differ only in the damage.
    """
    lit = ImageChops.multiply(image, light_field(shot, image.size).convert("RGB"))
    sample = np.asarray(lit.reduce(4), np.float32).reshape(-1, 3)
    if unmetered is not None:
        keep = np.asarray(unmetered.reduce(4)).reshape(-1) == 0
        sample = sample[keep] if keep.sum() > 16 else sample
    mean = sample.mean(0) + 1.0  # per-channel mean, 0-255
    luma = np.array([0.299, 0.587, 0.114])
    balance = (float(mean @ luma) / mean) ** shot.awb * np.asarray(shot.cast)
    gain = np.clip(balance * (shot.exposure * 255 / float((mean * balance) @ luma)), 0.2, 5.0)
    mid = shot.exposure * 255
    x = np.arange(256, dtype=np.float64)[None, :] * gain[:, None]  # (3, 256): gain, then contrast about mid
    lut = np.clip(mid + (np.clip(x, 0, 255) - mid) * shot.contrast, 0, 255).astype(np.uint8)
    return lit.point(lut.ravel().tolist())


def blur(image: Image.Image, shot: Shot, out_size: tuple[int, int]) -> Image.Image:
    """Focus or motion blur, sized to the photo. Returns an image to be resized to ``out_size``.

    Focus blur is done by shrinking: the final resize up to ``out_size`` interpolates
    the shrunken image back, which blurs it (about sigma = 0.5 x the shrink factor)
    at no extra cost. Motion blur averages copies shifted along a line.
    """
    out_long = max(out_size)
    if shot.blur == "focus":
        sigma = shot.blur_amount * out_long  # in output pixels
        long = int(min(max(image.size), out_long / max(2 * sigma, 1e-6)))
        if long < max(image.size):
            s = long / max(image.size)
            return image.resize((max(2, round(image.width * s)), max(2, round(image.height * s))), Image.BOX)
    if shot.blur == "motion":
        length = shot.blur_amount * max(image.size)
        if length > 1:
            a = np.asarray(image, np.float32)
            n = int(np.ceil(length))
            dx, dy = np.cos(np.radians(shot.blur_angle)), np.sin(np.radians(shot.blur_angle))
            pad = np.pad(a, ((n, n), (n, n), (0, 0)), mode="edge")
            h, w = a.shape[:2]
            acc = np.zeros_like(a)
            steps = np.linspace(-length / 2, length / 2, n + 1)
            for t in steps:
                ox, oy = int(round(t * dx)), int(round(t * dy))
                acc += pad[n + oy : n + oy + h, n + ox : n + ox + w]
            return Image.fromarray((acc / len(steps)).astype(np.uint8))
    return image


#: Noise tiles are stored as uint8 around 128 with this many levels per sigma.
_NOISE_SD = 32


@lru_cache(maxsize=1)
def _noise_tiles() -> tuple[Image.Image, Image.Image]:
    """(colour, luminance) Gaussian noise, RGB, 640 x 640, stored as 128 + 32 * N(0, 1)."""
    rng = np.random.default_rng(1234567)
    n = np.clip(128 + _NOISE_SD * rng.standard_normal((640, 640, 4), dtype=np.float32), 0, 255).astype(np.uint8)
    colour = Image.fromarray(n[:, :, :3])
    lum = Image.fromarray(n[:, :, 3]).convert("RGB")
    return colour, lum


def add_noise(image: Image.Image, shot: Shot, rng: np.random.Generator) -> Image.Image:
    """Sensor noise: luminance plus colour noise, from a random window of cached noise tiles."""
    w, h = image.size
    colour, lum = _noise_tiles()
    x, y = int(rng.integers(0, 641 - w)), int(rng.integers(0, 641 - h))
    box = (x, y, x + w, y + h)

    def scaled(tile: Image.Image, sigma: float) -> Image.Image:  # 128 + sigma * N(0, 1)
        lut = np.clip(np.round(128 + (np.arange(256) - 128) * (sigma / _NOISE_SD)), 0, 255).astype(np.uint8)
        return tile.crop(box).point(lut.tolist() * 3)

    noise = ImageChops.add(scaled(lum, shot.noise), scaled(colour, shot.chroma_noise), 1.0, -128)
    return ImageChops.add(image, noise, 1.0, -128)


#: EXIF orientation -> how the pixels are stored so that a viewer applying the tag
#: (ImageOps.exif_transpose) shows the upright photo. exif_transpose undoes these.
STORE_TRANSPOSE = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def encode_jpeg(image: Image.Image, quality: int, exif: int | None) -> bytes:
    """JPEG bytes of an upright ``image``; with an EXIF tag, the pixels are stored rotated."""
    extra = {}
    if exif is not None:
        if exif in STORE_TRANSPOSE:
            image = image.transpose(STORE_TRANSPOSE[exif])
        tags = Image.Exif()
        tags[0x0112] = exif  # Orientation
        tags[0x0131] = "tinytriage synth"  # Software: these photos are synthetic
        extra["exif"] = tags.tobytes()
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, **extra)
    return buf.getvalue()
