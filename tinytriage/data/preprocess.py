"""Turn a customer's photo into the network's input, the same way everywhere.

Training, ``predict``, ``explain`` and every backend call this module, so a photo
becomes exactly the same tensor whichever path it takes. The pipeline:

1. **Open safely.** Photos come from strangers. The format is detected from the
   file's bytes, never its extension, and only an allow-list of plugins is ever tried
   (``Image.open(..., formats=ALLOWED_FORMATS)``), so a PostScript file renamed
   ``.jpg`` never reaches Ghostscript. The size in the header is checked against
   ``max_pixels`` and an aspect-ratio limit *before* any pixel is decoded, so a
   30000x30000 "decompression bomb" costs a few bytes of memory, not 2.7 GB.
2. **Decode fully or fail.** A truncated file raises instead of being classified
   with a grey bottom half. Large JPEGs use libjpeg's DCT scaling ("draft" mode,
   1/2, 1/4 or 1/8 size), never below what the resize needs, so the result matches
   a full decode within a few grey levels but decodes several times faster.
3. **Upright RGB.** The EXIF orientation is applied (a broken EXIF block is
   ignored, not fatal). Transparency is composited on white, 16-bit greys are
   scaled by 65535/255 (not clipped), CMYK goes through Pillow's converter.
4. **Resize** to the square model input (letterbox by default, see ``fit``).
5. **Normalise** with the config's mean and std: float32, NCHW, C-contiguous.

Every failure is an ``ImageError`` whose message starts with the file's name.
"""

from __future__ import annotations

import io
import math
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, BinaryIO, Literal, TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from tinytriage.errors import ImageError

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview
ResizeMode = Literal["letterbox", "crop", "squash"]

#: Default pixel limit: 50 megapixels is above any phone camera (a 48 MP sensor gives
#: 8064x6048 = 48.8 MP) and below Pillow's own bomb warning (89.5 MP).
DEFAULT_MAX_PIXELS = 50_000_000
#: Longest side over shortest side. Nothing a customer photographs is 50 times longer
#: than it is wide; such a header is a trick to make a huge but "small" image.
MAX_ASPECT = 50.0
#: Pillow plugins we let open a file, by detected content. GIF and WEBP: first frame
#: only (an animation is one photo to us). A JPEG with an MPO index (two-lens phones)
#: is opened by the JPEG plugin and reports format "MPO"; we accept it as a JPEG.
#: PPM/PGM are here because they are in torchvision's folder-dataset extension list.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
_ACCEPTED_FORMATS = frozenset((*ALLOWED_FORMATS, "MPO"))

#: ``Image.reduce`` by an integer factor first while the image is still more than this
#: many times the target: much faster on big photos, same result as a plain resize to
#: within a grey level or so (Pillow's docs: >= 3.0 is "indistinguishable").
REDUCING_GAP = 3.0
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the model's input. Stored in the model file (``to_dict``)."""

    input_size: int = 112  # side of the square input, pixels
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per-channel mean of pixel/255 (ImageNet)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # per-channel std of pixel/255 (ImageNet)
    resize_mode: ResizeMode = "letterbox"  # see fit(): letterbox keeps the whole photo
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse photos whose header says more pixels than this

    def __post_init__(self) -> None:
        # Coerce lists (from JSON) to tuples so equality and hashing work.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not (isinstance(self.input_size, int) and 8 <= self.input_size <= 4096):
            raise ValueError(f"input_size must be an integer in [8, 4096], got {self.input_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values each (R, G, B)")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError(f"mean values must be finite, got {self.mean}")
        if self.resize_mode not in ("letterbox", "crop", "squash"):
            raise ValueError(f"resize_mode must be letterbox, crop or squash, got {self.resize_mode!r}")
        if not (isinstance(self.max_pixels, int) and self.max_pixels > 0):
            raise ValueError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")

    @property
    def fill(self) -> tuple[int, int, int]:
        """Padding colour: the mean colour, so padded pixels normalise to (almost) 0."""
        r, g, b = (round(m * 255) for m in self.mean)
        return (r, g, b)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict for a model file's metadata."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Inverse of ``to_dict``. Unknown keys are refused rather than ignored: a key
        we do not understand could change the tensor, and silently guessing would
        feed the model inputs it was not trained on. Raises ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing settings: {sorted(unknown)}")
        missing = {"input_size", "mean", "std", "resize_mode"} - set(d)
        if missing:
            raise ValueError(f"missing preprocessing settings: {sorted(missing)}")
        return cls(**d)


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where the original photo sits inside the model input.

    A model-input point (u, v) and an original-photo point (x, y) (after the EXIF
    rotation, in continuous pixel coordinates: pixel i spans [i, i+1)) are related by
    ``u = x * scale + pad_x`` and ``v = y * scale_y + pad_y``. Letterbox has pad >= 0
    (borders), crop has pad <= 0 (cut off), squash has scale != scale_y.
    """

    scale: float  # model pixels per original pixel along x (and y unless scale_y is set)
    pad_x: float  # x of the photo's left edge in the model input
    pad_y: float  # y of the photo's top edge in the model input
    orig_w: int  # original photo width after EXIF rotation
    orig_h: int  # original photo height after EXIF rotation
    scale_y: float | None = None  # model pixels per original pixel along y, if not `scale`

    @property
    def sy(self) -> float:
        """Vertical scale (``scale_y`` if set, else ``scale``)."""
        return self.scale if self.scale_y is None else self.scale_y

    def to_original(self, u: Any, v: Any) -> tuple[Any, Any]:
        """Model-input coordinates -> original-photo coordinates (floats or arrays)."""
        return (np.subtract(u, self.pad_x) / self.scale, np.subtract(v, self.pad_y) / self.sy)

    def to_model(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Original-photo coordinates -> model-input coordinates (inverse of to_original)."""
        return (np.multiply(x, self.scale) + self.pad_x, np.multiply(y, self.sy) + self.pad_y)

    def content_box(self, size: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the photo inside a size x size model input.

        Crop a heatmap to this box, then resize it to (orig_w, orig_h), to overlay it
        on the original photo."""
        x0, y0 = (float(c) for c in self.to_model(0.0, 0.0))
        x1, y1 = (float(c) for c in self.to_model(self.orig_w, self.orig_h))
        return (max(0.0, x0), max(0.0, y0), min(float(size), x1), min(float(size), y1))


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, before any pixel is decoded."""

    format: str  # Pillow's detected format ("JPEG", "PNG", ...; "MPO" for multi-picture JPEG)
    width: int  # as stored, before EXIF rotation
    height: int
    mode: str


# ---------------------------------------------------------------------------------------
# Opening: source checks, allow-listed formats, header limits


def display_name(src: ImageSource, name: str | None = None) -> str:
    """How a photo is named in messages (every ImageError starts with this and ": ").

    Control characters are escaped, since a newline in a file name could forge a line
    of output; everything else, unicode included, is left as it is."""
    if name is None:
        if isinstance(src, bytes | bytearray | memoryview):
            return "<bytes>"
        name = os.fsdecode(os.fspath(src))
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


# Magic numbers of formats we refuse, to say *what* a file is instead of "unrecognised".
_REFUSED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"8BPS", "PSD (Photoshop)"),
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"SIMPLE  =", "FITS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"DDS ", "DDS"),
    (b"qoif", "QOI"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"icns", "ICNS"),
    (b"gimp xcf", "XCF (GIMP)"),
)
_ALLOWED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff(head: bytes) -> tuple[str, bool] | None:
    """Guess a format from the first bytes: (name, allowed) or None."""
    for magic, fmt in _ALLOWED_MAGIC:
        if head.startswith(magic):
            return fmt, True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP", True
    if head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "PPM", True
    if head[4:8] == b"ftyp":  # ISO media: HEIC from iPhones, AVIF
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"heim", b"heis"):
            return "HEIC", False
        if brand in (b"avif", b"avis"):
            return "AVIF", False
    for magic, fmt in _REFUSED_MAGIC:
        if head.startswith(magic):
            return fmt, False
    return None


def _corrupt(shown: str, fmt: str, err: Exception) -> ImageError:
    """The ImageError for a decoder's exception: truncated, or corrupt with the detail."""
    text = str(err)
    if "truncated" in text.lower():
        return ImageError(f"{shown}: truncated file (the photo is incomplete)")
    return ImageError(f"{shown}: corrupt {fmt} ({type(err).__name__}: {text})")


def _open_source(src: ImageSource, shown: str) -> BinaryIO:
    """A readable binary stream for a path or bytes, or a clear ImageError."""
    if isinstance(src, bytes | bytearray | memoryview):
        if len(src) == 0:
            raise ImageError(f"{shown}: empty file (0 bytes)")
        return io.BytesIO(bytes(src))
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise ImageError(f"{shown}: file not found") from None
    except PermissionError:
        raise ImageError(f"{shown}: cannot read (permission denied)") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise ImageError(f"{shown}: cannot read ({err})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{shown}: is a folder, not a photo")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or /dev/zero would block or never end.
        raise ImageError(f"{shown}: not a regular file")
    if st.st_size == 0:
        raise ImageError(f"{shown}: empty file (0 bytes)")
    try:
        return open(src, "rb")  # closed by the caller's `with`
    except OSError as err:
        reason = "permission denied" if isinstance(err, PermissionError) else str(err)
        raise ImageError(f"{shown}: cannot read ({reason})") from None


def _open_checked(fp: BinaryIO, shown: str, max_pixels: int) -> ImageFile.ImageFile:
    """Parse the header with allow-listed plugins only and check its size. No decoding."""
    try:
        img = Image.open(fp, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{shown}: image too large, refused before decoding ({err})") from None
    except UnidentifiedImageError:
        fp.seek(0)
        guess = _sniff(fp.read(16))
        if guess is None:
            raise ImageError(f"{shown}: not an image (unrecognised format)") from None
        fmt, allowed = guess
        if allowed:
            raise ImageError(f"{shown}: corrupt {fmt} (cannot read its header)") from None
        raise ImageError(f"{shown}: unsupported format {fmt}; send a JPEG, PNG, WEBP, BMP, GIF or TIFF") from None
    except Exception as err:  # Pillow's plugins raise many types on hostile headers
        fp.seek(0)
        guess = _sniff(fp.read(16))
        raise _corrupt(shown, guess[0] if guess else "image", err) from None

    if img.format not in _ACCEPTED_FORMATS:  # belt and braces: formats= already restricts
        raise ImageError(f"{shown}: unsupported format {img.format}")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{shown}: empty image ({w}x{h} pixels)")
    # Where Pillow would only warn of a decompression bomb (over Image.MAX_IMAGE_PIXELS,
    # 89 Mpx by default) we refuse too, even if max_pixels was raised above it. (Making
    # the warning an error with a warnings filter would be process-wide state, and lost
    # whenever this module is imported inside warnings.catch_warnings, as pytest does.)
    limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    if w * h > limit:
        raise ImageError(
            f"{shown}: image too large ({w}x{h} = {w * h:,} pixels, limit {limit:,}); refused before decoding"
        )
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageError(f"{shown}: absurd dimensions {w}x{h} (aspect ratio over {MAX_ASPECT:g}:1)")
    return img


def check_image(src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> ImageInfo:
    """Cheap check that ``src`` is a photo we will accept: open and header checks only,
    no decoding (a truncated file passes here and fails in ``load_image``).

    Raises ``ImageError``. Width and height are as stored, before EXIF rotation."""
    shown = display_name(src, name)
    with _open_source(src, shown) as fp:
        img = _open_checked(fp, shown, max_pixels)
        return ImageInfo(format=img.format or "", width=img.width, height=img.height, mode=img.mode)


# ---------------------------------------------------------------------------------------
# Decoding: EXIF orientation, colour modes


# EXIF orientation -> the transpose that makes the photo upright. Same table as
# PIL.ImageOps.exif_transpose; we apply it ourselves so that it can run on the small
# resized image (cheaper) and so that a broken EXIF block is ignored, not fatal.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when absent, invalid or unreadable)."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # broken EXIF is common in the wild; the photo is still usable
        return 1
    return value if isinstance(value, int) and value in _EXIF_TRANSPOSE else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, transparency composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greys (PNG, TIFF, PGM): scale 0..65535 to 0..255. Pillow's own
        # convert("L") clips at 255, which would make almost every pixel white.
        # Pillow also opens 16-bit PGMs and signed TIFFs as 32-bit "I"; we read
        # those as 16-bit too (values outside 0..65535 are clipped).
        a = np.asarray(img).astype(np.float32)
        grey = np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        # Float images have no agreed range: [0, 1] is scaled to 0..255, anything
        # else is taken as 0..255 and clipped (what Pillow's convert does). NaN -> 0.
        a = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.rint(np.clip(a, 0, 255)).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        # Transparent areas of a screenshot or a product cut-out are white on the
        # customer's screen; black (what dropping alpha gives) would be a strong,
        # misleading signal to the network.
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")  # L, 1, P, CMYK (incl. Adobe-inverted), YCbCr, LAB, HSV, RGBX


def _decode(
    src: ImageSource,
    name: str | None,
    max_pixels: int,
    after_open: Callable[[ImageFile.ImageFile], tuple[float, float, float, float]] | None = None,
) -> tuple[Image.Image, int, tuple[float, float, float, float], tuple[int, int]]:
    """Open, optionally draft, decode, to RGB. Returns (rgb as stored, EXIF orientation,
    the photo's extent inside rgb, the stored size before any draft).
    ``after_open`` may call ``img.draft`` and returns that extent."""
    shown = display_name(src, name)
    # A truncated photo must never be classified as if it were complete. This is a
    # process-wide Pillow setting that some other library may have switched on.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with _open_source(src, shown) as fp:
        img = _open_checked(fp, shown, max_pixels)
        stored_size = img.size
        try:
            box = (0.0, 0.0, float(img.width), float(img.height))
            if after_open is not None:
                box = after_open(img)
            img.load()
            orientation = _orientation(img)
            rgb = _to_rgb(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(f"{shown}: image too large ({err})") from None
        except MemoryError:
            raise ImageError(f"{shown}: not enough memory to decode this photo") from None
        except Exception as err:  # hostile pixel data: decoders raise many types
            raise _corrupt(shown, img.format or "image", err) from None
    return rgb, orientation, box, stored_size


def load_image(src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Decode a photo at full resolution: upright (EXIF applied), RGB, alpha on white.

    ``src`` is a path or the file's bytes; ``name`` overrides the name used in error
    messages. GIF/WEBP animations give their first frame. Raises ``ImageError``."""
    rgb, orientation, _, _ = _decode(src, name, max_pixels)
    method = _EXIF_TRANSPOSE.get(orientation)
    return rgb if method is None else rgb.transpose(method)


# ---------------------------------------------------------------------------------------
# Geometry: fitting a photo into the square model input


# Why letterbox is the default: the thing a ticket is about is often near an edge (a
# cracked corner of a screen, a torn flap of a parcel), and a centre crop can cut it off.
# Squashing keeps everything but distorts shapes, so a round dent or a square screen
# looks different at every aspect ratio. Letterbox keeps the whole photo and its aspect
# ratio; the borders are filled with the mean colour, which normalises to ~0, the most
# neutral input there is. Grad-CAM maps heatmaps back through LetterboxGeometry.
def _plan(w: int, h: int, size: int, mode: ResizeMode) -> tuple[int, int, int, int]:
    """For an upright w x h photo: (resized w, resized h, offset x, offset y) of the
    resized photo in the size x size input (offset < 0: cropped)."""
    if mode == "squash":
        return size, size, 0, 0
    s = size / (max(w, h) if mode == "letterbox" else min(w, h))
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    if mode == "crop":
        nw, nh = max(nw, size), max(nh, size)
    return nw, nh, (size - nw) // 2, (size - nh) // 2


def _place(
    rgb: Image.Image,
    box: tuple[float, float, float, float],
    orientation: int,
    upright_w: int,
    upright_h: int,
    size: int,
    mode: ResizeMode,
    fill: tuple[int, int, int],
) -> tuple[Image.Image, LetterboxGeometry]:
    """Resize ``rgb`` (stored orientation; ``box`` = the photo's extent inside it) into
    the square input, then transpose it upright. Resizing before transposing means the
    transpose runs on the small image."""
    nw, nh, ox, oy = _plan(upright_w, upright_h, size, mode)
    method = _EXIF_TRANSPOSE.get(orientation)
    target = (nh, nw) if orientation in _SWAPS_AXES else (nw, nh)
    small = rgb.resize(target, Image.Resampling.BILINEAR, box=box, reducing_gap=REDUCING_GAP)
    if method is not None:
        small = small.transpose(method)
    if (ox, oy) == (0, 0) and (nw, nh) == (size, size):
        out = small
    elif ox >= 0 and oy >= 0:  # letterbox: paste onto a mean-coloured canvas
        out = Image.new("RGB", (size, size), fill)
        out.paste(small, (ox, oy))
    else:  # crop: cut the centre out
        out = small.crop((-ox, -oy, -ox + size, -oy + size))
    scale_x, scale_y = nw / upright_w, nh / upright_h
    geom = LetterboxGeometry(
        scale=scale_x, pad_x=float(ox), pad_y=float(oy), orig_w=upright_w, orig_h=upright_h, scale_y=scale_y
    )
    return out, geom


def fit(img: Image.Image, cfg: Preprocess, *, size: int | None = None) -> tuple[Image.Image, LetterboxGeometry]:
    """Fit an upright RGB PIL image into a square (``size``, default ``cfg.input_size``)
    with ``cfg.resize_mode``. Returns the square image and where the photo sits in it."""
    size = cfg.input_size if size is None else size
    rgb = _to_rgb(img)
    box = (0.0, 0.0, float(rgb.width), float(rgb.height))
    return _place(rgb, box, 1, rgb.width, rgb.height, size, cfg.resize_mode, cfg.fill)


def load_fitted(
    src: ImageSource,
    cfg: Preprocess,
    *,
    size: int | None = None,
    name: str | None = None,
    region: tuple[float, float, float, float] | None = None,
) -> tuple[Image.Image, LetterboxGeometry]:
    """Decode a photo straight into the square ``size`` x ``size`` RGB input (default
    ``cfg.input_size``) and return where the photo sits in it.

    ``region`` (left, top, right, bottom, in upright original pixels, as
    ``LetterboxGeometry.to_original`` gives them) fits only that part of the photo, at
    the resolution the part needs: a closer look. The geometry is then the region's,
    with (0, 0) at its top-left corner.

    JPEGs are decoded in draft mode: libjpeg scales by 1/2, 1/4 or 1/8 during the DCT,
    choosing the smallest scale that is still at least as large as the resize needs, so
    the final image is a downscale in both paths and matches a full decode closely.
    Raises ``ImageError``."""
    size = cfg.input_size if size is None else size
    upright = [0, 0]  # the fitted part's upright size, known once the header is read

    def draft(img: ImageFile.ImageFile) -> tuple[float, float, float, float]:
        w, h = img.size
        orientation = _orientation(img)
        if region is None:
            part = (0.0, 0.0, float(w), float(h))
            upright[:] = (h, w) if orientation in _SWAPS_AXES else (w, h)
        else:
            uw, uh = (h, w) if orientation in _SWAPS_AXES else (w, h)
            # whole pixels inside the photo, at least one (a region off the photo is clipped)
            x0, y0 = min(uw - 1, max(0, math.floor(region[0]))), min(uh - 1, max(0, math.floor(region[1])))
            x1, y1 = max(x0 + 1, min(uw, math.ceil(region[2]))), max(y0 + 1, min(uh, math.ceil(region[3])))
            part = _stored_box((x0, y0, x1, y1), orientation, w, h)
            upright[:] = (x1 - x0, y1 - y0)
        pw, ph = part[2] - part[0], part[3] - part[1]  # the part's stored size
        if cfg.resize_mode == "squash":
            s = max(size / pw, size / ph)  # both sides end up `size` (either rotation)
        else:
            s = size / (max(pw, ph) if cfg.resize_mode == "letterbox" else min(pw, ph))
        need = (math.ceil(w * s), math.ceil(h * s))
        extent = (0.0, 0.0, float(w), float(h))
        if need[0] < w and need[1] < h:
            res = img.draft("RGB", need)
            if res is not None:
                extent = res[1]  # the photo's extent in the smaller decoded image
        kx, ky = (extent[2] - extent[0]) / w, (extent[3] - extent[1]) / h
        return (extent[0] + part[0] * kx, extent[1] + part[1] * ky, extent[0] + part[2] * kx, extent[1] + part[3] * ky)

    rgb, orientation, box, _ = _decode(src, name, cfg.max_pixels, draft)
    return _place(rgb, box, orientation, upright[0], upright[1], size, cfg.resize_mode, cfg.fill)


def _stored_box(
    box: tuple[float, float, float, float], orientation: int, w: int, h: int
) -> tuple[float, float, float, float]:
    """A box in upright coordinates -> the box of the same pixels in the stored w x h image
    (the inverse of the EXIF transpose, applied to two opposite corners)."""
    stored = {  # upright (x, y) -> stored (x, y)
        1: lambda x, y: (x, y),
        2: lambda x, y: (w - x, y),  # mirrored left-right
        3: lambda x, y: (w - x, h - y),  # turned 180
        4: lambda x, y: (x, h - y),  # mirrored top-bottom
        5: lambda x, y: (y, x),  # transposed
        6: lambda x, y: (y, h - x),  # stored turned 90 anticlockwise
        7: lambda x, y: (w - y, h - x),  # transverse
        8: lambda x, y: (w - y, x),  # stored turned 90 clockwise
    }[orientation]
    (ax, ay), (bx, by) = stored(box[0], box[1]), stored(box[2], box[3])
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


def preprocess(src: ImageSource, cfg: Preprocess, *, name: str | None = None) -> np.ndarray:
    """A photo (path or bytes) -> the model's input, float32 (1, 3, S, S). Raises ImageError."""
    return to_array(load_fitted(src, cfg, name=name)[0], cfg)


def preprocess_with_geometry(
    src: ImageSource, cfg: Preprocess, *, name: str | None = None
) -> tuple[np.ndarray, LetterboxGeometry]:
    """Like ``preprocess``, plus where the photo sits in the input (for Grad-CAM overlays)."""
    img, geom = load_fitted(src, cfg, name=name)
    return to_array(img, cfg), geom


_T = TypeVar("_T")
_R = TypeVar("_R")


def map_threads(fn: Callable[[_T], _R], items: Sequence[_T], workers: int) -> list[_R]:
    """``[fn(x) for x in items]``, on a thread pool when workers > 1 (Pillow releases
    the GIL while decoding and resizing, so threads do run in parallel)."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def preprocess_batch(
    paths: Sequence[ImageSource], cfg: Preprocess, *, workers: int = 1
) -> tuple[np.ndarray, dict[int, ImageError]]:
    """Preprocess many photos; a bad photo does not stop the others.

    Returns (X, errors): X is float32 (N_ok, 3, S, S) with one row per photo that
    worked, in the order of ``paths``; errors maps the index in ``paths`` of each photo
    that failed to its ImageError (whose message names the file)."""

    def one(src: ImageSource) -> np.ndarray | ImageError:
        try:
            return np.asarray(load_fitted(src, cfg)[0])
        except ImageError as err:
            return err

    results = map_threads(one, list(paths), workers)
    errors = {i: r for i, r in enumerate(results) if isinstance(r, ImageError)}
    ok = [r for r in results if not isinstance(r, ImageError)]
    if not ok:
        S = cfg.input_size
        return np.zeros((0, 3, S, S), dtype=np.float32), errors
    return normalize(np.stack(ok), cfg), errors


def to_array(img: Image.Image | np.ndarray, cfg: Preprocess) -> np.ndarray:
    """A PIL image or uint8 (H, W, 3) array -> normalised float32 (1, 3, S, S).

    Images that are not already S x S are fitted first with ``cfg.resize_mode``."""
    if isinstance(img, np.ndarray):
        arr = img
        if arr.shape[:2] != (cfg.input_size, cfg.input_size):
            arr = np.asarray(fit(Image.fromarray(arr), cfg)[0])
    else:
        if img.size != (cfg.input_size, cfg.input_size) or img.mode != "RGB":
            img = fit(img, cfg)[0]
        arr = np.asarray(img)
    return normalize(arr, cfg)


def normalize(images: np.ndarray, cfg: Preprocess) -> np.ndarray:
    """uint8 (H, W, 3) or (N, H, W, 3) -> float32 (N, 3, H, W), C-contiguous:
    ``(pixel / 255 - mean) / std`` per channel."""
    if images.dtype != np.uint8 or images.shape[-1] != 3 or images.ndim not in (3, 4):
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    batch = images[None] if images.ndim == 3 else images  # (N, H, W, 3)
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)  # (N, 3, H, W)
    std = np.asarray(cfg.std, dtype=np.float32)
    scale = (1.0 / (255.0 * std))[:, None, None]  # (3, 1, 1)
    shift = (np.asarray(cfg.mean, dtype=np.float32) / std)[:, None, None]
    x *= scale
    x -= shift
    return x
