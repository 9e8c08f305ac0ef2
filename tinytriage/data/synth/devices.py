"""Phones and laptops, seen from the front, with their screens off or showing a UI.

``screen_damage`` and ``intact_device`` photos come from these same two functions with
the same models, UIs, glare and reflections; the only difference is whether
``damage.crack_screen`` runs on the screen. Reflections are broad and soft (a window, a
lamp, a diagonal sheen), never thin lines, so they are no stand-in for cracks.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tinytriage.data.synth import draw
from tinytriage.data.synth.damage import Damage
from tinytriage.data.synth.scenes import Model, Part, flat, rect_corners

BODY = [
    (25, 25, 28),
    (45, 46, 50),
    (200, 200, 205),
    (235, 233, 228),
    (210, 190, 160),
    (60, 80, 110),
    (120, 30, 40),
    (90, 110, 90),
]


def phone(rng: np.random.Generator, px: float, damage: Damage | None) -> Model:
    """A phone face-up: body (or case), black bezel, a screen with rounded corners."""
    ratio = rng.uniform(1.85, 2.2)
    H = int(max(64, px))
    W = int(H / ratio)
    img = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    body = tuple(int(c) for c in np.array(BODY[int(rng.integers(len(BODY)))]) * rng.uniform(0.9, 1.1))
    radius = W * rng.uniform(0.08, 0.16)
    d.rounded_rectangle([0, 0, W - 1, H - 1], radius, fill=body + (255,))
    rim = int(
        W * (rng.uniform(0.05, 0.1) if rng.random() < 0.35 else rng.uniform(0.006, 0.015))
    )  # a case, or just the frame
    d.rounded_rectangle([rim, rim, W - 1 - rim, H - 1 - rim], max(1, radius - rim), fill=(8, 8, 10, 255))
    bezel = int(W * rng.uniform(0.02, 0.05))
    x0, y0 = rim + bezel, rim + bezel + int(H * rng.uniform(0.0, 0.04))
    x1, y1 = W - rim - bezel, H - rim - bezel - int(H * rng.uniform(0.0, 0.04))
    screen = screen_ui(rng, x1 - x0, y1 - y0, "phone")
    return _finish(rng, img, screen, (x0, y0), radius * 0.8, damage, notch=True)


def laptop(rng: np.random.Generator, px: float, damage: Damage | None) -> Model:
    """An open laptop: the lid facing the camera and the keyboard deck tipped toward it."""
    aspect = rng.uniform(1.45, 1.65)
    W = int(max(96, px))
    H = int(W / aspect)
    shell = tuple(
        int(c)
        for c in np.array([(190, 192, 196), (40, 40, 44), (120, 122, 128), (210, 200, 190)][int(rng.integers(4))])
        * rng.uniform(0.9, 1.1)
    )
    lid = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(lid)
    d.rounded_rectangle(
        [0, 0, W - 1, H - 1], W * 0.02, fill=(12, 12, 14, 255) if rng.random() < 0.6 else shell + (255,)
    )
    side, top = int(W * rng.uniform(0.015, 0.04)), int(W * rng.uniform(0.02, 0.045))
    bottom = int(W * rng.uniform(0.02, 0.07))
    d.ellipse([W / 2 - 2, top / 2 - 2, W / 2 + 2, top / 2 + 2], fill=(40, 40, 50, 255))  # webcam
    screen = screen_ui(rng, W - 2 * side, H - top - bottom, "laptop")
    lid_model = _finish(rng, lid, screen, (side, top), 0, damage, notch=False)

    deck_h = int(H * rng.uniform(0.85, 1.0))
    deck = Image.new("RGBA", (W, deck_h), shell + (255,))
    d = ImageDraw.Draw(deck)
    kx0, kx1, ky0, ky1 = W * 0.07, W * 0.93, deck_h * 0.08, deck_h * 0.55
    key_colour = (20, 20, 22, 255) if rng.random() < 0.7 else tuple(min(255, c + 25) for c in shell) + (255,)
    rows, cols = 6, 14
    kw, kh = (kx1 - kx0) / cols, (ky1 - ky0) / rows
    for r in range(rows):
        for c in range(cols):
            d.rounded_rectangle(
                [
                    kx0 + c * kw + kw * 0.08,
                    ky0 + r * kh + kh * 0.1,
                    kx0 + (c + 1) * kw - kw * 0.08,
                    ky0 + (r + 1) * kh - kh * 0.1,
                ],
                kw * 0.12,
                fill=key_colour,
            )
    tw = W * rng.uniform(0.28, 0.4)
    d.rounded_rectangle(
        [W / 2 - tw / 2, deck_h * 0.62, W / 2 + tw / 2, deck_h * 0.93],
        W * 0.01,
        fill=tuple(int(c * 0.93) for c in shell) + (255,),
    )
    deck = deck.convert("RGB").point(lambda v: int(v * 0.92)).convert("RGBA")  # the deck faces the ceiling, lit less

    # 3-D: the lid in z = 0 (hinge at its bottom edge), the deck swung toward the camera;
    # then the whole laptop tipped back a little so the camera looks down on the keys.
    s = 1.0 / W
    lid_c = rect_corners(1.0, H * s)
    hinge_y = H * s / 2
    opening = np.radians(rng.uniform(100, 125))
    out = np.array([0, -np.cos(opening), np.sin(opening)]) * deck_h * s  # from the hinge, toward the camera
    deck_c = np.array([[-0.5, hinge_y, 0], [0.5, hinge_y, 0], [0.5, hinge_y, 0] + out, [-0.5, hinge_y, 0] + out])
    tip = np.radians(rng.uniform(10, 25))
    R = np.array([[1, 0, 0], [0, np.cos(tip), -np.sin(tip)], [0, np.sin(tip), np.cos(tip)]])
    lid_part = lid_model.parts[0]
    parts = [Part(lid_part.image, lid_c @ R.T, lid_part.damage), Part(deck, deck_c @ R.T, cull=True)]
    ground = np.array([deck_c[0], deck_c[1], deck_c[3]]) @ R.T  # the desk: the plane of the deck
    return Model(parts, ground=ground, lift=0.01)


def _finish(
    rng: np.random.Generator,
    body: Image.Image,
    screen: Image.Image,
    xy: tuple[int, int],
    radius: float,
    damage: Damage | None,
    notch: bool,
) -> Model:
    """Crack (maybe), add reflections, and set the screen into the body; returns a flat model."""
    sw, sh = screen.size
    if notch and rng.random() < 0.7:  # punch-hole camera
        r = sw * 0.025
        ImageDraw.Draw(screen).ellipse([sw / 2 - r, sh * 0.025 - r, sw / 2 + r, sh * 0.025 + r], fill=(5, 5, 8))
    mask = damage.apply(screen) if damage is not None else None
    glare(rng, screen)
    shape = Image.new("L", (sw, sh), 0)
    ImageDraw.Draw(shape).rounded_rectangle([0, 0, sw - 1, sh - 1], max(0, radius), fill=255)
    body.paste(screen, xy, shape)
    full = None
    if mask is not None:
        full = Image.new("L", body.size, 0)
        full.paste(mask, xy, shape)
    return flat(body, full, lift=0.015)


def screen_ui(rng: np.random.Generator, w: int, h: int, form: str) -> Image.Image:
    """What a screen shows: off (dark glass), a lock screen, a home screen, an app, a desktop."""
    kind = ["off", "lock", "home", "app"][int(rng.choice(4, p=[0.3, 0.2, 0.25, 0.25]))]
    if kind == "off":
        g = rng.uniform(6, 30)
        y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
        level = g * (0.6 + 0.8 * (0.5 * x + 0.5 * y))
        tint = np.array([1.0, 1.02, 1.12], np.float32)
        return Image.fromarray(np.clip(level[:, :, None] * tint, 0, 255).astype(np.uint8))
    img = _wallpaper(rng, w, h) if kind in ("lock", "home") or form == "laptop" else None
    if kind == "app" or (form == "laptop" and kind == "home"):
        return _app(rng, w, h, form, img)
    d = ImageDraw.Draw(img)
    if kind == "lock":
        draw.text(
            d,
            (w * 0.28, h * 0.12),
            f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}",
            w * 0.2,
            (255, 255, 255),
            bold=True,
        )
        draw.greek_line(d, (w * 0.3, h * 0.25), w * 0.4, w * 0.045, (235, 235, 235), rng)
        for i in range(int(rng.integers(0, 3))):  # notifications
            y = h * (0.35 + 0.1 * i)
            d.rounded_rectangle([w * 0.05, y, w * 0.95, y + h * 0.08], w * 0.04, fill=(245, 245, 245))
            draw.greek_line(d, (w * 0.1, y + h * 0.02), w * 0.6, w * 0.04, (90, 90, 90), rng)
    else:  # home screen: a grid of app icons and a dock
        n_cols = 4
        cell = w / n_cols
        for r in range(int(rng.integers(2, 6))):
            for c in range(n_cols):
                x, y = c * cell + cell * 0.18, h * 0.08 + r * cell * 1.15
                d.rounded_rectangle([x, y, x + cell * 0.64, y + cell * 0.64], cell * 0.15, fill=draw.vivid(rng))
                d.ellipse([x + cell * 0.2, y + cell * 0.2, x + cell * 0.44, y + cell * 0.44], fill=(255, 255, 255))
        d.rounded_rectangle([w * 0.04, h * 0.86, w * 0.96, h * 0.97], w * 0.06, fill=(235, 235, 240))
        for c in range(4):
            x = w * 0.08 + c * w * 0.225
            d.rounded_rectangle(
                [x, h * 0.875, x + cell * 0.6, h * 0.875 + cell * 0.6], cell * 0.15, fill=draw.vivid(rng)
            )
    return img


def _wallpaper(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A gradient between two colours with a few large soft blobs."""
    a, b = np.array(draw.vivid(rng), np.float32), np.array(draw.vivid(rng), np.float32) * 0.6
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = Image.fromarray(np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).astype(np.uint8))
    blobs = Image.new("RGBA", (max(1, w // 4), max(1, h // 4)), (0, 0, 0, 0))
    d = ImageDraw.Draw(blobs)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy, r = rng.uniform(0, w / 4), rng.uniform(0, h / 4), rng.uniform(0.1, 0.4) * w / 4
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=draw.vivid(rng) + (150,))
    blobs = blobs.filter(ImageFilter.GaussianBlur(w / 40)).resize((w, h), Image.BILINEAR)
    return Image.alpha_composite(img.convert("RGBA"), blobs).convert("RGB")


def _app(rng: np.random.Generator, w: int, h: int, form: str, wallpaper: Image.Image | None) -> Image.Image:
    """An app or a desktop with a window: header bar, list rows with thumbnails, buttons."""
    dark = rng.random() < 0.3
    bg, fg = ((28, 28, 32), (200, 200, 205)) if dark else ((250, 250, 252), (70, 70, 78))
    if form == "laptop":
        img = wallpaper if wallpaper is not None else Image.new("RGB", (w, h), (40, 90, 140))
        d = ImageDraw.Draw(img)
        d.rectangle([0, h * 0.95, w, h], fill=(30, 30, 35))  # taskbar
        for i in range(int(rng.integers(3, 8))):
            d.rectangle([w * (0.3 + 0.04 * i), h * 0.955, w * (0.33 + 0.04 * i), h * 0.99], fill=draw.vivid(rng))
        x0, y0 = w * rng.uniform(0.02, 0.25), h * rng.uniform(0.02, 0.15)
        x1, y1 = x0 + w * rng.uniform(0.55, 0.95 - x0 / w), y0 + h * rng.uniform(0.6, 0.93 - y0 / h)
        d.rectangle([x0, y0, x1, y1], fill=bg)
        d.rectangle([x0, y0, x1, y0 + h * 0.05], fill=(225, 225, 230) if not dark else (50, 50, 56))
        box = (x0, y0 + h * 0.05, x1, y1)
    else:
        img = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(img)
        box = (0, h * 0.04, w, h)
    bx0, by0, bx1, by1 = box
    bw = bx1 - bx0
    accent = draw.vivid(rng)
    d.rectangle([bx0, by0, bx1, by0 + bw * 0.13], fill=accent)
    draw.greek_line(d, (bx0 + bw * 0.06, by0 + bw * 0.04), bw * 0.4, bw * 0.05, (255, 255, 255), rng)
    y = by0 + bw * 0.18
    row = bw * rng.uniform(0.14, 0.22)
    while y + row < by1 - bw * 0.02:
        if rng.random() < 0.6:
            d.rectangle([bx0 + bw * 0.04, y, bx0 + bw * 0.04 + row * 0.8, y + row * 0.8], fill=draw.vivid(rng))
            tx = bx0 + bw * 0.06 + row * 0.8
        else:
            tx = bx0 + bw * 0.05
        draw.greek_line(d, (tx, y + row * 0.05), (bx1 - tx) * rng.uniform(0.4, 0.9), row * 0.22, fg, rng)
        draw.greek_line(
            d,
            (tx, y + row * 0.4),
            (bx1 - tx) * rng.uniform(0.3, 0.8),
            row * 0.16,
            tuple(int(c * 0.8 + 40) for c in fg),
            rng,
        )
        d.line([bx0, y + row * 0.95, bx1, y + row * 0.95], fill=(220, 220, 225) if not dark else (55, 55, 60))
        y += row
    if rng.random() < 0.5:
        d.rounded_rectangle([bx0 + bw * 0.1, by1 - bw * 0.16, bx1 - bw * 0.1, by1 - bw * 0.05], bw * 0.04, fill=accent)
    return img


def glare(rng: np.random.Generator, screen: Image.Image) -> None:
    """Soft reflections on the glass (in place): a sheen band, a lamp, a window; maybe none."""
    kind = ["none", "sheen", "lamp", "window"][int(rng.choice(4, p=[0.35, 0.3, 0.15, 0.2]))]
    if kind == "none":
        return
    w, h = screen.size
    k = 4  # soft shapes: draw at quarter size, blur, scale up
    sw, sh = max(2, w // k), max(2, h // k)
    layer = Image.new("L", (sw, sh), 0)
    d = ImageDraw.Draw(layer)
    strength = int(rng.uniform(40, 140))
    if kind == "sheen":
        t = rng.uniform(-0.3, 1.0)
        b = rng.uniform(0.15, 0.5)
        d.polygon([(t * sw, 0), ((t + b) * sw, 0), ((t + b - 0.7) * sw, sh), ((t - 0.7) * sw, sh)], fill=strength)
    elif kind == "lamp":
        cx, cy, r = rng.uniform(0, sw), rng.uniform(0, sh), rng.uniform(0.05, 0.2) * sw
        d.ellipse([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=min(255, strength * 2))
    else:
        x0, y0 = rng.uniform(-0.2, 0.6) * sw, rng.uniform(-0.2, 0.6) * sh
        x1, y1 = x0 + rng.uniform(0.3, 0.8) * sw, y0 + rng.uniform(0.3, 0.7) * sh
        d.rectangle([x0, y0, x1, y1], fill=strength)
        bar = max(1, int(sw * 0.03))
        d.rectangle([(x0 + x1) / 2 - bar, y0, (x0 + x1) / 2 + bar, y1], fill=strength // 3)  # window frame
    layer = layer.filter(ImageFilter.GaussianBlur(max(1.0, sw * rng.uniform(0.02, 0.08)))).resize(
        (w, h), Image.BILINEAR
    )
    screen.paste((235, 240, 250), (0, 0), layer)
