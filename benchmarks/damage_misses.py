"""How large the damage is on the screen_damage photos a model gets right, and on those it misses.

    python benchmarks/damage_misses.py DATA_DIR [--model FILE]

DATA_DIR is a generated folder (``tinytriage samples``): each screen_damage photo has a
``NAME.json`` sidecar with its ``damage_bbox``. Prints, for hits and misses, how many there
are and the damage box's share of the photo (median and quartiles), then each miss's path,
share and predicted label, smallest first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from PIL import Image

from tinytriage.data.datasets import read_damage_box
from tinytriage.inference.predict import PhotoFailure, Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--model", default=None, help="model file (default: the bundled CNN)")
    args = ap.parse_args()

    predictor = Predictor.load(args.model)
    paths = sorted(str(p) for p in (args.data_dir / "screen_damage").glob("*.jpg"))
    share = {}
    for p in paths:
        box = read_damage_box(Path(p))
        if isinstance(box, str):
            raise SystemExit(f"{p}: {box}")
        with Image.open(p) as im:  # reads the header only
            w, h = im.size
        share[p] = (box[2] - box[0]) * (box[3] - box[1]) / (w * h)
    hits, misses = [], []
    for r in predictor.predict_paths(paths):
        if isinstance(r, PhotoFailure):
            raise SystemExit(f"{r.path}: {r.reason}")
        (hits if r.label == "screen_damage" else misses).append((share[r.path], r.path, r.label))
    for name, rows in (("right", hits), ("missed", misses)):
        if len(rows) >= 2:
            q1, med, q3 = statistics.quantiles([s for s, _, _ in rows], n=4)
            print(f"{name:>6}: {len(rows):4d} photos, damage box {med:.1%} of the photo (quartiles {q1:.1%}-{q3:.1%})")
        else:
            print(f"{name:>6}: {len(rows):4d} photos")
    for s, path, label in sorted(misses):
        print(f"{s:6.1%}  {label:<14} {path}")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # `| head` closed the pipe: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
