"""Temperature scaling, ECE, the review threshold and the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinytriage.training.calibration import expected_calibration_error, fit_temperature, nll, pick_threshold, softmax
from tinytriage.training.schedule import lr_at


def _overconfident(n=2000, k=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, k))
    p = softmax(logits)
    y = (rng.uniform(size=(n, 1)) > p.cumsum(1)).sum(1)  # labels drawn from the true probabilities
    return logits * 4.0, y  # ... and a model four times too sure of them


def test_temperature_recovers_the_scale():
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert 3.5 < t < 4.5
    assert nll(logits, y, t) < nll(logits, y, 1.0)
    # the minimum really is a minimum
    assert nll(logits, y, t) <= min(nll(logits, y, t * 1.05), nll(logits, y, t / 1.05))


def test_ece_drops_after_scaling_and_labels_unchanged():
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(softmax(logits, t), y)
    assert after < before / 3
    assert (softmax(logits, t).argmax(1) == softmax(logits).argmax(1)).all()


def test_ece_of_perfect_calibration_is_small():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 20000)
    y = (rng.uniform(size=conf.size) < conf).astype(int)  # right exactly with prob conf
    probs = np.stack([conf, 1 - conf], 1)
    labels = np.where(y == 1, 0, 1)
    assert expected_calibration_error(probs, labels) < 0.02


def test_threshold_meets_target_precision():
    logits, y = _overconfident()
    probs = softmax(logits, fit_temperature(logits, y))
    t = pick_threshold(probs, y, target_precision=0.95)
    keep = probs.max(1) >= t
    assert (probs.argmax(1)[keep] == y[keep]).mean() >= 0.95
    assert 0 < keep.mean() < 1


def test_lr_schedule_shape():
    total, peak, warm = 100, 0.1, 10
    lrs = [lr_at(s, total, peak, warm) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warm)
    assert lrs[warm - 1] == pytest.approx(peak)
    assert lrs[warm] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :], strict=False))
    assert lrs[-1] == pytest.approx(peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 89 / 90))))
