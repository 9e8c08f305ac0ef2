"""Winograd's F(2x2, 3x3) against im2col, layer by layer, on the bundled CNN's fused convs.

    python benchmarks/bench_winograd.py [--batch 32] [--repeats 15] [--model FILE] [--json]

For every conv -> BatchNorm -> ReLU [-> 2x2 max pool] block of the model (folded, as
``tinytriage predict`` runs it), on one thread (as a predict lane runs it), float32:
  * ms per batch through ``conv2d_fused_forward`` (im2col + one GEMM per chunk) and through
    ``winograd_conv3x3`` (its kernel transform made beforehand, as ``nn.fuse`` keeps it),
    the median of --repeats, the two timed in turn, call by call
  * which of the two ``nn.fuse`` picks for that layer (``winograd.fits``: 3x3, stride 1,
    at least ``MIN_CHANNELS`` input channels), and the largest difference between them
  * the kernel transform's own time, once per process for each layer
It times every 3x3 layer both ways, also those below ``MIN_CHANNELS``: that is how the
threshold was chosen. Names the machine and the BLAS kernel (bench_predict's way).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import cpu_name, vector_units  # noqa: E402

from tinytriage import nn  # noqa: E402
from tinytriage.engines import load_engine  # noqa: E402
from tinytriage.models.file import bundled_model_path, read_model  # noqa: E402
from tinytriage.nn.fast import winograd  # noqa: E402
from tinytriage.nn.fast.fuse import ConvBNReLU, fold_batchnorm  # noqa: E402
from tinytriage.nn.fast.im2col import conv2d_fused_forward  # noqa: E402
from tinytriage.nn.fast.memory import Workspace  # noqa: E402


def fused_blocks(engine, input_size: int) -> list[tuple[ConvBNReLU, tuple[int, ...]]]:
    """Each fused block of the model and the shape of its input, from one forward pass."""
    seen: list[tuple[ConvBNReLU, tuple[int, ...]]] = []
    original = ConvBNReLU.forward

    def record(self, x):
        seen.append((self, x.shape))
        return original(self, x)

    ConvBNReLU.forward = record
    try:
        engine.logits(np.zeros((1, 3, input_size, input_size), np.float32))
    finally:
        ConvBNReLU.forward = original
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--model", default=None, help="model file (default: the bundled CNN)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    nn.set_num_threads(1)
    mf = read_model(args.model or bundled_model_path("cnn"))
    engine = load_engine("numpy", mf)
    rng = np.random.default_rng(0)
    rows = []
    for i, (block, shape) in enumerate(fused_blocks(engine, mf.preprocess["input_size"])):
        c, p = block.conv, block.pool
        w, b = fold_batchnorm(c.params["weight"], c.params.get("bias"), block.bn)
        if tuple(w.shape[2:]) != (3, 3) or tuple(c.stride) != (1, 1) or tuple(c.padding) != (1, 1):
            continue
        pool = None if p is None else (p.kernel_size, p.stride)
        x = np.maximum(rng.standard_normal((args.batch, *shape[1:])), 0).astype(np.float32)  # after a ReLU
        t0 = time.perf_counter()
        u = winograd.kernel_transform(w)
        transform_ms = 1e3 * (time.perf_counter() - t0)

        ws_a, ws_b = Workspace(), Workspace()  # each kept between calls, as a layer keeps its own

        im2col = functools.partial(
            conv2d_fused_forward, x, w, b, c.stride, c.padding, c.dilation, c.groups, ws_a, block.relu, pool
        )
        wino = functools.partial(winograd.winograd_conv3x3, x, w, b, block.relu, pool is not None, ws_b, u)
        a, z = np.asarray(im2col()), np.asarray(wino())
        times = {"im2col": [], "winograd": []}
        for _ in range(args.repeats):
            for name, fn in (("im2col", im2col), ("winograd", wino)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        picks = winograd.fits(x.shape, w.shape, c.stride, c.padding, c.dilation, c.groups, pool)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "layer": f"conv{i + 1}",
                "input": list(shape[1:]),
                "out_channels": int(w.shape[0]),
                "im2col_ms": round(med["im2col"], 3),
                "winograd_ms": round(med["winograd"], 3),
                "winograd_over_im2col": round(med["winograd"] / med["im2col"], 3),
                "fuse_picks": "winograd" if picks else "im2col",
                "largest_difference": float(np.abs(a - z).max()),
                "kernel_transform_ms": round(transform_ms, 3),
            }
        )
    result = {
        "machine": cpu_name(),
        "vector_units": vector_units(),
        "batch": args.batch,
        "threads": 1,
        "repeats": args.repeats,
        "min_channels": winograd.MIN_CHANNELS,
        "layers": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['machine']}; {result['vector_units']}; batch {args.batch}, 1 thread, median of {args.repeats}")
    head = ("layer", 6, "<"), ("input (C, H, W)", 16, "<"), ("O", 4, ">"), ("im2col ms", 10, ">")
    head += ("winograd ms", 12, ">"), ("ratio", 6, ">"), (" fuse picks", 11, "<"), ("max diff", 9, ">")
    head += (("transform ms", 12, ">"),)
    print(" ".join(f"{name:{align}{width}}" for name, width, align in head))
    for r in rows:
        print(
            f"{r['layer']:6} {str(tuple(r['input'])):16} {r['out_channels']:>4} {r['im2col_ms']:>10.2f} {r['winograd_ms']:>12.2f}"
            f" {r['winograd_over_im2col']:>6.2f}  {r['fuse_picks']:10} {r['largest_difference']:>9.1e} {r['kernel_transform_ms']:>12.2f}"
        )


if __name__ == "__main__":
    main()
