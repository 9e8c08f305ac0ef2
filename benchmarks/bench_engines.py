"""NumPy engine vs PyTorch CPU, side by side in one run, on the bundled CNN.

    python benchmarks/bench_engines.py [--batch 64] [--blocks 5] [--steps 5] [--threads N]
                                       [--model FILE | --random] [--profile] [--json]

Measures, float32, same thread count for both engines (OpenBLAS, OpenMP and
``torch.set_num_threads``, and the NumPy engine's own ``set_num_threads``):
  * forward and full training step (forward + backward + SGD) per batch, median of blocks
    (each block runs several steps of one engine, then of the other: interleaving call by
    call makes PyTorch's OpenMP threads and OpenBLAS's threads fight over the cores)
  * each conv layer's forward and backward in GFLOP/s, against this machine's own float32
    matmul rate measured in the same run (the ceiling for an im2col engine); each layer gets
    its input and upstream gradient in the memory layout the model hands it
  * peak traced memory of NumPy training, first step included (the reused buffers are made
    then), what it keeps between steps, and its growth from step 2 to step 6
  * with --profile: where a NumPy training step spends its time, layer by layer, and
    PyTorch's, operator by operator
``--random`` builds a fresh TriageCNN from the default CNNConfig, for a checkout without a
trained ``models/triage_cnn.safetensors`` (timings do not depend on the weights' values).
Prints a table and, with --json, one JSON object. Names the machine, the BLAS kernel and the
allocator settings.
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
parser.add_argument("--profile", action="store_true", help="also time every layer of a NumPy training step")
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

import _machine  # noqa: E402  (benchmarks/_machine.py, beside this script)
import numpy as np  # noqa: E402

from tinytriage.engines import load_engine, make_engine  # noqa: E402
from tinytriage.models.cnn import CNNConfig, feature_layers, layer_names  # noqa: E402
from tinytriage.models.file import bundled_model_path, read_model  # noqa: E402


def machine() -> str:
    return _machine.machine(f"NumPy {np.__version__}")


def blas() -> str:
    """Which BLAS, which kernel (OPENBLAS_CORETYPE can force a slower one) and its threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl to see it)"
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(
        f"{i['internal_api']} {i['version']} kernel {i.get('architecture')}, {i['num_threads']} threads" for i in libs
    )


def allocator() -> dict:
    """What decides how big arrays are allocated: glibc's MALLOC_* settings and preloads,
    transparent huge pages, and the OpenBLAS variables that change its kernel."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
    env = env or {"MALLOC_*": "unset (glibc defaults)"}
    libc = " ".join(platform.libc_ver())
    try:
        thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
    except OSError:
        thp = "unknown"
    blas_env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    return {"libc": libc, **env, "transparent_hugepage": thp, **(blas_env or {"OPENBLAS_CORETYPE": "unset"})}


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


def channels_last(a: np.ndarray) -> np.ndarray:
    """The same (N, C, H, W) numbers laid out as the model's layers hand them on."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def conv_layers(cfg: CNNConfig, n: int, rng: np.random.Generator, torch) -> list[dict]:
    """Each conv layer alone, forward and forward + backward, in both engines."""
    from tinytriage import nn as tnn

    layers, size = [], cfg.input_size
    for kind, role, a in feature_layers(cfg):
        if kind == "maxpool":
            size //= 2
        if kind != "conv":
            continue
        k, first = a["kernel_size"], role == "conv1"
        flops = 2 * n * size * size * a["out_channels"] * a["in_channels"] * k * k  # 'same' padding, stride 1
        conv = tnn.Conv2d(a["in_channels"], a["out_channels"], k, padding=a["padding"], bias=a["bias"])
        conv.needs_input_grad = not first
        xi = rng.standard_normal((n, a["in_channels"], size, size), dtype=np.float32)
        g = rng.standard_normal((n, a["out_channels"], size, size), dtype=np.float32)
        tconv = torch.nn.Conv2d(a["in_channels"], a["out_channels"], k, padding=a["padding"], bias=a["bias"])
        txi = torch.from_numpy(xi).requires_grad_(not first)
        tg = torch.from_numpy(g)
        # in the model, conv1 reads the photos (NCHW) and the others a layer's channels-last
        # output; every upstream gradient arrives channels-last from BatchNorm's backward
        xi, g = (xi if first else channels_last(xi)), channels_last(g)

        def t_fwd(tconv=tconv, txi=txi):
            with torch.no_grad():
                tconv(txi)

        def t_bwd(tconv=tconv, txi=txi, tg=tg):
            out = tconv(txi)
            out.backward(tg)

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
        bwd_flops = flops * (1 if first else 2)  # dW, plus dX when needed
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
    return layers


def numpy_memory(make, x, y) -> dict:
    """Traced memory of a fresh NumPy engine's first 6 training steps (NumPy reports its
    array memory to tracemalloc). The first step makes the reused buffers, so the peak
    counts them; what stays traced after a step is what the engine keeps between steps."""
    try:
        from tinytriage.nn.fast.memory import release_pool

        release_pool()  # forget the arrays the other engine made, so this one makes its own
    except ImportError:  # an engine from before the pool
        pass
    tracemalloc.start()
    engine = make()
    kept, peaks = [], []
    for _ in range(6):
        tracemalloc.reset_peak()
        engine.train_step(x, y, 1e-3)
        current, peak = tracemalloc.get_traced_memory()
        kept.append(current)
        peaks.append(peak)
    tracemalloc.stop()
    mb = 2**20
    return {"peak_mb": max(peaks) / mb, "kept_mb": kept[-1] / mb, "growth_mb": (kept[-1] - kept[1]) / mb}


def numpy_profile(engine, names, x, y, steps=5) -> dict[str, list[float]]:
    """Median forward and backward time of every layer of a NumPy training step, in ms."""
    model = engine.model
    layers = [*model.features, *model.head]
    names = [*names, "avgpool", "flatten", "dropout", "fc"]
    times = {name: ([], []) for name in [*names, "loss", "optimizer"]}
    for _ in range(steps + 1):  # the first is a warm-up
        model.train()
        h = x
        for name, layer in zip(names, layers, strict=True):
            t0 = time.perf_counter()
            h = layer(h)
            times[name][0].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, g = engine.loss_fn(h, y)
        times["loss"][0].append(time.perf_counter() - t0)
        for name, layer in reversed(list(zip(names, layers, strict=True))):
            t0 = time.perf_counter()
            g = layer.backward(g)
            times[name][1].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine.optimizer.step(model.grads)
        times["optimizer"][1].append(time.perf_counter() - t0)
    return {k: [statistics.median(v[1:]) * 1e3 if v else 0.0 for v in fb] for k, fb in times.items()}


def torch_profile(engine, x, y, steps=5) -> dict[str, float]:
    """PyTorch's own time per operator (self CPU time) in one training step, in ms."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.train_step(x, y, 1e-3)
    ops = {e.key: e.self_cpu_time_total / steps / 1e3 for e in prof.key_averages()}
    return dict(sorted(ops.items(), key=lambda kv: -kv[1])[:10])


def main() -> None:
    import torch

    torch.set_num_threads(args.threads)
    try:
        from tinytriage.nn.fast.parallel import set_num_threads

        set_num_threads(args.threads)
    except ImportError:  # an engine from before set_num_threads
        pass
    if args.random:
        cfg = CNNConfig()

        def make(backend):
            return make_engine(backend, "cnn", cfg.to_dict())
    else:
        path = args.model or bundled_model_path("cnn")
        if not os.path.exists(path):
            sys.exit(f"no model file {path}: train one, pass --model FILE, or use --random")
        mf = read_model(path)
        cfg = CNNConfig.from_dict(mf.config)

        def make(backend):
            return load_engine(backend, mf)

    ne, te = make("numpy"), make("torch")
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
    layers = conv_layers(cfg, n, rng, torch)
    memory = numpy_memory(lambda: make("numpy"), x, y)
    gflops = matmul_gflops()
    result = {
        "machine": machine(),
        "blas": blas(),
        "threads": args.threads,
        "batch": n,
        "input": f"{s}x{s}",
        "allocator": allocator(),
        "torch": torch.__version__,
        "matmul_gflops": gflops,
        "forward_s": fwd,
        "train_step_s": step,
        "ratio_forward": fwd["numpy"] / fwd["torch"],
        "ratio_train_step": step["numpy"] / step["torch"],
        "conv_layers": layers,
        "numpy_memory": memory,
    }
    if args.profile:
        result["numpy_profile_ms"] = numpy_profile(ne, layer_names(cfg), x, y)
        result["torch_profile_ms"] = torch_profile(te, x, y)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}; torch {result['torch']}; threads {args.threads}")
    print(f"BLAS: {result['blas']}")
    print("allocator: " + ", ".join(f"{k}={v}" for k, v in result["allocator"].items()))
    print(f"CNN, batch {n}, input {s}x{s}, float32, median of {args.blocks} blocks x {args.steps} steps")
    print(f"{'':14}{'numpy':>10}{'torch':>10}{'ratio':>8}")
    for name, d, r in (("forward", fwd, result["ratio_forward"]), ("train step", step, result["ratio_train_step"])):
        print(f"{name:14}{d['numpy'] * 1e3:>8.1f}ms{d['torch'] * 1e3:>8.1f}ms{r:>7.2f}x")
    print(f"float32 matmul (1024^3, {args.threads} threads) on this machine: {gflops:.1f} GFLOP/s")
    print(
        f"{'conv layer':10}{'shape':>18}{'np fwd':>12}{'np bwd':>12}{'pt fwd':>12}{'pt bwd':>12}   GFLOP/s (% of matmul)"
    )
    for L in layers:
        cells = "".join(
            f"{L[k]:>6.1f} ({L[k] / gflops:>3.0%})"
            for k in ("numpy_fwd_gflops", "numpy_bwd_gflops", "torch_fwd_gflops", "torch_bwd_gflops")
        )
        print(f"{L['layer']:10}{L['shape']:>18}{cells}")
    print(
        f"numpy training: peak traced memory {memory['peak_mb']:.1f} MB (reused buffers included), "
        f"kept between steps {memory['kept_mb']:.1f} MB, growth from step 2 to 6 {memory['growth_mb']:+.2f} MB"
    )
    if args.profile:
        print(f"\nnumpy training step by layer, ms (median of 5):\n{'layer':12}{'forward':>9}{'backward':>10}")
        for name, (f, b) in result["numpy_profile_ms"].items():
            print(f"{name:12}{f:>9.1f}{b:>10.1f}")
        total = [sum(fb[i] for fb in result["numpy_profile_ms"].values()) for i in (0, 1)]
        print(f"{'total':12}{total[0]:>9.1f}{total[1]:>10.1f}")
        print("\ntorch training step, top operators by self CPU time, ms:")
        for op, ms in result["torch_profile_ms"].items():
            print(f"  {op:48}{ms:>8.1f}")


if __name__ == "__main__":
    sys.exit(main())
