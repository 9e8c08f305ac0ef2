"""Calibrated confidence: temperature scaling, expected calibration error, review threshold.

A network's softmax is usually over-confident. Temperature scaling (Guo et al., 2017,
"On Calibration of Modern Neural Networks") divides the logits by one scalar T, fitted on
validation data to minimise the negative log-likelihood; it never changes which class
wins, only how sure the model says it is.

Expected calibration error (ECE): bin the predictions by confidence; in each bin compare
the mean confidence with the accuracy; ECE = sum over bins of (bin size / N) * |acc - conf|.

The review threshold is then picked on the same validation data: the lowest confidence
at which the photos routed automatically are still right at least ``target_precision``
of the time; below it, a photo goes to a human. When no confidence reaches the target,
the threshold with the best precision is kept and ``ReviewThreshold`` says what it reached.

A temperature fitted on a few photos can do harm, so ``fit_temperature_checked`` fits it
and then checks it on photos it was not fitted on (cross-fitting: each of ``FOLDS`` folds
scored at the temperature fitted on the others) and keeps T = 1 when:

* there are fewer than ``MIN_PHOTOS`` photos;
* the fit runs to its lower bound: every photo is right with a margin, so the likelihood
  keeps rising as T falls and the photos say nothing about how sure the model should be
  (20 validation photos, all right, gave T = 0.05: a wrong photo then reads as 0.84 sure);
* the held-out calibration error at the fitted temperature is worse than at T = 1.

The ECE it reports is that held-out one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / T, stable: subtract the row max before exp."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true labels at temperature T."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


T_LOW, T_HIGH = 0.05, 20.0  # the temperatures searched
MIN_PHOTOS = 10  # fewer validation photos than this: T = 1, nothing fitted
FOLDS = 5  # cross-fitting: the held-out check of a fitted temperature


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = T_LOW, hi: float = T_HIGH) -> float:
    """T minimising validation NLL: golden-section search on log T (NLL is unimodal in it)."""
    if len(labels) == 0:
        return 1.0
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(60):
        if nll(logits, labels, np.exp(c)) < nll(logits, labels, np.exp(d)):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    return float(np.exp((a + b) / 2))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins."""
    if len(labels) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def pick_threshold(probs: np.ndarray, labels: np.ndarray, target_precision: float = 0.99, floor: float = 0.5) -> float:
    """Lowest confidence threshold whose auto-routed photos are >= target_precision right.

    Candidates are the observed confidences; the result is at least ``floor`` so that a
    near-coin-flip is never routed automatically. When no threshold reaches the target,
    the one whose auto-routed photos are most often right (``review_threshold`` says so).
    """
    if len(labels) == 0:
        return floor
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    order = np.argsort(-conf)  # most confident first
    hits = np.cumsum(correct[order])
    precision = hits / np.arange(1, len(order) + 1)
    ok = np.nonzero(precision >= target_precision)[0]
    if len(ok) == 0:  # none reaches it: the best precision any prefix reaches, its longest prefix
        if precision.max() == 0:
            return 1.0  # every photo wrong: none is routed without a person
        ok = np.nonzero(precision == precision.max())[0]
    # the longest prefix of confident photos that still meets the target
    threshold = float(conf[order][ok[-1]])
    return float(max(floor, threshold))


@dataclass(frozen=True)
class ReviewThreshold:
    """The review threshold and what it did on the photos it was picked on."""

    threshold: float  # review below this calibrated confidence
    target_precision: float  # what auto-routed photos were asked to reach
    precision: float  # what they reached (NaN: no photo auto-routed)
    routed: int  # photos at or above the threshold
    of: int  # photos it was picked on

    @property
    def met(self) -> bool:
        return self.precision >= self.target_precision  # False for NaN

    def to_json(self) -> dict:
        return {**asdict(self), "met": self.met}


def review_threshold(probs: np.ndarray, labels: np.ndarray, target_precision: float = 0.99) -> ReviewThreshold:
    """``pick_threshold``, and the precision its auto-routed photos reach on these photos."""
    threshold = pick_threshold(probs, labels, target_precision)
    routed = probs.max(axis=1) >= threshold
    right = probs.argmax(axis=1) == labels
    precision = float(right[routed].mean()) if routed.any() else math.nan
    return ReviewThreshold(threshold, target_precision, precision, int(routed.sum()), len(labels))


@dataclass(frozen=True)
class TemperatureFit:
    """A temperature, fitted and checked on photos it was not fitted on (module docstring)."""

    temperature: float  # T to use: the fit, or 1 where the check refused it
    fitted: float  # T the fit gave on all the photos (NaN: too few photos to fit)
    ece_before: float  # calibration error at T = 1
    ece_fitted: float  # ... at the fitted temperature, each photo at a T fitted without it
    note: str | None  # why T = 1 was kept; None: the fit is used

    @property
    def ece_after(self) -> float:
        """Held-out calibration error at the temperature used."""
        return self.ece_before if self.note else self.ece_fitted


def stratified_folds(labels: np.ndarray, k: int) -> np.ndarray:
    """Fold of each photo, 0..k-1, each class dealt out in turn (stratified, no randomness)."""
    fold = np.empty(len(labels), dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        fold[idx] = (start + np.arange(len(idx))) % k
        start += len(idx)
    return fold


def _degenerate(t: float) -> bool:
    """The fit ran to the lowest temperature searched: no minimum inside the range."""
    return t <= T_LOW * 1.01


def fit_temperature_checked(logits: np.ndarray, labels: np.ndarray, folds: int = FOLDS) -> TemperatureFit:
    """Fit T on every photo; check it on photos it was not fitted on; T = 1 where it fails."""
    n = len(labels)
    ece_1 = expected_calibration_error(softmax(logits), labels) if n else math.nan
    if n < MIN_PHOTOS:
        note = f"only {n} photos, too few to fit a temperature on"
        return TemperatureFit(1.0, math.nan, ece_1, ece_1, note)
    fitted = fit_temperature(logits, labels)
    held_out = np.empty((n, logits.shape[1]))  # each photo at the temperature fitted without it
    fold = stratified_folds(labels, min(folds, n))
    for f in np.unique(fold):
        inside = fold != f
        t = fit_temperature(logits[inside], labels[inside])
        held_out[~inside] = softmax(logits[~inside], 1.0 if _degenerate(t) else t)
    ece_t = expected_calibration_error(held_out, labels)
    note = None
    if _degenerate(fitted):
        note = (
            f"every photo is right with a margin: the fit runs to T={fitted:.3f} and says nothing "
            "about how sure the model should be"
        )
    elif ece_t > ece_1:
        note = f"the fitted T={fitted:.3f} made the held-out calibration error worse ({ece_1:.3f} -> {ece_t:.3f})"
    return TemperatureFit(1.0 if note else fitted, fitted, ece_1, ece_t, note)


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate_logits`` fitted on validation photos."""

    temperature: float  # T of softmax(logits / T): the fit, or 1 (``fit.note`` says why)
    threshold: float  # review below this calibrated confidence
    ece_before: float  # expected calibration error at T = 1
    ece_after: float  # ... at T, on photos the temperature was not fitted on
    fit: TemperatureFit | None = None  # the temperature's fit and check
    review: ReviewThreshold | None = None  # what the threshold reached on the photos it was picked on
    photos: str = ""  # which photos both were fitted on, for a person: '20 validation photos'

    def to_json(self) -> dict:
        """The numbers, for a model file's metrics and metrics.json."""
        fit, review = self.fit, self.review
        return {
            "temperature": self.temperature,
            "temperature_fitted": None if fit is None else fit.fitted,
            "temperature_note": None if fit is None else fit.note,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "ece_held_out": True,
            "calibrated_on": self.photos,
            "review_threshold": None if review is None else review.to_json(),
        }


def calibrate_logits(
    val_logits: np.ndarray, y_val: np.ndarray, target_precision: float, photos: str | None = None
) -> Calibration:
    """Temperature (checked on held-out photos), then the review threshold, fitted on
    logits (M, K) of photos the model did not learn from, and their labels (M,).
    ``photos`` says which they are (default: 'M validation photos')."""
    fit = fit_temperature_checked(val_logits, y_val)
    review = review_threshold(softmax(val_logits, fit.temperature), y_val, target_precision)
    return Calibration(
        temperature=fit.temperature,
        threshold=review.threshold,
        ece_before=fit.ece_before,
        ece_after=fit.ece_after,
        fit=fit,
        review=review,
        photos=photos or f"{len(y_val)} validation photos",
    )
