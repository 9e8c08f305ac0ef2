"""EfficientNet-Lite0, NumPy engine vs PyTorch CPU (NCHW and channels-last), side by side.

    python benchmarks/bench_efficientnet.py [--sizes 160,224] [--batch 32] [--threads 2]
                                            [--repeats 5] [--classes 5] [--optimizer sgd|adamw]
                                            [--profile] [--json]

For each input size, float32, the same batch and the same thread count for every engine
(``torch.set_num_threads`` and tinytriage's ``nn.set_num_threads``, and OMP/OpenBLAS/MKL's
variables), three engines built from the same weights (``make_engine``, same seed):

  numpy                 tinytriage's engine: inference on its fused copy (BatchNorm and ReLU6
                        folded into the convolutions), training on the layers as written
  torch NCHW            the PyTorch twin in eager mode, its default layout
  torch channels-last   the same, ``model.to(memory_format=torch.channels_last)`` and the
                        input converted to channels-last inside the timed call

  * forward (``engine.logits``, inference), ms per photo;
  * a training step (``engine.train_step``: forward, backward, optimizer step, the engines'
    default ``OptimConfig`` unless --optimizer), seconds per step;
each the median of --repeats rounds, a round being one call of each engine in turn (A B C
A B C ...), so a noisy moment on the machine hits all of them. Ratios NumPy / PyTorch, both
layouts, from those medians. The issue's targets, against PyTorch's default (NCHW): NumPy
forward <= 1.0x, training step <= 1.3x; the output says whether each is met.

  * peak memory of a training step, each engine in a fresh process of its own (the engine,
    its weights and its input made first; PyTorch imported only in PyTorch's): the process's
    peak RSS minus its RSS before the steps, over its first two steps (which make the
    optimizer's state and, in NumPy, the reused buffers) and over a third step alone. The
    peak is the kernel's RSS high-water mark (VmHWM, what ``getrusage`` reports as
    ru_maxrss), reset through /proc/self/clear_refs before the steps. And for NumPy, in one
    more fresh process, the peak of the arrays allocated during its first two steps as
    ``tracemalloc`` sees them (NumPy reports its arrays to it; PyTorch's tensors it does not
    see). RSS counts everything: also code pages first touched, thread stacks, PyTorch's
    oneDNN kernels made on first use.

  * with --profile: where a NumPy forward pass and training step spend their time, by layer
    kind (stem, depthwise, pointwise, BatchNorm, ReLU6, residual adds, head, loss,
    optimizer), and PyTorch NCHW's training step, operator by operator.

Names the machine: CPU, cores, vector units, the BLAS kernel, library versions. Prints a
table and, with --json, one JSON object.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--sizes", default="160,224", help="input sides in pixels, comma-separated")
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--repeats", type=int, default=5, help="rounds of one call per engine (the median is reported)")
parser.add_argument("--classes", type=int, default=5, help="classifier outputs (tinytriage routes 5 classes)")
parser.add_argument(
    "--weights",
    default=str(Path(__file__).resolve().parent.parent / "models" / "efficientnet_lite0_imagenet.safetensors"),
    help="backbone weights (every tensor but the classifier); 'random': the seed's initialisation",
)
parser.add_argument("--optimizer", choices=("sgd", "adamw"), default=None, help="default: the engines' OptimConfig")
parser.add_argument("--profile", action="store_true", help="also time a NumPy step by layer kind, torch by operator")
parser.add_argument("--json", action="store_true")
parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one engine's memory, one size
args = parser.parse_args()
# thread counts must be fixed before numpy/torch start their pools
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import cpu_name, vector_units  # noqa: E402

from tinytriage import nn  # noqa: E402
from tinytriage.engines import OptimConfig, make_engine  # noqa: E402
from tinytriage.models.efficientnet import EfficientNetConfig  # noqa: E402

ENGINES = ("numpy", "torch_nchw", "torch_channels_last")
LABELS = {"numpy": "numpy", "torch_nchw": "torch NCHW", "torch_channels_last": "torch channels-last"}
TARGETS = {"forward": 1.0, "train_step": 1.3}  # NumPy / PyTorch NCHW, at most (issue 31)
LR = 1e-3  # the rate handed to train_step: small, so many steps of random data stay finite


def config(size: int) -> dict:
    return EfficientNetConfig(num_classes=args.classes, input_size=size).to_dict()


def optim() -> OptimConfig:
    return OptimConfig() if args.optimizer is None else OptimConfig(name=args.optimizer)


def backbone(size: int) -> dict[str, np.ndarray] | None:
    """The weights every engine starts from: ``--weights``' tensors (float32) in place of
    the seed's, the classifier's excepted (it has ``--classes`` outputs). With random
    weights, BatchNorm's initial running statistics shrink the activations block by block
    (to 1e-9 by the head), a forward pass no trained model makes."""
    if args.weights == "random":
        return None
    from tinytriage.models.file import read_model

    tensors = read_model(args.weights).tensors
    state = make_engine("numpy", "efficientnet_lite0", config(size)).state_dict()
    for k in state:
        if not k.startswith("classifier."):
            state[k] = np.asarray(tensors[k], np.float32)
    return state


def build(kind: str, size: int, state: dict[str, np.ndarray] | None):
    """One engine; weights from seed 0 (the PyTorch twin loads the NumPy engine's), then ``state``."""
    backend = "numpy" if kind == "numpy" else "torch"
    engine = make_engine(backend, "efficientnet_lite0", config(size), optim=optim())
    if state is not None:
        engine.load_state_dict(state)
    if kind == "torch_channels_last":
        import torch

        engine.model.to(memory_format=torch.channels_last)
        as_nchw = engine._tensor

        def channels_last_tensor(x):  # the photos converted too, inside the timed call
            return as_nchw(x).contiguous(memory_format=torch.channels_last)

        engine._tensor = channels_last_tensor
    return engine


def batch(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, size, size), dtype=np.float32)  # (N, 3, S, S)
    return x, rng.integers(0, args.classes, args.batch)


def set_threads(with_torch: bool = True) -> None:
    nn.set_num_threads(args.threads)
    if with_torch:
        import torch

        torch.set_num_threads(args.threads)


def machine() -> dict:
    import torch

    try:
        from threadpoolctl import threadpool_info

        blas = "; ".join(
            f"{i['internal_api']} {i['version']} {i.get('architecture')}"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        )
    except ImportError:
        blas = "unknown (pip install threadpoolctl to see it)"
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "vector_units": vector_units(),
        "blas": blas,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


# -- timing -------------------------------------------------------------------------------


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has spent busy, this process's and its children's),
    so far (Linux /proc/stat; the machine's 0 elsewhere)."""
    own = os.times()
    mine = own.user + own.system + own.children_user + own.children_system
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, mine
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), mine


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, the engines in turn (A B C A B C ...) after one warm-up each."""
    for fn in fns.values():
        fn()  # warm-up: pools started, buffers made, optimizer state created
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def measure(size: int) -> dict:
    """Forward and training-step times of the three engines at one input size."""
    state = backbone(size)
    engines = {k: build(k, size, state) for k in ENGINES}
    x, y = batch(size)
    logits = {k: e.logits(x) for k, e in engines.items()}
    scale = float(np.abs(logits["torch_nchw"]).max())
    largest = max(float(np.abs(logits[k] - logits["torch_nchw"]).max()) for k in ENGINES)

    fwd = interleaved({k: (lambda e=e: e.logits(x)) for k, e in engines.items()}, args.repeats)
    step = interleaved({k: (lambda e=e: e.train_step(x, y, LR)) for k, e in engines.items()}, args.repeats)
    forward_ms = {k: 1e3 * statistics.median(v) / args.batch for k, v in fwd.items()}  # ms per photo
    step_s = {k: statistics.median(v) for k, v in step.items()}  # seconds per step of the batch
    result = {
        "size": size,
        "logits_largest_difference": largest,  # from torch NCHW's, same weights, before any step
        "logits_scale": scale,  # the largest |logit|, for scale
        "forward_ms_per_photo": forward_ms,
        "train_step_s": step_s,
        "forward_runs_s": fwd,
        "train_step_runs_s": step,
        "ratio_forward": {k: forward_ms["numpy"] / forward_ms[k] for k in ENGINES[1:]},
        "ratio_train_step": {k: step_s["numpy"] / step_s[k] for k in ENGINES[1:]},
    }
    result["targets"] = {
        what: {"at_most": limit, "ratio": result[f"ratio_{what}"]["torch_nchw"]} for what, limit in TARGETS.items()
    }
    for t in result["targets"].values():
        t["met"] = t["ratio"] <= t["at_most"]
    if args.profile:
        result["numpy_profile_ms"] = numpy_profile(engines["numpy"], x, y)
        result["torch_profile_ms"] = torch_profile(engines["torch_nchw"], x, y)
    return result


# -- memory, one engine per fresh process ---------------------------------------------------


def rss_mb() -> tuple[float, float]:
    """(resident set now, its high-water mark), MB. Linux's /proc/self/status (VmRSS, VmHWM):
    the same mark ``getrusage``'s ru_maxrss reads, without what ru_maxrss also carries over
    from the parent of a ``subprocess`` (its peak, kept across exec)."""
    try:
        with open("/proc/self/status") as f:
            kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
        return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024
    except (OSError, KeyError):  # not Linux: the whole process's peak, baseline unknown
        return 0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes


def reset_peak_rss() -> bool:
    """Set the kernel's RSS high-water mark to the RSS now (Linux, /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def probe(what: str, size: int) -> dict:
    """In this fresh process: one engine and its input, then its first two training steps,
    then a third (a step once the optimizer's state and the buffers exist). "numpy_traced":
    the NumPy engine's first two steps under tracemalloc."""
    import gc
    import tracemalloc

    kind = "numpy" if what == "numpy_traced" else what
    set_threads(with_torch=kind != "numpy")  # a NumPy process without PyTorch in it
    engine = build(kind, size, backbone(size))
    x, y = batch(size)
    gc.collect()
    before, _ = rss_mb()
    if what == "numpy_traced":
        tracemalloc.start()
        for _ in range(2):
            engine.train_step(x, y, LR)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {"traced_peak_mb": peak / 2**20}
    reset = reset_peak_rss()
    for _ in range(2):
        engine.train_step(x, y, LR)
    first_two = rss_mb()[1]
    reset_peak_rss()
    engine.train_step(x, y, LR)
    third = rss_mb()[1]
    return {
        "rss_before_mb": before,
        "rss_peak_growth_mb": first_two - before,  # steps 1 and 2, over the engine with weights and input
        "rss_peak_growth_later_step_mb": third - before,  # step 3, over the same baseline
        "high_water_reset": reset,
    }


def memory(size: int) -> dict:
    """Each engine's training-step memory, each measured in a process of its own."""
    out = {}
    for what in (*ENGINES, "numpy_traced"):
        cmd = [sys.executable, __file__, "--probe", what, "--sizes", str(size)]
        cmd += ["--batch", str(args.batch), "--threads", str(args.threads), "--classes", str(args.classes)]
        if args.optimizer:
            cmd += ["--optimizer", args.optimizer]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            sys.exit(f"memory probe {what} failed:\n{r.stderr}")
        out[what] = json.loads(r.stdout)
    numpy = out.pop("numpy_traced")
    out["numpy"].update(numpy)
    return out


# -- profile --------------------------------------------------------------------------------


def kind_of(layer, stem, head) -> str | None:
    """The profile's row for a leaf layer, unfused or fused (None: not a leaf it times)."""
    from tinytriage.nn.fast.fuse import ConvBNReLU

    conv = layer.conv if isinstance(layer, ConvBNReLU) else layer
    if conv is stem:
        return "stem conv (3x3, stride 2)"
    if conv is head:
        return "head conv (1x1 to 1280)"
    if isinstance(conv, nn.Conv2d):
        return f"{conv.path} conv"
    if isinstance(layer, nn.BatchNorm2d):
        return "BatchNorm"
    if isinstance(layer, nn.ReLU6):
        return "ReLU6"
    if isinstance(layer, (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear)):
        return "pool, dropout, classifier"
    return None


def timed_layers(model, stem, head, table: dict) -> list:
    """Wrap every leaf layer's and every mobile block's forward and backward (instance
    attributes) to add their seconds to ``table[kind][method]``; a block's own time beyond
    the layers inside it (its residual add) goes to "residual adds". Returns what to undo."""
    from tinytriage.nn.fast.fuse import FusedBlock

    undo = []

    def wrap(layer, method: str, kinds: list[str], sign: float = 1.0):
        original = getattr(layer, method)

        def timed(a):
            t0 = time.perf_counter()
            out = original(a)
            seconds = time.perf_counter() - t0
            for kind in kinds:
                table[kind][method] += seconds if kind != "residual adds" else sign * seconds
            return out

        setattr(layer, method, timed)
        undo.append((layer, method))

    blocks = [
        m
        for _, m in model.named_modules()
        if isinstance(m, (nn.mobile.InvertedResidual, nn.mobile.DepthwiseSeparableConv, FusedBlock))
    ]
    inside = {id(m) for b in blocks for _, m in b.named_modules() if m is not b}
    for _, layer in model.named_modules():
        kind = kind_of(layer, stem, head)
        if kind is None:
            continue
        kinds = [kind, "residual adds"] if id(layer) in inside else [kind]
        for method in ("forward", "backward"):
            wrap(layer, method, kinds, sign=-1.0)  # inside a block: taken off the block's time
    for block in blocks:
        for method in ("forward", "backward"):
            wrap(block, method, ["residual adds"])
    return undo


def numpy_profile(engine, x, y, steps: int = 3) -> dict:
    """ms per batch of a NumPy forward pass (fused) and training step, by layer kind,
    median of ``steps`` after a warm-up."""
    stem, head = engine.model._modules["conv_stem"], engine.model._modules["conv_head"]
    results = {}
    for what in ("inference", "train"):
        runs = []
        model = engine._fused() if what == "inference" else engine.model
        for i in range(steps + 1):  # the first is a warm-up
            table = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
            undo = timed_layers(model, stem, head, table)
            t0 = time.perf_counter()
            if what == "inference":
                engine.logits(x)
            else:
                engine.model.train()
                logits = engine.model(x)
                t1 = time.perf_counter()
                _, dlogits = engine.loss_fn(logits, y)
                table["loss"]["forward"] += time.perf_counter() - t1
                engine.model.backward(dlogits)
                t1 = time.perf_counter()
                if engine.optimizer is None:
                    engine.optimizer = engine._make_optimizer()
                engine.optimizer.step(engine.model.grads)
                table["optimizer step"]["backward"] += time.perf_counter() - t1
            total = time.perf_counter() - t0
            for layer, method in undo:
                delattr(layer, method)  # the class's own method again
            named = sum(v["forward"] + v["backward"] for v in table.values())
            table["the rest (between layers)"]["forward"] += total - named
            if i:
                runs.append({k: dict(v) for k, v in table.items()})
        results[what] = {
            k: {d: 1e3 * statistics.median(r[k][d] for r in runs) for d in ("forward", "backward")} for k in runs[0]
        }
    return results


def torch_profile(engine, x, y, steps: int = 2) -> dict[str, float]:
    """PyTorch's own time per operator (self CPU time) in one training step, ms, the top 12."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.train_step(x, y, LR)
    ops = {e.key: e.self_cpu_time_total / steps / 1e3 for e in prof.key_averages()}
    return dict(sorted(ops.items(), key=lambda kv: -kv[1])[:12])


# -- report -----------------------------------------------------------------------------------


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['vector_units']}")
    print(f"BLAS: {m['blas']}; PyTorch CPU capability {m['torch_cpu_capability']}")
    print(f"Python {m['python']}, NumPy {m['numpy']}, PyTorch {m['torch']}")
    print(
        f"EfficientNet-Lite0, {report['classes']} classes, batch {report['batch']}, {report['threads']} threads, "
        f"float32, optimizer {report['optimizer']}; median of {report['repeats']} rounds, engines interleaved"
    )
    cols = "".join(f"{LABELS[k]:>21}" for k in ENGINES)
    ratios = f"{'numpy/NCHW':>12}{'numpy/CL':>10}"
    for r in report["sizes"]:
        s = r["size"]
        print(f"\n{s}x{s}{'':21}{cols}{ratios}   target (numpy/NCHW)")
        for what, unit, values, fmt in (
            ("forward", "ms per photo", r["forward_ms_per_photo"], ".2f"),
            ("train_step", "s per step", r["train_step_s"], ".3f"),
        ):
            label = f"{'forward' if what == 'forward' else 'training step'}, {unit}"
            cells = "".join(f"{values[k]:>21{fmt}}" for k in ENGINES)
            rat = r[f"ratio_{what}"]
            t = r["targets"][what]
            verdict = f"<= {t['at_most']:.1f}x: {'met' if t['met'] else 'MISSED'}"
            print(f"{label:26}{cells}{rat['torch_nchw']:>11.2f}x{rat['torch_channels_last']:>9.2f}x   {verdict}")
        mem = r["memory"]
        for key, label in (
            ("rss_peak_growth_mb", "steps 1-2, peak RSS +MB"),
            ("rss_peak_growth_later_step_mb", "step 3, peak RSS +MB"),
        ):
            print(f"{label:26}" + "".join(f"{mem[k][key]:>21.0f}" for k in ENGINES))
        print(f"{'steps 1-2, numpy traced MB':26}{mem['numpy']['traced_peak_mb']:>21.0f}")
        print(
            f"logits: largest difference from torch NCHW {r['logits_largest_difference']:.2g} "
            f"(largest |logit| {r['logits_scale']:.3g})"
        )
        if "numpy_profile_ms" in r:
            print(f"\nnumpy at {s}x{s}, ms per batch by layer kind (median of 3)")
            inf, train = r["numpy_profile_ms"]["inference"], r["numpy_profile_ms"]["train"]
            print(f"{'':34}{'inference':>11}{'train fwd':>11}{'train bwd':>11}")
            for kind in sorted(set(inf) | set(train), key=lambda k: -sum(train.get(k, {}).values())):
                f = inf.get(kind, {}).get("forward", 0.0)
                tf, tb = (train.get(kind, {}).get(d, 0.0) for d in ("forward", "backward"))
                print(f"{kind:34}{f:>11.1f}{tf:>11.1f}{tb:>11.1f}")
            totals = (
                sum(v["forward"] for v in inf.values()),
                sum(v["forward"] for v in train.values()),
                sum(v["backward"] for v in train.values()),
            )
            print(f"{'total':34}" + "".join(f"{t:>11.1f}" for t in totals))
            print(f"\ntorch NCHW at {s}x{s}, training step, top operators by self CPU time, ms")
            for op, ms in r["torch_profile_ms"].items():
                print(f"  {op:48}{ms:>8.1f}")
    q = report["quiet"]
    print(
        f"\nmachine load: 1-min load average {q['load_average_before']:.2f} before, {q['load_average_after']:.2f}"
        f" after; other processes took {q['others_cpu_s']:.0f} of the {q['cpu_s_available']:.0f} CPU-seconds"
        f" of this {q['wall_s']:.0f} s run"
    )
    reset = report["sizes"][0]["memory"]["numpy"]["high_water_reset"] if report["sizes"] else True
    print(
        f"\nweights: {report['weights']} (the classifier: the seed's)\n"
        "forward: engine.logits (numpy: its fused copy); training step: engine.train_step (forward, backward,"
        f" {report['optimizer']} step)\nmemory, each engine in a fresh process: peak RSS (VmHWM"
        f"{', reset before the steps' if reset else ', NOT reset: a peak from before the steps hides theirs'})"
        " minus RSS before them,\n  the engine's weights and input made; 'numpy traced': tracemalloc's peak of"
        " the arrays NumPy allocated in its first two steps"
    )


def main() -> None:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.probe:
        print(json.dumps(probe(args.probe, sizes[0])))
        return
    set_threads()
    report = {
        "machine": machine(),
        "threads": args.threads,
        "batch": args.batch,
        "repeats": args.repeats,
        "classes": args.classes,
        "optimizer": optim().name,
        "dtype": "float32",
        "weights": args.weights if args.weights == "random" else f"{Path(args.weights).name} (ImageNet backbone)",
        "sizes": [],
    }
    load_before, (busy0, mine0), t0 = os.getloadavg(), cpu_seconds(), time.perf_counter()
    for size in sizes:
        r = measure(size)
        r["memory"] = memory(size)
        report["sizes"].append(r)
    (busy1, mine1), wall = cpu_seconds(), time.perf_counter() - t0
    # how quiet the machine was: the CPU time other processes took while this ran
    report["quiet"] = {
        "load_average_before": load_before[0],
        "load_average_after": os.getloadavg()[0],
        "wall_s": wall,
        "others_cpu_s": max(0.0, (busy1 - busy0) - (mine1 - mine0)),
        "cpu_s_available": wall * (os.cpu_count() or 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
