"""How fast `tinytriage predict` is, as a user runs it, and where a folder's time goes.

    python benchmarks/bench_predict.py [--runs 15] [--photos 1000] [--folder-runs 5] [--workers 2]
                                       [--model FILE] [--json]

1. Latency: `tinytriage predict PHOTO` as a whole process (interpreter start, imports,
   model load, decode, forward, print), median of --runs, as a table (stdout a pipe) and
   with --json, and a check that torch was never imported on that path.
2. Throughput: a folder of --photos 1280x960 JPEGs (made here, deterministic) predicted
   by one process, photos/s end to end (median of --folder-runs runs, and each run's),
   and a check that the batched results equal one-photo-at-a-time results.
3. Profile of that folder, in this process: decode + letterbox per photo and the forward
   pass per photo at batch 32, each on one thread (as a lane runs them), the pipeline's
   own photos/s once started, and what those two allow with one lane per core.
4. The machine's float32 matrix multiply (GFLOP/s, 1 and 2 threads) and its vector units
   (AVX-512 or not, OpenBLAS's kernel): shared machines run slower on some days than
   others; this says how fast this one ran.

Measure a regular install (`pip install .`, as the README's first command does): an
editable install adds its import hook to every start. The timed processes start in a
temporary folder, so a checkout's own `tinytriage/` is never imported in place of the
installed copy (``tinytriage_imported_from`` in the output says which one ran).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def make_photos(folder: Path, n: int) -> list[Path]:
    """1280x960 JPEGs from the generator's own sample photos, resized (deterministic)."""
    sources = sorted((REPO / "samples").rglob("*.jpg"))
    if not sources:
        raise SystemExit("no photos under samples/ to build the benchmark folder from")
    paths = []
    for i in range(n):
        img = Image.open(sources[i % len(sources)]).convert("RGB").resize((1280, 960))
        p = folder / f"photo_{i:04d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def profile_pipeline(photos: list[Path], workers: int, model: str | None = None) -> dict:
    """Where a folder's time goes, stage by stage, in this process (after imports)."""
    from tinytriage import nn
    from tinytriage.data.preprocess import preprocess
    from tinytriage.inference.predict import Predictor

    predictor = Predictor.load(model)
    cfg = predictor.preprocess_config
    paths = [str(p) for p in photos]
    for p in paths[:20]:  # warm the page cache and Pillow
        preprocess(p, cfg)
    decode, inputs = [], []
    for p in paths:
        t0 = time.perf_counter()
        inputs.append(preprocess(p, cfg))
        decode.append(time.perf_counter() - t0)
    x = np.concatenate(inputs[:256])  # the forward pass reuses the decoded photos
    threads = nn.get_num_threads()
    nn.set_num_threads(1)  # as in a lane: one thread per process
    forward = []
    for _ in range(3):
        for i in range(0, len(x), 32):
            t0 = time.perf_counter()
            predictor.engine.logits(x[i : i + 32])
            forward.append((time.perf_counter() - t0) / len(x[i : i + 32]))
    nn.set_num_threads(threads)
    t0 = time.perf_counter()
    n = sum(1 for _ in predictor.predict_paths(paths, 32, workers))
    pipeline = n / (time.perf_counter() - t0)
    decode_ms, forward_ms = 1e3 * statistics.median(decode), 1e3 * statistics.median(forward)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "profile_decode_ms_per_photo_1_thread": decode_ms,
        "profile_forward_ms_per_photo_batch32_1_thread": forward_ms,
        "profile_pipeline_photos_per_s_after_start": pipeline,
        # each core decoding and predicting photos one after another, nothing else running
        "profile_cpu_bound_photos_per_s": 1e3 * min(cores, workers) / (decode_ms + forward_ms),
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def vector_units() -> str:
    """What the CPU offers the matrix multiply: whether it shows AVX-512 (the same kind of
    virtual machine shows it on some days and not on others) and the kernel OpenBLAS
    picked for it (SkylakeX with AVX-512, Haswell with AVX2 alone)."""
    from threadpoolctl import threadpool_info

    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2" if flags else "unknown"
    blas = [
        f"{i.get('internal_api')} {i.get('architecture')}" for i in threadpool_info() if i.get("user_api") == "blas"
    ]
    return f"{isa}, BLAS kernel {', '.join(blas) or 'unknown'}"


def one_photo_latency(pythons: list[str], photo: Path, with_model: list[str], runs: int) -> dict:
    """Seconds of each whole ``PYTHON -m tinytriage predict PHOTO`` process, with a table and
    with --json: {(python, "table" | "json"): [runs times]}. Every round runs each install
    once each way, so a slow minute of the shared machine slows all of them alike. The
    processes start in the photo's folder, their stdout a pipe."""
    kinds = (("table", []), ("json", ["--json"]))
    times: dict[tuple[str, str], list[float]] = {(py, kind): [] for py in pythons for kind, _ in kinds}
    for _ in range(runs):
        for py in pythons:
            for kind, extra in kinds:
                cmd = [py, "-m", "tinytriage", "predict", str(photo), *with_model, *extra]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, cwd=photo.parent)
                times[py, kind].append(time.perf_counter() - t0)
    return times


def matmul_gflops(threads: int) -> float:
    """This machine's float32 matrix multiply today (1024^3, median of 20): how fast the
    machine is running, to read the other figures against."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
        a @ a
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t0)
    return 2 * 1024**3 / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--photos", type=int, default=1000)
    ap.add_argument("--folder-runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", help="model file to time (default: the bundled model)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "tinytriage"]
    with_model = [] if args.model is None else ["--model", str(Path(args.model).resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photos = make_photos(folder, args.photos)
        if hasattr(os, "sync"):
            os.sync()  # the new photos reach the disk now, not while a timed run reads them

        # 1. latency of one whole process
        times = {
            kind: t for (_, kind), t in one_photo_latency([sys.executable], photos[0], with_model, args.runs).items()
        }
        probe = subprocess.run(
            [sys.executable, "-c",
             "import sys, runpy; sys.argv=['tinytriage','predict',*sys.argv[1:],'--json'];"
             "from tinytriage.cli.app import app\ntry: app()\nexcept SystemExit: pass\n"
             "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n"
             "print('FROM', sys.modules['tinytriage'].__file__, file=sys.stderr)", str(photos[0]), *with_model],
            capture_output=True, text=True, cwd=tmp,
        )  # fmt: skip
        torch_imported = "TORCH_IMPORTED" in probe.stderr
        package = next((line[5:] for line in probe.stderr.splitlines() if line.startswith("FROM ")), "?")

        # 2. throughput over the folder, one process, median of --folder-runs (a single
        # run moves with whatever else this shared machine is doing)
        folder_seconds = []
        for _ in range(args.folder_runs):
            t0 = time.perf_counter()
            batch = subprocess.run(
                [*exe, "predict", str(folder), *with_model, "--json", "--workers", str(args.workers)],
                check=True,
                capture_output=True,
                text=True,
                cwd=tmp,
            )
            folder_seconds.append(time.perf_counter() - t0)
        seconds = statistics.median(folder_seconds)
        batched = [json.loads(line) for line in batch.stdout.splitlines()]
        single = subprocess.run(
            [*exe, "predict", str(folder), *with_model, "--json", "--batch-size", "1", "--workers", "1"],
            check=True,
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        one_by_one = [json.loads(line) for line in single.stdout.splitlines()]
        identical = [(r["label"], r["route"], round(r["confidence"], 4)) for r in batched] == [
            (r["label"], r["route"], round(r["confidence"], 4)) for r in one_by_one
        ]
        max_prob_diff = max(
            abs(a["probabilities"][k] - b["probabilities"][k])
            for a, b in zip(batched, one_by_one, strict=True)
            for k in a["probabilities"]
        )

        prof = profile_pipeline(photos, args.workers, args.model)

    result = {
        "machine": f"{cpu_name()}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"NumPy {np.__version__}",
        "vector_units": vector_units(),
        "model": args.model or "bundled",
        "latency_median_s": statistics.median(times["table"]),
        "latency_min_s": min(times["table"]),
        "latency_json_median_s": statistics.median(times["json"]),
        "torch_imported_on_predict_path": torch_imported,
        "tinytriage_imported_from": package,  # run from a temporary folder: the installed copy
        "folder_photos": args.photos,
        "folder_seconds_median": seconds,
        "photos_per_s": args.photos / seconds,  # the median run's
        "photos_per_s_runs": [round(args.photos / t, 1) for t in folder_seconds],
        "batched_equals_one_at_a_time": identical,
        "max_probability_diff_batched_vs_single": max_prob_diff,
        **prof,
        "matmul_gflops_1_thread": matmul_gflops(1),
        "matmul_gflops_2_threads": matmul_gflops(2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:40} {v:.4g}" if isinstance(v, float) else f"{k:40} {v}")


if __name__ == "__main__":
    main()
