"""Small drawing helpers shared by the scenes: fonts, text, greeked text, barcodes.

Text uses Pillow's built-in font (no font files to ship). Lines too small to read in a
photo are "greeked": grey bars of word-like lengths, which look the same at photo
scale and cost far less than shaping glyphs.
"""

from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, ...]

FIRST = [
    "Anna",
    "Ben",
    "Chloe",
    "David",
    "Eva",
    "Femi",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kai",
    "Lena",
    "Marta",
    "Noah",
    "Omar",
    "Priya",
    "Ravi",
    "Sofia",
    "Tom",
    "Yuki",
]
LAST = [
    "Smith",
    "Jansen",
    "Garcia",
    "Müller",
    "Okafor",
    "Rossi",
    "Novak",
    "Larsen",
    "Dubois",
    "Kim",
    "Silva",
    "Nguyen",
    "Brown",
    "Cohen",
    "Ivanova",
    "Patel",
]
STREET = [
    "High St",
    "Mill Lane",
    "Oak Avenue",
    "Station Rd",
    "Park Road",
    "Kerkstraat",
    "Hauptstr.",
    "Rue Verte",
    "Elm Street",
    "Harbour Way",
]
CITY = [
    "London",
    "Utrecht",
    "Berlin",
    "Lyon",
    "Leeds",
    "Porto",
    "Ghent",
    "Malmo",
    "Bristol",
    "Graz",
    "Dublin",
    "Aarhus",
]
PRODUCT = [
    "USB-C cable 1m",
    "Phone case",
    "Wireless mouse",
    "Laptop sleeve 14in",
    "Screen protector",
    "Charger 65W",
    "Headphones",
    "Keyboard",
    "HDMI adapter",
    "Power bank",
    "Smart watch strap",
    "SD card 128GB",
]
CARRIER = ["PARCELGO", "SWIFTPOST", "EUROSHIP", "BOXLINE", "QUICKDROP", "NORDPAK"]
SHOP = ["Gadgetly", "BrightCell", "TechNest", "Fixora", "Voltbox", "Pixelhaus"]


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` pixels."""
    return ImageFont.load_default(size=max(6, int(size)))


def pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=n))


def name(rng: np.random.Generator) -> str:
    return f"{pick(rng, FIRST)} {pick(rng, LAST)}"


def address(rng: np.random.Generator) -> list[str]:
    """Three lines of a plausible address."""
    return [name(rng), f"{int(rng.integers(1, 240))} {pick(rng, STREET)}", f"{digits(rng, 4)} {pick(rng, CITY)}"]


def text(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], s: str, size: float, fill: Colour, bold: bool = False
) -> float:
    """Draw ``s`` with its top-left at ``xy``; returns the width it took. Falls back to bars when tiny."""
    if size < 7:
        return greek_line(draw, xy, size * 0.6 * len(s), size, fill)
    draw.text(xy, s, font=font(size), fill=fill, stroke_width=1 if bold and size >= 12 else 0, stroke_fill=fill)
    return draw.textlength(s, font=font(size))


def greek_line(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    width: float,
    size: float,
    fill: Colour,
    rng: np.random.Generator | None = None,
) -> float:
    """A line of word-like bars, ``width`` pixels long and ``size`` pixels tall (x-height ~ 0.55 size)."""
    x, y = xy
    end = x + width
    h = max(1.0, size * 0.5)
    y0 = y + size * 0.3
    k = 0
    while x < end - 2:
        word = size * (1.2 + 2.5 * (((k * 7919) % 13) / 13 if rng is None else rng.random()))
        draw.rectangle([x, y0, min(x + word, end), y0 + h], fill=fill)
        x += word + size * 0.45
        k += 1
    return width


def paragraph(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    size: float,
    fill: Colour,
    spacing: float = 1.5,
) -> None:
    """Greeked lines filling ``box`` (x0, y0, x1, y1), ragged right."""
    x0, y0, x1, y1 = box
    y = y0
    while y + size <= y1:
        greek_line(draw, (x0, y), (x1 - x0) * rng.uniform(0.55, 1.0), size, fill, rng)
        y += size * spacing


def barcode(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    fill: Colour = (0, 0, 0),
) -> None:
    """A 1-D barcode (random Code-128-like bars of 1-4 modules) filling ``box``."""
    x0, y0, x1, y1 = box
    widths = rng.integers(1, 5, size=int(max(8, (x1 - x0) / 2)))
    module = (x1 - x0) / float(widths.sum())
    x = x0
    for i, w in enumerate(widths):
        if i % 2 == 0:
            draw.rectangle([x, y0, max(x, x + w * module - 0.5), y1], fill=fill)  # a tiny label: >= 1 px
        x += w * module


def matrix_code(
    image: Image.Image,
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    n: int = 21,
    fill: Colour = (0, 0, 0),
) -> None:
    """A QR-like square of random modules with three finder patterns, pasted into ``image``."""
    cells = rng.random((n, n)) < 0.5
    for fy, fx in [(0, 0), (0, n - 7), (n - 7, 0)]:  # finder squares: 7x7 ring, 3x3 centre
        cells[fy : fy + 7, fx : fx + 7] = False
        cells[fy : fy + 7, fx] = cells[fy : fy + 7, fx + 6] = True
        cells[fy, fx : fx + 7] = cells[fy + 6, fx : fx + 7] = True
        cells[fy + 2 : fy + 5, fx + 2 : fx + 5] = True
    x0, y0, x1, _ = box
    side = max(n, int(x1 - x0))
    modules = Image.fromarray(cells.astype(np.uint8) * 255).resize((side, side), Image.NEAREST)
    image.paste(fill, (int(x0), int(y0)), modules)


def vivid(rng: np.random.Generator) -> Colour:
    """A saturated UI colour (app icons, buttons, logos)."""
    h = rng.random()
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.45, 0.9), rng.uniform(0.6, 0.95))
    return int(r * 255), int(g * 255), int(b * 255)
