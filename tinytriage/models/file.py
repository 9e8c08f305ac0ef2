"""One model file for every engine: a single ``.safetensors`` file.

safetensors stores raw little-endian tensors behind a JSON header, so loading never runs
code (a pickle can: ``torch.load`` and ``np.load(allow_pickle=True)`` execute whatever the
file says). Everything else tinytriage needs rides in the header's ``__metadata__`` under
one key, ``tinytriage``, as JSON: architecture and its config, class names, routes, input
size and normalisation, confidence threshold and temperature, training seed and metrics,
the tinytriage version and the format version.

Writes are atomic: a temporary file beside the target, flushed and fsynced, then renamed
over it, so a crash, a full disk or a second Ctrl-C leaves the previous file intact and no
partial file under the final name.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinytriage import __version__
from tinytriage.errors import ModelFileError, TinyTriageError
from tinytriage.files import atomic_write_bytes, finite_json
from tinytriage.models import get_arch

FORMAT_VERSION = 1
METADATA_KEY = "tinytriage"
MAX_HEADER_BYTES = 10 * 1024 * 1024  # a real header is a few KB; refuse absurd ones early

_PICKLE_HINT = (
    "it looks like a {kind}, which can run code when loaded; tinytriage only reads "
    ".safetensors model files and never unpickles"
)


@dataclass
class ModelFile:
    """What a model file holds: tensors by name plus the metadata describing them."""

    arch: str  # "cnn" or "vit"
    config: dict[str, Any]  # the architecture's config dataclass, as a dict
    classes: list[str]  # class names, index = logit index
    routes: dict[str, str]  # class -> queue
    preprocess: dict[str, Any]  # input_size, mean, std, resize_mode
    tensors: dict[str, np.ndarray]  # state_dict, PyTorch keys
    threshold: float = 0.5  # below this calibrated confidence -> human review
    temperature: float = 1.0  # logits / T before softmax (temperature scaling)
    # out-of-distribution gate (tinytriage.training.ood): {"score": "residual", "dims", "threshold",
    # ..., "mean": (C,) array, "basis": (C, dims) array}; its arrays are stored as tensors "ood.<name>"
    ood: dict[str, Any] = field(default_factory=dict)
    second_look: dict[str, Any] = field(default_factory=dict)  # tinytriage.inference.second_look.SecondLook; {}: none
    training: dict[str, Any] = field(default_factory=dict)  # seed, args, per-epoch metrics
    metrics: dict[str, Any] = field(default_factory=dict)  # validation metrics of these weights
    tinytriage_version: str = __version__
    format_version: int = FORMAT_VERSION

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "tinytriage_version": self.tinytriage_version,
            "arch": self.arch,
            "config": self.config,
            "classes": self.classes,
            "routes": self.routes,
            "preprocess": self.preprocess,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "ood": {k: v for k, v in self.ood.items() if not isinstance(v, np.ndarray)},
            "second_look": self.second_look,
            "training": self.training,
            "metrics": self.metrics,
        }


# -- the second look a model file may ask for (tinytriage.inference.second_look) ------
# the CAM box's two numbers: chosen on a tuning set generated with --seed 3, kept fixed
DEFAULT_CAM_FRAC = 0.1
DEFAULT_MARGIN = 0.25


@dataclass(frozen=True)
class SecondLook:
    """When and where to look again. Stored in the model file under ``second_look``."""

    classes: tuple[str, ...]  # a first look whose top class is one of these may get a second
    below: float  # ... when its confidence is below this (0: never, above 1: always)
    cam_frac: float = DEFAULT_CAM_FRAC  # CAM cells at >= this fraction of the max make the box
    margin: float = DEFAULT_MARGIN  # cells added on each side of that box

    def __post_init__(self) -> None:
        if not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise ValueError(f"classes must be a non-empty list of class names, got {self.classes!r}")
        if not 0.0 <= self.below <= 1.01:
            raise ValueError(f"below must be between 0 and 1.01, got {self.below}")
        if not 0.0 < self.cam_frac <= 1.0:
            raise ValueError(f"cam_frac must be in (0, 1], got {self.cam_frac}")
        if not 0.0 <= self.margin <= 8.0:
            raise ValueError(f"margin must be between 0 and 8 cells, got {self.margin}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SecondLook:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}")
        return cls(
            classes=tuple(str(c) for c in d["classes"]),
            below=float(d["below"]),
            cam_frac=float(d.get("cam_frac", DEFAULT_CAM_FRAC)),
            margin=float(d.get("margin", DEFAULT_MARGIN)),
        )


# -- saving ---------------------------------------------------------------------------


def save_model(model_file: ModelFile, path: str | os.PathLike) -> Path:
    """Write ``model_file`` atomically to ``path``. Refuses non-finite weights."""
    from safetensors.numpy import save

    bad = [k for k, v in model_file.tensors.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
        raise ModelFileError(f"refusing to save non-finite (NaN/Inf) weights: {', '.join(bad)}")
    meta = json.dumps(finite_json(model_file.metadata()), allow_nan=False, sort_keys=True)
    tensors = {k: np.array(v, order="C", copy=None) for k, v in model_file.tensors.items()}
    tensors |= {f"{OOD_PREFIX}{k}": np.array(v, np.float32, order="C") for k, v in ood_arrays(model_file).items()}
    return atomic_write_bytes(path, save(tensors, metadata={METADATA_KEY: meta}))


# -- the out-of-distribution gate's arrays -------------------------------------------

OOD_PREFIX = "ood."  # its arrays ride in the file as tensors under this prefix, beside the network's


def ood_arrays(model_file: ModelFile) -> dict[str, np.ndarray]:
    """The arrays of ``model_file.ood`` (the network's own tensors are ``model_file.tensors``)."""
    return {k: v for k, v in model_file.ood.items() if isinstance(v, np.ndarray)}


def _check_ood(mf: ModelFile, arrays: dict[str, np.ndarray], path: Path) -> None:
    """Put the file's ``ood.*`` tensors into ``mf.ood``, checked: a mean of the pooled
    features (C,) and ``dims`` directions (C, dims), finite, and a threshold."""
    if not mf.ood and not arrays:
        return
    try:
        dims, _ = int(mf.ood["dims"]), float(mf.ood["threshold"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: malformed ood metadata ({err!r} missing or not a number)") from None
    if get_arch(mf.arch).features_module is None:
        raise ModelFileError(f"{path}: an ood gate reads conv features; a {mf.arch} has none")
    C = get_arch(mf.arch).feature_map_shape(mf.config)[0]
    want = {"mean": (C,), "basis": (C, dims)}
    arrays = {k.removeprefix(OOD_PREFIX): np.asarray(v, np.float32) for k, v in arrays.items()}
    got = {k: tuple(v.shape) for k, v in arrays.items()}
    if got != want or not all(np.isfinite(v).all() for v in arrays.values()):
        raise ModelFileError(f"{path}: ood tensors {got}, expected finite {want}")
    mf.ood |= arrays


# -- loading --------------------------------------------------------------------------


def _sniff(path: Path, head: bytes, size: int) -> None:
    """Recognise pickles and zip archives (.pt, .npz) before anything parses them."""
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        raise ModelFileError(f"{path}: " + _PICKLE_HINT.format(kind="Python pickle"))
    if head[:4] == b"PK\x03\x04":
        raise ModelFileError(f"{path}: " + _PICKLE_HINT.format(kind="zip archive (a PyTorch .pt or NumPy .npz file)"))
    if head[:6] == b"\x93NUMPY":
        raise ModelFileError(f"{path}: " + _PICKLE_HINT.format(kind="NumPy .npy file"))
    if size < 8:
        raise ModelFileError(f"{path}: not a safetensors file (only {size} bytes)")
    (n,) = struct.unpack("<Q", head[:8])
    if n == 0 or n > MAX_HEADER_BYTES or 8 + n > size:
        raise ModelFileError(f"{path}: not a safetensors file, or truncated (header length {n}, file size {size})")


def read_model(path: str | os.PathLike) -> ModelFile:
    """Read and check a model file, or a run folder's ``model.safetensors``. Raises
    ``ModelFileError`` saying exactly what is wrong."""
    from safetensors.numpy import load

    path = Path(path)
    if path.is_dir():  # a run folder of `tinytriage train`: the model in it
        if not (path / "model.safetensors").is_file():
            raise ModelFileError(
                f"{path}: is a folder with no model.safetensors in it; pass a model file or a run folder of train"
            )
        path = path / "model.safetensors"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not a model file") from None
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    _sniff(path, data[:16], len(data))
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
        tensors = load(data)
    except Exception as err:  # safetensors raises its own SafetensorError, json ValueError
        raise ModelFileError(f"{path}: corrupt or truncated safetensors file ({err})") from None
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise ModelFileError(f"{path}: a safetensors file, but not a tinytriage model (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(raw)
        version = int(meta["format_version"])
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFileError(f"{path}: unreadable tinytriage metadata ({err})") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version} is newer than this tinytriage knows "
            f"({FORMAT_VERSION}); upgrade tinytriage (file written by {meta.get('tinytriage_version', '?')})"
        )
    try:
        mf = ModelFile(
            arch=str(meta["arch"]),
            config=dict(meta["config"]),
            classes=[str(c) for c in meta["classes"]],
            routes={str(k): str(v) for k, v in dict(meta["routes"]).items()},
            preprocess=dict(meta["preprocess"]),
            tensors=tensors,
            threshold=float(meta.get("threshold", 0.5)),
            temperature=float(meta.get("temperature", 1.0)),
            ood=dict(meta.get("ood") or {}),
            second_look=dict(meta.get("second_look") or {}),
            training=dict(meta.get("training") or {}),
            metrics=dict(meta.get("metrics") or {}),
            tinytriage_version=str(meta.get("tinytriage_version", "?")),
            format_version=version,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: tinytriage metadata is missing or malformed: {err}") from None
    arrays = {k: mf.tensors.pop(k) for k in [k for k in mf.tensors if k.startswith(OOD_PREFIX)]}
    check_tensors(mf, path)
    _check_second_look(mf, path)
    mf.config = full_config(mf.arch, mf.config)  # a file from before a config field existed
    _check_ood(mf, arrays, path)
    return mf


def _check_second_look(mf: ModelFile, path: Path) -> None:
    """A second-look setting must parse, name classes of the model, and sit on a CNN."""
    if not mf.second_look:
        return
    try:
        look = SecondLook.from_dict(mf.second_look)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: malformed second_look metadata: {err}") from None
    unknown = [c for c in look.classes if c not in mf.classes]
    if unknown:
        raise ModelFileError(f"{path}: second_look names class(es) {', '.join(unknown)} that the model does not have")
    if get_arch(mf.arch).features_module is None:
        raise ModelFileError(f"{path}: second_look needs a CNN (its class activation maps); this is a {mf.arch}")


def expected_tensors(arch: str, config: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) that the architecture needs (``models.ARCHS``)."""
    return get_arch(arch).expected_tensors(config)


def check_tensors(mf: ModelFile, path: Path | str = "model") -> None:
    """Every tensor present, with the right shape, dtype, and finite values; nothing extra."""
    if len(mf.classes) != int(mf.config.get("num_classes", len(mf.classes))):
        raise ModelFileError(
            f"{path}: {len(mf.classes)} class names but the output layer has {mf.config.get('num_classes')} outputs"
        )
    if len(set(mf.classes)) != len(mf.classes) or not mf.classes:
        raise ModelFileError(f"{path}: class names must be unique and non-empty")
    try:
        expected = expected_tensors(mf.arch, mf.config)
    except ModelFileError:
        raise
    except Exception as err:
        raise ModelFileError(f"{path}: cannot build architecture {mf.arch!r} from its config ({err})") from None
    problems = []
    for name, (shape, dtype) in expected.items():
        if name not in mf.tensors:
            problems.append(f"missing tensor {name}")
            continue
        t = mf.tensors[name]
        if shape == () and tuple(t.shape) == (1,):  # safetensors' numpy API stores 0-d as (1,)
            t = mf.tensors[name] = t.reshape(())
        if t.dtype == np.float16:  # half-precision storage (pretrained weights): computed in float32
            t = mf.tensors[name] = t.astype(np.float32)
        if tuple(t.shape) != shape:
            problems.append(f"{name} has shape {tuple(t.shape)}, expected {shape}")
        elif np.issubdtype(dtype, np.floating) != np.issubdtype(t.dtype, np.floating) or (
            np.issubdtype(t.dtype, np.floating) and t.dtype != np.float32 and t.dtype != np.float64
        ):
            problems.append(f"{name} has dtype {t.dtype}, expected {np.dtype(dtype)}")
        elif np.issubdtype(t.dtype, np.floating) and not np.isfinite(t).all():
            problems.append(f"{name} contains NaN or Inf")
    problems += [f"unexpected tensor {name}" for name in sorted(set(mf.tensors) - set(expected))]
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ModelFileError(f"{path}: " + "; ".join(problems[:5]) + more)


def full_config(arch: str, config: dict) -> dict:
    """``config`` with every field of the architecture's config dataclass: a file written
    before a field existed (the CNN's ``pool``, say) reads as that field's default."""
    try:
        return get_arch(arch).full_config(config)
    except TinyTriageError as err:
        raise ModelFileError(str(err)) from None


def build_numpy_model(arch: str, config: dict, seed: int = 0, init: bool = True):
    """The NumPy engine's model for an architecture name and its config dict, its weights
    drawn from ``seed``; ``init=False``: all zeros, for weights about to be loaded."""
    return get_arch(arch).numpy_model(config, seed=seed, init=init)


# -- the bundled model ---------------------------------------------------------------

BUNDLED = {
    # ImageNet's EfficientNet-Lite0 under a head learnt from generated photos (models/make_triage_effnet.py)
    "efficientnet_lite0": "triage_effnet.safetensors",
    "cnn": "triage_cnn.safetensors",  # the textbook CNN, trained from scratch (the lesson, explain --demo)
    "vit": "triage_vit.safetensors",
}
DEFAULT_BUNDLED = "efficientnet_lite0"  # what predict, evaluate and explain use without --model or --arch


def bundled_model_path(arch: str = DEFAULT_BUNDLED) -> Path:
    """The model shipped with tinytriage for ``arch``, found from any working directory."""
    if arch not in BUNDLED:
        raise ModelFileError(f"no bundled {arch} model (bundled: {', '.join(BUNDLED)}); pass --model FILE")
    return bundled_file(BUNDLED[arch])


def bundled_file(name: str) -> Path:
    """A file of the repository's ``models/`` folder, found from any working directory.

    An editable install finds the repository's ``models/`` folder; a regular install
    finds the copy that pyproject's ``data-files`` put under ``<prefix>/share/tinytriage``.
    """
    import sys

    here = Path(__file__).resolve().parents[1]  # the tinytriage package
    candidates = (
        here.parent / "models" / name,  # a source checkout / editable install
        Path(sys.prefix) / "share" / "tinytriage" / "models" / name,  # `pip install .` (data-files)
        here / "_bundled" / name,
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelFileError(
        f"no bundled {name} found (looked in tinytriage/_bundled and models/); "
        "pass --model FILE or train one with `tinytriage train`"
    )


def read_model_or_bundled(model: str | os.PathLike | None, arch: str | None = None) -> tuple[ModelFile, Path]:
    """Read ``model``, or the bundled model of ``arch`` (default ``DEFAULT_BUNDLED``) when no
    file is given. With both, check that the file holds that architecture (a file knows its own)."""
    path = Path(model) if model else bundled_model_path(arch or DEFAULT_BUNDLED)
    mf = read_model(path)
    if arch is not None and mf.arch != arch:
        raise ModelFileError(f"{path}: holds a {mf.arch} model, not a {arch}; drop --arch or pass a {arch} model file")
    return mf, path
