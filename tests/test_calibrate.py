"""Temperature scaling, ECE, the review threshold and the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinytriage.training.calibration import (
    calibrate_logits,
    expected_calibration_error,
    fit_temperature,
    nll,
    pick_threshold,
    review_threshold,
    softmax,
)
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


def _separated(n=20, k=3, seed=0):
    """What a fine-tuned head gives on a small validation split: every photo right, with a margin."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 4.0
    return logits, y


def test_a_separated_validation_set_keeps_temperature_1():
    """20 photos, all right: NLL falls as T falls, to the search's bound (T=0.05 shipped
    before, and a wrong photo then read as 0.84 sure). Nothing to fit: T stays 1."""
    logits, y = _separated()
    assert fit_temperature(logits, y) < 0.06  # the degenerate fit itself
    cal = calibrate_logits(logits, y, 0.99)
    assert cal.temperature == 1.0 and cal.fit.note and "right" in cal.fit.note
    assert cal.ece_after == cal.ece_before


def test_temperature_never_makes_held_out_calibration_worse():
    """Small validation sets (30-60 photos) of an over-confident model: the calibration
    error reported is on photos the temperature was not fitted on, and never worse than
    at T = 1; where the fit would make it worse, T = 1 is kept, and said."""
    kept = 0
    for seed in range(40):
        logits, y = _overconfident(n=30 + seed, k=3, seed=seed)
        cal = calibrate_logits(logits, y, 0.99)
        assert cal.ece_after <= cal.ece_before + 1e-12
        if cal.fit.note:
            kept += 1
            assert cal.temperature == 1.0
        else:
            assert cal.temperature == pytest.approx(fit_temperature(logits, y))
    assert 0 < kept < 40  # both outcomes happen on sets this small


def test_too_few_photos_fit_no_temperature():
    logits, y = _overconfident(n=6)
    cal = calibrate_logits(logits, y, 0.99)
    assert cal.temperature == 1.0 and "too few" in cal.fit.note


def test_a_threshold_that_misses_the_target_says_what_it_reached():
    """The most confident photo is wrong and no prefix reaches 99%: the threshold with the
    best precision, and the precision it reached, not a silent 0.5."""
    conf = np.array([0.99, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55])
    probs = np.stack([conf, 1 - conf], 1)
    y = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 1])  # wrong, 6 right, wrong x3
    r = review_threshold(probs, y, 0.99)
    assert not r.met and r.threshold == pytest.approx(0.7)
    assert r.routed == 7 and r.precision == pytest.approx(6 / 7) and r.of == 10
    ok = review_threshold(probs[1:7], y[1:7], 0.99)
    assert ok.met and ok.precision == 1.0 and ok.routed == 6
    nothing = review_threshold(probs[:1], y[:1], 0.99)  # every photo wrong: none routed
    assert nothing.threshold == 1.0 and not nothing.met


def test_lr_schedule_shape():
    total, peak, warm = 100, 0.1, 10
    lrs = [lr_at(s, total, peak, warm) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warm)
    assert lrs[warm - 1] == pytest.approx(peak)
    assert lrs[warm] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :], strict=False))
    assert lrs[-1] == pytest.approx(peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 89 / 90))))
