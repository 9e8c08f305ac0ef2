"""Learning-rate schedule: linear warm-up, then cosine decay (Loshchilov & Hutter, 2017).

A pure function of the step, so a resumed run gets exactly the rates it would have had.
"""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int = 0, final_frac: float = 0.01) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    warm-up:  lr = peak * (step + 1) / warmup              for step < warmup
    cosine:   lr = peak * (f + (1 - f) * (1 + cos(pi * t)) / 2),  t = progress after warm-up
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return peak_lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * t)))
