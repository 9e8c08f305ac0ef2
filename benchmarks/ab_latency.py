"""One-photo `tinytriage predict` latency of two or more installs, interleaved run by run.

    python benchmarks/ab_latency.py PYTHON [PYTHON ...] [--runs 30] [--model FILE] [--json]

Each PYTHON is an interpreter with tinytriage installed (a venv's bin/python, say, one per
commit). Each round runs every install once with a table and once with --json on the same
1280x960 JPEG (bench_predict's first photo), so a slow minute of this shared machine slows
all of them alike; the median and the fastest of --runs rounds are reported for each. The
processes start in a temporary folder (a checkout's own tinytriage/ is never imported) and
their stdout is a pipe, as bench_predict times them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import cpu_name, make_photos, one_photo_latency, vector_units  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pythons", nargs="+")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--model", help="model file (default: each install's bundled model)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with_model = [] if args.model is None else ["--model", str(Path(args.model).resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        photo = make_photos(Path(tmp), 1)[0]
        times = one_photo_latency(args.pythons, photo, with_model, args.runs)
    result = {
        "machine": cpu_name(),
        "vector_units": vector_units(),
        "runs": args.runs,
        "installs": [
            {
                "python": py,
                **{f"{kind}_median_s": round(statistics.median(times[py, kind]), 4) for kind in ("table", "json")},
                **{f"{kind}_min_s": round(min(times[py, kind]), 4) for kind in ("table", "json")},
            }
            for py in args.pythons
        ],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['machine']}; {result['vector_units']}; {args.runs} rounds, interleaved")
    for r in result["installs"]:
        print(
            f"{r['python']}: table {r['table_median_s']:.3f} s (fastest {r['table_min_s']:.3f}), "
            f"--json {r['json_median_s']:.3f} s (fastest {r['json_min_s']:.3f})"
        )


if __name__ == "__main__":
    main()
