"""Inference-time fusion: fold each BatchNorm into the convolution before it.

At inference BatchNorm no longer looks at the batch: it is a fixed affine map per channel,

    bn(z) = gamma * (z - mean) / sqrt(var + eps) + beta  =  s * z + (beta - s * mean),
    with s = gamma / sqrt(var + eps).

The convolution before it is linear, z = W * x + b, so the two are one convolution:

    bn(conv(x)) = (s W) * x + s (b - mean) + beta

with each output channel's kernel scaled by its s. The ReLU (or ReLU6, min(max(z, 0), 6))
and the max pooling after it (when there are) are applied to each chunk of the
convolution's output while that chunk is still in cache. A 3x3 convolution with 32 or more
input channels runs as Winograd's F(2x2, 3x3) (``tinytriage.nn.fast.winograd``), its 2x2
output tiles the pool's windows. What disappears is three full passes over every feature
map (BatchNorm's, ReLU's and the pool's), and the full-size map itself: only the pooled
one is written out. PyTorch folds BatchNorm the same way in
``torch.nn.utils.fusion.fuse_conv_bn_eval``.

The folded convolution runs on the path its layer takes (``Conv2d.path``): depthwise and
pointwise convolutions on their own fast paths (``tinytriage.nn.fast.depthwise``,
``tinytriage.nn.fast.pointwise``), TF "same" padding (``Conv2dSame``) included. In the
mobile blocks (``tinytriage.nn.mobile``) every conv -> BatchNorm [-> ReLU6] of the branch
is folded (``FusedBlock``), and the residual add stays.

A Vision Transformer's blocks run on ``tinytriage.nn.fast.transformer`` (groups of photos
over the threads, a float32 erf, nothing kept for backward).

The fused layers fold the original layers' weights and running statistics again on every
call (one multiply per weight, under a millisecond for the triage CNN), so training the
original model never leaves them stale. They
are for inference only: they have no backward pass. The unfused model stays the one that
trains, explains and is saved.
"""

from __future__ import annotations

import copy

import numpy as np

from tinytriage.nn.activation import ReLU, ReLU6
from tinytriage.nn.conv import Conv2d, im2col_padding
from tinytriage.nn.fast import winograd
from tinytriage.nn.fast.depthwise import depthwise_conv2d_fused_forward
from tinytriage.nn.fast.im2col import conv2d_fused_forward
from tinytriage.nn.fast.memory import empty_like
from tinytriage.nn.fast.pointwise import pointwise_conv2d_fused_forward
from tinytriage.nn.fast.transformer import FastBlocks
from tinytriage.nn.mobile import DepthwiseSeparableConv, InvertedResidual
from tinytriage.nn.module import Module, Sequential
from tinytriage.nn.norm import BatchNorm2d
from tinytriage.nn.pool import MaxPool2d
from tinytriage.nn.transformer import Block, ConvNormAct


def fold_batchnorm(weight: np.ndarray, bias: np.ndarray | None, bn: BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a conv followed by ``bn`` in eval mode -> (W', b') of the one conv doing both."""
    stats = bn.buffers
    mean, var = stats["running_mean"].astype(np.float64), stats["running_var"].astype(np.float64)
    O = weight.shape[0]
    gamma = bn.params["weight"].astype(np.float64) if bn.affine else np.ones(O)
    beta = bn.params["bias"].astype(np.float64) if bn.affine else np.zeros(O)
    s = gamma / np.sqrt(var + bn.eps)  # (O,)  the per-channel scale, in float64
    b = np.zeros(O) if bias is None else bias.astype(np.float64)
    b_folded = s * (b - mean) + beta  # (O,)
    # one rounding per weight, in the weights' own precision
    w_folded = weight * s.astype(weight.dtype)[:, None, None, None]  # (O, C/g, KH, KW) kernel o times s[o]
    return w_folded, b_folded.astype(weight.dtype)


class ConvBNReLU(Module):
    """conv -> BatchNorm (eval) -> optional ReLU (or ReLU6) -> optional max pooling as one
    convolution. Inference only."""

    def __init__(
        self, conv: Conv2d, bn: BatchNorm2d, relu: bool, pool: MaxPool2d | None = None, relu6: bool = False
    ) -> None:
        super().__init__()
        self.conv, self.bn, self.relu, self.pool = conv, bn, relu, pool  # shared with the unfused model
        self.relu6 = relu6  # ReLU6: also min(., 6)
        self.training = False
        self._winograd: tuple[np.ndarray, np.ndarray] | None = None  # (folded kernels, their transform)

    def forward(self, x: np.ndarray) -> np.ndarray:
        c, p = self.conv, self.pool
        conv_params = c.params
        w, b = fold_batchnorm(conv_params["weight"], conv_params.get("bias"), self.bn)
        relu, cap = self.relu or self.relu6, (6.0 if self.relu6 else None)
        pads = c.pads(x.shape[2:])
        if p is None and c.path == "depthwise":
            return depthwise_conv2d_fused_forward(x, w, b, c.stride, pads, c.dilation, c.workspace, relu, cap)
        if p is None and c.path == "pointwise":
            return pointwise_conv2d_fused_forward(x, w, b, relu, cap)
        x, padding = im2col_padding(x, pads)
        pool = None if p is None else (p.kernel_size, p.stride)
        if cap is None and winograd.fits(x.shape, w.shape, c.stride, padding, c.dilation, c.groups, pool):
            u = self._transformed(w)
            return winograd.winograd_conv3x3(x, w, b, relu, pool is not None, c.workspace, u)
        return conv2d_fused_forward(x, w, b, c.stride, padding, c.dilation, c.groups, c.workspace, relu, pool, cap)

    def _transformed(self, w: np.ndarray) -> np.ndarray:
        """Winograd's transform of the folded kernels ``w``, made again only when they
        changed (comparing them costs far less than transforming them)."""
        if self._winograd is None or not np.array_equal(self._winograd[0], w):
            self._winograd = (w, winograd.kernel_transform(w))
        return self._winograd[1]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise RuntimeError("ConvBNReLU is for inference only: train the unfused model")

    def extra_repr(self) -> str:
        pool = "" if self.pool is None else f", max pool {self.pool.kernel_size[0]}x{self.pool.kernel_size[1]}"
        act = ", ReLU6" if self.relu6 else ", ReLU" if self.relu else ""
        return f"{self.conv.extra_repr()}, folded BatchNorm{act}{pool}"


class FusedBlock(Module):
    """A mobile block (``tinytriage.nn.mobile``) for inference: its branch with every conv,
    BatchNorm and ReLU6 folded (``ConvBNReLU``), then ``+ x`` when the block has a residual."""

    def __init__(self, branch: Module, has_skip: bool) -> None:
        super().__init__()
        self.branch = self.add_module("branch", branch)
        self.has_skip = has_skip
        self.training = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = self.branch(x)
        if not self.has_skip:
            return y
        out = empty_like(y)
        np.add(y, x, out=out)  # the residual add
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise RuntimeError("FusedBlock is for inference only: train the unfused model")

    def extra_repr(self) -> str:
        return "+ input" if self.has_skip else ""


def fuse_for_inference(model: Module) -> Module:
    """A model computing the same as ``model.eval()`` with every ``Conv2d, BatchNorm2d[, ReLU
    or ReLU6]`` run inside a Sequential or a mobile block's branch fused. Every other layer is
    ``model``'s own (shared). Returns ``model`` itself when there is nothing to fuse."""
    if isinstance(model, ConvNormAct) and model.bn.track_running_stats:  # a ViT's early convolutions
        return ConvBNReLU(model.conv, model.bn, relu=True, pool=model.pool)
    if type(model) is Sequential and len(model) and all(isinstance(b, Block) for b in model):
        return FastBlocks(model)  # a ViT's blocks: groups of photos over the threads
    if isinstance(model, (DepthwiseSeparableConv, InvertedResidual)):
        branch = Sequential(*model.branch())
        fused = fuse_for_inference(branch)
        return model if fused is branch else FusedBlock(fused, model.has_skip)
    if isinstance(model, Sequential):
        layers, fused_any = [], False
        items = list(model)
        i = 0
        while i < len(items):
            layer = items[i]
            nxt = items[i + 1] if i + 1 < len(items) else None
            if isinstance(layer, Conv2d) and isinstance(nxt, BatchNorm2d) and nxt.track_running_stats:
                j = i + 2
                act = items[j] if j < len(items) and isinstance(items[j], (ReLU, ReLU6)) else None
                j += act is not None
                pool = items[j] if j < len(items) and isinstance(items[j], MaxPool2d) else None
                if pool is not None and pool.padding != (0, 0):
                    pool = None  # a padded pool needs a -inf border: it stays a layer of its own
                layers.append(ConvBNReLU(layer, nxt, isinstance(act, ReLU), pool, isinstance(act, ReLU6)))
                fused_any = True
                i = j + (pool is not None)
                continue
            child = fuse_for_inference(layer)
            fused_any |= child is not layer
            layers.append(child)
            i += 1
        if not fused_any:
            return model
        if type(model) is Sequential:
            return Sequential(*layers)
        clone = copy.copy(model)  # a model that is a Sequential (EfficientNet): keeps its methods
        clone._modules = {str(i): layer for i, layer in enumerate(layers)}
        return clone
    children = {name: fuse_for_inference(child) for name, child in model.children()}
    if all(children[name] is child for name, child in model.children()):
        return model
    clone = copy.copy(model)  # shallow: the same parameters, buffers and other layers
    clone._modules = dict(children)
    for name, child in children.items():
        if getattr(model, name, None) is model._modules[name]:
            setattr(clone, name, child)  # models that also keep their children as attributes
    return clone
