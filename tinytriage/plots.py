"""PNG pictures drawn with Pillow alone (no matplotlib): training curves, confusion
matrices, feature-map grids and heatmap overlays. Each returns PNG bytes, so callers can
write them atomically."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def line_chart(
    series: dict[str, Sequence[float]], *, title: str, xlabel: str, size=(520, 300), ylim=None
) -> Image.Image:
    """A simple line chart: one coloured line per series, axes with min/max labels."""
    w, h = size
    left, right, top, bottom = 48, 12, 24, 30
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    values = [v for s in series.values() for v in s if v == v]
    lo, hi = ylim if ylim else (min(values, default=0.0), max(values, default=1.0))
    if hi - lo < 1e-12:
        hi = lo + 1.0
    n = max((len(s) for s in series.values()), default=1)
    d.rectangle([left, top, w - right, h - bottom], outline=(120, 120, 120))
    d.text((left, 4), title, fill="black")
    d.text((4, top), f"{hi:.3g}", fill="black")
    d.text((4, h - bottom - 10), f"{lo:.3g}", fill="black")
    d.text((w // 2 - 20, h - 16), f"{xlabel} (1..{n})", fill="black")

    def xy(i, v):
        x = left + (w - left - right) * (i / max(1, n - 1))
        y = h - bottom - (h - top - bottom) * ((v - lo) / (hi - lo))
        return x, y

    for k, (name, s) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        pts = [xy(i, v) for i, v in enumerate(s) if v == v]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for p in pts:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        d.text((w - right - 150, top + 4 + 12 * k), name, fill=colour)
    return img


def training_curves_png(history) -> bytes:
    """Loss and accuracy per epoch, train and validation, side by side."""
    loss = line_chart(
        {"train loss": [m.train_loss for m in history], "val loss": [m.val_loss for m in history]},
        title="loss",
        xlabel="epoch",
    )
    acc = line_chart(
        {"train acc": [m.train_acc for m in history], "val acc": [m.val_acc for m in history]},
        title="accuracy",
        xlabel="epoch",
        ylim=(0.0, 1.0),
    )
    img = Image.new("RGB", (loss.width + acc.width, loss.height), "white")
    img.paste(loss, (0, 0))
    img.paste(acc, (loss.width, 0))
    return _png(img)


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], cell: int = 56) -> bytes:
    """Confusion matrix as a heat grid with counts (rows true, columns predicted)."""
    cm = np.asarray(confusion, dtype=float)
    k = len(classes)
    margin = 110
    img = Image.new("RGB", (margin + k * cell + 10, margin + k * cell + 10), "white")
    d = ImageDraw.Draw(img)
    row_max = np.maximum(cm.sum(1, keepdims=True), 1)
    for i in range(k):
        d.text((4, margin + i * cell + cell // 2 - 5), classes[i][:16], fill="black")
        d.text((margin + i * cell + 2, margin - 14 - 12 * (i % 2)), classes[i][:9], fill="black")
        for j in range(k):
            t = cm[i, j] / row_max[i, 0]
            colour = tuple(int(255 - t * (255 - c)) for c in (31, 119, 180))
            box = [margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1, margin + (i + 1) * cell - 1]
            d.rectangle(box, fill=colour, outline=(200, 200, 200))
            d.text((box[0] + 6, box[1] + cell // 2 - 5), str(int(cm[i, j])), fill="white" if t > 0.5 else "black")
    d.text((4, 4), "rows: true class, columns: predicted", fill="black")
    return _png(img)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 with a perceptually ordered 'inferno'-like ramp."""
    stops = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=float)
    v = np.clip(values, 0, 1) * (len(stops) - 1)
    i = np.minimum(v.astype(int), len(stops) - 2)
    f = (v - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def feature_grid_png(maps: np.ndarray, *, scale: int = 4, cols: int | None = None) -> bytes:
    """(C, H, W) feature maps -> one PNG grid, each map normalised to its own range."""
    c, h, w = maps.shape
    cols = cols or int(np.ceil(np.sqrt(c)))
    rows = int(np.ceil(c / cols))
    pad = 2
    grid = np.full((rows * (h * scale + pad) + pad, cols * (w * scale + pad) + pad, 3), 255, np.uint8)
    for k in range(c):
        m = maps[k]
        span = m.max() - m.min()
        rgb = colormap((m - m.min()) / span if span > 0 else np.zeros_like(m))
        rgb = rgb.repeat(scale, 0).repeat(scale, 1)
        r, q = divmod(k, cols)
        y, x = pad + r * (h * scale + pad), pad + q * (w * scale + pad)
        grid[y : y + h * scale, x : x + w * scale] = rgb
    return _png(Image.fromarray(grid))


def overlay_png(photo: Image.Image, heat: np.ndarray, alpha: float = 0.7, peak: tuple[int, int] | None = None) -> bytes:
    """Blend a [0, 1] heatmap (already at the photo's size) over the photo; mark the peak.

    The photo goes under the heat as a dimmed grey copy: the colormap's hot end is pale
    yellow, which blended onto a bright or bluish photo averages out to grey and vanishes.
    On dimmed grey every hue of the ramp stands out, and where the heat is 0 the photo
    still shows through."""
    grey = np.asarray(photo.convert("L"), dtype=float)[..., None]  # (h, w, 1) luminance
    base = 30.0 + 0.55 * grey  # dimmed to 30..170 so that the heat colours read on top
    rgb = colormap(heat).astype(float)  # (h, w, 3)
    a = alpha * np.clip(heat, 0, 1)[..., None] ** 0.5  # (h, w, 1) opacity grows with the heat
    img = Image.fromarray((base * (1 - a) + rgb * a).astype(np.uint8))
    if peak is not None:
        d = ImageDraw.Draw(img)
        x, y = peak
        r = max(4, min(img.size) // 60)
        d.ellipse([x - r, y - r, x + r, y + r], outline=(0, 255, 255), width=max(1, r // 3))
    return _png(img)


def accuracy_vs_size_png(
    sizes: Sequence[int], series: dict[str, Sequence[float]], *, chance: float | None = None, size=(560, 340)
) -> bytes:
    """Test accuracy against training-set size (photos per class) on a log x axis, one
    line per model, a tick at every size, and a dashed line at chance accuracy."""
    w, h = size
    left, right, top, bottom = 48, 16, 28, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    logs = np.log10(np.asarray(sizes, dtype=float))
    span = max(float(logs[-1] - logs[0]), 1e-9)

    def xy(n_log: float, acc: float) -> tuple[float, float]:
        x = left + (w - left - right) * ((n_log - logs[0]) / span if len(logs) > 1 else 0.5)
        return x, h - bottom - (h - top - bottom) * acc  # accuracy from 0 (bottom) to 1 (top)

    d.rectangle([left, top, w - right, h - bottom], outline=(120, 120, 120))
    d.text((left, 6), "test accuracy vs training photos per class (log scale)", fill="black")
    for acc in (0.0, 0.5, 1.0):
        y = xy(logs[0], acc)[1]
        d.text((8, y - 6), f"{acc:.1f}", fill="black")
        d.line([left, y, left + 4, y], fill=(120, 120, 120))
    for n, n_log in zip(sizes, logs, strict=True):
        x = xy(n_log, 0.0)[0]
        d.line([x, h - bottom, x, h - bottom + 4], fill=(120, 120, 120))
        d.text((x - 3 * len(str(n)), h - bottom + 6), str(n), fill="black")
    d.text((w // 2 - 50, h - 14), "photos per class", fill="black")
    if chance is not None:
        y = xy(logs[0], chance)[1]
        for x0 in range(left, w - right, 8):  # dashed
            d.line([x0, y, min(x0 + 4, w - right), y], fill=(160, 160, 160))
        d.text((w - right - 44, y - 12), "chance", fill=(130, 130, 130))
    for k, (name, accs) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        pts = [xy(n_log, a) for n_log, a in zip(logs, accs, strict=True) if a == a]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        d.text((left + 8, top + 6 + 12 * k), name, fill=colour)
    return _png(img)
