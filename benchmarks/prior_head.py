"""The bundled model's recipe, varied: input size, resize mode, head, weight decay, gate.

    python benchmarks/prior_head.py                                # 600 generated photos per class, 224 px
    python benchmarks/prior_head.py --sizes 160,192,224 --modes crop,letterbox
    python benchmarks/prior_head.py --generated /tmp/gen --weight-decays 0.1,0.5,1

Each variant is ``training.bundled``'s recipe with one thing changed: EfficientNet-Lite0's
frozen ImageNet features of generated photos (80% fit the head, 20% calibrate it and set
the out-of-distribution gate), scored on the generated validation photos and on the real
photos of ``--real`` the way ``benchmarks/realphotos.py`` scores a model file: balanced
accuracy, the share routed without a person and its precision, unrelated photos sent to
a team (here from the head's logits alone: no decoding twice, no second look). Heads:
``linear`` (a plain linear head, as ``train`` fits) and ``prior`` (the PriorClassifier:
the same head on top of ImageNet's grouped probabilities, ``training.prior``).

Real photos are only measured, never fitted: every number that decides anything (head,
temperature, review threshold, gate threshold) comes from generated photos.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tinytriage.data.datasets import cache_resized, scan_folder, stratified_split  # noqa: E402
from tinytriage.data.preprocess import Preprocess  # noqa: E402
from tinytriage.engines import load_engine  # noqa: E402
from tinytriage.models import get_arch  # noqa: E402
from tinytriage.models.file import read_model  # noqa: E402
from tinytriage.training.bundled import PriorRecipe, prior_log_probs  # noqa: E402
from tinytriage.training.calibration import calibrate_logits, softmax  # noqa: E402
from tinytriage.training.finetune import fit_linear_head, pooled_features  # noqa: E402
from tinytriage.training.ood import fit_residual_gate  # noqa: E402
from tinytriage.training.prior import group_members  # noqa: E402

PRETRAINED = REPO / "models" / "efficientnet_lite0_imagenet.safetensors"
DEFAULT_REAL = REPO.parent / "shared" / "realphotos"


def features(folder: Path, size: int, mode: str, classes: list[str] | None = None):
    """Pooled features (N, 1280) of every photo of folder/<class>/, and their labels."""
    mf = read_model(PRETRAINED)
    spec = get_arch(mf.arch)
    mf.config = spec.full_config({**mf.config, "input_size": size})
    pcfg = Preprocess.from_dict({**mf.preprocess, "input_size": size, "resize_mode": mode})
    data = scan_folder(str(folder))
    cache = cache_resized(data, pcfg, size=size, workers=2)
    f = pooled_features(load_engine("numpy", mf), cache.images, cache.labels, pcfg, 1, 0)
    names = list(data.classes)
    y = f.y if classes is None else np.array([classes.index(names[i]) for i in f.y])
    return f.x, y, names, mf


def score(logits: np.ndarray, y: np.ndarray, classes: list[str], T: float, threshold: float, unlike=None) -> dict:
    p = softmax(logits, T)
    pred, conf = p.argmax(1), p.max(1)
    other = classes.index("other")
    routed = (conf >= threshold) & (pred != other)
    if unlike is not None:
        routed &= ~unlike
    recalls = [np.mean(pred[y == k] == k) for k in range(len(classes)) if (y == k).any()]
    return {
        "balanced": float(np.mean(recalls)),
        "per_class": {c: float(np.mean(pred[y == k] == k)) for k, c in enumerate(classes) if (y == k).any()},
        "routed": float(routed.mean()),
        "precision": float(np.mean(pred[routed] == y[routed])) if routed.any() else float("nan"),
        "other_to_team": float(routed[y == other].mean()) if (y == other).any() else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generated", type=Path, help="a generated folder (default: generate one)")
    ap.add_argument("--per-class", type=int, default=600)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--twins", type=float, default=0.5)
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL)
    ap.add_argument("--sizes", default="224")
    ap.add_argument("--modes", default="crop")
    ap.add_argument("--heads", default="linear,prior")
    ap.add_argument("--weight-decays", default=str(PriorRecipe.weight_decay))
    args = ap.parse_args()
    if not args.real.is_dir():
        sys.exit(f"{args.real}: no such folder (real photos live in ../shared/realphotos of a development checkout)")

    with tempfile.TemporaryDirectory() as tmp:
        gen = args.generated
        if gen is None:
            from tinytriage.data.synth import generate_dataset

            gen = Path(tmp) / "gen"
            r = generate_dataset(gen, args.per_class, args.seed, size_range=(480, 800), workers=2, twins=args.twins)
            print(f"generated {r.n_photos} photos (seed {args.seed}, twins {args.twins}) in {r.seconds:.0f} s")
        train_set, val_set = stratified_split(scan_folder(str(gen)), val_fraction=0.2, seed=0)
        for size in map(int, args.sizes.split(",")):
            for mode in args.modes.split(","):
                t0 = time.perf_counter()
                xg, yg, classes, mf = features(gen, size, mode)
                xr, yr, _, _ = features(args.real, size, mode, classes)
                val = np.isin(np.arange(len(yg)), _indices(gen, val_set))
                members = group_members(classes, mf.classes)
                W, b = mf.tensors["classifier.weight"], mf.tensors["classifier.bias"]
                prior_g, prior_r = prior_log_probs(xg, W, b, members), prior_log_probs(xr, W, b, members)
                gate = fit_residual_gate(xg[~val], xg[val])
                unlike = gate.unlike(xr)
                print(f"\n{size} px, {mode}: features in {time.perf_counter() - t0:.0f} s; the gate flags "
                      f"{unlike.mean():.1%} of real photos")  # fmt: skip
                for head_kind in args.heads.split(","):
                    for wd in map(float, args.weight_decays.split(",")):
                        og, orr = (prior_g, prior_r) if head_kind == "prior" else (0.0, 0.0)
                        head = fit_linear_head(
                            xg[~val], yg[~val], len(classes), steps=1000, lr=0.02, weight_decay=wd,
                            offset=og[~val] if head_kind == "prior" else None,
                        )  # fmt: skip
                        lg, lr_ = head.logits(xg) + og, head.logits(xr) + orr
                        cal = calibrate_logits(lg[val], yg[val], 0.99)
                        g = score(lg[val], yg[val], classes, cal.temperature, cal.threshold)
                        r = score(lr_, yr, classes, cal.temperature, cal.threshold)
                        rg = score(lr_, yr, classes, cal.temperature, cal.threshold, unlike)
                        per = " ".join(f"{c[:6]} {a:.2f}" for c, a in r["per_class"].items())
                        print(
                            f"  {head_kind:6s} wd {wd:<5g} generated {g['balanced']:.3f} | real balanced "
                            f"{r['balanced']:.3f} ({per}) | routed {r['routed']:.1%} at {r['precision']:.1%}, "
                            f"unrelated to a team {r['other_to_team']:.1%} | with the gate: routed "
                            f"{rg['routed']:.1%} at {rg['precision']:.1%}, unrelated {rg['other_to_team']:.1%}"
                        )


def _indices(folder: Path, subset) -> np.ndarray:
    """Positions of ``subset``'s photos in ``scan_folder(folder)``'s order."""
    order = {str(p): i for i, (p, _) in enumerate(scan_folder(str(folder)).samples)}
    return np.array([order[str(p)] for p, _ in subset.samples])


if __name__ == "__main__":
    main()
