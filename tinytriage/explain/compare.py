"""`tinytriage compare`: the same weights and inputs through two engines, side by side.

Four checks, each against a stated tolerance. The forward pass and the speed run in
float32, as the engines do; the gradient and training checks run in float64 in both
engines. In float32, a deep network's training-mode gradients (BatchNorm over the batch,
ReLU6's kinks) are ill-conditioned: on EfficientNet-Lite0's ImageNet weights each engine's
float32 gradients differ from float64's by up to 4% on some tensors, while the two engines
in float64 agree to 1e-12. Comparing in float64 tests the engines, not float32's rounding:

* forward:  logits and calibrated probabilities, and whether the predicted labels agree
* backward: the loss and every parameter's gradient on one batch (training mode)
* training: N optimizer steps from the same weights on the same batches: both loss
            curves, and the largest weight difference at the end
* speed:    forward and training-step time per batch, images/s, and cold start (a fresh
            process that imports the engine, loads the model and predicts one photo)

Dropout is switched off for the gradient and training checks (its random masks are the
one thing the two engines cannot share); everything else runs as in training.

Gradients and trained weights are compared per parameter relative to that parameter's
size, but never to less than ``NOISE_FLOOR`` times the model's largest: some gradients are
zero in exact arithmetic and float32 noise in both engines. A BatchNorm's bias whose output
goes through a 1x1 convolution into another BatchNorm in training mode is one (an inverted
residual's projection, EfficientNet's last block): the second BatchNorm subtracts its
batch mean, and with it any constant the first one adds, so the loss cannot depend on it.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinytriage.engines import load_engine, make_engine
from tinytriage.errors import ConfigError, TinyTriageError
from tinytriage.models import get_arch
from tinytriage.models.file import ModelFile, read_model_or_bundled
from tinytriage.training.calibration import softmax

TOLERANCES = {
    "forward_logits_rel": 1e-4,  # max |a - b| / max |b|
    "forward_probs_abs": 1e-5,
    "loss_rel": 1e-5,
    "grad_rel": 1e-3,  # per parameter: max |a - b| / max |b|
    "train_loss_rel": 1e-3,  # every step of the loss curve
    "train_weight_rel": 1e-3,  # per parameter after N steps
}


@dataclass
class CompareResult:
    backends: list[str]
    model: str
    batch: int
    tolerances: dict[str, float]
    forward: dict[str, Any] = field(default_factory=dict)
    backward: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float] | None = None
    flags: list[str] = field(default_factory=list)  # every tolerance that was exceeded

    @property
    def ok(self) -> bool:
        return not self.flags

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["ok"] = self.ok
        return d


NOISE_FLOOR = 1e-4  # a parameter's scale is at least this share of the model's largest (see above)


def rel_diff(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> float:
    """max |a - b| / max |b|, the scale no smaller than ``floor``."""
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return float(np.max(np.abs(a - b)) / max(scale, floor, 1e-12)) if a.size else 0.0


def _floor(arrays: dict[str, np.ndarray]) -> float:
    """NOISE_FLOOR times the largest magnitude over all of a model's (float) arrays."""
    return NOISE_FLOOR * max((float(np.max(np.abs(v))) for v in arrays.values() if v.size), default=0.0)


def abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def sample_batch(
    mf: ModelFile, data_dir: str | None, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Real photos: from ``data_dir`` (labels from folders), or the sample photos that ship
    with tinytriage, or, where those are missing, photos generated for the purpose.
    Returns (x, labels, paths)."""
    from tinytriage.data.datasets import bundled_samples

    if data_dir:
        return _photos_of(mf, Path(data_dir), n, seed)
    root = bundled_samples()
    if root is not None:
        return _photos_of(mf, root, n, seed)
    import tempfile

    from tinytriage.data.synth import generate_dataset

    with tempfile.TemporaryDirectory(prefix="tinytriage-compare-") as tmp:
        generate_dataset(tmp, per_class=max(1, -(-n // 5)), seed=seed, size_range=(192, 384))
        return _photos_of(mf, Path(tmp), n, seed)


def _photos_of(mf: ModelFile, root: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` photos of a class-per-folder ``root``, drawn at random; labels by folder name."""
    from tinytriage.data.datasets import scan_folder
    from tinytriage.data.preprocess import Preprocess, preprocess

    cfg = Preprocess.from_dict(mf.preprocess)
    ds = scan_folder(root)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(ds.samples))[:n]
    paths = [str(ds.samples[i][0]) for i in pick]
    index = {c: i for i, c in enumerate(mf.classes)}
    labels = np.array([index.get(ds.classes[ds.samples[i][1]], 0) for i in pick])
    return np.concatenate([preprocess(p, cfg) for p in paths]), labels, paths


def _without_dropout(mf: ModelFile) -> dict:
    """The model's config with its dropout rate at 0 (the architecture table names the field)."""
    rate = get_arch(mf.arch).dropout_field
    return dict(mf.config) if rate is None else {**mf.config, rate: 0.0}


def compare(
    backends: list[str],
    model: str | None = None,
    data_dir: str | None = None,
    *,
    batch: int = 16,
    steps: int = 5,
    lr: float = 0.01,
    repeats: int = 5,
    cold_start: bool = True,
    arch: str | None = None,
) -> CompareResult:
    """Run every check for two engines on one model file (default: the bundled model of
    ``arch``, cnn unless given). Any architecture: the CNN and the ViT run alike."""
    if len(backends) != 2 or len(set(backends)) != 2:
        raise ConfigError("give two different engines, e.g. numpy,torch", option="--backends")
    mf, path = read_model_or_bundled(model, arch)
    res = CompareResult(backends, str(path), batch, dict(TOLERANCES))
    x, y, _paths = sample_batch(mf, data_dir, batch)
    a_name, b_name = backends

    # forward, eval mode, calibrated probabilities
    ea, eb = load_engine(a_name, mf), load_engine(b_name, mf)
    la, lb = ea.logits(x), eb.logits(x)
    pa, pb = softmax(la, mf.temperature), softmax(lb, mf.temperature)
    res.forward = {
        "logits_max_abs": abs_diff(la, lb),
        "logits_max_rel": rel_diff(la, lb),
        "probs_max_abs": abs_diff(pa, pb),
        "probs_max_rel": rel_diff(pa, pb),
        "labels_agree": int((pa.argmax(1) == pb.argmax(1)).sum()),
        "n": len(x),
    }
    _flag(res, "forward logits", res.forward["logits_max_rel"], "forward_logits_rel")
    _flag(res, "forward probabilities", res.forward["probs_max_abs"], "forward_probs_abs")
    if res.forward["labels_agree"] != len(x):
        res.flags.append(f"predicted labels differ on {len(x) - res.forward['labels_agree']} photo(s)")

    # backward: one batch in training mode, dropout off, float64 (the module docstring says why)
    cfg = _without_dropout(mf)
    if mf.config.get("distilled"):  # two heads: the distillation token's target is a teacher's
        y = np.stack([y, pb.argmax(1)], axis=1)  # class; the model's own (engine b's) stands in for it
    x64 = x.astype(np.float64)
    ga, gb = _fresh(a_name, mf, cfg, float64=True), _fresh(b_name, mf, cfg, float64=True)
    loss_a, _, grads_a = ga.loss_and_grads(x64, y)
    loss_b, _, grads_b = gb.loss_and_grads(x64, y)
    floor = _floor(grads_b)
    per_param = {
        k: {"max_abs": abs_diff(grads_a[k], grads_b[k]), "max_rel": rel_diff(grads_a[k], grads_b[k], floor)}
        for k in grads_b
    }
    res.backward = {
        "loss": [loss_a, loss_b],
        "loss_rel": abs(loss_a - loss_b) / max(abs(loss_b), 1e-12),
        "grads": per_param,
    }
    _flag(res, "loss", res.backward["loss_rel"], "loss_rel")
    for k, d in per_param.items():
        _flag(res, f"gradient of {k}", d["max_rel"], "grad_rel")

    # training: same N steps, same batches
    ta, tb = _fresh(a_name, mf, cfg, float64=True), _fresh(b_name, mf, cfg, float64=True)
    rng = np.random.default_rng(0)
    curve_a, curve_b = [], []
    for _ in range(steps):
        idx = rng.integers(0, len(x), size=len(x))
        curve_a.append(ta.train_step(x64[idx], y[idx], lr)[0])
        curve_b.append(tb.train_step(x64[idx], y[idx], lr)[0])
    wa, wb = ta.state_dict(), tb.state_dict()
    floats = [k for k in wb if np.issubdtype(wb[k].dtype, np.floating)]
    floor = _floor({k: wb[k] for k in floats})
    weight_rel = {k: rel_diff(wa[k].astype(np.float64), wb[k].astype(np.float64), floor) for k in floats}
    res.training = {
        "steps": steps,
        "lr": lr,
        "loss": {a_name: curve_a, b_name: curve_b},
        "loss_max_rel": max(abs(p - q) / max(abs(q), 1e-12) for p, q in zip(curve_a, curve_b, strict=True)),
        "weight_max_rel": max(weight_rel.values()),
        "worst_weight": max(weight_rel, key=weight_rel.get),
    }
    _flag(res, "training loss curve", res.training["loss_max_rel"], "train_loss_rel")
    _flag(res, "weights after training", res.training["weight_max_rel"], "train_weight_rel")

    # speed
    res.speed = {name: _speed(name, mf, cfg, x, y, repeats, cold_start, path) for name in backends}
    fa, fb = res.speed[a_name]["forward_s"], res.speed[b_name]["forward_s"]
    sa, sb = res.speed[a_name]["train_step_s"], res.speed[b_name]["train_step_s"]
    res.speed["ratio"] = {"forward": fa / fb, "train_step": sa / sb, "of": f"{a_name}/{b_name}"}

    if data_dir:
        from tinytriage.training.loop import evaluate_arrays

        xs, ys, _ = sample_batch(mf, data_dir, 10**9)
        res.accuracy = {n: evaluate_arrays(e, xs, ys)[1] for n, e in ((a_name, ea), (b_name, eb))}
    return res


def _fresh(backend: str, mf: ModelFile, config: dict, float64: bool = False):
    engine = make_engine(backend, mf.arch, config)
    engine.load_state_dict(mf.tensors)
    if float64:
        engine.use_float64()
    return engine


def _flag(res: CompareResult, what: str, value: float, key: str) -> None:
    if not value <= TOLERANCES[key]:  # also catches NaN
        res.flags.append(f"{what}: {value:.2e} exceeds tolerance {TOLERANCES[key]:.0e}")


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations, thread pools
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _speed(name, mf, cfg, x, y, repeats, cold_start, path) -> dict[str, float]:
    e = _fresh(name, mf, cfg)
    fwd = _median_time(lambda: e.logits(x), repeats)
    step = _median_time(lambda: e.train_step(x, y, 1e-3), repeats)
    d = {
        "forward_s": fwd,
        "train_step_s": step,
        "forward_images_per_s": len(x) / fwd,
        "train_images_per_s": len(x) / step,
    }
    if cold_start:
        d["cold_start_s"] = cold_start_seconds(name, path)
    return d


def cold_start_seconds(backend: str, model_path: Path) -> float:
    """Wall time of a fresh process: import the engine, load the model, one forward pass."""
    code = (
        "import numpy as np;from tinytriage.models.file import read_model;from tinytriage.engines import load_engine;"
        f"mf=read_model({str(model_path)!r});e=load_engine({backend!r},mf);"
        "s=mf.preprocess['input_size'];e.logits(np.zeros((1,3,s,s),np.float32))"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TinyTriageError(f"cold start of {backend} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0
