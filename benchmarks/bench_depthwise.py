"""One depthwise convolution, NumPy engine vs PyTorch CPU (NCHW and channels-last), side by side.

    python benchmarks/bench_depthwise.py [--batch 32] [--channels 96] [--size 80] [--kernel 3]
                                         [--stride 1] [--threads 1] [--blocks 5] [--steps 3] [--json]

Measures, float32, the same thread count for both engines: a ``Conv2d(C, C, k, padding=k//2,
groups=C)`` layer's forward pass and its backward pass (dx, dw, db: a layer inside a network
needs dx), median of ``--blocks`` blocks, each block ``--steps`` calls of one engine and then
of the next. The NumPy layer gets its input and upstream gradient channels-last, as the layer
before it hands them on (``tinytriage.nn.fast.memory``); PyTorch gets them once in its default
NCHW layout and once in ``torch.channels_last``. Also checks that the three agree. Names the
machine. Prints a table and, with --json, one JSON object.
"""

from __future__ import annotations

import argparse
import os

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--channels", type=int, default=96)
parser.add_argument("--size", type=int, default=80, help="input height and width")
parser.add_argument("--kernel", type=int, default=3)
parser.add_argument("--stride", type=int, default=1)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--blocks", type=int, default=5, help="blocks per engine (the median is reported)")
parser.add_argument("--steps", type=int, default=3, help="calls per block")
parser.add_argument("--json", action="store_true")
args = parser.parse_args()
# thread counts must be fixed before numpy/torch start their pools
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import _machine  # noqa: E402  (benchmarks/_machine.py, beside this script)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tinytriage import nn  # noqa: E402


def machine() -> str:
    return _machine.machine(f"NumPy {np.__version__}", f"PyTorch {torch.__version__}")


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def medians(fns: dict, n_blocks: int, steps: int) -> dict[str, float]:
    """Median per-call seconds of each function, run in alternating blocks."""
    for fn in fns.values():
        fn()  # warm-up: buffers made, pools started
    times = {k: [] for k in fns}
    for _ in range(n_blocks):
        for k, fn in fns.items():
            times[k].append(timed(fn, steps))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    torch.set_num_threads(args.threads)
    nn.set_num_threads(args.threads)
    N, C, S, K = args.batch, args.channels, args.size, args.kernel
    rng = np.random.default_rng(0)

    ours = nn.Conv2d(C, C, K, stride=args.stride, padding=K // 2, groups=C)
    assert ours.path == "depthwise"
    theirs = torch.nn.Conv2d(C, C, K, stride=args.stride, padding=K // 2, groups=C)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})

    x_cl = rng.standard_normal((N, S, S, C), dtype=np.float32)  # as the layer before hands it on
    x = x_cl.transpose(0, 3, 1, 2)  # (N, C, H, W), a channels-last view
    out = ours(x)
    g_cl = rng.standard_normal((N, *out.shape[2:], C), dtype=np.float32)
    g = g_cl.transpose(0, 3, 1, 2)

    torch_inputs = {}
    for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        tx = torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=fmt).requires_grad_()
        tg = torch.from_numpy(np.ascontiguousarray(g)).contiguous(memory_format=fmt)
        torch_inputs[layout] = (tx, tg)

    # the three agree (forward and dx)
    ours_out = np.array(ours(x))
    ours_dx = np.array(ours.backward(g))
    largest = 0.0
    for tx, tg in torch_inputs.values():
        t_out = theirs(tx)
        t_out.backward(tg)
        largest = max(largest, float(np.abs(t_out.detach().numpy() - ours_out).max()))
        largest = max(largest, float(np.abs(tx.grad.numpy() - ours_dx).max()))
        tx.grad = None
        theirs.zero_grad()

    def ours_forward():
        ours(x)
        ours._cache = None  # let go of the saved input, as backward would

    def ours_backward():  # the forward pass outside the clock
        ours._cache = saved
        ours.backward(g)

    ours(x)
    saved = ours._cache

    fns = {"numpy forward": ours_forward}
    for layout, (tx, _) in torch_inputs.items():
        fns[f"torch {layout} forward"] = lambda tx=tx: theirs(tx)
    forward = medians(fns, args.blocks, args.steps)

    fns = {"numpy backward": ours_backward}
    for layout, (tx, tg) in torch_inputs.items():

        def torch_backward(tx=tx, tg=tg):
            t_out = theirs(tx)  # autograd needs its own forward: timed apart below and subtracted
            t_out.backward(tg)
            tx.grad = None
            theirs.zero_grad(set_to_none=True)

        fns[f"torch {layout} forward+backward"] = torch_backward
    both = medians(fns, args.blocks, args.steps)

    rows = []
    for engine, layout in (("numpy", "channels-last"), ("torch", "nchw"), ("torch", "channels_last")):
        if engine == "numpy":
            f, b = forward["numpy forward"], both["numpy backward"]
        else:
            f = forward[f"torch {layout} forward"]
            b = both[f"torch {layout} forward+backward"] - f
        rows.append(
            dict(
                engine=engine,
                layout=layout,
                forward_ms=1e3 * f,
                backward_ms=1e3 * b,
                forward_ms_per_photo=1e3 * f / N,
                backward_ms_per_photo=1e3 * b / N,
            )
        )
    report = dict(
        machine=machine(),
        threads=args.threads,
        layer=f"Conv2d({C}, {C}, {K}, stride={args.stride}, padding={K // 2}, groups={C}), float32",
        input=[N, C, S, S],
        blocks=args.blocks,
        steps=args.steps,
        largest_difference=largest,
        rows=rows,
    )
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['machine']}\n{report['layer']}, input {tuple(report['input'])}, {args.threads} thread(s)")
    print(f"median of {args.blocks} blocks of {args.steps} calls; largest difference from torch {largest:.2g}\n")
    print(f"{'':28}{'forward':>18}{'backward':>18}")
    print(f"{'':28}{'ms (ms/photo)':>18}{'ms (ms/photo)':>18}")
    for r in rows:
        name = f"{r['engine']} {r['layout']}"
        print(
            f"{name:28}{r['forward_ms']:>10.1f} ({r['forward_ms_per_photo']:.2f}){r['backward_ms']:>10.1f} ({r['backward_ms_per_photo']:.2f})"
        )
    print("\nPyTorch's backward: its forward + backward, minus its forward (autograd needs the forward's graph)")


if __name__ == "__main__":
    main()
