"""How tinytriage does on real photos: out of the box, and fine-tuned on a few of them.

    python benchmarks/realphotos.py                          # the bundled model on ../shared/realphotos
    python benchmarks/realphotos.py --model RUN/model.safetensors
    python benchmarks/realphotos.py --finetune --draws 3     # + train on 30 per class, test on the rest
    python benchmarks/realphotos.py --finetune --by-source   # + train on some sources, test on the others

The folder has one subfolder per class (tinytriage's class names) and each file name starts
with its source (``SOURCE__name.jpg``), so results break down by source. Real photos are
for measuring only: nothing here writes them anywhere but a temporary folder.

Out of the box (``predict`` as a user runs it, second look and review threshold included):
  * accuracy per class and per source, and balanced accuracy (the mean of the per-class
    accuracies, so the 190 intact devices do not drown the 33 damaged screens);
  * the share of photos routed without a person, and how often those are right;
  * unrelated photos (class ``other``) sent to a team rather than to a person.
Fine-tuning (``tinytriage train`` with its defaults, run as a user runs it): 30 photos per
class drawn at random train, the rest test (balanced accuracy, training time); and by
source, each source of a class held out in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "realphotos"


def source_of(path: str | Path) -> str:
    name = Path(path).name
    return name.split("__", 1)[0] if "__" in name else "(none)"


def photos(data: Path) -> list[tuple[Path, str]]:
    """(photo, class) for every image file of DATA/<class>/."""
    exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    return [
        (p, d.name)
        for d in sorted(data.iterdir())
        if d.is_dir()
        for p in sorted(d.iterdir())
        if p.suffix.lower() in exts
    ]


def out_of_the_box(model: str | None, data: Path, workers: int) -> dict:
    """Every photo through ``predict`` (in this process, with its defaults)."""
    from tinytriage.data.routes import HUMAN_REVIEW
    from tinytriage.inference.predict import PhotoFailure, Predictor

    items = photos(data)
    truth = {str(p): c for p, c in items}
    predictor = Predictor.load(model)
    t0 = time.perf_counter()
    results = list(predictor.predict_paths([str(p) for p, _ in items], workers=workers))
    seconds = time.perf_counter() - t0
    per_class, per_source = defaultdict(list), defaultdict(list)
    routed, routed_right, other_to_team, others, failed = 0, 0, 0, 0, 0
    for r in results:
        if isinstance(r, PhotoFailure):
            failed += 1
            continue
        want = truth[r.path]
        right = r.label == want
        per_class[want].append(right)
        per_source[f"{source_of(r.path)} ({want})"].append(right)
        if not r.needs_review:
            routed += 1
            routed_right += right
        if want == "other":
            others += 1
            other_to_team += r.route != HUMAN_REVIEW
    n = sum(len(v) for v in per_class.values())
    return {
        "model": str(predictor.model_path),
        "photos": n,
        "failed": failed,
        "seconds": seconds,
        "per_class": {c: float(np.mean(v)) for c, v in sorted(per_class.items())},
        "per_source": {s: float(np.mean(v)) for s, v in sorted(per_source.items())},
        "balanced_accuracy": float(np.mean([np.mean(v) for v in per_class.values()])),
        "accuracy": float(np.mean([x for v in per_class.values() for x in v])),
        "auto_routed": routed / n if n else float("nan"),
        "auto_routed_precision": routed_right / routed if routed else float("nan"),
        "unrelated_sent_to_a_team": other_to_team / others if others else float("nan"),
    }


def _link_folder(root: Path, items: list[tuple[Path, str]]) -> Path:
    """A DATA/<class>/ folder of symlinks (nothing copied)."""
    for p, c in items:
        (root / c).mkdir(parents=True, exist_ok=True)
        os.symlink(p.resolve(), root / c / p.name)
    return root


def _train_and_test(train: list, test: list, tmp: Path, tag: str) -> dict:
    """``tinytriage train`` (its defaults) on ``train``, then ``evaluate`` on ``test``."""
    train_dir = _link_folder(tmp / f"{tag}-train", train)
    test_dir = _link_folder(tmp / f"{tag}-test", test)
    run = tmp / f"{tag}-run"
    t0 = time.perf_counter()
    cli = [sys.executable, "-m", "tinytriage"]
    subprocess.run([*cli, "train", str(train_dir), "--out", str(run), "-q"], check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    # predict, not evaluate: a held-out source may hold one class only (evaluate needs two)
    out = subprocess.run(
        [*cli, "predict", str(test_dir), "-r", "--model", str(run / "model.safetensors"), "--json"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"predict failed ({out.returncode}): {out.stderr}")
    right = defaultdict(list)
    for line in out.stdout.splitlines():
        r = json.loads(line)
        if "label" in r:
            want = Path(r["path"]).parent.name
            right[want].append(r["label"] == want)
    recalls = [float(np.mean(v)) for v in right.values()]
    return {"train_seconds": seconds, "balanced_accuracy": float(np.mean(recalls)), "n_train": len(train)}


def finetune_draws(data: Path, per_class: int, draws: int) -> list[dict]:
    items = photos(data)
    by_class = defaultdict(list)
    for i, (_, c) in enumerate(items):
        by_class[c].append(i)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in range(draws):
            rng = np.random.default_rng(d)
            chosen = {int(i) for idx in by_class.values() for i in rng.choice(idx, per_class, replace=False)}
            train = [items[i] for i in sorted(chosen)]
            test = [items[i] for i in range(len(items)) if i not in chosen]
            out.append({"draw": d, **_train_and_test(train, test, Path(tmp), f"draw{d}")})
    return out


def finetune_by_source(data: Path) -> list[dict]:
    """For each class with several sources: hold one source out (test), train on the rest
    of the folder; classes with a single source keep 30 photos in training."""
    items = photos(data)
    sources = defaultdict(set)
    for p, c in items:
        sources[c].add(source_of(p))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for c, srcs in sorted(sources.items()):
            for held in sorted(srcs) if len(srcs) > 1 else []:
                test = [(p, k) for p, k in items if k == c and source_of(p) == held]
                train = [(p, k) for p, k in items if not (k == c and source_of(p) == held)]
                r = _train_and_test(train, test, Path(tmp), f"{c}-{held}")
                out.append({"class": c, "held_out_source": held, "test_photos": len(test), **r})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--finetune", action="store_true", help="also the fine-tuning experiment")
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--by-source", action="store_true", help="also train on some sources, test on others")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: no such folder (real photos live in ../shared/realphotos of a development checkout)")

    report = {"data": str(args.data), "out_of_the_box": out_of_the_box(args.model, args.data, args.workers)}
    if args.finetune:
        report["finetune"] = finetune_draws(args.data, args.per_class, args.draws)
    if args.by_source:
        report["by_source"] = finetune_by_source(args.data)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    o = report["out_of_the_box"]
    print(f"{o['photos']} real photos of {args.data}, model {o['model']} ({o['seconds']:.1f} s)")
    print(f"  balanced accuracy {o['balanced_accuracy']:.3f}  (accuracy {o['accuracy']:.3f})")
    for c, a in o["per_class"].items():
        print(f"    {c:15s} {a:.3f}")
    print(f"  routed without a person {o['auto_routed']:.1%}, right {o['auto_routed_precision']:.1%} of those")
    print(f"  unrelated photos sent to a team {o['unrelated_sent_to_a_team']:.1%}")
    print("  per source:")
    for s, a in o["per_source"].items():
        print(f"    {s:40s} {a:.3f}")
    for r in report.get("finetune", []):
        print(
            f"fine-tuned on {args.per_class} per class (draw {r['draw']}): balanced accuracy on the rest "
            f"{r['balanced_accuracy']:.3f}, train {r['train_seconds']:.0f} s"
        )
    for r in report.get("by_source", []):
        print(
            f"{r['class']}: held out {r['held_out_source']} ({r['test_photos']} photos): "
            f"accuracy {r['balanced_accuracy']:.3f}, train {r['train_seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()
