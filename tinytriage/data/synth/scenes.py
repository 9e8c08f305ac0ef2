"""Composing a scene: an object (made of flat parts) on a surface, seen by the camera.

A class renderer (devices, parcels, documents, other) returns either a ``Model`` - flat
RGBA parts with their corners in 3-D object units (long side about 1) - or a full-frame
picture (a landscape, a selfie, a screenshot). ``compose`` places a model: the surface
is warped through the homography of the plane the object stands on, the object casts a
soft shadow, each part is warped through its own homography, and an occluder (a thumb, a
pen) may cover part of it, or a hand hold it: palm behind, fingers and thumb curled over
its edges. The damage mask of a part follows the same warps and is
cleared under anything painted over it, so it shows exactly the visible damage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tinytriage.data.synth import camera, textures
from tinytriage.data.synth.camera import Camera, Shot


@dataclass
class Part:
    """One flat piece of an object: its picture and where its corners are in 3-D."""

    image: Image.Image | Callable[[], Image.Image]  # RGBA, or a function drawing it (only if seen)
    corners: np.ndarray  # (4, 3) object units: image's top-left, top-right, bottom-right, bottom-left
    damage: Image.Image | None = None  # "L", same size as image: where damage is drawn
    cull: bool = False  # skip when seen from behind (the hidden faces of a box)


@dataclass
class Model:
    """An object to photograph: parts painted in order, and the plane it rests on."""

    parts: list[Part]
    ground: np.ndarray = field(default_factory=lambda: np.array([[0, 0, -0.02], [1, 0, -0.02], [0, 1, -0.02]]))
    # (3, 3): origin, a point along u, a point along v of the surface plane (object units)
    lift: float = 0.02  # height of the object above the surface: how far its shadow falls
    holdable: bool = True  # small enough to hold in one hand (a shot's "hand" becomes a thumb if not)
    seen_from_afar: bool = False  # photographed from a few steps back too (a parcel on a doorstep)


def rect_corners(w: float, h: float, z: float = 0.0) -> np.ndarray:
    """Corners of a w x h rectangle centred at the origin in the plane z (TL, TR, BR, BL)."""
    return np.array([[-w / 2, -h / 2, z], [w / 2, -h / 2, z], [w / 2, h / 2, z], [-w / 2, h / 2, z]])


def flat(image: Image.Image, damage: Image.Image | None = None, lift: float = 0.02) -> Model:
    """A flat object (phone, paper, envelope): one part, long side 1 unit."""
    w, h = image.size
    s = 1.0 / max(w, h)
    return Model([Part(image, rect_corners(w * s, h * s), damage)], lift=lift)


def _part_homography(part: Part, cam: Camera) -> np.ndarray:
    w, h = part.image.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    return camera.homography(src, cam.project(part.corners))


def _facing(quad: np.ndarray) -> bool:
    """True when a projected TL, TR, BR, BL quad keeps its winding (seen from the front)."""
    x, y = quad[:, 0], quad[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) > 0


def surface(
    shot: Shot, rng: np.random.Generator, cam: Camera, ground: np.ndarray, size: tuple[int, int]
) -> Image.Image:
    """RGB: the surface pattern seen through the camera on the ground plane."""
    origin, pu, pv = ground
    u, v = pu - origin, pv - origin
    # homography plane (a, b) -> pixel, from four plane points
    plane = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
    world = origin + plane[:, :1] * u + plane[:, 1:] * v
    H = camera.homography(plane, cam.project(world))
    w, h = size
    frame = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    back = np.c_[frame, np.ones(4)] @ np.linalg.inv(H).T
    ref = np.r_[cam.centre, 1.0] @ np.linalg.inv(H).T  # a pixel known to see the plane
    ab = back[:, :2] / back[:, 2:3]
    if np.any(back[:, 2] * ref[2] <= 0) or np.ptp(ab, axis=0).max() > 12:
        # the horizon (or a grazing view) is in the frame: use a plane facing the camera
        H = camera.homography(plane, plane * cam.f + cam.centre - cam.f / 2)
        back = np.c_[frame, np.ones(4)] @ np.linalg.inv(H).T
        ab = back[:, :2] / back[:, 2:3]
    lo, hi = ab.min(0), ab.max(0)
    tile = textures.TILE
    # texture pixels per unit: at least the frame's own pixels per unit (no aliasing), if the tile allows
    ppu = min(tile * 0.98 / float(np.max(hi - lo)), cam.f / shot.pose.distance * rng.uniform(1.0, 2.5))
    span = (hi - lo) * ppu
    off = rng.uniform(0, 1, 2) * np.maximum(tile - span, 0)
    # texture pixel t = (p - lo) * ppu + off  ->  pixel = H @ plane; so pixel <- texture: H @ S^-1
    S = np.array([[ppu, 0, off[0] - lo[0] * ppu], [0, ppu, off[1] - lo[1] * ppu], [0, 0, 1]])
    pattern = textures.pattern(shot.surface, shot.surface_variant)
    region = camera.warp(pattern, H @ np.linalg.inv(S), size)
    grey = Image.new("L", size, 128)
    if region is not None:
        grey.paste(*region)
    dark, light = textures.surface_colours(rng, shot.surface)
    return textures.colourise(grey, dark, light)


def compose(
    model: Model, shot: Shot, rng: np.random.Generator, size: tuple[int, int]
) -> tuple[Image.Image, Image.Image | None]:
    """Photograph ``model`` on the shot's surface: (RGB canvas, damage mask "L" or None)."""
    points = np.concatenate([p.corners for p in model.parts])
    pose = shot.pose
    if model.seen_from_afar and shot.step_back < 1:
        pose = dataclasses.replace(pose, fill=pose.fill * shot.step_back)
    cam = camera.frame_camera(pose, points, size)
    canvas = surface(shot, rng, cam, model.ground, size)
    if shot.backdrop == "wall":
        _wall(canvas, rng)
    placed = []  # (warped RGBA, offset, warped damage)
    alpha = Image.new("L", size, 0)
    for part in model.parts:
        if part.cull and not _facing(cam.project(part.corners)):
            continue
        if callable(part.image):
            part.image = part.image()
        H = _part_homography(part, cam)
        region = camera.warp(part.image, H, size)
        if region is None:
            continue
        img, xy = region
        dmg = camera.warp(part.damage, H, size)[0] if part.damage is not None else None
        placed.append((img, xy, dmg))
        alpha.paste(255, xy, img.getchannel("A"))
    _cast_shadow(canvas, alpha, shot, model.lift * cam.f / shot.pose.distance)
    # paints the palm now; None: no hand (or the object is too big to hold: a thumb instead)
    fingers = _hand(canvas, alpha, shot, rng) if shot.occluder == "hand" and model.holdable else None
    mask = Image.new("L", size, 0) if any(d is not None for _, _, d in placed) else None
    for img, xy, dmg in placed:
        a = img.getchannel("A")
        canvas.paste(img.convert("RGB"), xy, a)
        if mask is not None:
            # what this part covers hides damage below it; its own damage shows on top
            mask.paste(0, xy, a.point(lambda v: 255 if v > 128 else 0))
            if dmg is not None:
                mask.paste(dmg, xy, a.point(lambda v: 255 if v > 128 else 0))
    if fingers is not None:
        canvas.paste(fingers.convert("RGB"), (0, 0), fingers.getchannel("A"))
        if mask is not None:
            mask.paste(0, (0, 0), fingers.getchannel("A").point(lambda v: 255 if v > 96 else 0))
    else:
        occlude(canvas, mask, shot, rng)
    return canvas, mask


SKIN = [(224, 172, 140), (198, 134, 100), (141, 85, 56), (236, 194, 170), (110, 68, 45)]


def _hand(canvas: Image.Image, alpha: Image.Image, shot: Shot, rng: np.random.Generator) -> Image.Image | None:
    """A hand holding the object whose silhouette is ``alpha``: the palm and wrist are
    painted on ``canvas`` now (behind the object); returns the fingers and thumb (RGBA),
    to be painted over the object's edges once it is in place."""
    a = np.asarray(alpha.reduce(4)) > 128  # quarter size: edges need not be exact
    rows = np.nonzero(a.any(1))[0]
    if len(rows) < 4:
        return None
    w, h = canvas.size
    top, bottom = rows[0] * 4, rows[-1] * 4
    tone = np.array(SKIN[int(rng.integers(len(SKIN)))], np.float64) * rng.uniform(0.85, 1.05)
    skin = tuple(int(c) for c in np.clip(tone, 0, 255)) + (255,)
    shade = tuple(int(c * 0.78) for c in tone) + (255,)
    light = tuple(int(min(255, c * 1.12 + 10)) for c in tone) + (255,)

    def edges(y: float) -> tuple[float, float]:  # the object's left and right edge at height y
        r = a[min(len(a) - 1, max(0, int(y / 4)))]
        xs = np.nonzero(r)[0]
        return (xs[0] * 4.0, xs[-1] * 4.0 + 4) if len(xs) else (w / 2, w / 2)

    mid = top + (bottom - top) * rng.uniform(0.55, 0.8)
    left, right = edges(mid)
    span = max(8.0, right - left, (bottom - top) * 0.4)  # a hand is sized for the object, not for a narrow strip
    palm = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(palm)
    cx = (left + right) / 2 + span * rng.uniform(-0.15, 0.15)
    _capsule(d, np.array([cx, mid]), np.array([cx + span * rng.uniform(-0.3, 0.3), h * 1.3]), span * 1.15, shade)
    _capsule(d, np.array([cx, mid]), np.array([cx, h * 1.3]), span * 0.95, skin)  # the wrist
    canvas.paste(palm.convert("RGB"), (0, 0), palm.getchannel("A"))

    hand = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(hand)
    width = span * rng.uniform(0.13, 0.18)
    side = 1 if rng.random() < 0.5 else -1  # the fingers wrap over this edge, the thumb over the other
    for i in range(int(rng.integers(2, 5))):  # fingertips over one edge, one below another
        y = mid - (i + 0.3) * width * 1.05
        if y < top:
            break
        e = edges(y)[0 if side < 0 else 1]
        outside = np.array([e + side * width * 1.5, y + width * 0.3])
        tip = np.array([e - side * width * rng.uniform(0.3, 0.9), y])
        _capsule(d, outside, tip, width, shade)
        _capsule(d, outside, tip + side * width * 0.1, width * 0.75, skin)
    e = edges(mid)[1 if side < 0 else 0]  # the thumb, from the palm across the other edge
    base = np.array([e - side * width * 1.2, mid + width * 2])
    tip = np.array([e + side * width * rng.uniform(0.5, 1.8), mid - width * rng.uniform(0.5, 2.5)])
    _capsule(d, base, tip, width * 1.15, shade)
    _capsule(d, base, tip, width * 0.9, skin)
    nail = tip - (tip - base) / max(1e-6, np.hypot(*(tip - base))) * width * 0.3
    _capsule(d, nail, tip, width * 0.5, light)
    return hand


def _wall(canvas: Image.Image, rng: np.random.Generator) -> None:
    """A wall across the top of the frame where the floor meets it (a step's riser at the
    join), maybe a door in it and a bush in front: a doorstep, a hallway, a desk by a wall."""
    w, h = canvas.size
    y = int(h * rng.uniform(0.15, 0.5))  # where the floor meets the wall
    kind = ["plain", "pavers", "wood", "concrete"][int(rng.integers(4))]
    dark, light = textures.surface_colours(rng, kind)
    canvas.paste(textures.material(rng, kind, (w, y), dark * 1.1, light * 1.1), (0, 0))
    d = ImageDraw.Draw(canvas)
    riser = int(h * rng.uniform(0.0, 0.06))
    tone = tuple(int(c) for c in np.clip(light * rng.uniform(0.8, 1.05), 0, 255))
    d.rectangle([0, y - riser, w, y], fill=tone)
    d.line([(0, y), (w, y)], fill=tuple(int(c * 0.6) for c in tone), width=max(1, h // 150))
    if rng.random() < 0.5:  # a door: panel, frame, handle
        x0 = w * rng.uniform(0.0, 0.7)
        x1 = x0 + w * rng.uniform(0.2, 0.4)
        door = [(40, 35, 32), (120, 70, 40), (230, 228, 222), (60, 80, 110), (150, 40, 35)][int(rng.integers(5))]
        d.rectangle([x0 - w * 0.02, -1, x1 + w * 0.02, y - riser], fill=(215, 212, 205))
        d.rectangle([x0, -1, x1, y - riser], fill=door)
        if rng.random() < 0.5:
            d.rectangle(
                [x0 + (x1 - x0) * 0.2, y * 0.1, x1 - (x1 - x0) * 0.2, y * 0.45], fill=tuple(c // 2 for c in door)
            )
        r = w * 0.01
        hx, hy = x1 - (x1 - x0) * 0.12, y * 0.55
        d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=(190, 180, 150))
    if rng.random() < 0.5:  # a bush at one side, over the join
        bw, bh = int(w * rng.uniform(0.2, 0.45)), int(h * rng.uniform(0.25, 0.5))
        leaves = textures.fbm(rng, bh, bw, 24, 3)
        shape = textures.fbm(rng, bh, bw, 3, 2)
        yy, xx = np.mgrid[-1 : 1 : bh * 1j, -1 : 1 : bw * 1j]
        alpha = ((shape * 0.6 + 0.4 - (xx**2 + yy**2) * 0.5) > 0.35).astype(np.uint8) * 255
        green = np.array([rng.uniform(25, 60), rng.uniform(60, 110), rng.uniform(20, 50)], np.float32)
        rgb = np.clip(green[None, None] * (0.5 + leaves[:, :, None]), 0, 255).astype(np.uint8)
        x = 0 if rng.random() < 0.5 else w - bw
        canvas.paste(Image.fromarray(rgb), (x, max(0, y - bh // 2)), Image.fromarray(alpha, "L"))


def _cast_shadow(canvas: Image.Image, alpha: Image.Image, shot: Shot, lift_px: float) -> None:
    """Darken the surface under and beside the object: its silhouette, blurred and offset."""
    w, h = canvas.size
    k = 4  # work at quarter size: a shadow is soft anyway
    small = alpha.reduce(k)
    radius = max(1.0, (2 + 2.5 * lift_px) / k)
    small = small.filter(ImageFilter.BoxBlur(radius)).filter(ImageFilter.BoxBlur(radius))
    small = small.point(lambda v: int(v * shot.shadow))
    dx, dy = -np.asarray(shot.light_dir) * (1 + 1.5 * lift_px) / k  # away from the light
    sw, sh = small.size
    m = int(np.ceil(max(abs(dx), abs(dy)))) + 1  # pad, then read the shifted window
    padded = Image.new("L", (sw + 2 * m, sh + 2 * m), 0)
    padded.paste(small, (m, m))
    shade = padded.resize((w, h), Image.BILINEAR, box=(m - dx, m - dy, m - dx + sw, m - dy + sh))
    canvas.paste((0, 0, 0), (0, 0), shade)


def occlude(canvas: Image.Image, mask: Image.Image | None, shot: Shot, rng: np.random.Generator) -> None:
    """Paint the shot's occluder (a thumb or a pen entering from an edge) and clear the mask under it.
    A "hand" that could not hold the object (``compose``) or a full-frame picture is a thumb."""
    if shot.occluder == "none":
        return
    w, h = canvas.size
    long = max(w, h)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    edge = int(rng.integers(4))
    t = rng.uniform(0.15, 0.85)
    start = np.array([[t * w, h + 5], [t * w, -5], [-5, t * h], [w + 5, t * h]][edge])
    inward = np.array([[0, -1], [0, 1], [1, 0], [-1, 0]][edge], np.float64)
    ang = rng.normal(0, 0.5)
    direction = np.array(
        [inward[0] * np.cos(ang) - inward[1] * np.sin(ang), inward[0] * np.sin(ang) + inward[1] * np.cos(ang)]
    )
    if shot.occluder in ("thumb", "hand"):
        width = long * rng.uniform(0.1, 0.16)
        length = long * rng.uniform(0.15, 0.35)
        tip = start + direction * length
        tone = np.array(
            [[224, 172, 140], [198, 134, 100], [141, 85, 56], [236, 194, 170], [110, 68, 45]][int(rng.integers(5))]
        )
        tone = tone * rng.uniform(0.85, 1.05)
        _capsule(d, start, tip, width, tuple(int(c) for c in tone) + (255,))
        _capsule(
            d,
            start + direction * length * 0.1,
            tip - direction * width * 0.1,
            width * 0.6,
            tuple(int(min(255, c * 1.08)) for c in tone) + (255,),
        )
        nail = tip - direction * width * 0.35
        _capsule(
            d,
            nail - direction * width * 0.15,
            nail + direction * width * 0.05,
            width * 0.42,
            tuple(int(min(255, c * 1.15 + 20)) for c in tone) + (255,),
        )
        box = layer.getbbox()
        if box is not None:  # soften the edges (blur just the thumb's region)
            layer.paste(layer.crop(box).filter(ImageFilter.BoxBlur(long * 0.003)), box[:2])
    else:  # a pen lying across the edge
        width = long * rng.uniform(0.02, 0.035)
        tip = start + direction * long * rng.uniform(0.25, 0.5)
        body = tuple(int(c) for c in rng.integers(20, 230, 3)) + (255,)
        _capsule(d, start, tip, width, body)
        _capsule(
            d, start, tip - direction * width * 0.5, width * 0.35, tuple(min(255, c + 60) for c in body[:3]) + (255,)
        )
        d.line(
            [tuple(tip - direction * width), tuple(tip + direction * width * 0.8)],
            fill=(60, 60, 60, 255),
            width=max(1, int(width * 0.5)),
        )
    canvas.paste(layer.convert("RGB"), (0, 0), layer.getchannel("A"))
    if mask is not None:
        mask.paste(0, (0, 0), layer.getchannel("A").point(lambda v: 255 if v > 96 else 0))


def _capsule(d: ImageDraw.ImageDraw, a: np.ndarray, b: np.ndarray, width: float, fill: tuple[int, ...]) -> None:
    d.line([tuple(a), tuple(b)], fill=fill, width=max(1, int(width)))
    r = width / 2
    for c in (a, b):
        d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fill)


def full_frame(picture: Image.Image, shot: Shot, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A picture that fills the frame (landscape, selfie, screenshot): a mild roll, cropped to cover."""
    w, h = size
    roll = float(np.clip(shot.pose.roll, -8, 8)) if abs(shot.pose.roll) < 30 else float(rng.normal(0, 3))
    pw, ph = picture.size
    c, s = np.cos(np.radians(roll)), np.sin(np.radians(roll))
    scale = max((w * abs(c) + h * abs(s)) / pw, (w * abs(s) + h * abs(c)) / ph) * 1.01
    # pixel = centre + scale * R (p - picture centre)
    A = np.array([[c * scale, -s * scale, 0], [s * scale, c * scale, 0], [0, 0, 1]])
    H = (
        np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]])
        @ A
        @ np.array([[1, 0, -pw / 2], [0, 1, -ph / 2], [0, 0, 1]])
    )
    img, _ = camera.warp(picture.convert("RGB"), H, size)
    canvas = Image.new("RGB", size)
    canvas.paste(img, (0, 0))
    occlude(canvas, None, shot, rng)
    return canvas
