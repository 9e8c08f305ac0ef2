"""An out-of-distribution gate: how far a photo's features lie from the training photos'.

A classifier's softmax is confident on photos unlike anything it learnt from as often as
on photos like them (Hendrycks & Gimpel 2017; Nguyen et al. 2015), so confidence alone
cannot send those to a person. The features say more. The pooled features of the
training photos (1280 numbers each for EfficientNet-Lite0) vary mostly along a few
directions; a photo of the kind the model learnt from is close to the subspace those
directions span, a photo unlike them has much of its features outside it. The score is
the length of that outside part, the residual of a principal-component reconstruction
(the "residual" of Wang et al. 2022, ViM; a reconstruction error in the sense of PCA
novelty detection):

    mu, V = mean and top ``dims`` principal directions of the training features     (C,), (C, d)
    score(f) = || (f - mu) - V V^T (f - mu) ||                                       f (C,)

Its threshold is set on held-out photos of the same kind as the training photos (the
bundled model's: generated photos the head did not learn from): the largest score among
them, so that a photo goes to a person only when it lies further out than every one of
those. ``predict`` applies it after the softmax: a photo beyond it goes to human review,
"unlike the training photos", whatever its confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

OOD_DIMS = 64  # principal directions kept: the residual is what these 64 of 1280 do not explain
REASON = "unlike the training photos"  # predict's review reason for a photo beyond the threshold


@dataclass
class ResidualGate:
    """The gate as a model file stores it (``ModelFile.ood``)."""

    mean: np.ndarray  # (C,) mean pooled feature of the training photos
    basis: np.ndarray  # (C, d) their top principal directions, orthonormal columns
    threshold: float  # a photo whose score is above this goes to a person

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N, C) pooled features -> (N,) residual lengths."""
        centred = np.asarray(features, np.float64) - self.mean  # (N, C)
        inside = centred @ self.basis @ self.basis.T  # projection onto the subspace, (N, C)
        return np.linalg.norm(centred - inside, axis=1)

    def unlike(self, features: np.ndarray) -> np.ndarray:
        """(N,) True where a photo lies further out than the threshold."""
        return self.score(features) > self.threshold

    def to_ood(self, **about: Any) -> dict[str, Any]:
        """``ModelFile.ood``: the arrays (saved as tensors) and what describes them."""
        return {
            "score": "residual",
            "dims": int(self.basis.shape[1]),
            "threshold": float(self.threshold),
            **about,
            "mean": self.mean.astype(np.float32),
            "basis": self.basis.astype(np.float32),
        }

    @classmethod
    def from_ood(cls, ood: dict[str, Any]) -> ResidualGate | None:
        """The gate of a model file's ``ood`` (read and checked by ``read_model``); None if it has none."""
        if not ood:
            return None
        return cls(np.asarray(ood["mean"], np.float64), np.asarray(ood["basis"], np.float64), float(ood["threshold"]))


def fit_residual_gate(train: np.ndarray, held_out: np.ndarray, dims: int = OOD_DIMS) -> ResidualGate:
    """The gate from the training photos' pooled features (N, C), its threshold the largest
    score among held-out photos of the same kind (M, C)."""
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)  # rows of vt: principal directions
    gate = ResidualGate(mean, vt[:dims].T, threshold=np.inf)  # (C, d)
    gate.threshold = float(gate.score(held_out).max())
    return gate
