"""Winograd's minimal filtering: a 3x3 convolution in 2.25x fewer multiplies (inference).

Two outputs of a 3-tap filter g over four inputs d, y0 = d0 g0 + d1 g1 + d2 g2 and
y1 = d1 g0 + d2 g1 + d3 g2, take six multiplies directly and four this way (Winograd's
F(2, 3); Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):

    m0 = (d0 - d2) g0            m1 = (d1 + d2) (g0 + g1 + g2) / 2
    m3 = (d1 - d3) g2            m2 = (d2 - d1) (g0 - g1 + g2) / 2
    y0 = m0 + m1 + m2            y1 = m1 - m2 - m3

that is y = A^T [(G g) * (B^T d)], with * elementwise and the small matrices below. In two
dimensions a 4x4 tile d of the input gives a 2x2 tile of the output,

    Y = A^T [ (G g G^T) * (B^T d B) ] A,

16 multiplies instead of 36. With C input and O output channels the elementwise product
becomes a sum over channels, so for each of the 16 positions of the tile it is one matrix
multiply over all tiles at once:

    U[p] = (G g G^T)[p]     for every (c, o):      (16, C, O)   the kernels, once per call
    V[p] = (B^T d B)[p]     for every (tile, c):   (16, T, C)   the input, tile by tile
    M[p] = V[p] @ U[p]                             (16, T, O)   16 GEMMs
    Y    = A^T M A          for every (tile, o):   (4, T, O)    the 2x2 outputs of each tile

The transforms are fixed sums and differences; written as Kronecker products
(B^T d B flattened is ``kron(B^T, B^T) @ d`` flattened) each is one more matrix multiply.
The tiles step by 2, so each 2x2 output tile is exactly one window of the 2x2 max pool
that follows the triage CNN's convolutions: the pool is the largest of the four rows of
Y, and only the pooled map is written out.

It pays when the multiplies dominate: from 32 input channels up (``MIN_CHANNELS``) on the
2-core machine; below that the transforms cost more than the multiplies they save
(``benchmarks/PROFILE.md``). The results equal the direct convolution's up to float
rounding (the sums run in another order), and it is for inference only:
``tinytriage.nn.fast.fuse`` uses it where it fits; training uses ``tinytriage.nn.conv``.
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tinytriage.nn.fast.memory import Workspace, channels_last, empty, nchw
from tinytriage.nn.fast.parallel import parallel_map

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])  # (4, 4) input transform
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # (4, 3) kernel transform
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])  # (2, 4) output transform

MIN_CHANNELS = 32  # input channels from which it is faster than im2col on the 2-core machine
CHUNK_BYTES = 2**21  # about this much of M per task: a few images, in cache between steps


def fits(
    x_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    pool: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> bool:
    """Whether ``winograd_conv3x3`` computes this convolution (and pool, (kernel, stride)):
    3x3, stride 1, padding 1, no dilation or groups, an even-sized map, at least
    ``MIN_CHANNELS`` input channels, and no pool or a 2x2 pool of stride 2."""
    N, C, H, W = x_shape
    return (
        tuple(weight_shape[2:]) == (3, 3)
        and tuple(stride) == (1, 1)
        and tuple(padding) == (1, 1)
        and tuple(dilation) == (1, 1)
        and groups == 1
        and C >= MIN_CHANNELS
        and H % 2 == 0
        and W % 2 == 0
        and (pool is None or (tuple(pool[0]), tuple(pool[1])) == ((2, 2), (2, 2)))
    )


def kernel_transform(weight: np.ndarray) -> np.ndarray:
    """(O, C, 3, 3) kernels -> U (16, C, O): U[4a + b, c, o] = (G g G^T)[a, b], g = weight[o, c].

    G g G^T flattened is ``kron(G, G) @ g`` flattened, so all the kernels at once are one
    (16, 9) @ (9, C*O) matrix multiply, run as a task with BLAS on one thread (as every
    multiply here is: OpenBLAS's own threads on a small product cost more than they give)."""
    O, C = weight.shape[:2]
    g = weight.transpose(2, 3, 1, 0).reshape(9, C * O)  # (9, C*O): kernel cell, then c, o
    GG = np.kron(G, G).astype(weight.dtype)  # (16, 9)
    return parallel_map(lambda _: (GG @ g).reshape(16, C, O), [0], blas=True)[0]


def winograd_conv3x3(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    relu: bool = False,
    pool: bool = False,
    workspace: Workspace | None = None,
    transformed: np.ndarray | None = None,
) -> np.ndarray:
    """3x3 convolution, stride 1, padding 1 (N, C, H, W) -> (N, O, H, W), then ``+ bias``,
    with ``pool`` a 2x2 max pool of stride 2 (-> (N, O, H/2, W/2)), and with ``relu``
    ``max(., 0)``. H and W even (see ``fits``). Returns a channels-last view, as
    ``conv2d_forward`` does. ``transformed``: ``kernel_transform(weight)``, when the caller
    keeps it between calls."""
    N, C, H, W = x.shape
    O = weight.shape[0]
    h, w = H // 2, W // 2  # tiles per column and per row: each gives a 2x2 block of the output
    dtype = np.result_type(x, weight)
    ws = Workspace() if workspace is None else workspace
    src = channels_last(x.astype(dtype, copy=False))  # (N, H, W, C)
    U = kernel_transform(weight) if transformed is None else transformed
    U = U.astype(dtype, copy=False)  # (16, C, O)
    BB = np.kron(B_T, B_T).astype(dtype)  # (16, 16): V = BB @ d, each 4x4 tile d flattened
    AA = np.kron(A_T, A_T).astype(dtype)  # (4, 16):  Y = AA @ M, each tile's 2x2 outputs flattened
    out = empty((N, h, w, O) if pool else (N, H, W, O), dtype)
    b = None if bias is None else bias.astype(dtype, copy=False)
    n_chunk = max(1, min(N, CHUNK_BYTES // (16 * h * w * O * np.dtype(dtype).itemsize)))

    def task(n0: int) -> None:
        n = min(n_chunk, N - n0)
        T = n * h * w  # tiles in this chunk
        me = f"winograd {threading.get_ident()}"  # every thread its own scratch
        canvas = ws.scratch(me + " canvas", (n_chunk, H + 2, W + 2, C), dtype, fill=0)[:n]  # zero border
        canvas[:, 1 : H + 1, 1 : W + 1] = src[n0 : n0 + n]
        d = ws.scratch(me + " d", (16 * n_chunk * h * w * C,), dtype)[: 16 * T * C].reshape(4, 4, n, h, w, C)
        tiles = sliding_window_view(canvas, (4, 4), axis=(1, 2))[:, ::2, ::2]  # a view: (n, h, w, C, 4, 4)
        np.copyto(d, tiles.transpose(4, 5, 0, 1, 2, 3))  # the one copy: tile position first
        V = ws.scratch(me + " V", (16, n_chunk * h * w * C), dtype)[:, : T * C]
        np.matmul(BB, d.reshape(16, T * C), out=V)  # (16, T*C) = B^T d B for every tile and channel
        M = ws.scratch(me + " M", (16, n_chunk * h * w * O), dtype)[:, : T * O]
        np.matmul(V.reshape(16, T, C), U, out=M.reshape(16, T, O))  # (16, T, O): a GEMM per position
        Y = ws.scratch(me + " Y", (4, n_chunk * h * w * O), dtype)[:, : T * O]
        np.matmul(AA, M, out=Y)  # (4, T*O) = A^T M A: rows (0, 0), (0, 1), (1, 0), (1, 1) of each tile
        if pool:  # each tile is one pooling window: the largest of its four outputs
            done = out[n0 : n0 + n].reshape(T * O)
            np.maximum(Y[0], Y[1], out=done)
            np.maximum(done, Y[2], out=done)
            np.maximum(done, Y[3], out=done)  # NaN propagates
        else:  # (2, 2, n, h, w, O) -> (n, h, 2, w, 2, O) = (n, H, W, O)
            done = out[n0 : n0 + n]
            np.copyto(done.reshape(n, h, 2, w, 2, O), Y.reshape(2, 2, n, h, w, O).transpose(2, 3, 0, 4, 1, 5))
        lines = done.reshape(-1, O)  # (cells, O)
        if b is not None:
            lines += b
        if relu:
            np.maximum(lines, 0, out=lines)

    parallel_map(task, range(0, N, n_chunk), blas=True)
    return nchw(out)
