"""How fast `tinytriage predict` is, as a user runs it.

    python benchmarks/bench_predict.py [--runs 15] [--photos 300] [--workers 2]

1. Latency: `tinytriage predict PHOTO` as a whole process (interpreter start, imports,
   model load, decode, forward, print), median of --runs, and a check that torch was
   never imported on that path.
2. Throughput: a folder of --photos 1280x960 JPEGs (made here, deterministic) predicted
   by one process, photos/s end to end (decoding overlapped with inference), and a
   check that the batched results equal one-photo-at-a-time results.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "tinytriage"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photos = make_photos(folder, args.photos)

        # 1. latency of one whole process
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([*exe, "predict", str(photos[0]), "--json"], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        probe = subprocess.run(
            [sys.executable, "-c",
             "import sys, runpy; sys.argv=['tinytriage','predict',sys.argv[1],'--json'];"
             "from tinytriage.cli import app\ntry: app()\nexcept SystemExit: pass\n"
             "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)", str(photos[0])],
            capture_output=True, text=True,
        )  # fmt: skip
        torch_imported = "TORCH_IMPORTED" in probe.stderr

        # 2. throughput over the folder, one process
        t0 = time.perf_counter()
        batch = subprocess.run(
            [*exe, "predict", str(folder), "--json", "--workers", str(args.workers)],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - t0
        batched = [json.loads(line) for line in batch.stdout.splitlines()]
        single = subprocess.run(
            [*exe, "predict", str(folder), "--json", "--batch-size", "1", "--workers", "1"],
            check=True,
            capture_output=True,
            text=True,
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

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}",
        "latency_median_s": statistics.median(times),
        "latency_min_s": min(times),
        "torch_imported_on_predict_path": torch_imported,
        "folder_photos": args.photos,
        "folder_seconds": seconds,
        "photos_per_s": args.photos / seconds,
        "batched_equals_one_at_a_time": identical,
        "max_probability_diff_batched_vs_single": max_prob_diff,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:40} {v:.4g}" if isinstance(v, float) else f"{k:40} {v}")


if __name__ == "__main__":
    main()
