"""Grouped log-softmax: the log-probability of each group of classes.

A classifier that knows J fine classes (ImageNet's 1000) answers a coarser question (is it
a phone, a parcel, a document?) by adding up the probabilities of the fine classes in each
group. With a 0/1 membership matrix M (K groups, J classes; a class may be in several
groups, or in none):

    p = softmax(x)                              x (N, J) logits
    y_k = log sum_j M_kj p_j                    y (N, K)
        = logsumexp_{j in group k}(x_j) - logsumexp_j(x_j)

and by the chain rule, with r_kj = M_kj p_j / sum_i M_ki p_i (the share of group k's
probability that class j holds, which sums to 1 over the group):

    dy_k/dx_j = r_kj - p_j        so        dx_j = sum_k dy_k r_kj - p_j sum_k dy_k

Each group's sum is taken with the group's own largest logit subtracted (a logsumexp over
the group), so that a group whose classes are all very unlikely still gets its true, finite
log-probability; an empty group gets log 0 = -inf, as PyTorch's logsumexp gives.
"""

from __future__ import annotations

import numpy as np

from tinytriage.errors import ShapeError
from tinytriage.nn.module import Module, take_cache


class GroupLogSoftmax(Module):
    """log sum_{j in group k} softmax(x)_j for K groups of ``in_features`` classes. The groups
    are a buffer, ``members`` (K, in_features), 1 where class j belongs to group k, else 0:
    loaded with the weights, never trained."""

    def __init__(self, in_features: int, num_groups: int, dtype: type = np.float32) -> None:
        super().__init__()
        self.in_features, self.num_groups = in_features, num_groups
        self._buffers["members"] = np.zeros((num_groups, in_features), dtype)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ShapeError(f"GroupLogSoftmax: expected (N, {self.in_features}) logits, got shape {tuple(x.shape)}")
        inside = self._buffers["members"] > 0  # (K, J)
        top = x.max(axis=1, keepdims=True)  # (N, 1)
        lse = top + np.log(np.exp(x - top).sum(axis=1, keepdims=True))  # (N, 1): log of softmax's denominator
        masked = np.where(inside[None], x[:, None, :], -np.inf)  # (N, K, J): each group's logits, -inf elsewhere
        m = masked.max(axis=2, keepdims=True)  # (N, K, 1): each group's largest
        m = np.where(np.isfinite(m), m, 0.0)  # an empty group: its sum is 0 whatever m is
        e = np.exp(masked - m)  # (N, K, J)
        group = e.sum(axis=2)  # (N, K)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.nan_to_num(e / group[:, :, None])  # r_kj: class j's share of group k (0 for an empty group)
            out = m[:, :, 0] + np.log(group) - lse  # (N, K)
        self._cache = (np.exp(x - lse), share)  # p (N, J), r (N, K, J)
        return out.astype(x.dtype, copy=False)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        (p, share), self._cache = take_cache(self._cache, "GroupLogSoftmax")
        # dx_j = sum_k dy_k r_kj - p_j sum_k dy_k
        dx = np.einsum("nk,nkj->nj", grad_out, share) - p * grad_out.sum(axis=1, keepdims=True)  # (N, J)
        return dx.astype(grad_out.dtype, copy=False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_groups={self.num_groups}"
