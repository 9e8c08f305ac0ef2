"""Grad-CAM (Selvaraju et al., 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization"): where in the photo the evidence for a class lies.

Take A, the feature maps of the last conv block after its ReLU (ReLU6 in EfficientNet), (K, h, w), and y_c, the
score of class c (its logit, before softmax). Then

    alpha_k = 1/(h*w) * sum_ij d y_c / d A_k[i, j]     how much channel k matters for class c
    L_c     = ReLU(sum_k alpha_k * A_k)                 (h, w): where those channels fire

The ReLU keeps only what speaks *for* the class. Both engines compute d y_c / d A the way
they train (``Engine.activations_and_gradients``): the NumPy engine runs the layers after A
forward, then its own backward passes from a one-hot d logits (eval mode, so BatchNorm uses
its running statistics); the PyTorch engine asks autograd. The rest (alpha, the map, upsampling, the way back to the photo) is
shared NumPy code below, so the two engines' maps differ only by float32 rounding.

For TriageCNN the head is global average pooling then one linear layer, so
d y_c / d A_k[i, j] = W[c, k] / (h*w) everywhere and Grad-CAM is the CAM of Zhou et al.
(2016) up to a constant; the tests use that as an independent check of the gradients.
With the ``avgmax`` head each channel's maximum adds W[c, K + k] at the one cell that won
it, so alpha_k = (W[c, k] + W[c, K + k]) / (h*w) and the map still covers every cell.

The (h, w) map is upsampled bilinearly to the model input (as ``F.interpolate(...,
mode="bilinear", align_corners=False)``), the letterbox padding is cropped away, and the
peak is mapped back to the original photo's pixels with ``LetterboxGeometry``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tinytriage.data.preprocess import LetterboxGeometry
from tinytriage.errors import TinyTriageError


@dataclass
class CamMaps:
    """Grad-CAM of a batch of photos, at the target layer's resolution."""

    layer: str  # name of the target layer (e.g. relu4)
    class_index: np.ndarray  # (N,) the class c of each photo
    logits: np.ndarray  # (N, classes) from the same forward pass
    activations: np.ndarray  # (N, K, h, w) A
    gradients: np.ndarray  # (N, K, h, w) d y_c / d A
    alpha: np.ndarray  # (N, K) channel weights: spatial mean of the gradients
    cam: np.ndarray  # (N, h, w) ReLU(sum_k alpha_k A_k), not normalised


@dataclass
class Localization:
    """A heatmap brought back to the photo: where it peaks, in model and photo pixels."""

    heat: np.ndarray  # (S, S) the map upsampled to the model input, scaled to [0, 1] (all 0 if empty)
    peak_input: tuple[int, int] | None  # (u, v) model-input pixel of the peak, inside the photo's area
    peak: tuple[int, int] | None  # (x, y) pixel of the original (EXIF-upright) photo; None if the map is 0
    content_box: tuple[int, int, int, int]  # (left, top, right, bottom) of the photo in the model input


def target_layer(names: list[str], layer: str | None = None) -> tuple[int, str]:
    """Index in ``features`` (whose layers are ``names``) and name of the Grad-CAM layer: by
    default the last one, the last conv block's activation (the CNN's last ReLU,
    EfficientNet's ``act2``): the last layer that still has a spatial map."""
    if layer is None:
        layer = names[-1]
    if layer not in names:
        raise TinyTriageError(f"unknown layer {layer!r}; this model's layers are {', '.join(names)}")
    return names.index(layer), layer


# -- the method ------------------------------------------------------------------------------
def cam_from(activations: np.ndarray, gradients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha (N, K), cam (N, h, w)) from A and d y_c / d A, both (N, K, h, w)."""
    alpha = gradients.astype(np.float64).mean(axis=(2, 3))  # (N, K): global-average-pooled gradients
    cam = np.einsum("nk,nkhw->nhw", alpha, activations.astype(np.float64))  # weighted sum of the maps
    return alpha, np.maximum(cam, 0.0)  # only evidence for the class


def grad_cam(
    engine, cfg, x: np.ndarray, class_index: int | np.ndarray | None = None, layer: str | None = None
) -> CamMaps:
    """Grad-CAM of photos x (N, 3, S, S) for ``class_index`` (one int, one per photo, or
    None for each photo's predicted class) at ``layer`` (default: the last layer of
    ``features``). ``cfg``: the model's config; the engine's architecture names its layers."""
    t, name = target_layer(engine.arch.layer_names(cfg), layer)
    N = len(x)
    if class_index is None:
        class_index = engine.logits(x).argmax(axis=1)
    class_index = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (N,)).copy()
    if class_index.min() < 0 or class_index.max() >= cfg.num_classes:
        raise TinyTriageError(f"Grad-CAM: class index out of range 0..{cfg.num_classes - 1}")
    A, dA, logits = engine.activations_and_gradients(x, class_index, t)  # (N, K, h, w) twice, (N, classes)
    alpha, cam = cam_from(A, dA)
    return CamMaps(name, class_index, logits, A, dA, alpha, cam)


# -- from the feature grid back to the photo -------------------------------------------------
def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output position: the two input neighbours and the weight of the second.

    align_corners=False: output pixel i's centre i + 0.5 sits at input position
    (i + 0.5) * in/out, i.e. index (i + 0.5) * in/out - 0.5, clamped at 0 (PyTorch's rule)."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0


def upsample_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., h, w) -> (..., H, W) by bilinear interpolation, align_corners=False."""
    H, W = size
    r0, r1, fr = _source_index(H, maps.shape[-2])
    c0, c1, fc = _source_index(W, maps.shape[-1])
    fr, fc = fr[:, None], fc[None, :]  # (H, 1), (1, W)
    top = maps[..., r0[:, None], c0[None, :]] * (1 - fc) + maps[..., r0[:, None], c1[None, :]] * fc
    bottom = maps[..., r1[:, None], c0[None, :]] * (1 - fc) + maps[..., r1[:, None], c1[None, :]] * fc
    return top * (1 - fr) + bottom * fr


def content_pixels(geom: LetterboxGeometry, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) model-input pixels covered by the photo (right/bottom exclusive)."""
    left, top, right, bottom = geom.content_box(size)
    return (
        int(math.floor(left)),
        int(math.floor(top)),
        max(int(math.ceil(right)), int(math.floor(left)) + 1),
        max(int(math.ceil(bottom)), int(math.floor(top)) + 1),
    )


def input_to_photo_pixel(geom: LetterboxGeometry, u: int, v: int) -> tuple[int, int]:
    """Model-input pixel (u, v) -> the original photo's pixel under its centre."""
    x, y = geom.to_original(u + 0.5, v + 0.5)
    return (
        int(min(max(math.floor(float(x)), 0), geom.orig_w - 1)),
        int(min(max(math.floor(float(y)), 0), geom.orig_h - 1)),
    )


def localize(cam: np.ndarray, geom: LetterboxGeometry, size: int) -> Localization:
    """Upsample an (h, w) map to the size x size model input, crop away the padding, find
    the peak and map it to the photo. The peak is the first maximum in row-major order
    among the model-input pixels the photo covers; a map that is 0 everywhere has none."""
    heat = upsample_bilinear(np.asarray(cam, dtype=np.float64), (size, size))
    top_value = float(heat.max()) if heat.size else 0.0
    heat = heat / top_value if top_value > 0 else np.zeros_like(heat)
    box = content_pixels(geom, size)
    left, top, right, bottom = box
    if top_value <= 0:
        return Localization(heat, None, None, box)
    inside = heat[top:bottom, left:right]  # the photo's part of the input
    v, u = np.unravel_index(int(np.argmax(inside)), inside.shape)
    u, v = int(u) + left, int(v) + top
    return Localization(heat, (u, v), input_to_photo_pixel(geom, u, v), box)


def heat_on_photo(heat: np.ndarray, geom: LetterboxGeometry, out_size: tuple[int, int]) -> np.ndarray:
    """The model-input heatmap cropped to the photo and resized to ``out_size`` (w, h): the
    heat over the original photo (or a scaled copy of it) for overlays. (h, w) floats."""
    from PIL import Image

    left, top, right, bottom = geom.content_box(heat.shape[-1])
    img = Image.fromarray(np.asarray(heat, dtype=np.float32))  # mode "F": 32-bit float pixels
    small = img.resize(out_size, Image.Resampling.BILINEAR, box=(left, top, right, bottom))
    return np.clip(np.asarray(small, dtype=np.float64), 0.0, 1.0)
