"""The bundled ViT against the bundled CNN: forward cost per photo, side by side in one run.

    python benchmarks/bench_vit.py [--batch 64] [--blocks 7] [--threads 2] [--json]

Issue 34 asks for a ViT at no more than twice the CNN's forward cost per photo. Both
models run in the NumPy engine, eval mode, float32, the same thread count, on the same
random batch at each model's own input size; blocks alternate between the models (one
block: 3 forwards of one model, then 3 of the other) and the median block is reported,
with the ratio. Multiply-adds per photo come from each architecture's ``count_macs``.
Names the machine: the figures are this machine's, on this day.
"""

from __future__ import annotations

import argparse
import os
import sys

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--blocks", type=int, default=7)
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--cnn", default=None, help="CNN model file (default: the bundled one)")
parser.add_argument("--vit", default=None, help="ViT model file (default: the bundled one)")
parser.add_argument("--json", action="store_true")
args = parser.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import _machine  # noqa: E402  (benchmarks/_machine.py, beside this script)
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tinytriage.engines import load_engine  # noqa: E402
from tinytriage.models import get_arch  # noqa: E402
from tinytriage.models.file import read_model_or_bundled  # noqa: E402


def machine() -> str:
    return _machine.machine(f"{args.threads} threads", f"NumPy {np.__version__}")


def main() -> None:
    models = {}
    for arch, path in (("cnn", args.cnn), ("vit", args.vit)):
        mf, where = read_model_or_bundled(path, arch)
        spec = get_arch(arch)
        size = spec.input_size(mf.config)
        x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)
        engine = load_engine("numpy", mf)
        engine.logits(x)  # warm-up: fused weights, buffers
        models[arch] = {
            "engine": engine,
            "x": x,
            "file": str(where),
            "input_size": size,
            "macs": spec.count_macs(spec.from_dict(mf.config)),
            "params": int(sum(v.size for k, v in mf.tensors.items() if "running" not in k and "num_batches" not in k)),
            "blocks": [],
        }
    for _ in range(args.blocks):
        for m in models.values():
            t0 = time.perf_counter()
            for _ in range(3):
                m["engine"].logits(m["x"])
            m["blocks"].append((time.perf_counter() - t0) / 3 / args.batch)
    report = {"machine": machine(), "batch": args.batch, "blocks": args.blocks}
    for arch, m in models.items():
        report[arch] = {
            "file": m["file"],
            "input_size": m["input_size"],
            "params": m["params"],
            "macs": m["macs"],
            "forward_ms_per_photo": 1000 * statistics.median(m["blocks"]),
        }
    report["ratio"] = {
        "forward_time": report["vit"]["forward_ms_per_photo"] / report["cnn"]["forward_ms_per_photo"],
        "macs": report["vit"]["macs"] / report["cnn"]["macs"],
    }
    if args.json:
        print(json.dumps(report))
        return
    print(report["machine"])
    print(f"{'model':<5} {'input':>5} {'parameters':>11} {'M multiply-adds':>16} {'forward ms/photo':>17}")
    for arch in ("cnn", "vit"):
        r = report[arch]
        print(
            f"{arch:<5} {r['input_size']:>5} {r['params']:>11,} {r['macs'] / 1e6:>16.1f} {r['forward_ms_per_photo']:>17.2f}"
        )
    ratio = report["ratio"]
    print(f"ViT / CNN: forward time {ratio['forward_time']:.2f}x, multiply-adds {ratio['macs']:.2f}x "
          f"(median of {args.blocks} blocks, batch {args.batch})")  # fmt: skip


if __name__ == "__main__":
    main()
