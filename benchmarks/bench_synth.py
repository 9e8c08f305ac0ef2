"""How fast the photo generator is: photos/s on one core (the target is 50 or more).

    python benchmarks/bench_synth.py [--per-class 40] [--workers 1] [--max-size 1600]

1. Start-up: building the cached surface patterns and noise tiles (once per process)
   and the first photo of each class.
2. Per class: render + JPEG-encode, timed in process CPU time, so other programs on a
   busy machine count less against it.
3. End to end: ``generate_dataset`` into a temporary folder (render, encode, write),
   wall-clock photos/s and, with one worker, CPU-time photos/s.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tinytriage.data.synth import CLASSES, encode_photo, generate_dataset, photo_rng, render_photo, textures  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--min-size", type=int, default=480)
    ap.add_argument("--max-size", type=int, default=1600)
    args = ap.parse_args()
    size_range = (args.min_size, args.max_size)
    print(f"python {platform.python_version()} on {platform.machine()}, sizes {size_range}, per class {args.per_class}")

    t0 = time.perf_counter()
    textures.warm_cache()
    for c in CLASSES:
        render_photo(c, photo_rng(10**6, c, 0), size_range=size_range)
    print(f"start-up (all cached patterns, first photo of each class): {time.perf_counter() - t0:.2f} s")

    total_cpu = 0.0
    for c in CLASSES:
        t0 = time.process_time()
        for i in range(args.per_class):
            image, meta = render_photo(c, photo_rng(args.seed, c, i), size_range=size_range)
            encode_photo(image, meta)
        cpu = time.process_time() - t0
        total_cpu += cpu
        print(f"  {c:14s} {args.per_class / cpu:6.1f} photos/s (CPU time)")
    n = args.per_class * len(CLASSES)
    print(f"render + encode, one core: {n / total_cpu:.1f} photos/s (CPU time)")

    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        report = generate_dataset(Path(tmp), args.per_class, args.seed, size_range=size_range, workers=args.workers)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    line = f"generate_dataset, {args.workers} worker(s): {report.n_photos / wall:.1f} photos/s wall"
    if args.workers == 1:
        line += f", {report.n_photos / cpu:.1f} photos/s CPU time"
    print(f"{line}, {report.n_bytes / report.n_photos / 1e3:.0f} kB/photo")


if __name__ == "__main__":
    main()
