"""A second, closer look at the photos the first look is unsure about.

At 128 px a phone that fills half of a 1280x960 photo is some 50 pixels tall, and a
hairline crack across its screen is thinner than one of them: the resize blurs it away.
The network cannot see what its input no longer holds, so for the photos where that
matters, look again, closer:

1. **First look**: the whole photo, letterboxed to the model's input, as always.
2. **Gate**: the top class is a device (``classes``: intact or damaged) and its
   confidence is below ``below``. On the bundled model that is about one photo in ten.
3. **Where is the device?** The class activation map (CAM; Zhou et al. 2016, "Learning
   Deep Features for Discriminative Localization"): with global average pooling, a
   class's logit is the average over the last feature map's cells of ``w_k . f(cell)``,
   so that dot product, per cell, says where the evidence for class k lies. It costs one
   small product with the features the first look computed anyway. The region is the
   box of the cells at ``cam_frac`` or more of the map's maximum (for the device
   classes together), ``margin`` cells wider on each side.
4. **Second look**: the same model on that region, decoded again from the file at the
   resolution the region needs (``preprocess.load_fitted(region=...)``): the device now
   fills the input, so every detail is up to twice as large.
5. The photo's probabilities are the mean of the two looks' (both temperature-scaled).

``tinytriage calibrate`` picks ``below`` on validation photos (``tune_below``, run by
``tuning.calibrate_folder``) and stores the whole setting in the model file, where
``predict`` and ``evaluate`` find it. ``tinytriage close-ups`` (``tuning.write_close_ups``)
writes the regions a second look would see, to train on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tinytriage.models.file import SecondLook  # noqa: F401 (re-exported: the setting this method reads from a model file)

if TYPE_CHECKING:
    from tinytriage.data.preprocess import LetterboxGeometry

# CAM box and gate: chosen on a tuning set generated with --seed 3 (neither the training
# seed nor the README's test seed) and kept fixed; only ``below`` is tuned per model.
DEVICE_CLASSES = ("intact_device", "screen_damage")  # where a closer look can tell damage apart
BELOW_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)


def gate(probs: np.ndarray, class_idx: list[int], below: float) -> np.ndarray:
    """Which photos get a second look: top class in ``class_idx``, confidence < below.
    probs: (N, K) calibrated probabilities -> (N,) bool."""
    top = probs.argmax(axis=1)
    return np.isin(top, class_idx) & (probs.max(axis=1) < below)


def class_activation_maps(
    features: np.ndarray, weight: np.ndarray, class_idx: list[int], rectify: bool = True
) -> np.ndarray:
    """CAM of the classes in ``class_idx`` together, rectified unless ``rectify=False``.

    features: (N, C, h, w), the last conv stage; weight: (K, C) the linear head's weight,
    or (K, 2C) for an average-and-max head (both halves read the same cells).
    Returns (N, h, w): max(0, sum_k w_k . f(cell)). With an average-pooling head, the
    unrectified map's mean over the cells plus the bias is the logit itself."""
    N, C, h, w = features.shape
    wk = weight[class_idx].sum(axis=0)  # (C,) or (2C,)
    if wk.shape[0] == 2 * C:
        wk = wk[:C] + wk[C:]
    cam = np.einsum("c,nchw->nhw", wk.astype(np.float32), features)  # (N, h, w)
    return np.maximum(cam, 0.0) if rectify else cam


def cam_region(
    cam: np.ndarray, geom: LetterboxGeometry, input_size: int, frac: float, margin: float
) -> tuple[float, float, float, float] | None:
    """The box around the strong CAM cells, in the original photo's upright pixels
    (None when the map is zero everywhere: no region to look at).

    cam: (h, w) over the model input; a cell is input_size / h pixels."""
    h, w = cam.shape
    top = float(cam.max())
    if not top > 0.0:
        return None
    rows, cols = np.nonzero(cam >= frac * top)
    cell_h, cell_w = input_size / h, input_size / w
    # cells -> model-input pixels -> original pixels (letterbox borders map outside the photo)
    u0, u1 = (cols.min() - margin) * cell_w, (cols.max() + 1 + margin) * cell_w
    v0, v1 = (rows.min() - margin) * cell_h, (rows.max() + 1 + margin) * cell_h
    x0, y0 = geom.to_original(u0, v0)
    x1, y1 = geom.to_original(u1, v1)
    x0, y0 = max(0.0, float(x0)), max(0.0, float(y0))
    x1, y1 = min(float(geom.orig_w), float(x1)), min(float(geom.orig_h), float(y1))
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return (x0, y0, x1, y1)


def combine(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The two looks' probabilities, averaged: (N, K), (N, K) -> (N, K)."""
    return (first + second) / 2.0


def tune_below(
    first: np.ndarray,
    second: np.ndarray,
    labels: np.ndarray,
    class_idx: list[int],
    grid: tuple[float, ...] = BELOW_GRID,
) -> tuple[float, list[dict[str, float]]]:
    """Pick ``below`` on validation photos: the highest accuracy, and among equals the
    smallest ``below`` (the fewest second looks, so the fastest).

    first, second: (N, K) calibrated probabilities of each photo's two looks (second
    computed for every photo); labels: (N,). Returns (below, one row per grid value)."""
    rows = []
    for below in grid:
        looked = gate(first, class_idx, below)
        probs = np.where(looked[:, None], combine(first, second), first)
        rows.append(
            {"below": below, "accuracy": float((probs.argmax(1) == labels).mean()), "looked": float(looked.mean())}
        )
    best = max(rows, key=lambda r: (round(r["accuracy"], 9), -r["below"]))
    return best["below"], rows


def head_weight(model_file: Any) -> np.ndarray:
    """The CNN's linear head weight (K, C) from a ``ModelFile``: the classifier's rows."""
    (name,) = [
        k for k, v in model_file.tensors.items() if k.startswith("head.") and k.endswith(".weight") and v.ndim == 2
    ]
    return model_file.tensors[name]
