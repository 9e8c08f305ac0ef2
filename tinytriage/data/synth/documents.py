"""Paperwork customers photograph: shipping labels, invoices, order forms, receipts,
and screenshots of an order page.

Pages are drawn flat at the pixel size they will have in the photo (real text where it
would be readable, greeked bars where it would not), then given paper's look: a slight
tint, a fold or a curled corner, and placed on the surface like any other object.
A screenshot fills the frame instead.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from tinytriage.data.synth import draw, textures
from tinytriage.data.synth.damage import Damage
from tinytriage.data.synth.scenes import Model, flat

INK = (25, 25, 30)


def paper_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    base = rng.uniform(232, 252)
    return int(base), int(base - rng.uniform(0, 6)), int(base - rng.uniform(0, 14))


def shipping_label(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A 4x6-style carrier label: carrier and service, sender, recipient, routing code, barcode."""
    img = Image.new("RGB", (w, h), paper_colour(rng))
    d = ImageDraw.Draw(img)
    m = w * 0.05
    line = max(1, int(w * 0.008))
    carrier = draw.pick(rng, draw.CARRIER)
    draw.text(d, (m, h * 0.025), carrier, h * 0.055, INK, bold=True)
    d.rectangle([w * 0.78, h * 0.015, w - m, h * 0.1], fill=INK)
    draw.text(d, (w * 0.82, h * 0.02), draw.pick(rng, ["P", "E", "1", "X"]), h * 0.07, (255, 255, 255), bold=True)
    d.line([0, h * 0.115, w, h * 0.115], fill=INK, width=line)
    draw.text(d, (m, h * 0.13), "FROM:", h * 0.025, INK)
    for i, s in enumerate(draw.address(rng)):
        draw.text(d, (m + w * 0.15, h * (0.13 + 0.03 * i)), s, h * 0.024, INK)
    d.line([0, h * 0.23, w, h * 0.23], fill=INK, width=line)
    draw.text(d, (m, h * 0.245), "SHIP TO:", h * 0.03, INK, bold=True)
    for i, s in enumerate(draw.address(rng)):
        draw.text(d, (m + w * 0.05, h * (0.29 + 0.045 * i)), s.upper(), h * 0.036, INK, bold=i == 0)
    d.line([0, h * 0.44, w, h * 0.44], fill=INK, width=line)
    draw.matrix_code(img, rng, (m, h * 0.46, m + w * 0.3, h * 0.46 + w * 0.3))
    code = f"{draw.pick(rng, ['NL', 'DE', 'GB', 'FR', 'BE'])} {draw.digits(rng, 3)} {draw.digits(rng, 1)}-{draw.digits(rng, 2)}"
    draw.text(d, (w * 0.42, h * 0.48), code, h * 0.05, INK, bold=True)
    draw.barcode(d, rng, (w * 0.42, h * 0.56, w - m, h * 0.62))
    d.line([0, h * 0.66, w, h * 0.66], fill=INK, width=line)
    tracking = f"TRACKING #: {draw.digits(rng, 4)} {draw.digits(rng, 4)} {draw.digits(rng, 4)}"
    draw.text(d, (m, h * 0.675), tracking, h * 0.03, INK, bold=True)
    draw.barcode(d, rng, (m, h * 0.72, w - m, h * 0.9))
    d.line([0, h * 0.92, w, h * 0.92], fill=INK, width=line)
    draw.greek_line(d, (m, h * 0.94), w * 0.6, h * 0.02, INK, rng)
    return img


def invoice(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """An A4 invoice: logo, title, addresses, a table of items, totals, footer."""
    img = Image.new("RGB", (w, h), paper_colour(rng))
    d = ImageDraw.Draw(img)
    m = w * 0.08
    accent = draw.vivid(rng)
    d.rectangle([m, h * 0.05, m + w * 0.08, h * 0.05 + w * 0.08], fill=accent)
    draw.text(d, (m + w * 0.1, h * 0.055), draw.pick(rng, draw.SHOP), h * 0.03, accent, bold=True)
    title = draw.pick(rng, ["INVOICE", "Invoice", "PACKING SLIP", "ORDER CONFIRMATION"])
    draw.text(d, (w * 0.55, h * 0.05), title, h * 0.032, INK, bold=True)
    draw.text(d, (w * 0.55, h * 0.1), f"No. {draw.digits(rng, 7)}", h * 0.018, INK)
    draw.text(
        d,
        (w * 0.55, h * 0.125),
        f"Date 2024-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
        h * 0.018,
        INK,
    )
    draw.text(d, (m, h * 0.17), "Bill to:", h * 0.017, INK, bold=True)
    for i, s in enumerate(draw.address(rng)):
        draw.text(d, (m, h * (0.195 + 0.022 * i)), s, h * 0.017, INK)
    top = h * 0.3
    row = h * rng.uniform(0.03, 0.045)
    d.rectangle([m, top, w - m, top + row], fill=tuple(int(c * 0.3 + 170) for c in accent))
    for x, s in [(m + w * 0.02, "Item"), (w * 0.58, "Qty"), (w * 0.7, "Price"), (w * 0.83, "Total")]:
        draw.text(d, (x, top + row * 0.2), s, row * 0.55, INK, bold=True)
    y = top + row
    for _ in range(int(rng.integers(2, 9))):
        draw.text(d, (m + w * 0.02, y + row * 0.2), draw.pick(rng, draw.PRODUCT), row * 0.5, INK)
        draw.text(d, (w * 0.6, y + row * 0.2), str(int(rng.integers(1, 4))), row * 0.5, INK)
        draw.text(d, (w * 0.7, y + row * 0.2), f"{rng.uniform(3, 300):.2f}", row * 0.5, INK)
        draw.text(d, (w * 0.83, y + row * 0.2), f"{rng.uniform(3, 300):.2f}", row * 0.5, INK)
        y += row
        d.line([m, y, w - m, y], fill=(200, 200, 200))
    draw.text(d, (w * 0.6, y + row * 0.5), "TOTAL", row * 0.6, INK, bold=True)
    draw.text(d, (w * 0.8, y + row * 0.5), f"EUR {rng.uniform(20, 900):.2f}", row * 0.6, INK, bold=True)
    draw.paragraph(d, rng, (m, y + row * 2.5, w * 0.55, y + row * 5), h * 0.012, (110, 110, 110))
    if rng.random() < 0.5:
        draw.barcode(d, rng, (m, h * 0.86, m + w * 0.35, h * 0.92))
    d.line([m, h * 0.94, w - m, h * 0.94], fill=(180, 180, 180))
    draw.greek_line(d, (m, h * 0.95), w * 0.8, h * 0.01, (130, 130, 130), rng)
    return img


def order_form(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A return or order form: labelled fields filled in by hand, tick boxes, a small table."""
    img = Image.new("RGB", (w, h), paper_colour(rng))
    d = ImageDraw.Draw(img)
    m = w * 0.08
    draw.text(
        d,
        (m, h * 0.05),
        draw.pick(rng, ["RETURN FORM", "ORDER FORM", "Returns & Exchanges"]),
        h * 0.035,
        INK,
        bold=True,
    )
    draw.text(d, (m, h * 0.1), draw.pick(rng, draw.SHOP), h * 0.02, (90, 90, 90))
    ink = [(20, 40, 140), (15, 15, 20), (30, 30, 90)][int(rng.integers(3))]
    y = h * 0.16
    for label in ["Name", "Order number", "Email", "Reason for return"]:
        draw.text(d, (m, y), label, h * 0.018, INK)
        d.line([m + w * 0.3, y + h * 0.025, w - m, y + h * 0.025], fill=(120, 120, 120), width=max(1, int(h * 0.002)))
        _scribble(rng, d, (m + w * 0.32, y, m + w * rng.uniform(0.5, 0.8), y + h * 0.025), ink, h * 0.003)
        y += h * 0.06
    for _ in range(int(rng.integers(2, 5))):
        box = h * 0.02
        d.rectangle([m, y, m + box, y + box], outline=INK, width=max(1, int(h * 0.002)))
        if rng.random() < 0.4:
            d.line(
                [m, y + box * 0.5, m + box * 0.4, y + box, m + box * 1.2, y - box * 0.3],
                fill=ink,
                width=max(1, int(h * 0.004)),
            )
        draw.greek_line(d, (m + box * 2, y), w * rng.uniform(0.3, 0.6), h * 0.018, INK, rng)
        y += h * 0.04
    rows, cols = int(rng.integers(3, 7)), 4
    rh = h * 0.035
    for r in range(rows + 1):
        d.line([m, y + r * rh, w - m, y + r * rh], fill=INK, width=max(1, int(h * 0.0015)))
    for c in range(cols + 1):
        x = m + (w - 2 * m) * [0, 0.5, 0.65, 0.8, 1.0][c]
        d.line([x, y, x, y + rows * rh], fill=INK, width=max(1, int(h * 0.0015)))
    for r in range(1, rows):
        if rng.random() < 0.7:
            _scribble(
                rng,
                d,
                (m + w * 0.02, y + r * rh + rh * 0.2, m + w * rng.uniform(0.15, 0.4), y + (r + 1) * rh - rh * 0.2),
                ink,
                h * 0.003,
            )
    draw.text(d, (m, h * 0.88), "Signature", h * 0.018, INK)
    _scribble(rng, d, (m + w * 0.25, h * 0.86, m + w * 0.55, h * 0.9), ink, h * 0.004)
    return img


def _scribble(
    rng: np.random.Generator,
    d: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    ink: tuple[int, int, int],
    width: float,
) -> None:
    """Handwriting-like loops across ``box``."""
    x0, y0, x1, y1 = box
    n = max(6, int((x1 - x0) / max(2.0, (y1 - y0) * 0.35)))
    xs = np.linspace(x0, x1, n) + rng.normal(0, (y1 - y0) * 0.15, n)
    ys = y0 + (y1 - y0) * (0.5 + 0.4 * np.sin(np.arange(n) * rng.uniform(1.5, 2.8)) * rng.uniform(0.5, 1, n))
    d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=ink, width=max(1, int(width)), joint="curve")


def receipt(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A till or courier receipt, long and narrow: centred header and address, date, item
    lines down most of its length, a total, payment lines, a barcode or QR code, a footer."""
    img = Image.new("RGB", (w, h), paper_colour(rng))
    d = ImageDraw.Draw(img)
    m = w * 0.08
    size = w * rng.uniform(0.035, 0.05)  # thermal print: small, dense type
    ink = tuple(int(c) for c in np.array(INK) + rng.uniform(0, 60))  # thermal ink fades to grey
    y = w * 0.06
    draw.text(d, (w * 0.25, y), draw.pick(rng, draw.SHOP + draw.CARRIER), w * 0.09, ink, bold=True)
    y += w * 0.14
    draw.paragraph(d, rng, (w * 0.2, y, w * 0.8, y + size * 4.5), size, ink)
    y += size * 6
    draw.greek_line(d, (m, y), w * 0.7, size, ink, rng)  # date, time, till
    y += size * 2
    end = h - w * rng.uniform(0.7, 1.1)  # room for the total, payment and code
    while y < end:
        draw.greek_line(d, (m, y), w * rng.uniform(0.3, 0.55), size, ink, rng)
        draw.text(d, (w * 0.72, y), f"{rng.uniform(1, 99):.2f}", size * 1.2, ink)
        y += size * rng.uniform(1.6, 2.0)
        if rng.random() < 0.08:  # a separator
            d.line([(m, y), (w - m, y)], fill=ink, width=max(1, int(size * 0.1)))
            y += size
    draw.text(d, (m, y), "TOTAL", w * 0.07, ink, bold=True)
    draw.text(d, (w * 0.6, y), f"{rng.uniform(5, 300):.2f}", w * 0.07, ink, bold=True)
    y += w * 0.12
    draw.paragraph(d, rng, (m, y, w - m, y + size * 4), size, ink)
    y += size * 5
    if rng.random() < 0.6:
        draw.barcode(d, rng, (m, y, w - m, y + w * 0.15))
    else:
        draw.matrix_code(img, rng, (w * 0.3, y, w * 0.7, y + w * 0.4))
    return img


def _page(rng: np.random.Generator, page: Image.Image) -> Image.Image:
    """Paper's look: fibre texture, a fold or a curl in the lighting; returns RGBA."""
    w, h = page.size
    a = np.asarray(page, np.float32)
    tex = np.asarray(textures.material(rng, "paper", (w, h), (238,) * 3, (255,) * 3).convert("L"), np.float32) / 255
    shade = np.ones((h, w), np.float32)
    if rng.random() < 0.5:  # a fold: one half a little darker, a thin crease line
        vertical = rng.random() < 0.5
        n = w if vertical else h
        k = int(n * rng.uniform(0.3, 0.7))
        side = (slice(None), slice(k, None)) if vertical else (slice(k, None), slice(None))
        shade[side] *= rng.uniform(0.88, 0.97)
        crease = (
            (slice(None), slice(k, k + max(1, n // 200))) if vertical else (slice(k, k + max(1, n // 200)), slice(None))
        )
        shade[crease] *= 0.85
    if rng.random() < 0.4:  # curl: light falls off toward one corner
        y, x = np.mgrid[0 : 1 : h * 1j, 0 : 1 : w * 1j].astype(np.float32)
        cx, cy = rng.integers(0, 2, 2)
        dist = np.hypot(x - cx, y - cy)
        shade *= 1 - 0.25 * np.clip(1 - dist / 0.35, 0, 1) ** 2
    out = np.clip(a * (shade * tex)[:, :, None], 0, 255).astype(np.uint8)
    return Image.fromarray(out).convert("RGBA")


def paperwork(rng: np.random.Generator, px: float, damage: Damage | None = None) -> Model:
    """One document on the surface: a label, an invoice, an order form or a receipt."""
    kind = ["label", "invoice", "form", "receipt"][int(rng.choice(4, p=[0.3, 0.22, 0.18, 0.3]))]
    H = int(max(96, px))
    aspect = {"label": 1.5, "invoice": 1.414, "form": 1.414, "receipt": rng.uniform(2.5, 6.0)}[kind]
    W = int(H / aspect)
    make = {"label": shipping_label, "invoice": invoice, "form": order_form, "receipt": receipt}[kind]
    return flat(_page(rng, make(rng, W, H)), lift=0.004)


def screenshot(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A screenshot of an order page: a phone app when portrait, a web page when landscape."""
    img = Image.new("RGB", (w, h), (248, 248, 250))
    d = ImageDraw.Draw(img)
    accent = draw.vivid(rng)
    phone = h > w
    u = w if phone else h  # layout unit
    if phone:
        d.rectangle([0, 0, w, u * 0.07], fill=(248, 248, 250))
        draw.text(
            d,
            (u * 0.06, u * 0.015),
            f"{int(rng.integers(7, 23))}:{int(rng.integers(10, 60))}",
            u * 0.04,
            INK,
            bold=True,
        )
        d.rectangle([w - u * 0.14, u * 0.025, w - u * 0.06, u * 0.05], outline=INK, fill=INK)
        d.rectangle([0, u * 0.07, w, u * 0.2], fill=accent)
        draw.text(d, (u * 0.06, u * 0.1), "Order details", u * 0.06, (255, 255, 255), bold=True)
        x0, x1, y = u * 0.05, w - u * 0.05, u * 0.24
    else:
        d.rectangle([0, 0, w, u * 0.1], fill=accent)
        draw.text(d, (u * 0.04, u * 0.02), draw.pick(rng, draw.SHOP), u * 0.05, (255, 255, 255), bold=True)
        for i in range(4):
            draw.greek_line(d, (w * (0.45 + 0.12 * i), u * 0.04), w * 0.08, u * 0.03, (255, 255, 255), rng)
        draw.text(d, (u * 0.05, u * 0.14), "Your order", u * 0.06, INK, bold=True)
        x0, x1, y = u * 0.05, w * 0.62, u * 0.24
        d.rounded_rectangle([w * 0.66, u * 0.14, w - u * 0.05, u * 0.6], u * 0.02, fill=(238, 238, 242))
        draw.text(d, (w * 0.68, u * 0.17), "Summary", u * 0.04, INK, bold=True)
        draw.paragraph(d, rng, (w * 0.68, u * 0.25, w - u * 0.08, u * 0.5), u * 0.025, (110, 110, 110), spacing=1.9)
    draw.text(d, (x0, y), f"Order #{draw.digits(rng, 3)}-{draw.digits(rng, 7)}", u * 0.045, INK, bold=True)
    y += u * 0.07
    steps = 4  # delivery progress: ordered, shipped, out for delivery, delivered
    done = int(rng.integers(1, steps + 1))
    r = u * 0.02
    for i in range(steps):
        cx = x0 + r + (x1 - x0 - 2 * r) * i / (steps - 1)
        if i:
            d.line(
                [cx - (x1 - x0 - 2 * r) / (steps - 1), y + r, cx, y + r],
                fill=accent if i < done else (200, 200, 205),
                width=max(1, int(r * 0.5)),
            )
        d.ellipse([cx - r, y, cx + r, y + 2 * r], fill=accent if i < done else (200, 200, 205))
    y += u * 0.1
    for _ in range(int(rng.integers(1, 4))):
        if y > h - u * 0.35:
            break
        d.rounded_rectangle([x0, y, x0 + u * 0.18, y + u * 0.18], u * 0.02, fill=draw.vivid(rng))
        draw.text(d, (x0 + u * 0.22, y), draw.pick(rng, draw.PRODUCT), u * 0.04, INK)
        draw.text(d, (x0 + u * 0.22, y + u * 0.06), f"EUR {rng.uniform(5, 400):.2f}", u * 0.04, (90, 90, 90))
        y += u * 0.24
        d.line([x0, y - u * 0.03, x1, y - u * 0.03], fill=(225, 225, 230))
    draw.paragraph(d, rng, (x0, y, x1, min(h - u * 0.2, y + u * 0.2)), u * 0.03, (120, 120, 125), spacing=1.8)
    d.rounded_rectangle([x0, h - u * 0.16, x1, h - u * 0.06], u * 0.03, fill=accent)
    draw.text(
        d,
        (x0 + (x1 - x0) * 0.3, h - u * 0.145),
        draw.pick(rng, ["Track package", "Return item", "Contact support"]),
        u * 0.045,
        (255, 255, 255),
        bold=True,
    )
    return img
