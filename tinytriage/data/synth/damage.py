"""Screen damage: cracked glass and broken LCDs, drawn onto a screen's picture.

Glass breaks from an impact point: cracks run outward as jagged lines that branch, and
concentric rings join neighbouring cracks into a spider web; around the point itself the
glass is crushed into small shards, and broken edges catch the light as glints. A blow to
a corner shatters it from there; a phone dropped more than once is shattered all over,
webs from several points crossing. A damaged LCD shows dead-pixel bands (stripes of stuck
colour) and black ink-like dead areas, alone or under cracked glass. Every stroke is also drawn into a mask, which the scene warps
with the screen, so the damage box is measured from what was actually drawn.

Widths scale with the screen's size in pixels (not fixed at 1 px), so a crack stays
visible when the photo is shrunk to the 96-128 px a network sees. ``strength`` makes
some damage faint but never invisible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Path = list[tuple[float, float]]


@dataclass
class Damage:
    """A request to damage a screen (what a device renderer receives for screen_damage)."""

    rng: np.random.Generator  # the damage's own random stream, separate from the scene's
    min_width: float = 1.0  # thinnest crack, in pixels: keeps cracks visible when the photo is shrunk
    visible: bool = True  # False: measure where it would be, leave the screen intact (for checks)

    def apply(self, screen: Image.Image) -> Image.Image:
        """Crack ``screen`` (in place, if visible) and return the damage mask."""
        target = screen if self.visible else screen.copy()
        return crack_screen(self.rng, target, self.min_width)


def _walk(
    rng: np.random.Generator, start: np.ndarray, angle: float, length: float, step: float, wiggle: float = 0.15
) -> Path:
    """A jagged crack: straight segments whose direction drifts by ``wiggle`` radians per step."""
    pts = [tuple(start)]
    p = start.astype(np.float64)
    for _ in range(max(1, int(length / step))):
        angle += rng.normal(0, wiggle)
        p = p + step * rng.uniform(0.6, 1.4) * np.array([np.cos(angle), np.sin(angle)])
        pts.append((float(p[0]), float(p[1])))
    return pts


def _point_at(path: Path, centre: np.ndarray, r: float) -> tuple[float, float] | None:
    """First point of ``path`` at least ``r`` from ``centre`` (None if it never gets that far)."""
    for q in path:
        if np.hypot(q[0] - centre[0], q[1] - centre[1]) >= r:
            return q
    return None


def _star(
    rng: np.random.Generator,
    centre: np.ndarray,
    sector: tuple[float, float],
    n: int,
    length: tuple[float, float],
    step: float,
) -> tuple[list[Path], list[Path]]:
    """``n`` cracks radiating from ``centre`` within the angle ``sector``, each maybe branching.

    Returns (all crack paths, the main rays alone).
    """
    a0, a1 = sector
    angles = np.sort(a0 + (a1 - a0) * (np.arange(n) + rng.uniform(0.15, 0.85, n)) / n)
    rays = [_walk(rng, centre, a, rng.uniform(*length), step) for a in angles]
    branches = []
    for ray in rays:
        if len(ray) > 3 and rng.random() < 0.55:
            k = int(rng.integers(1, len(ray) - 1))
            base = np.subtract(ray[k + 1], ray[k])
            a = np.arctan2(base[1], base[0]) + rng.choice([-1, 1]) * rng.uniform(0.35, 0.9)
            branches.append(_walk(rng, np.array(ray[k]), a, step * (len(ray) - k) * rng.uniform(0.3, 0.7), step))
    return rays + branches, rays


def _rings(rng: np.random.Generator, centre: np.ndarray, rays: list[Path], radii: np.ndarray) -> list[Path]:
    """Spider-web rings: short bent segments joining neighbouring rays at each radius."""
    segs = []
    for r in radii:
        for a, b in zip(rays, rays[1:] + rays[:1], strict=True):
            if rng.random() > 0.75:
                continue
            p, q = _point_at(a, centre, r * rng.uniform(0.85, 1.15)), _point_at(b, centre, r * rng.uniform(0.85, 1.15))
            if p is None or q is None or np.hypot(p[0] - q[0], p[1] - q[1]) > 3 * r:
                continue
            mid = (np.add(p, q) / 2 - centre) * rng.uniform(1.0, 1.12) + centre
            segs.append([p, (float(mid[0]), float(mid[1])), q])
    return segs


def _blot(rng: np.random.Generator, centre: np.ndarray, radius: float) -> Path:
    """An irregular closed outline (LCD ink bleed) around ``centre``."""
    t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
    r = radius * np.exp(np.convolve(rng.normal(0, 0.35, 28 + 4), np.ones(5) / 5, "valid"))
    return [(float(centre[0] + r_ * np.cos(a)), float(centre[1] + r_ * np.sin(a))) for a, r_ in zip(t, r, strict=True)]


def crack_screen(rng: np.random.Generator, screen: Image.Image, min_width: float = 1.0) -> Image.Image:
    """Draw damage onto ``screen`` (RGB, in place); return its mask ("L", 255 where drawn).

    Styles: an impact point with a spider web and crushed glass, a shattered corner, glass
    shattered all over from several points, a few long cracks, or a broken LCD (dead-pixel
    band, dead area) - alone or under cracked glass.
    """
    w, h = screen.size
    diag = float(np.hypot(w, h))
    width = max(min_width, diag * rng.uniform(0.004, 0.01))  # crack line width, scaled with the screen
    strength = rng.uniform(0.5, 0.75) if rng.random() < 0.3 else rng.uniform(0.75, 1.0)  # faint ones too
    step = diag * rng.uniform(0.015, 0.03)
    style = ["impact", "corner", "shattered", "lines", "lcd"][int(rng.choice(5, p=[0.35, 0.2, 0.2, 0.13, 0.12]))]

    paths: list[Path] = []  # crack polylines
    shards: list[Path] = []  # filled glass fragments
    if style in ("impact", "shattered"):
        for k in range(1 if style == "impact" else int(rng.integers(2, 5))):
            centre = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h])
            n = int(rng.integers(6, 20))
            cracks, rays = _star(rng, centre, (0, 2 * np.pi), n, (0.25 * diag, 1.0 * diag), step)
            radii = np.sort(rng.uniform(0.02, 0.25, int(rng.integers(1, 7)))) * diag
            paths += cracks + _rings(rng, centre, rays, radii)
            crush = diag * rng.uniform(0.02, 0.08) if k == 0 else diag * rng.uniform(0.01, 0.04)
            shards += _shards(rng, centre, rays, crush) + _crushed(rng, centre, crush)
    elif style == "corner":
        cx, cy = rng.integers(0, 2, 2)
        centre = np.array([cx * w, cy * h]) + np.array([1 - 2 * cx, 1 - 2 * cy]) * rng.uniform(0.0, 0.05, 2) * diag
        inward = np.arctan2(h / 2 - centre[1], w / 2 - centre[0])
        n = int(rng.integers(8, 20))
        cracks, rays = _star(rng, centre, (inward - 1.1, inward + 1.1), n, (0.15 * diag, 0.9 * diag), step * 0.7)
        radii = np.sort(rng.uniform(0.02, 0.3, int(rng.integers(2, 8)))) * diag
        paths += cracks + _rings(rng, centre, rays, radii)
        shards += _shards(rng, centre, rays, diag * rng.uniform(0.04, 0.12)) + _crushed(
            rng, centre, diag * rng.uniform(0.03, 0.1)
        )
    elif style == "lines":
        for _ in range(int(rng.integers(1, 5))):
            edge = int(rng.integers(4))
            t = rng.uniform(0.1, 0.9)
            start = np.array([[t * w, 0], [t * w, h], [0, t * h], [w, t * h]][edge])
            inward = [np.pi / 2, -np.pi / 2, 0.0, np.pi][edge] + rng.uniform(-0.7, 0.7)
            cracks, _ = _star(rng, start, (inward, inward), 1, (0.5 * diag, 1.2 * diag), step)
            paths += cracks

    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    mask = Image.new("L", (w, h), 0)
    d, m = ImageDraw.Draw(overlay), ImageDraw.Draw(mask)
    if style == "lcd" or rng.random() < 0.2:  # the LCD under the glass: drawn first, cracks over it
        _lcd(rng, d, m, w, h, diag, paths)
    for shard in shards:  # glass fragments catch the light differently
        tone = int(rng.choice([255, 0]))
        d.polygon(shard, fill=(tone, tone, tone, int(255 * strength * rng.uniform(0.15, 0.5))))
        m.polygon(shard, fill=255)
    lw = max(1, int(round(width)))
    off = max(1.0, width * 0.6)
    # A break catches the light: a bright line with a thin dark edge. On a bright screen the
    # break reads as a dark line instead. Either way one tone dominates, so a crack does not
    # average away to the screen's own colour when the photo is shrunk.
    bright, dark = (245, 248, 255), (15, 15, 18)
    lit = np.asarray(screen.reduce(8), np.float32).mean() > 150
    main, edge = (dark, bright) if lit else (bright, dark)
    for path in paths:
        a = strength * rng.uniform(0.8, 1.0)
        d.line([(x + off, y + off) for x, y in path], fill=edge + (int(170 * a),), width=max(1, lw // 2))
        d.line(path, fill=main + (int(240 * a),), width=lw, joint="curve" if lw >= 4 else None)  # round joints
        m.line(path, fill=255, width=lw + 2 + 2 * int(np.ceil(off)))  # wide enough to cover both lines
        if len(path) > 2 and rng.random() < 0.3:  # a glint where a broken edge faces the light
            x, y = path[int(rng.integers(1, len(path)))]
            r = lw * rng.uniform(1.0, 2.5)
            d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255, int(255 * a)))
            d.line([(x - 3 * r, y), (x + 3 * r, y)], fill=(255, 255, 255, int(200 * a)), width=max(1, lw // 2))
            m.ellipse([x - 3 * r, y - r, x + 3 * r, y + r], fill=255)
    screen.paste(Image.alpha_composite(screen.convert("RGBA"), overlay).convert("RGB"))
    return mask


def _crushed(rng: np.random.Generator, centre: np.ndarray, radius: float) -> list[Path]:
    """Crushed glass at the impact: many small fragments packed around ``centre``."""
    out = []
    for _ in range(int(rng.integers(10, 40))):
        r = radius * np.sqrt(rng.random())
        a = rng.uniform(0, 2 * np.pi)
        c = centre + r * np.array([np.cos(a), np.sin(a)])
        size = radius * rng.uniform(0.1, 0.35)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 3))
        out.append([(float(c[0] + size * np.cos(t)), float(c[1] + size * np.sin(t))) for t in angles])
    return out


def _shards(rng: np.random.Generator, centre: np.ndarray, rays: list[Path], radius: float) -> list[Path]:
    """Small wedge-shaped fragments between neighbouring rays near the impact."""
    out = []
    for a, b in zip(rays, rays[1:] + rays[:1], strict=True):
        if rng.random() < 0.5:
            p, q = (
                _point_at(a, centre, radius * rng.uniform(0.5, 1.2)),
                _point_at(b, centre, radius * rng.uniform(0.5, 1.2)),
            )
            if p is not None and q is not None and np.hypot(p[0] - q[0], p[1] - q[1]) < 3 * radius:
                out.append([(float(centre[0]), float(centre[1])), p, q])
    return out


def _lcd(
    rng: np.random.Generator,
    d: ImageDraw.ImageDraw,
    m: ImageDraw.ImageDraw,
    w: int,
    h: int,
    diag: float,
    paths: list[Path],
) -> None:
    """Broken-LCD marks: a dead-pixel band of coloured stripes, or a black ink blot."""
    colours = [(255, 0, 255), (0, 255, 0), (0, 255, 255), (255, 255, 255), (255, 40, 40), (10, 10, 10)]
    if rng.random() < 0.6:  # a band of stuck columns (or rows)
        vertical = rng.random() < 0.7
        n = w if vertical else h
        band = max(2, int(n * rng.uniform(0.015, 0.1)))
        start = int(rng.integers(0, max(1, n - band)))
        length = w if not vertical else h
        a0 = int(rng.uniform(0, 0.5) * length) if rng.random() < 0.4 else 0  # partial bands start mid-screen
        x = start
        while x < start + band:
            sw = min(start + band - x, max(1, int(rng.integers(1, max(2, band // 3 + 1)))))
            c = colours[int(rng.integers(len(colours)))] + (int(rng.uniform(170, 255)),)
            box = [x, a0, x + sw - 1, length] if vertical else [a0, x, length, x + sw - 1]
            d.rectangle(box, fill=c)
            x += sw
        m.rectangle([start, a0, start + band, length] if vertical else [a0, start, length, start + band], fill=255)
    else:  # ink blot, from the impact if there is one
        centre = (
            np.array(paths[0][0]) if paths else np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
        )
        outline = _blot(rng, centre, diag * rng.uniform(0.05, 0.3))
        d.polygon(outline, fill=(5, 5, 8, 245), outline=(120, 40, 160, 255))
        d.line(outline + outline[:1], fill=(150, 60, 190, 200), width=max(1, int(diag * 0.006)))
        m.polygon(outline, fill=255, outline=255)
        m.line(outline + outline[:1], fill=255, width=max(1, int(diag * 0.006)) + 2)
