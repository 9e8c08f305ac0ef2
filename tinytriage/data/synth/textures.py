"""Procedural textures: value noise, and the surfaces photos are taken on.

Everything is built from *value noise*: random values on a coarse grid, smoothly
interpolated (a bicubic resize does the interpolation in C), and summed over octaves
("fractional Brownian motion", fBm: each octave has twice the frequency and half the
amplitude of the one before).

A surface is a grey *pattern* in [0, 255] (wood grain, tiles, carpet...) plus a colour
map from a dark to a light colour. Patterns are made once per process from fixed seeds
and cached; a photo picks one and views it through its own camera homography with its
own colours, so a background costs one warp instead of a fresh noise field.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

#: Side of a cached surface pattern, in pixels.
TILE = 768

#: Surfaces a ticket photo is taken on: kind -> (dark, light) colour pairs.
SURFACES: dict[str, list[tuple[tuple[int, int, int], tuple[int, int, int]]]] = {
    "wood": [
        ((120, 78, 40), (205, 158, 104)),  # oak
        ((52, 32, 20), (122, 82, 50)),  # walnut
        ((100, 45, 28), (170, 96, 62)),  # cherry
        ((150, 138, 120), (222, 214, 198)),  # white-washed
        ((78, 74, 70), (150, 145, 138)),  # grey oak
    ],
    "floor": [
        ((110, 80, 50), (190, 150, 105)),  # laminate
        ((140, 130, 118), (205, 198, 188)),  # pale laminate
        ((70, 50, 36), (140, 104, 72)),  # dark parquet
    ],
    "tiles": [
        ((150, 150, 148), (226, 226, 222)),  # white ceramic
        ((110, 104, 96), (178, 170, 158)),  # grey stone
        ((130, 70, 45), (196, 120, 84)),  # terracotta
    ],
    "carpet": [
        ((80, 80, 82), (135, 135, 137)),  # grey
        ((130, 115, 95), (185, 170, 145)),  # beige
        ((45, 57, 90), (90, 105, 145)),  # blue
        ((90, 58, 52), (145, 98, 88)),  # red-brown
    ],
    "concrete": [
        ((110, 110, 107), (170, 168, 163)),
        ((135, 128, 118), (190, 182, 170)),
    ],
    "fabric": [
        ((50, 60, 85), (130, 145, 175)),  # denim-blue sofa
        ((150, 140, 125), (225, 218, 205)),  # linen bed sheet
        ((60, 60, 62), (125, 125, 128)),  # grey couch
        ((90, 40, 40), (170, 90, 85)),  # red throw
        ((60, 85, 60), (130, 160, 125)),  # green
    ],
    "plain": [
        ((205, 205, 202), (238, 238, 235)),  # white desk
        ((32, 32, 34), (58, 58, 61)),  # black desk
        ((135, 135, 133), (165, 165, 162)),  # grey laminate
    ],
    # a product shot: a seamless paper sweep, white or pale, nearly flat
    "studio": [
        ((236, 236, 236), (255, 255, 255)),  # white
        ((214, 216, 220), (246, 247, 250)),  # cool pale grey
        ((226, 222, 214), (252, 250, 245)),  # warm off-white
        ((160, 162, 166), (205, 207, 211)),  # mid grey
    ],
    # outdoors, where couriers leave parcels: driveways, kerbs, porch steps, doormats
    "asphalt": [
        ((38, 38, 40), (105, 105, 108)),  # fresh, dark
        ((70, 70, 70), (140, 138, 134)),  # worn, grey
    ],
    "pavers": [
        ((120, 60, 45), (185, 110, 85)),  # red brick
        ((105, 100, 95), (175, 168, 158)),  # grey paving stones
        ((150, 125, 95), (205, 185, 150)),  # sandstone
    ],
    "doormat": [
        ((95, 65, 35), (170, 130, 80)),  # coir
        ((35, 35, 38), (80, 80, 84)),  # black rubber
        ((70, 55, 45), (130, 110, 90)),  # brown rubber
    ],
}


def value_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth noise (h, w) float32 in about [0, 1]: a random (cells_y+1, cells_x+1) grid, bicubic-upsampled."""
    grid = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.BICUBIC))


def fbm(rng: np.random.Generator, h: int, w: int, cells: int, octaves: int = 4, aspect: float = 1.0) -> np.ndarray:
    """Fractal noise (h, w) in [0, 1]; ``aspect`` > 1 stretches features along x (wood grain)."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = cells * 2**o
        out += amp * value_noise(rng, h, w, c, max(1, round(c / aspect)))
        total += amp
        amp *= 0.5
    out /= total
    return _normalise(out)


def _normalise(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x[::4, ::4], [1, 99])
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _planks(rng: np.random.Generator, n: int, width_cells: tuple[int, int], seams: float) -> np.ndarray:
    """Wood planks: grain rings warped by stretched noise, a brightness and phase per plank."""
    ys = np.arange(n, dtype=np.float32)[:, None]
    warp = fbm(rng, n, n, 3, 4, aspect=10.0)
    streak = fbm(rng, n, n, 48, 2, aspect=12.0)
    out = np.empty((n, n), np.float32)
    edges = [0]
    while edges[-1] < n:
        edges.append(edges[-1] + int(rng.integers(*width_cells)))
    for y0, y1 in zip(edges[:-1], edges[1:], strict=False):
        freq = rng.uniform(0.04, 0.12)
        phase = rng.uniform(0, 100)
        rings = 0.5 + 0.5 * np.sin(freq * ys[y0:y1] + 9.0 * warp[y0:y1] + phase)
        tone = rng.uniform(0.75, 1.0)
        out[y0:y1] = tone * (0.55 * rings**2 + 0.45 * streak[y0:y1])
        out[y0 : min(y0 + 2, n)] *= 1.0 - seams  # the groove between planks
        if seams > 0:  # a butt joint somewhere along the plank
            x = int(rng.integers(0, n))
            out[y0:y1, x : x + 2] *= 1.0 - seams
    return out


def _tiles(rng: np.random.Generator, n: int) -> np.ndarray:
    cell = int(rng.integers(n // 6, n // 3))
    grout = max(2, cell // 40)
    marble = fbm(rng, n, n, 6, 5)
    tone = rng.uniform(0.8, 1.0, size=(n // cell + 2, n // cell + 2)).astype(np.float32)
    yy, xx = np.mgrid[0:n, 0:n]
    out = 0.8 * tone[yy // cell, xx // cell] + 0.2 * marble
    out[(yy % cell < grout) | (xx % cell < grout)] *= 0.55
    return out


def _carpet(rng: np.random.Generator, n: int) -> np.ndarray:
    fibres = rng.random((n, n), dtype=np.float32)
    tufts = fbm(rng, n, n, 96, 2)
    wear = fbm(rng, n, n, 4, 3)
    return 0.35 * fibres + 0.35 * tufts + 0.3 * wear


def _concrete(rng: np.random.Generator, n: int) -> np.ndarray:
    base = fbm(rng, n, n, 16, 5)
    grit = fbm(rng, n, n, 160, 2)
    pits = (rng.random((n, n)) < 0.003).astype(np.float32)
    return 0.2 * base + 0.55 * grit + 0.25 * rng.random((n, n), dtype=np.float32) - 0.4 * pits


def _fabric(rng: np.random.Generator, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    k = rng.uniform(0.6, 1.4)
    weave = 0.5 + 0.25 * (np.sin(k * xx) + np.sin(k * yy))
    folds = np.abs(fbm(rng, n, n, 3, 3, aspect=rng.uniform(0.5, 3)) - 0.5) * 2  # ridges of creases
    return 0.25 * weave + 0.75 * (1 - folds) ** 0.7


def _plain(rng: np.random.Generator, n: int) -> np.ndarray:
    return 0.6 * fbm(rng, n, n, 3, 3) + 0.4 * fbm(rng, n, n, 128, 2)


def _studio(rng: np.random.Generator, n: int) -> np.ndarray:
    """A paper sweep: one broad soft gradient (the light falling off), almost no texture."""
    return 0.9 * fbm(rng, n, n, 1, 2) + 0.1 * fbm(rng, n, n, 64, 1)


def _asphalt(rng: np.random.Generator, n: int) -> np.ndarray:
    """Tarmac: bright and dark stones in dark binder, patches of wear, maybe a crack."""
    stones = rng.random((n, n), dtype=np.float32)
    stones = np.where(stones > 0.93, 1.0, np.where(stones < 0.1, 0.0, 0.45)).astype(np.float32)
    chips = np.asarray(Image.fromarray(stones, "F").resize((n // 2, n // 2), Image.BOX).resize((n, n)), np.float32)
    wear = fbm(rng, n, n, 5, 4)
    return 0.5 * chips + 0.3 * wear + 0.2 * fbm(rng, n, n, 200, 1)


def _pavers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Bricks or paving stones in a running bond, each its own tone, dark joints."""
    rows = int(rng.integers(6, 12))
    bh = n // rows
    bw = int(bh * rng.uniform(1.6, 2.2))
    joint = max(2, bh // 12)
    yy, xx = np.mgrid[0:n, 0:n]
    row = yy // bh
    shifted = xx + (row % 2) * (bw // 2)
    tone = rng.uniform(0.6, 1.0, size=(rows + 2, n // bw + 3)).astype(np.float32)
    out = 0.7 * tone[row, shifted // bw] + 0.3 * fbm(rng, n, n, 48, 3)
    out[(yy % bh < joint) | (shifted % bw < joint)] *= 0.4
    return out


def _doormat(rng: np.random.Generator, n: int) -> np.ndarray:
    """Coir or rubber: fine bristle rows and a raised border."""
    yy = np.arange(n, dtype=np.float32)[:, None]
    rows = 0.5 + 0.5 * np.sin(yy * rng.uniform(0.5, 0.9))
    bristles = fbm(rng, n, n, 160, 2, aspect=0.3)
    out = 0.4 * rows + 0.6 * bristles
    b = n // int(rng.integers(8, 14))
    out[:b], out[-b:], out[:, :b], out[:, -b:] = out[:b] * 0.6, out[-b:] * 0.6, out[:, :b] * 0.6, out[:, -b:] * 0.6
    return out


def _cardboard(rng: np.random.Generator, n: int) -> np.ndarray:
    fibres = fbm(rng, n, n, 96, 2, aspect=4.0)
    blotches = fbm(rng, n, n, 6, 4)
    flutes = 0.5 + 0.5 * np.sin(np.arange(n, dtype=np.float32) * rng.uniform(0.5, 0.8))[None, :]  # corrugation
    return 0.45 * fibres + 0.4 * blotches + 0.15 * flutes


def _paper(rng: np.random.Generator, n: int) -> np.ndarray:
    return 0.7 * fbm(rng, n, n, 24, 3) + 0.3 * fbm(rng, n, n, 3, 2)


def _crinkle(rng: np.random.Generator, n: int) -> np.ndarray:
    """Plastic mailer or padded envelope: broad soft folds, a fine bubbly grain."""
    folds = fbm(rng, n, n, 3, 3, aspect=rng.uniform(0.4, 2.5))
    grain = fbm(rng, n, n, 64, 2)
    return 0.8 * folds + 0.2 * grain


_MAKERS = {
    "cardboard": _cardboard,
    "paper": _paper,
    "crinkle": _crinkle,
    "wood": lambda rng, n: _planks(rng, n, (n // 7, n // 3), seams=0.35),
    "floor": lambda rng, n: _planks(rng, n, (n // 6, n // 4), seams=0.6),
    "tiles": _tiles,
    "carpet": _carpet,
    "concrete": _concrete,
    "fabric": _fabric,
    "plain": _plain,
    "studio": _studio,
    "asphalt": _asphalt,
    "pavers": _pavers,
    "doormat": _doormat,
}

#: Cached patterns per surface kind (variety comes from crop, scale and colour too).
VARIANTS = 3


@cache
def pattern(kind: str, variant: int) -> Image.Image:
    """The cached grey pattern (mode "L", TILE x TILE) of a surface; same bytes in every process."""
    rng = np.random.default_rng([sorted(_MAKERS).index(kind), variant, 20240611])
    p = _normalise(_MAKERS[kind](rng, TILE))
    return Image.fromarray((p * 255).astype(np.uint8), "L")


def colourise(grey: Image.Image, dark: np.ndarray, light: np.ndarray) -> Image.Image:
    """Map a grey ("L") pattern to RGB between two colours, through a 256-entry palette."""
    lut = dark[None, :] + (light - dark)[None, :] * np.linspace(0, 1, 256, dtype=np.float32)[:, None]
    p = grey.copy()
    p.putpalette(np.clip(lut, 0, 255).astype(np.uint8).ravel().tolist())  # "L" + palette -> "P"
    return p.convert("RGB")


def surface_colours(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A (dark, light) colour pair for a surface, jittered so no two photos share it exactly."""
    dark, light = SURFACES[kind][int(rng.integers(len(SURFACES[kind])))]
    jitter = rng.normal(1.0, 0.07, size=3) * rng.uniform(0.8, 1.15)
    return np.asarray(dark, np.float32) * jitter, np.asarray(light, np.float32) * jitter


def material(
    rng: np.random.Generator, kind: str, size: tuple[int, int], dark: tuple[float, ...], light: tuple[float, ...]
) -> Image.Image:
    """An RGB ``size`` swatch of a cached pattern (random crop and zoom), coloured dark..light."""
    w, h = size
    pat = pattern(kind, int(rng.integers(VARIANTS)))
    side = int(TILE * rng.uniform(0.4, 1.0))
    x, y = rng.integers(0, TILE - side + 1, 2)
    scale = side / max(w, h)
    box = (int(x), int(y), int(x + w * scale), int(y + h * scale))
    grey = pat.resize((w, h), Image.BILINEAR, box=box)
    return colourise(grey, np.asarray(dark, np.float32), np.asarray(light, np.float32))


def warm_cache() -> None:
    """Build every cached pattern now (each process builds them on first use otherwise)."""
    for kind in _MAKERS:
        for variant in range(VARIANTS):
            pattern(kind, variant)
