"""Phones and laptops, seen from the front, with their screens off or showing a UI.

``screen_damage`` and ``intact_device`` photos come from these same two functions with
the same models, UIs, glare and reflections; the only difference is whether
``damage.crack_screen`` runs on the screen. Reflections are broad and soft (a window, a
lamp, a diagonal sheen), never thin lines, so they are no stand-in for cracks.

Screens look like real phones' screens: bright, busy wallpapers (photographs, colour
waves, bokeh, paint splashes) under dense app grids, widgets and status bars. An intact
phone may also be photographed from the back (``phone_back``: camera bump, logo, glass
or metal sheen), which a damaged screen never is.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tinytriage.data.synth import draw, other
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


def phone_back(rng: np.random.Generator, px: float, damage: Damage | None = None) -> Model:
    """A phone face-down: glass or metal back with a sheen, a camera bump, a flash, a logo."""
    ratio = rng.uniform(1.85, 2.2)
    H = int(max(64, px))
    W = int(H / ratio)
    body = np.array(BODY[int(rng.integers(len(BODY)))], np.float32) * rng.uniform(0.9, 1.1)
    # a broad sheen across the back: glass and brushed metal both show one
    y, x = np.mgrid[0 : 1 : H * 1j, 0 : 1 : W * 1j].astype(np.float32)
    t = rng.uniform(-0.3, 1.3)
    sheen = np.exp(-(((x + 0.5 * y) / 1.5 - t / 1.5) ** 2) / rng.uniform(0.005, 0.05)) * rng.uniform(0.1, 0.5)
    shade = 0.85 + 0.15 * (1 - y) + sheen
    pixels = np.clip(body[None, None, :] * shade[:, :, None] + 60 * sheen[:, :, None], 0, 255).astype(np.uint8)
    img = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    shape = Image.new("L", (W, H), 0)
    radius = W * rng.uniform(0.08, 0.16)
    ImageDraw.Draw(shape).rounded_rectangle([0, 0, W - 1, H - 1], radius, fill=255)
    img.paste(Image.fromarray(pixels), (0, 0), shape)
    d = ImageDraw.Draw(img)
    dark = tuple(int(c * 0.55) for c in body)
    lens = W * rng.uniform(0.08, 0.13)
    if rng.random() < 0.6:  # a square camera bump in the top corner, two or three lenses
        x0, y0 = W * rng.uniform(0.06, 0.1), W * rng.uniform(0.06, 0.1)
        side = lens * 2.6
        if rng.random() < 0.5:
            x0 = W - x0 - side
        d.rounded_rectangle([x0, y0, x0 + side, y0 + side], side * 0.25, fill=dark + (255,))
        centres = [
            (x0 + side * 0.3, y0 + side * 0.3),
            (x0 + side * 0.3, y0 + side * 0.72),
            (x0 + side * 0.72, y0 + side * 0.5),
        ]
        centres = centres[: int(rng.integers(2, 4))]
        flash = (x0 + side * 0.75, y0 + side * 0.2)
    else:  # a strip or a single lens, centred at the top
        cx, cy = W / 2 if rng.random() < 0.5 else W * 0.2, H * rng.uniform(0.06, 0.12)
        centres = [(cx, cy + i * lens * 1.3) for i in range(int(rng.integers(1, 3)))]
        d.rounded_rectangle(
            [cx - lens * 0.7, cy - lens * 0.7, cx + lens * 0.7, centres[-1][1] + lens * 0.7],
            lens * 0.7,
            fill=dark + (255,),
        )
        flash = (cx + lens * 1.3, cy)
    for cx, cy in centres:
        r = lens * 0.5
        d.ellipse(
            [cx - r, cy - r, cx + r, cy + r],
            fill=(20, 20, 24, 255),
            outline=(120, 120, 128, 255),
            width=max(1, int(r * 0.15)),
        )
        d.ellipse([cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45], fill=(30, 40, 70, 255))
        d.ellipse([cx - r * 0.25, cy - r * 0.35, cx - r * 0.05, cy - r * 0.15], fill=(200, 210, 240, 255))  # glint
    r = lens * 0.18
    d.ellipse([flash[0] - r, flash[1] - r, flash[0] + r, flash[1] + r], fill=(245, 235, 200, 255))
    ink = tuple(int(c) for c in np.clip(body * 0.7 + (40 if body.mean() < 90 else -10), 0, 255))
    if rng.random() < 0.6:  # a logo mark in the middle, a word near the bottom
        r = W * rng.uniform(0.07, 0.11)
        d.ellipse([W / 2 - r, H * 0.45 - r, W / 2 + r, H * 0.45 + r], fill=ink + (255,))
    if rng.random() < 0.7:
        draw.greek_line(d, (W * 0.35, H * 0.86), W * 0.3, W * 0.05, ink + (255,), rng)
    return flat(img, None, lift=0.015)


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
    return Model(parts, ground=ground, lift=0.01, holdable=False)


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
    kind = ["off", "lock", "home", "app"][int(rng.choice(4, p=[0.2, 0.2, 0.35, 0.25]))]
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
    _status_bar(rng, d, w, h)
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
    else:  # home screen: maybe a widget, a grid of app icons, page dots and a dock
        n_cols = int(rng.choice([4, 5]))
        cell = w / n_cols
        y = h * 0.06
        if rng.random() < 0.5:  # a clock or weather widget across the top
            wh = h * rng.uniform(0.12, 0.2)
            if rng.random() < 0.5:
                d.rounded_rectangle([w * 0.05, y, w * 0.95, y + wh], w * 0.06, fill=draw.vivid(rng))
            draw.text(
                d,
                (w * 0.1, y + wh * 0.15),
                f"{int(rng.integers(0, 24))}:{int(rng.integers(10, 60))}",
                wh * 0.45,
                (255, 255, 255),
                bold=True,
            )
            draw.greek_line(d, (w * 0.1, y + wh * 0.7), w * 0.5, wh * 0.15, (240, 240, 240), rng)
            y += wh + h * 0.02
        for _ in range(int(rng.integers(3, 7))):
            if y + cell > h * 0.84:
                break
            for c in range(n_cols):
                if rng.random() < 0.1:
                    continue  # a gap in the grid
                _icon(rng, d, c * cell + cell * 0.16, y, cell * 0.68)
                draw.greek_line(d, (c * cell + cell * 0.2, y + cell * 0.74), cell * 0.6, cell * 0.1, (250, 250, 250))
            y += cell * 1.05
        for i in range(3):  # page dots
            r = w * 0.008
            cx = w / 2 + (i - 1) * w * 0.03
            d.ellipse(
                [cx - r, h * 0.845 - r, cx + r, h * 0.845 + r], fill=(255, 255, 255) if i == 0 else (170, 170, 170)
            )
        if rng.random() < 0.7:  # a translucent dock
            d.rounded_rectangle([w * 0.04, h * 0.87, w * 0.96, h * 0.97], w * 0.06, fill=(215, 215, 222))
        for c in range(4):
            _icon(rng, d, w * 0.07 + c * w * 0.225, h * 0.88, min(cell * 0.68, h * 0.08))
    return img


def _status_bar(rng: np.random.Generator, d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    """Time on the left; signal, wifi and battery on the right."""
    size = max(3.0, h * 0.018)
    white = (255, 255, 255)
    draw.text(d, (w * 0.06, h * 0.008), f"{int(rng.integers(1, 13))}:{int(rng.integers(10, 60))}", size * 1.3, white)
    for i in range(4):  # signal bars
        x = w * 0.7 + i * size * 0.6
        d.rectangle([x, h * 0.008 + size * (1 - 0.25 * (i + 1)), x + size * 0.4, h * 0.008 + size], fill=white)
    d.rounded_rectangle(
        [w * 0.83, h * 0.01, w * 0.83 + size * 2.2, h * 0.01 + size], size * 0.2, outline=white, fill=white
    )


def _icon(rng: np.random.Generator, d: ImageDraw.ImageDraw, x: float, y: float, s: float) -> None:
    """An app icon: a rounded square of one or two vivid colours with a white glyph."""
    a, b = draw.vivid(rng), draw.vivid(rng)
    d.rounded_rectangle([x, y, x + s, y + s], s * 0.23, fill=a)
    if rng.random() < 0.4:  # a two-tone icon
        d.pieslice([x, y, x + s, y + s], int(rng.integers(0, 360)), int(rng.integers(90, 270)), fill=b)
    g = int(rng.integers(5))
    m = s * 0.28
    white = (255, 255, 255)
    if g == 0:
        d.ellipse([x + m, y + m, x + s - m, y + s - m], fill=white)
    elif g == 1:
        d.ellipse([x + m, y + m, x + s - m, y + s - m], outline=white, width=max(1, int(s * 0.08)))
    elif g == 2:
        d.polygon([(x + s / 2, y + m), (x + s - m, y + s - m), (x + m, y + s - m)], fill=white)
    elif g == 3:
        d.rounded_rectangle([x + m, y + m * 1.2, x + s - m, y + s - m * 1.2], s * 0.05, fill=white)
    else:
        draw.text(d, (x + s * 0.3, y + s * 0.15), "ABCDEFGHKMNPRSTW"[int(rng.integers(16))], s * 0.6, white, bold=True)


def _wallpaper(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A phone's or laptop's background: a photograph, colour waves, bokeh, a paint splash or blobs."""
    kind = ["photo", "waves", "bokeh", "splash", "blobs"][int(rng.choice(5, p=[0.3, 0.2, 0.15, 0.15, 0.2]))]
    if kind == "photo":
        img = other.landscape(rng, max(8, w // 2), max(8, h // 2)).resize((w, h), Image.BILINEAR)
        return img.point(lambda v: min(255, int(v * 1.1 + 8)))  # screens are bright and saturated
    a, b = np.array(draw.vivid(rng), np.float32), np.array(draw.vivid(rng), np.float32) * 0.6
    if kind in ("bokeh", "splash"):
        a, b = a * 0.25, b * 0.3  # bright shapes on a dark ground
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = Image.fromarray(np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).astype(np.uint8))
    k = 4  # soft shapes: drawn at quarter size, blurred, scaled up
    layer = Image.new("RGBA", (max(1, w // k), max(1, h // k)), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    lw, lh = layer.size
    if kind == "waves":  # bands of colour flowing across the screen
        xs = np.linspace(-0.1, 1.1, 24) * lw
        for _ in range(int(rng.integers(3, 7))):
            y0, amp, f, ph = (
                rng.uniform(0, lh),
                rng.uniform(0.05, 0.25) * lh,
                rng.uniform(0.5, 2.5),
                rng.uniform(0, 6.3),
            )
            thick = rng.uniform(0.05, 0.25) * lh
            top = y0 + amp * np.sin(f * xs / lw * 2 * np.pi + ph)
            pts = list(zip(xs.tolist(), top.tolist(), strict=True)) + list(
                zip(xs[::-1].tolist(), (top + thick)[::-1].tolist(), strict=True)
            )
            d.polygon(pts, fill=draw.vivid(rng) + (int(rng.uniform(150, 230)),))
        blur = lw / 60
    elif kind == "bokeh":  # out-of-focus lights
        for _ in range(int(rng.integers(10, 40))):
            cx, cy, r = rng.uniform(0, lw), rng.uniform(0, lh), rng.uniform(0.03, 0.12) * lw
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=draw.vivid(rng) + (int(rng.uniform(80, 200)),))
        blur = lw / 80
    elif kind == "splash":  # strokes and drops of bright paint
        for _ in range(int(rng.integers(8, 25))):
            cx, cy = rng.uniform(0, lw), rng.uniform(0, lh)
            colour = draw.vivid(rng) + (int(rng.uniform(180, 255)),)
            if rng.random() < 0.5:
                r = rng.uniform(0.02, 0.15) * lw
                d.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r], fill=colour)
            else:
                a_ = rng.uniform(0, np.pi)
                L = rng.uniform(0.1, 0.6) * lw
                d.line(
                    [(cx, cy), (cx + L * np.cos(a_), cy + L * np.sin(a_))],
                    fill=colour,
                    width=max(1, int(rng.uniform(0.01, 0.06) * lw)),
                )
        blur = lw / 200
    else:  # a few large soft blobs
        for _ in range(int(rng.integers(1, 5))):
            cx, cy, r = rng.uniform(0, lw), rng.uniform(0, lh), rng.uniform(0.1, 0.4) * lw
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=draw.vivid(rng) + (150,))
        blur = lw / 10
    layer = layer.filter(ImageFilter.GaussianBlur(max(0.5, blur))).resize((w, h), Image.BILINEAR)
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


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
