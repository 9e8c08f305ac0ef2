"""The open set: photos that are none of the ticket classes, so a model learns to send
them to a human. Selfie-like faces and landscapes fill the frame; pets, mugs, plates of
food, pot plants, fruit and shoes sit on the same surfaces as the ticket subjects (so the
surface says nothing about the class).

Shapes are simple and shaded (stacked ellipses lighter toward the light): the point is
variety of colour, shape and layout, not photographic detail.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tinytriage.data.synth import draw, textures
from tinytriage.data.synth.damage import Damage
from tinytriage.data.synth.scenes import Model, flat

SKIN = [(241, 194, 167), (224, 172, 140), (198, 134, 100), (160, 105, 72), (120, 78, 52), (88, 57, 40)]
HAIR = [(25, 20, 18), (60, 40, 25), (110, 75, 40), (200, 160, 100), (150, 150, 150), (140, 50, 30)]


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, ...]:
    return tuple(int(x + (y - x) * t) for x, y in zip(a, b, strict=True))


def _shaded_ellipse(
    d: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    colour: tuple[int, ...],
    light: tuple[float, float] = (-0.3, -0.3),
    steps: int = 8,
) -> None:
    """A ball-like ellipse: darker rim, lighter toward the light direction."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    dark = _mix(colour, (0, 0, 0), 0.45)
    for i in range(steps):
        t = i / steps
        sx, sy = w * (1 - t) / 2, h * (1 - t) / 2
        cx, cy = x0 + w / 2 + light[0] * w * t * 0.5, y0 + h / 2 + light[1] * h * t * 0.5
        c = _mix(dark, _mix(colour, (255, 255, 255), 0.25), min(1.0, t * 1.4))
        d.ellipse([cx - sx, cy - sy, cx + sx, cy + sy], fill=c + (255,) if len(c) == 3 else c)


# --- full-frame pictures ----------------------------------------------------------------


def selfie(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A face and shoulders close to the camera, in front of a blurred room or garden."""
    bg = _backdrop(rng, w, h)
    d = ImageDraw.Draw(bg)
    u = min(w, h) * rng.uniform(0.75, 1.1)  # face scale
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.38, 0.55)
    skin = tuple(int(c) for c in np.array(SKIN[int(rng.integers(len(SKIN)))]) * rng.uniform(0.92, 1.05))
    hair = HAIR[int(rng.integers(len(HAIR)))]
    shirt = draw.vivid(rng) if rng.random() < 0.6 else tuple(int(v) for v in rng.integers(20, 220, 3))
    fw, fh = u * 0.36, u * 0.48
    long_hair = rng.random() < 0.4
    if long_hair:
        d.rounded_rectangle([cx - fw * 0.65, cy - fh * 0.45, cx + fw * 0.65, cy + fh * 0.9], fw * 0.4, fill=hair)
    d.ellipse([cx - u * 0.55, cy + fh * 0.62, cx + u * 0.55, cy + fh * 0.62 + u * 0.8], fill=shirt)  # shoulders
    d.rectangle(
        [cx - fw * 0.22, cy + fh * 0.2, cx + fw * 0.22, cy + fh * 0.72], fill=_mix(skin, (0, 0, 0), 0.15)
    )  # neck
    for s in (-1, 1):  # ears
        d.ellipse(
            [cx + s * fw * 0.5 - fw * 0.08, cy - fh * 0.05, cx + s * fw * 0.5 + fw * 0.08, cy + fh * 0.15],
            fill=_mix(skin, (0, 0, 0), 0.1),
        )
    _shaded_ellipse(d, (cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2), skin, (rng.uniform(-0.5, 0.5), -0.3))
    if rng.random() < 0.85:  # hair on top
        d.chord([cx - fw * 0.55, cy - fh * 0.62, cx + fw * 0.55, cy + fh * 0.1], 180, 360, fill=hair)
    ey = cy - fh * 0.05
    iris = [(70, 45, 25), (60, 100, 150), (70, 110, 70), (40, 30, 25)][int(rng.integers(4))]
    for s in (-1, 1):
        ex = cx + s * fw * 0.2
        ew, eh = fw * 0.11, fh * 0.045
        d.ellipse([ex - ew, ey - eh, ex + ew, ey + eh], fill=(240, 240, 235))
        d.ellipse([ex - eh, ey - eh, ex + eh, ey + eh], fill=iris)
        d.ellipse([ex - eh * 0.45, ey - eh * 0.45, ex + eh * 0.45, ey + eh * 0.45], fill=(10, 10, 10))
        d.arc(
            [ex - ew, ey - eh * 1.3, ex + ew, ey + eh * 1.3],
            190,
            350,
            fill=_mix(skin, (0, 0, 0), 0.5),
            width=max(1, int(fh * 0.012)),
        )
        d.line(
            [ex - ew, ey - fh * 0.1, ex + ew, ey - fh * 0.11 - s * fh * 0.01],
            fill=_mix(hair, skin, 0.2),
            width=max(1, int(fh * 0.025)),
        )
    d.line(
        [cx, ey + fh * 0.05, cx - fw * 0.04, ey + fh * 0.2, cx + fw * 0.03, ey + fh * 0.22],
        fill=_mix(skin, (0, 0, 0), 0.3),
        width=max(1, int(fh * 0.012)),
    )
    my = cy + fh * 0.28
    lips = _mix(skin, (170, 40, 50), 0.45)
    if rng.random() < 0.6:  # smile
        d.chord([cx - fw * 0.15, my - fh * 0.05, cx + fw * 0.15, my + fh * 0.06], 0, 180, fill=lips)
    else:
        d.line([cx - fw * 0.13, my, cx + fw * 0.13, my], fill=lips, width=max(1, int(fh * 0.025)))
    if rng.random() < 0.25:  # glasses
        for s in (-1, 1):
            ex = cx + s * fw * 0.2
            d.ellipse(
                [ex - fw * 0.15, ey - fh * 0.08, ex + fw * 0.15, ey + fh * 0.08],
                outline=(30, 30, 30),
                width=max(1, int(fh * 0.015)),
            )
        d.line([cx - fw * 0.05, ey, cx + fw * 0.05, ey], fill=(30, 30, 30), width=max(1, int(fh * 0.015)))
    return bg


def _backdrop(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """An out-of-focus background: a room (wall, door, window, shelf) or a garden."""
    if rng.random() < 0.65:
        wall = tuple(int(v) for v in rng.uniform(120, 235, 3))
        img = Image.new("RGB", (w, h), wall)
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.uniform(-0.2, 0.9) * w, rng.uniform(-0.2, 0.6) * h
            colour = [(245, 245, 250), (110, 80, 55), tuple(int(v) for v in rng.uniform(40, 220, 3))][
                int(rng.integers(3))
            ]
            d.rectangle([x0, y0, x0 + rng.uniform(0.15, 0.5) * w, y0 + rng.uniform(0.2, 0.8) * h], fill=colour)
    else:
        img = _sky(rng, w, h)
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(4, 10))):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0.3, 1.1) * h, rng.uniform(0.1, 0.35) * w
            d.ellipse(
                [cx - r, cy - r, cx + r, cy + r],
                fill=(int(rng.uniform(30, 90)), int(rng.uniform(80, 140)), int(rng.uniform(30, 70))),
            )
    return img.filter(ImageFilter.BoxBlur(min(w, h) * 0.02))


def _sky(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    top, bottom = [
        ((60, 110, 190), (170, 200, 235)),
        ((70, 60, 120), (245, 160, 90)),
        ((140, 145, 155), (205, 208, 212)),
    ][int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    sky = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return Image.fromarray(np.broadcast_to(sky, (h, w, 3)).astype(np.uint8))


def landscape(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Sky with clouds, layered hills or mountains, and a field, a sea or snow in front."""
    img = _sky(rng, w, h)
    cloud = textures.fbm(rng, h, w, 4, 4, aspect=2.5)
    cover = rng.uniform(0.3, 0.8)
    alpha = np.clip((cloud - cover) / (1 - cover) * 2.5, 0, 1) * (
        1 - np.linspace(0, 1, h, dtype=np.float32)[:, None] * 0.6
    )
    sky = np.asarray(img, np.float32)
    sky = sky * (1 - alpha[:, :, None]) + 245 * alpha[:, :, None]
    img = Image.fromarray(sky.astype(np.uint8))
    d = ImageDraw.Draw(img)
    horizon = h * rng.uniform(0.4, 0.65)
    layers = int(rng.integers(1, 4))
    base = np.array([[70, 95, 70], [90, 85, 80], [60, 80, 110]][int(rng.integers(3))], np.float32)
    haze = np.asarray(img.getpixel((w // 2, int(horizon))), np.float32)
    for i in range(layers):  # far ridges are paler: aerial perspective
        far = (layers - i) / (layers + 1)
        height = h * rng.uniform(0.05, 0.25) * (1 - 0.3 * far)
        ridge = textures.fbm(rng, 1, w, int(rng.integers(2, 6)), 3)[0]
        ys = horizon - height * ridge - h * 0.03 * far
        colour = tuple(int(v) for v in base * (1 - far) + haze * far)
        d.polygon(
            [(0, h)] + [(float(x), float(y)) for x, y in zip(np.arange(w), ys, strict=True)] + [(w, h)], fill=colour
        )
    ground = [(70, 120, 50), (150, 140, 70), (40, 80, 130), (225, 230, 238)][int(rng.integers(4))]
    tex = np.asarray(
        textures.material(
            rng, "carpet", (w, h - int(horizon)), _mix(ground, (0, 0, 0), 0.3), _mix(ground, (255, 255, 255), 0.1)
        )
    )
    img.paste(Image.fromarray(tex), (0, int(horizon)))
    if rng.random() < 0.5:  # a line of trees on the horizon
        d = ImageDraw.Draw(img)
        for x in np.cumsum(rng.uniform(0.01, 0.06, 80) * w):
            if x > w:
                break
            r = h * rng.uniform(0.015, 0.05)
            d.ellipse(
                [x - r, horizon - 1.8 * r, x + r, horizon + 0.2 * r],
                fill=(int(rng.uniform(20, 50)), int(rng.uniform(50, 90)), int(rng.uniform(20, 45))),
            )
    return img


# --- objects on a surface ---------------------------------------------------------------


def _sprite(size: tuple[int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGBA", (max(8, int(size[0])), max(8, int(size[1]))), (0, 0, 0, 0))
    return img, ImageDraw.Draw(img)


def pet(rng: np.random.Generator, px: float, damage: Damage | None = None) -> Model:
    """A cat or dog curled up, seen from above: body, head, ears, tail, eyes."""
    s = int(px)
    img, d = _sprite((s, s * 0.75))
    fur = [(210, 130, 60), (120, 120, 125), (30, 28, 28), (235, 230, 220), (140, 95, 60), (200, 170, 120)][
        int(rng.integers(6))
    ]
    dog = rng.random() < 0.4
    bw, bh = s * 0.62, s * 0.42
    bx, by = s * 0.08, s * 0.22
    tail = [
        (bx + bw * 0.1, by + bh * 0.7),
        (bx - s * 0.02, by + bh * 0.95),
        (bx + bw * 0.3, by + bh * 1.12),
        (bx + bw * 0.7, by + bh * 1.05),
    ]
    d.line(tail, fill=_mix(fur, (0, 0, 0), 0.2) + (255,), width=max(1, int(s * 0.05)), joint="curve")
    _shaded_ellipse(d, (bx, by, bx + bw, by + bh), fur)
    if rng.random() < 0.5 and fur != (30, 28, 28):  # tabby stripes
        for k in range(5):
            x = bx + bw * (0.2 + 0.13 * k)
            d.arc(
                [x - bw * 0.08, by + bh * 0.05, x + bw * 0.08, by + bh * 0.95],
                250,
                290,
                fill=_mix(fur, (0, 0, 0), 0.4) + (255,),
                width=max(1, int(s * 0.02)),
            )
    hr = s * 0.16
    hx, hy = bx + bw * 0.95, by + bh * 0.35
    ear = _mix(fur, (0, 0, 0), 0.25) + (255,)
    if dog:
        for sgn in (-1, 1):
            d.ellipse(
                [hx + sgn * hr * 0.9 - hr * 0.35, hy - hr * 0.4, hx + sgn * hr * 0.9 + hr * 0.35, hy + hr * 0.9],
                fill=ear,
            )
    else:
        for sgn in (-1, 1):
            d.polygon(
                [
                    (hx + sgn * hr * 0.9, hy - hr * 0.2),
                    (hx + sgn * hr * 0.75, hy - hr * 1.35),
                    (hx + sgn * hr * 0.15, hy - hr * 0.75),
                ],
                fill=ear,
            )
    _shaded_ellipse(d, (hx - hr, hy - hr, hx + hr, hy + hr), fur)
    if dog:
        _shaded_ellipse(
            d, (hx - hr * 0.45, hy + hr * 0.1, hx + hr * 0.45, hy + hr * 0.85), _mix(fur, (255, 255, 255), 0.2)
        )
    eye = (120, 170, 60) if not dog else (60, 40, 25)
    for sgn in (-1, 1):
        ex, ey = hx + sgn * hr * 0.4, hy - hr * 0.1
        d.ellipse([ex - hr * 0.17, ey - hr * 0.12, ex + hr * 0.17, ey + hr * 0.12], fill=eye + (255,))
        d.ellipse([ex - hr * 0.05, ey - hr * 0.11, ex + hr * 0.05, ey + hr * 0.11], fill=(5, 5, 5, 255))
    d.polygon(
        [(hx - hr * 0.1, hy + hr * 0.3), (hx + hr * 0.1, hy + hr * 0.3), (hx, hy + hr * 0.42)],
        fill=(200, 110, 120, 255) if not dog else (20, 20, 20, 255),
    )
    img = img.filter(ImageFilter.GaussianBlur(s * 0.004))  # fur is soft
    return flat(img, lift=0.08)


def _oval(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 24) -> list[tuple[float, float]]:
    """Polygon of an ellipse with radii (rx, ry) turned by ``angle`` radians."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return [(float(cx + c * a - s * b), float(cy + s * a + c * b)) for a, b in zip(x, y, strict=True)]


def mug(rng: np.random.Generator, px: float, damage: Damage | None = None) -> Model:
    """A mug from above: rim, inner wall, coffee or tea, the handle sticking out."""
    s = int(px)
    img, d = _sprite((s, s * 0.78))
    colour = draw.vivid(rng) if rng.random() < 0.5 else tuple(int(v) for v in rng.uniform(190, 250, 3))
    r = s * 0.36
    cx, cy = s * 0.39, s * 0.39
    d.rounded_rectangle(
        [cx + r * 0.8, cy - r * 0.22, cx + r * 1.65, cy + r * 0.22], r * 0.2, fill=_mix(colour, (0, 0, 0), 0.1) + (255,)
    )
    d.rounded_rectangle(
        [cx + r * 0.95, cy - r * 0.1, cx + r * 1.5, cy + r * 0.1], r * 0.1, fill=(0, 0, 0, 0)
    )  # the hole in the handle
    _shaded_ellipse(d, (cx - r, cy - r, cx + r, cy + r), colour, (-0.3, -0.3), steps=5)
    wall = r * 0.88
    d.ellipse([cx - wall, cy - wall, cx + wall, cy + wall], fill=_mix(colour, (0, 0, 0), 0.3) + (255,))
    drink = [(55, 32, 18), (120, 75, 40), (170, 115, 60), (200, 150, 90)][int(rng.integers(4))]
    level = wall * rng.uniform(0.8, 0.95)
    d.ellipse([cx - level, cy - level + wall * 0.04, cx + level, cy + level + wall * 0.04], fill=drink + (255,))
    if rng.random() < 0.5:  # crema / milk swirl
        d.ellipse(
            [cx - level * 0.5, cy - level * 0.45, cx + level * 0.4, cy + level * 0.35],
            fill=_mix(drink, (240, 220, 190), 0.5) + (255,),
        )
    d.ellipse(
        [cx - level * 0.7, cy - level * 0.75, cx - level * 0.3, cy - level * 0.55],
        fill=_mix(drink, (255, 255, 255), 0.45) + (255,),
    )  # a reflection
    return flat(img, lift=0.08)


def plate(rng: np.random.Generator, px: float, damage: Damage | None = None) -> Model:
    """A plate of food from above: pizza, pasta, salad, or a main with sides."""
    s = int(px)
    img, d = _sprite((s, s))
    rim = (235, 235, 232) if rng.random() < 0.7 else draw.vivid(rng)
    _shaded_ellipse(d, (0, 0, s, s), rim, (0.2, -0.2), steps=4)
    d.ellipse([s * 0.12, s * 0.12, s * 0.88, s * 0.88], fill=_mix(rim, (0, 0, 0), 0.05) + (255,))
    food = ["pizza", "pasta", "salad", "main"][int(rng.integers(4))]
    c = s / 2
    if food == "pizza":
        d.ellipse([s * 0.08, s * 0.08, s * 0.92, s * 0.92], fill=(200, 140, 70, 255))
        d.ellipse([s * 0.14, s * 0.14, s * 0.86, s * 0.86], fill=(190, 50, 30, 255))
        for _ in range(40):
            x, y, r = rng.uniform(0.22, 0.78) * s, rng.uniform(0.22, 0.78) * s, s * rng.uniform(0.03, 0.07)
            d.ellipse([x - r, y - r, x + r, y + r], fill=(240, 215, 140, 255))
        for _ in range(int(rng.integers(5, 12))):
            x, y, r = rng.uniform(0.25, 0.75) * s, rng.uniform(0.25, 0.75) * s, s * 0.045
            d.ellipse([x - r, y - r, x + r, y + r], fill=(150, 30, 25, 255))
    else:
        n = {"pasta": 60, "salad": 30, "main": 12}[food]
        palette = {
            "pasta": [(235, 200, 110), (220, 180, 90), (180, 50, 30)],
            "salad": [(80, 150, 50), (110, 180, 60), (200, 40, 40), (240, 230, 200)],
            "main": [(110, 60, 35), (60, 130, 40), (240, 200, 80), (230, 230, 220)],
        }[food]
        for _ in range(n):
            a, r = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.28) * s
            x, y = c + r * np.cos(a), c + r * np.sin(a)
            col = palette[int(rng.integers(len(palette)))] + (255,)
            if food == "pasta":
                d.arc(
                    [x - s * 0.06, y - s * 0.04, x + s * 0.06, y + s * 0.04],
                    rng.uniform(0, 180),
                    rng.uniform(180, 360),
                    fill=col,
                    width=max(1, int(s * 0.015)),
                )
            else:
                rr = s * rng.uniform(0.03, 0.09)
                d.ellipse([x - rr, y - rr * 0.7, x + rr, y + rr * 0.7], fill=col)
    if rng.random() < 0.5:  # cutlery beside it
        d.rounded_rectangle([s * 0.9, s * 0.2, s * 0.96, s * 0.8], s * 0.02, fill=(190, 190, 195, 255))
    return flat(img, lift=0.03)


def plant(rng: np.random.Generator, px: float, damage: Damage | None = None) -> Model:
    """A pot plant from above: the pot's rim, soil, a rosette of leaves spilling over."""
    s = int(px)
    img, d = _sprite((s, s))
    c = s / 2
    pot = [(180, 90, 55), (235, 235, 230), (60, 60, 65), (110, 140, 170)][int(rng.integers(4))]
    pr = s * rng.uniform(0.2, 0.3)
    _shaded_ellipse(d, (c - pr, c - pr, c + pr, c + pr), pot, steps=4)
    d.ellipse([c - pr * 0.85, c - pr * 0.85, c + pr * 0.85, c + pr * 0.85], fill=(60, 42, 30, 255))  # soil
    green = [(50, 110, 45), (70, 140, 60), (35, 90, 50), (95, 150, 70), (60, 120, 80)]
    base = green[int(rng.integers(len(green)))]
    n = int(rng.integers(8, 20))
    for k in range(n):
        a = 2 * np.pi * k / n + rng.normal(0, 0.2)
        length = s * rng.uniform(0.22, 0.48)
        width = length * rng.uniform(0.18, 0.35)
        mx, my = c + np.cos(a) * length * 0.55, c + np.sin(a) * length * 0.55
        col = _mix(base, (255, 255, 200), rng.uniform(0, 0.25))
        d.polygon(_oval(mx, my, length / 2, width / 2, a), fill=col + (255,))
        d.line(
            [(c, c), (c + np.cos(a) * length * 0.95, c + np.sin(a) * length * 0.95)],
            fill=_mix(col, (255, 255, 255), 0.3) + (255,),
            width=max(1, int(s * 0.006)),
        )
    return flat(img, lift=0.15)


def fruit(rng: np.random.Generator, px: float, damage: Damage | None = None) -> Model:
    """A few apples, oranges or lemons, maybe a banana."""
    s = int(px)
    img, d = _sprite((s, s * 0.7))
    kinds = [(200, 30, 30), (120, 180, 50), (240, 140, 30), (240, 220, 60)]
    for _ in range(int(rng.integers(2, 6))):
        r = s * rng.uniform(0.1, 0.16)
        x, y = rng.uniform(r, s - r), rng.uniform(r, s * 0.7 - r)
        _shaded_ellipse(d, (x - r, y - r, x + r, y + r), kinds[int(rng.integers(len(kinds)))])
    if rng.random() < 0.4:
        d.arc([s * 0.1, s * 0.05, s * 0.9, s * 0.6], 20, 160, fill=(245, 215, 70, 255), width=max(1, int(s * 0.08)))
    return flat(img, lift=0.07)


def shoe(rng: np.random.Generator, px: float, damage: Damage | None = None) -> Model:
    """A pair of trainers from above: soles, uppers, the openings, laces."""
    s = int(px)
    img, d = _sprite((s * 0.75, s))
    upper = draw.vivid(rng) if rng.random() < 0.5 else tuple(int(v) for v in rng.uniform(20, 240, 3))
    sole = (238, 238, 232) if rng.random() < 0.7 else (35, 35, 38)
    for k, cx in enumerate([s * 0.2, s * 0.53]):
        cy = s * (0.5 + 0.03 * k)
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        half_w = s * 0.13 * (1 + 0.15 * np.sin(t))  # wider at the toe than the heel
        outline = [
            (float(cx + w * np.cos(a)), float(cy - s * 0.45 * np.sin(a))) for a, w in zip(t, half_w, strict=True)
        ]
        d.polygon(outline, fill=sole + (255,))
        inner = [(cx + (x - cx) * 0.85, cy + (y - cy) * 0.9) for x, y in outline]
        d.polygon(inner, fill=upper + (255,))
        d.ellipse([cx - s * 0.07, cy + s * 0.1, cx + s * 0.07, cy + s * 0.32], fill=(30, 28, 28, 255))  # the opening
        for j in range(5):  # laces
            y = cy - s * 0.02 - j * s * 0.045
            d.line(
                [(cx - s * 0.05, y), (cx + s * 0.05, y - s * 0.015)],
                fill=(245, 245, 245, 255),
                width=max(1, int(s * 0.012)),
            )
        d.chord(
            [cx - s * 0.1, cy - s * 0.43, cx + s * 0.1, cy - s * 0.25],
            180,
            360,
            fill=_mix(upper, (255, 255, 255), 0.3) + (255,),
        )  # toe cap
    return flat(img, lift=0.05)
