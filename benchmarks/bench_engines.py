"""NumPy engine vs PyTorch CPU, side by side in one run, on the bundled CNN.

    python benchmarks/bench_engines.py [--batch 64] [--blocks 5] [--steps 5] [--threads N]

Measures, float32, same thread count for both engines:
  * forward and full training step (forward + backward + SGD) per batch, median of blocks
    (each block runs several steps of one engine, then of the other: interleaving call by
    call makes PyTorch's OpenMP threads and OpenBLAS's threads fight over the cores)
  * each conv layer's forward and backward in GFLOP/s, against this machine's own float32
    matmul rate measured in the same run (the ceiling for an im2col engine)
  * peak traced memory of a NumPy training step and its growth from step to step
Prints a table and, with --json, one JSON object. Names the machine and allocator settings.
"""

from __future__ import annotations

import argparse
import os
import sys

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--blocks", type=int, default=5, help="blocks per engine (the median is reported)")
parser.add_argument("--steps", type=int, default=5, help="steps per block")
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--model", default=None, help="model file (default: the bundled CNN)")
parser.add_argument("--random", action="store_true", help="a fresh TriageCNN from the default CNNConfig, no model file")
parser.add_argument("--json", action="store_true")
args = parser.parse_args()
# thread counts must be fixed before numpy/torch start their pools
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

from tinytriage.cnn import CNNConfig, feature_layers  # noqa: E402
from tinytriage.engine import load_engine, make_engine  # noqa: E402
from tinytriage.model_io import bundled_model_path, read_model  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"


def timed(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def blocks(fns: dict, n_blocks: int, steps: int) -> dict[str, float]:
    """Median per-call time of each function, run in alternating blocks."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(n_blocks):
        for k, fn in fns.items():
            times[k].append(timed(fn, steps))
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_gflops(n=1024, reps=10) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    a @ b
    t = min(timed(lambda: a @ b, 1) for _ in range(reps))
    return 2 * n**3 / t / 1e9


def main() -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.random:
        cfg = CNNConfig()
        ne, te = make_engine("numpy", "cnn", cfg.to_dict()), make_engine("torch", "cnn", cfg.to_dict())
    else:
        mf = read_model(args.model or bundled_model_path("cnn"))
        cfg = CNNConfig.from_dict(mf.config)
        ne, te = load_engine("numpy", mf), load_engine("torch", mf)
    s, n = cfg.input_size, args.batch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3, s, s), dtype=np.float32)
    y = rng.integers(0, cfg.num_classes, n)
    te.train_step(x, y, 1e-3)
    ne.train_step(x, y, 1e-3)

    fwd = blocks({"numpy": lambda: ne.logits(x), "torch": lambda: te.logits(x)}, args.blocks, args.steps)
    step = blocks(
        {"numpy": lambda: ne.train_step(x, y, 1e-3), "torch": lambda: te.train_step(x, y, 1e-3)},
        args.blocks,
        args.steps,
    )

    # per conv layer: forward and backward GFLOP/s at this batch, both engines
    from tinytriage import nn as tnn

    layers, size = [], s
    for kind, role, a in feature_layers(cfg):
        if kind == "maxpool":
            size //= 2
        if kind != "conv":
            continue
        k = a["kernel_size"]
        flops = 2 * n * size * size * a["out_channels"] * a["in_channels"] * k * k
        conv = tnn.Conv2d(a["in_channels"], a["out_channels"], k, padding=a["padding"], bias=a["bias"])
        conv.needs_input_grad = role != "conv1"
        xi = rng.standard_normal((n, a["in_channels"], size, size), dtype=np.float32)
        g = rng.standard_normal((n, a["out_channels"], size, size), dtype=np.float32)
        tconv = torch.nn.Conv2d(a["in_channels"], a["out_channels"], k, padding=a["padding"], bias=a["bias"])
        txi = torch.from_numpy(xi).requires_grad_(role != "conv1")
        tg = torch.from_numpy(g)

        def t_fwd(tconv=tconv, txi=txi):
            with torch.no_grad():
                tconv(txi)

        def t_bwd(tconv=tconv, txi=txi, tg=tg):
            out = tconv(txi)
            out.backward(tg)

        conv(xi)
        t = blocks(
            {
                "np_fwd": lambda conv=conv, xi=xi: conv(xi),
                "np_fwd_bwd": lambda conv=conv, xi=xi, g=g: (conv(xi), conv.backward(g)),
                "t_fwd": t_fwd,
                "t_fwd_bwd": t_bwd,
            },
            3,
            3,
        )
        bwd_flops = flops * (2 if role != "conv1" else 1)  # dW, plus dX when needed
        layers.append(
            {
                "layer": role,
                "shape": f"{a['in_channels']}->{a['out_channels']} @ {size}x{size}",
                "numpy_fwd_gflops": flops / t["np_fwd"] / 1e9,
                "numpy_bwd_gflops": bwd_flops / max(t["np_fwd_bwd"] - t["np_fwd"], 1e-9) / 1e9,
                "torch_fwd_gflops": flops / t["t_fwd"] / 1e9,
                "torch_bwd_gflops": bwd_flops / max(t["t_fwd_bwd"] - t["t_fwd"], 1e-9) / 1e9,
            }
        )

    # memory of the numpy training step, and whether it grows
    tracemalloc.start()
    currents = []
    for _ in range(6):
        tracemalloc.reset_peak()
        ne.train_step(x, y, 1e-3)
        currents.append(tracemalloc.get_traced_memory())
    tracemalloc.stop()

    result = {
        "machine": machine(),
        "threads": args.threads,
        "batch": n,
        "input": f"{s}x{s}",
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
        or "glibc defaults",
        "torch": torch.__version__,
        "matmul_gflops": matmul_gflops(),
        "forward_s": fwd,
        "train_step_s": step,
        "ratio_forward": fwd["numpy"] / fwd["torch"],
        "ratio_train_step": step["numpy"] / step["torch"],
        "conv_layers": layers,
        "numpy_step_peak_mb": max(p for _, p in currents) / 2**20,
        "numpy_step_growth_mb": (currents[-1][0] - currents[1][0]) / 2**20,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"machine: {result['machine']}; threads {args.threads}; torch {result['torch']}; allocator: {result['malloc_env']}"
    )
    print(f"bundled CNN, batch {n}, input {s}x{s}, float32, median of {args.blocks} blocks x {args.steps} steps")
    print(f"{'':14}{'numpy':>10}{'torch':>10}{'ratio':>8}")
    for name, d, r in (("forward", fwd, result["ratio_forward"]), ("train step", step, result["ratio_train_step"])):
        print(f"{name:14}{d['numpy'] * 1e3:>8.1f}ms{d['torch'] * 1e3:>8.1f}ms{r:>7.2f}x")
    print(f"float32 matmul (1024^3) on this machine: {result['matmul_gflops']:.1f} GFLOP/s")
    print(f"{'conv layer':12}{'shape':>22}{'np fwd':>9}{'np bwd':>9}{'pt fwd':>9}{'pt bwd':>9}   GFLOP/s")
    for L in layers:
        print(
            f"{L['layer']:12}{L['shape']:>22}{L['numpy_fwd_gflops']:>9.1f}{L['numpy_bwd_gflops']:>9.1f}{L['torch_fwd_gflops']:>9.1f}{L['torch_bwd_gflops']:>9.1f}"
        )
    print(
        f"numpy training step: peak traced memory {result['numpy_step_peak_mb']:.1f} MB, growth over 5 steps {result['numpy_step_growth_mb']:+.2f} MB"
    )


if __name__ == "__main__":
    sys.exit(main())
