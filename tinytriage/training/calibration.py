"""Calibrated confidence: temperature scaling, expected calibration error, review threshold.

A network's softmax is usually over-confident. Temperature scaling (Guo et al., 2017,
"On Calibration of Modern Neural Networks") divides the logits by one scalar T, fitted on
validation data to minimise the negative log-likelihood; it never changes which class
wins, only how sure the model says it is.

Expected calibration error (ECE): bin the predictions by confidence; in each bin compare
the mean confidence with the accuracy; ECE = sum over bins of (bin size / N) * |acc - conf|.

The review threshold is then picked on the same validation data: the lowest confidence
at which the photos routed automatically are still right at least ``target_precision``
of the time; below it, a photo goes to a human.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
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
    near-coin-flip is never routed automatically.
    """
    if len(labels) == 0:
        return floor
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    order = np.argsort(-conf)  # most confident first
    hits = np.cumsum(correct[order])
    precision = hits / np.arange(1, len(order) + 1)
    ok = np.nonzero(precision >= target_precision)[0]
    if len(ok) == 0:
        return float(max(floor, conf.max()))
    # the longest prefix of confident photos that still meets the target
    threshold = float(conf[order][ok[-1]])
    return float(max(floor, threshold))


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate_logits`` fitted on validation photos."""

    temperature: float  # T of softmax(logits / T)
    threshold: float  # review below this calibrated confidence
    ece_before: float  # expected calibration error at T = 1
    ece_after: float  # ... at the fitted T


def calibrate_logits(val_logits: np.ndarray, y_val: np.ndarray, target_precision: float) -> Calibration:
    """Temperature, then the review threshold, fitted on validation logits (M, K) and labels (M,)."""
    temperature = fit_temperature(val_logits, y_val)
    probs_raw, probs_cal = softmax(val_logits), softmax(val_logits, temperature)
    return Calibration(
        temperature=temperature,
        threshold=pick_threshold(probs_cal, y_val, target_precision),
        ece_before=expected_calibration_error(probs_raw, y_val),
        ece_after=expected_calibration_error(probs_cal, y_val),
    )
