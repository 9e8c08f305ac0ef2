"""Make the bundled ViT, models/triage_vit.safetensors, from generated photos only.

    python models/make_triage_vit.py                        # about 23 minutes on 2 cores
    python models/make_triage_vit.py --data /tmp/vit_train  # photos generated before (same seed)

The two ways to give a Vision Transformer a CNN's inductive biases back, together, and
one way to hand it what the CNN has learnt:

* early convolutions (Xiao et al. 2021): four 3x3 convolutions with BatchNorm, ReLU and a
  2x2 max pool each (``stem_pool``), then a 1x1 convolution, turn a 128-pixel photo into
  8 x 8 tokens of 128 features, where the plain ViT cut it into patches with one linear map;
* the stem starts as the bundled CNN's first four stages, whose shape it has (``--stem-from``;
  the hybrid ViT of Dosovitskiy et al. 2020, sec. 3.1, started from a trained ResNet's):
  the blocks, the tokens and the heads start from their initialisation;
* distillation through attention (Touvron et al. 2021): a distillation token beside the
  class token learns the bundled CNN's class for each photo (hard labels), the class token
  the true labels; predictions average the two heads' softmaxes.

Steps: generate ``--per-class`` photos per class with ``--seed`` (unless ``--data`` holds
them), train with the NumPy engine (``train --arch vit --teacher cnn`` plus the config
below; AdamW, warm-up, cosine decay), calibrate on the held-out 15% (as ``train`` does),
and write the best epoch's model file. No real photo is read. docs/MODEL_CARD.md records
the run and what it scores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "models" / "triage_vit.safetensors"

# the ViT's config: what differs from ViTConfig's defaults (the plain ViT of the lesson)
CONFIG = {
    "img_size": 128,  # the CNN teacher's input size: cracks need the pixels
    "conv_stem": [16, 32, 64, 128],  # the bundled CNN's first four stages: an 8 x 8 grid of tokens
    "stem_pool": True,  # stride-1 convs and 2x2 max pools, as the CNN's stages
    "patch_size": 16,
    "embed_dim": 128,
    "num_heads": 4,
    "depth": 4,
    "distilled": True,
}


def main() -> None:
    sys.path.insert(0, str(REPO))
    from tinytriage.data.synth import generate_dataset
    from tinytriage.errors import TinyTriageError
    from tinytriage.files import atomic_write_bytes
    from tinytriage.training.loop import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=21, help="generator seed (keep it apart from the test seeds)")
    ap.add_argument("--data", type=Path, help="photos already generated with --per-class and --seed")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument(
        "--teacher", default="cnn", help="a model file, a bundled model's architecture, or 'none' (both heads then "
        "learn the true classes: the ablation of distillation)"
    )  # fmt: skip
    ap.add_argument("--init", help="continue from this ViT model file's weights (a new schedule)")
    ap.add_argument(
        "--stem-from", default="cnn", help="without --init: the CNN model file (or 'cnn', the bundled one) whose "
        "first stages start the stem"
    )  # fmt: skip
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (the ViT's default is 1e-3)")
    ap.add_argument("--run", type=Path, default=Path("runs/vit"), help="the training run folder")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tinytriage-vit-"))  # generated photos, the starting weights
    try:
        data = args.data
        if data is None:
            data = tmp / "photos"
            gen = generate_dataset(data, args.per_class, args.seed, workers=2)
            print(f"generated {gen.n_photos} photos in {gen.seconds:.0f} s", flush=True)
        init = args.init or _hybrid_init(args.stem_from, tmp)
        teacher = None if args.teacher == "none" else args.teacher
        cfg = TrainConfig(
            data_dir=str(data), out=str(args.run), exist_ok=True, arch="vit", epochs=args.epochs,
            input_size=CONFIG["img_size"], model_config=CONFIG, teacher=teacher, seed=0, init=str(init),
            lr=args.lr,
        )  # fmt: skip
        result = train(cfg, _log)
    except TinyTriageError as err:  # e.g. photo folders whose classes are not the CNN's
        raise SystemExit(f"error: {err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_bytes(args.out, result.model_path.read_bytes())
    print(
        f"wrote {args.out}: best epoch {result.best_epoch}, validation accuracy {result.best_val_acc:.3f}, "
        f"T={result.temperature:.3f}, review below {result.threshold:.3f}; "
        f"{result.train_seconds:.0f} s training, {time.perf_counter() - t0:.0f} s in all",
        flush=True,
    )


def _hybrid_init(stem_from: str, tmp: Path) -> Path:
    """A ViT model file to start from: the stem from the CNN's first stages, the rest at
    its initialisation (seed 0), the CNN's classes (``train`` refuses photo folders whose
    classes differ, as for any ``init``)."""
    from tinytriage.models.file import ModelFile, read_model_or_bundled, save_model
    from tinytriage.models.vit import ViTConfig, build_vit, stem_from_cnn
    from tinytriage.training.folders import default_routes

    cnn, where = read_model_or_bundled(None if stem_from == "cnn" else stem_from, "cnn")
    classes = list(cnn.classes)
    cfg = ViTConfig.from_dict({**CONFIG, "num_classes": len(classes)})
    state = build_vit(cfg, rng=np.random.default_rng(0)).state_dict()
    stem = stem_from_cnn(cfg, cnn.config, cnn.tensors)
    state.update({k: v.astype(state[k].dtype) for k, v in stem.items()})
    print(f"stem: the first {len(cfg.conv_stem)} stages of {where} ({len(stem)} tensors)", flush=True)
    path = tmp / "hybrid_init.safetensors"
    save_model(
        ModelFile("vit", cfg.to_dict(), classes, default_routes(classes), dict(cnn.preprocess), state), path
    )  # fmt: skip
    return path


def _log(event) -> None:
    from tinytriage.training import events

    if isinstance(event, events.Epoch):
        m = event.metrics
        print(
            f"epoch {m.epoch}: train loss {m.train_loss:.4f} acc {m.train_acc:.3f}  val loss {m.val_loss:.4f} "
            f"acc {m.val_acc:.3f}  {m.seconds:.0f} s",
            flush=True,
        )
    elif isinstance(event, events.Teacher):
        print(
            f"teacher {event.path} ({event.arch}): the true class for {event.agreement:.1%} of the photos", flush=True
        )
    elif isinstance(event, events.Scan | events.Plan):
        print(getattr(event, "summary", None) or event.text, flush=True)


if __name__ == "__main__":
    main()
