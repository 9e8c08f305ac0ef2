"""Parcels: cardboard boxes (a 3-D cuboid, its faces culled when turned away) and padded
or plastic mailers, with tape, flap seams, printing and a shipping label that is often
only partly in view (over an edge, under tape, turned away).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from PIL import Image, ImageDraw

from tinytriage.data.synth import draw, textures
from tinytriage.data.synth.damage import Damage
from tinytriage.data.synth.documents import shipping_label
from tinytriage.data.synth.scenes import Model, Part, flat

KRAFT = [
    ((168, 122, 78), (205, 160, 110)),
    ((140, 100, 62), (180, 135, 90)),
    ((205, 200, 190), (236, 233, 226)),
    ((180, 145, 102), (218, 185, 140)),
]


def box(rng: np.random.Generator, px: float, damage: Damage | None = None) -> Model:
    """A taped cardboard box, turned so that one or two sides show beside the top, as seen
    from standing height on a doorstep; sometimes a smaller box stacked on it."""
    a, b, c = 1.0, rng.uniform(0.5, 1.0), rng.uniform(0.25, 0.8)
    s = 1.0 / max(a, b, c)
    a, b, c = a * s, b * s, c * s
    parts = _cuboid(rng, px, a, b, c, np.zeros(3), 0.0)
    if rng.random() < 0.25:  # a second, smaller box on top
        k = rng.uniform(0.45, 0.85)
        a2, b2, c2 = a * k, b * k * rng.uniform(0.7, 1.2), c * k * rng.uniform(0.5, 0.9)
        at = np.array([rng.uniform(-0.15, 0.15) * a, rng.uniform(-0.15, 0.15) * b, c2])  # its bottom on our top
        parts += _cuboid(rng, px * k, a2, b2, c2, at, rng.uniform(-0.4, 0.4))
    # turn the box so its sides show: pitch toward the camera, then a little yaw
    p, q = np.radians(rng.uniform(5, 55)) * rng.choice([-1, 1]), np.radians(rng.uniform(-40, 40))
    R = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    R = np.array([[np.cos(q), 0, np.sin(q)], [0, 1, 0], [-np.sin(q), 0, np.cos(q)]]) @ R
    parts = [Part(part.image, part.corners @ R.T, cull=True) for part in parts]
    ground = np.array([[0, 0, -c], [1, 0, -c], [0, 1, -c]]) @ R.T
    return Model(parts, ground=ground, lift=c * 0.6, holdable=False, seen_from_afar=True)


def _cuboid(
    rng: np.random.Generator, px: float, a: float, b: float, c: float, at: np.ndarray, yaw: float
) -> list[Part]:
    """The faces of an a x b x c box, top face at z = at[2] centred on at[:2], turned by
    ``yaw`` about z: sides (drawn only if seen) then the top."""
    dark, light = KRAFT[int(rng.integers(len(KRAFT)))]
    tape = _tape_style(rng)
    tape_w = b * rng.uniform(0.1, 0.18)

    def face(w: float, h: float, shade: float) -> Image.Image:
        img = textures.material(rng, "cardboard", (max(8, int(w * px)), max(8, int(h * px))), dark, light)
        return img.point(lambda v: int(v * shade))

    top = face(a, b, 1.0)
    _top_details(rng, top, tape, tape_w / b)

    def side(w: float, h: float, along: bool) -> Image.Image:
        img = face(w, h, rng.uniform(0.68, 0.88))
        d = ImageDraw.Draw(img)
        W, H = img.size
        if along:  # the tape runs over the edge and down this side a little
            tw = tape_w / w * W
            d.rectangle([W / 2 - tw / 2, 0, W / 2 + tw / 2, H * rng.uniform(0.15, 0.45)], fill=tape)
        if rng.random() < 0.35:  # printing on the side: brand, arrows
            ink = (40, 40, 45) if rng.random() < 0.7 else (30, 60, 130)
            draw.text(
                d, (W * 0.1, H * 0.5), draw.pick(rng, draw.SHOP + ["FRAGILE", "THIS SIDE UP"]), H * 0.18, ink, bold=True
            )
        if rng.random() < 0.25:
            _label(rng, img)
        return img.convert("RGBA")

    # drawn only if the camera sees them (front, right, back, left)
    sides = [partial(side, w, h, along) for w, h, along in [(a, c, False), (b, c, True), (a, c, False), (b, c, True)]]
    x, y, z = a / 2, b / 2, c
    top_c = np.array([[-x, -y, 0], [x, -y, 0], [x, y, 0], [-x, y, 0]])
    side_c = [
        np.array([[-x, y, 0], [x, y, 0], [x, y, -z], [-x, y, -z]]),  # front (+y)
        np.array([[x, y, 0], [x, -y, 0], [x, -y, -z], [x, y, -z]]),  # right (+x)
        np.array([[x, -y, 0], [-x, -y, 0], [-x, -y, -z], [x, -y, -z]]),  # back (-y)
        np.array([[-x, -y, 0], [-x, y, 0], [-x, y, -z], [-x, -y, -z]]),  # left (-x)
    ]
    Z = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    parts = [Part(img, corners @ Z.T + at, cull=True) for img, corners in zip(sides, side_c, strict=True)]
    parts.append(Part(top.convert("RGBA"), top_c @ Z.T + at, cull=True))
    return parts


def _tape_style(rng: np.random.Generator) -> tuple[int, int, int]:
    """Tape colour: brown packing tape, clear (shows as a light sheen), white or printed."""
    return [(190, 145, 85), (215, 190, 150), (235, 232, 225), (200, 60, 50), (60, 60, 65)][
        int(rng.choice(5, p=[0.35, 0.3, 0.15, 0.1, 0.1]))
    ]


def _top_details(rng: np.random.Generator, top: Image.Image, tape: tuple[int, int, int], tape_frac: float) -> None:
    """Flap seam, tape along it (maybe a cross strip), label, marker writing."""
    d = ImageDraw.Draw(top)
    W, H = top.size
    d.line([0, H / 2, W, H / 2], fill=(60, 40, 25), width=max(1, int(H * 0.008)))  # the gap between the flaps
    tw = tape_frac * H
    if rng.random() < 0.85:
        d.rectangle([0, H / 2 - tw / 2, W, H / 2 + tw / 2], fill=tape)
        d.line(
            [0, H / 2 - tw / 2, W, H / 2 - tw / 2],
            fill=tuple(min(255, v + 25) for v in tape),
            width=max(1, int(tw * 0.08)),
        )
        if tape[0] == 200:  # printed tape: repeated red/white text
            for x in np.arange(0, W, tw * 5):
                draw.text(d, (x, H / 2 - tw * 0.35), "FRAGILE", tw * 0.6, (255, 255, 255), bold=True)
        if rng.random() < 0.3:
            d.rectangle([W * 0.5 - tw / 2, 0, W * 0.5 + tw / 2, H], fill=tape)
    if rng.random() < 0.75:
        _label(rng, top)
    if rng.random() < 0.3:  # marker scribble: a name or a room
        ink = [(20, 20, 25), (30, 50, 140), (150, 30, 30)][int(rng.integers(3))]
        draw.text(
            d,
            (W * rng.uniform(0.05, 0.5), H * rng.uniform(0.05, 0.3)),
            draw.pick(rng, draw.FIRST).upper(),
            H * rng.uniform(0.08, 0.15),
            ink,
            bold=True,
        )


def _label(rng: np.random.Generator, surface: Image.Image) -> None:
    """A shipping label stuck somewhere on ``surface``, turned a little, maybe over the edge."""
    W, H = surface.size
    lw = int(min(W, H) * rng.uniform(0.35, 0.7))
    lh = int(lw * 1.5)
    label = shipping_label(rng, lw, lh).convert("RGBA")
    label = label.rotate(float(rng.choice([0, 90, 180, 270]) + rng.normal(0, 8)), Image.BILINEAR, expand=True)
    x = int(rng.uniform(-0.3, 0.9) * W)  # partly off the face sometimes
    y = int(rng.uniform(-0.3, 0.9) * H)
    surface.paste(label, (x, y), label)


def mailer(rng: np.random.Generator, px: float, damage: Damage | None = None) -> Model:
    """A padded envelope or plastic mailer bag: pillowed, creased, sealed flap, a label."""
    kind = ["padded", "poly"][int(rng.integers(2))]
    H = int(max(64, px))
    W = int(H / rng.uniform(1.15, 1.6))
    if kind == "padded":  # kraft, white or silver bubble mailer
        light = [(222, 196, 146), (242, 242, 236), (200, 200, 206)][int(rng.integers(3))]
    else:  # grey, white, black or pink plastic
        light = [(175, 175, 180), (245, 245, 245), (80, 80, 86), (225, 130, 170)][int(rng.integers(4))]
    light = tuple(float(v) for v in np.array(light) * rng.uniform(0.92, 1.04))
    dark = tuple(v * rng.uniform(0.72, 0.85) for v in light)
    img = textures.material(rng, "crinkle", (W, H), dark, light)
    # pillowing: the middle bulges toward the light, the edges fall away
    y, x = np.mgrid[-1 : 1 : H * 1j, -1 : 1 : W * 1j].astype(np.float32)
    bulge = 1 - 0.22 * np.maximum(np.abs(x), np.abs(y)) ** 4
    img = Image.fromarray(np.clip(np.asarray(img, np.float32) * bulge[:, :, None], 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    seam = H * rng.uniform(0.06, 0.12)  # sealed flap at one end
    d.line([0, seam, W, seam], fill=tuple(int(v * 0.75) for v in dark), width=max(1, int(H * 0.006)))
    d.rectangle([0, 0, W, H * 0.02], fill=tuple(int(v * 0.9) for v in light))
    if rng.random() < 0.8:
        lw = int(W * rng.uniform(0.45, 0.75))
        label = shipping_label(rng, lw, int(lw * 1.5)).convert("RGBA")
        label = label.rotate(float(rng.choice([0, 90]) + rng.normal(0, 5)), Image.BILINEAR, expand=True)
        img.paste(label, (int(rng.uniform(0.05, 0.5) * W), int(rng.uniform(0.15, 0.6) * H)), label)
    if rng.random() < 0.4:  # a postage sticker
        sw = W * rng.uniform(0.12, 0.2)
        x0, y0 = W * rng.uniform(0.6, 0.8), H * rng.uniform(0.15, 0.25)
        d.rectangle([x0, y0, x0 + sw, y0 + sw * 0.7], fill=draw.vivid(rng))
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, W - 1, H - 1], W * 0.03, fill=255)
    out = img.convert("RGBA")
    out.putalpha(mask)
    return flat(out, lift=0.03)
