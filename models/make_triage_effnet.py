"""Make the bundled default model, models/triage_effnet.safetensors, from generated photos only.

    python models/make_triage_effnet.py                   # about 10 minutes on 2 cores
    python models/make_triage_effnet.py --per-class 300   # a quick look

1. generates ``--per-class`` photos of each ticket class with ``--seed`` into a temporary
   folder (half the intact photos twins of damaged ones: the damage is then the only
   difference, so the head learns the damage, not what comes with it);
2. ``training.bundled.build_prior_model``: EfficientNet-Lite0's ImageNet backbone frozen,
   the PriorClassifier's head fitted on 80% of the photos, the temperature, the review
   threshold and the out-of-distribution gate set on the other 20%;
3. stores the backbone and ImageNet's classifier as float16, as the ImageNet file does
   (they came from it), the new head as float32, and writes the model file.

No real photo is read. docs/MODEL_CARD.md records the run and what it scores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PRETRAINED = REPO / "models" / "efficientnet_lite0_imagenet.safetensors"
OUT = REPO / "models" / "triage_effnet.safetensors"


def main() -> None:
    sys.path.insert(0, str(REPO))
    from tinytriage.data.synth import generate_dataset
    from tinytriage.models.file import read_model, save_model
    from tinytriage.training.bundled import PriorRecipe, build_prior_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=101, help="generator seed (keep it apart from the test seeds)")
    ap.add_argument("--twins", type=float, default=0.5)
    ap.add_argument("--input-size", type=int, default=PriorRecipe.input_size)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        gen = generate_dataset(tmp, args.per_class, args.seed, workers=args.workers, twins=args.twins)
        print(f"generated {gen.n_photos} photos in {gen.seconds:.0f} s", flush=True)
        recipe = PriorRecipe(input_size=args.input_size)
        mf, report = build_prior_model(tmp, PRETRAINED, recipe, log=lambda s: print(s, flush=True))
    half = set(read_model(PRETRAINED).tensors) - {"classifier.weight", "classifier.bias"}
    pretrained_keys = half | {"classifier.pretrained.weight", "classifier.pretrained.bias"}
    mf.tensors = {
        k: v.astype(np.float16) if k in pretrained_keys and v.dtype == np.float32 else v for k, v in mf.tensors.items()
    }
    mf.training |= {"generated": {"per_class": args.per_class, "seed": args.seed, "twins": args.twins}}
    mf.training["seconds_total"] = time.perf_counter() - t0
    save_model(mf, args.out)
    print(
        f"{args.out}: generated validation accuracy {report.val_accuracy:.3f}, routed {report.val_routed:.1%} "
        f"at threshold {mf.threshold:.3f} (T = {mf.temperature:.3f}), ood threshold {mf.ood['threshold']:.2f}; "
        f"{time.perf_counter() - t0:.0f} s in all"
    )


if __name__ == "__main__":
    main()
