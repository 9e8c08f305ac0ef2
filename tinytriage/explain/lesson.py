"""The inductive-bias lesson, measured: a CNN and a ViT on the same photos and budget.

A convolution assumes two things about photos before it sees any: what matters is local
(a 3x3 kernel looks at neighbours only) and it matters wherever it is (the same kernel
slides everywhere, so a shifted photo gives a shifted feature map). A Vision Transformer
assumes neither: every patch may attend to every other, and where a patch sits is only
known through a learned position embedding (Dosovitskiy et al. 2020, section 3.1,
"Inductive bias"). Assumptions that hold save data; so the CNN should win on small
training sets and the ViT close the gap as the sets grow.

Two measurements:

* ``run_lesson``: training sets of N generated photos per class for several N, one fixed
  test set from another seed; the CNN and the ViT train with the same budget (the same
  optimizer steps of the same batch size, or with ``epochs`` the same epochs) and their
  test accuracy, parameters, multiply-adds and training time are put side by side.
* ``translation_test``: shift the model input k pixels to the right. A stack of
  convolutions (and aligned poolings) is shift-equivariant: its feature map at stride s
  shifts by exactly k/s cells wherever the receptive field sees no border, so

      error = ||F(shift_k x) - shift_{k/s} F(x)|| / ||shift_{k/s} F(x)||   (valid cells)

  is zero up to float rounding. The ViT's patch embedding is a stride-P convolution,
  equivariant for k a multiple of P, but adding the position embedding and letting every
  token attend to every other breaks it; for k not a multiple of P no whole-token shift
  can match at all. The error is measured the same way on its token grid.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tinytriage import __version__
from tinytriage.errors import DatasetError, ModelFileError, TinyTriageError
from tinytriage.models import get_arch
from tinytriage.training.events import Step

ARCHS = ("cnn", "vit")  # the translation test compares these two (the table in tinytriage.models has them all)


@dataclass(frozen=True)
class LessonModel:
    """One model the lesson trains at every size: an architecture, its config, and whom it learns from."""

    arch: str  # a row of tinytriage.models.ARCHS
    label: str  # its name in the table and the plot
    config: dict[str, Any]  # overrides of the arch's config (LessonConfig.cnn_config / vit_config go under them)
    teacher: str | None = None  # the lesson model whose run on the same photos it distils (DeiT)


# The lesson's models, in training order (a teacher before its student). The two ways to give
# a ViT a CNN's inductive biases back: early convolutions build locality and weight sharing
# into the stem (Xiao et al. 2021; four 3x3 stride-2 convolutions, stride 16, so a 96-pixel
# photo is 6 x 6 tokens instead of the plain ViT's 8 x 8 patches of 12), and distillation
# teaches them through the labels of a CNN trained on the same photos (Touvron et al. 2021).
MODELS: dict[str, LessonModel] = {
    "cnn": LessonModel("cnn", "CNN", {}),
    "vit": LessonModel("vit", "ViT", {}),
    "vit_conv": LessonModel("vit", "ViT + early convs", {"conv_stem": [24, 48, 96, 96], "patch_size": 16}),
    "vit_distilled": LessonModel("vit", "ViT distilled", {}, teacher="cnn"),
}


@dataclass
class LessonConfig:
    """One lesson run (the CLI's options fill it; stored in the JSON report)."""

    data_dir: str  # where the generated photo sets are cached (one folder per seed and size)
    sizes: tuple[int, ...] = (25, 100, 400, 1600)  # training photos per class, one run per size and model
    test_per_class: int = 100  # the fixed test set: photos per class, from a different seed
    steps: int = 500  # the budget: optimizer steps per run (whole epochs, rounded), unless epochs
    epochs: int | None = None  # instead: the same number of epochs for every run
    batch_size: int = 64
    backend: str = "numpy"  # engine for every run: numpy or torch
    device: str = "cpu"  # torch engine only
    input_size: int = 96  # both models see input_size x input_size photos
    seed: int = 0  # training photos and weights; the test set uses TEST_SEED_OFFSET + seed
    photo_size: tuple[int, int] = (192, 384)  # long side of generated photos, pixels (min, max)
    workers: int = 1  # processes generating photos (the photos do not depend on it)
    # overrides of CNNConfig: the lesson's CNN is the four-stage one (98k parameters, a
    # quarter of the ViT's), the model its recorded run in the README used
    cnn_config: dict[str, Any] = field(default_factory=lambda: {"widths": [16, 32, 64, 128]})
    vit_config: dict[str, Any] = field(default_factory=dict)  # overrides of ViTConfig
    models: tuple[str, ...] = tuple(MODELS)  # which of MODELS to train, in MODELS' order
    # folder for lesson.json, accuracy_vs_size.png and the trained runs; a lesson run again with
    # the same --save and settings continues where it stopped (runs.json lists the finished runs)
    save: str | None = None
    shifts: tuple[int, ...] | None = None  # translation test shifts in pixels (None: from the models)
    translation_photos: int = 2  # test photos per class for the translation test


TEST_SEED_OFFSET = 10_000  # test photos come from seed + this: never the training photos
WARMUP_FRACTION = 0.05  # both models warm up over the first 5% of their steps


@dataclass
class LessonRun:
    """One model trained on one training-set size."""

    model: str  # a key of MODELS
    arch: str
    per_class: int  # training photos per class generated (validation is split off these)
    n_train: int  # photos the optimizer saw (after the validation split)
    epochs: int
    steps: int  # optimizer steps taken
    params: int  # trainable parameters
    macs: int  # multiply-adds of one forward pass for one photo
    train_seconds: float  # the training loop, validation and checkpoints included
    val_acc: float  # best validation accuracy (the epoch whose weights were kept)
    test_acc: float  # on the fixed test set
    model_path: str


@dataclass
class ShiftRow:
    """Equivariance error of one layer for one shift."""

    arch: str
    layer: str  # e.g. "stage 4 (conv4)" or "block 1"
    stride: int  # input pixels between neighbouring cells (the CNN's jump, the ViT's patch)
    shift_px: int  # k: how far the input moved
    shift_cells: float  # k / stride
    compared_shift: int  # the whole-cell shift compared (k / stride, or the better of floor and ceil)
    exact: bool  # k is a multiple of the stride
    rel_error: float  # ||F(shift x) - shift F(x)|| / ||shift F(x)|| over the valid cells
    cells: int  # cells per map compared (rows x columns)


@dataclass
class TranslationResult:
    models: dict[str, str]  # arch -> what was measured (a model file or "untrained")
    n_photos: int
    fill: float  # value of the uncovered columns in the normalised input (0: the mean colour)
    rows: list[ShiftRow]

    def to_json(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "n_photos": self.n_photos,
            "fill": self.fill,
            "rows": [asdict(r) for r in self.rows],
        }


@dataclass
class LessonResult:
    config: LessonConfig
    budget: str  # "steps" or "epochs": what the two models share
    n_test: int
    runs: list[LessonRun]
    translation: TranslationResult | None
    plot_path: str | None = None
    report_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "budget": self.budget,
            "n_test": self.n_test,
            "runs": [asdict(r) for r in self.runs],
            "translation": self.translation.to_json() if self.translation else None,
            "plot": self.plot_path,
            "report": self.report_path,
            "tinytriage_version": __version__,
        }

    def accuracy(self, model: str) -> list[float]:
        """Test accuracy of lesson model ``model`` per training-set size, smallest first."""
        by_size = {r.per_class: r.test_acc for r in self.runs if r.model == model}
        return [by_size.get(n, math.nan) for n in sorted(set(self.config.sizes))]


# -- progress: what a lesson tells whoever watches (the CLI's render.LessonProgress) ---------


@dataclass(frozen=True)
class Generate:
    """A photo set is generated (the first time its seed and photo size are asked for)."""

    folder: str
    per_class: int  # photos per class
    classes: int  # how many classes


@dataclass(frozen=True)
class Generated:
    n_photos: int
    seconds: float


@dataclass(frozen=True)
class RunStart:
    """A model starts training on one training-set size (then its training's ``Step`` events)."""

    index: int  # 1-based, of ``total`` runs
    total: int
    model: str  # a key of MODELS
    per_class: int  # training photos per class
    epochs: int
    steps: int  # optimizer steps the run will take


@dataclass(frozen=True)
class RunDone:
    run: LessonRun


@dataclass(frozen=True)
class Resumed:
    """A lesson run again with the same ``--save``: these runs finished before and are kept."""

    folder: str
    runs: int


@dataclass(frozen=True)
class TranslationStart:
    """The translation test begins."""


LessonEvent = Generate | Generated | Resumed | RunStart | Step | RunDone | TranslationStart
ProgressFn = Callable[[LessonEvent], None]


# -- the photo sets: generated once, cached by seed and photo size ------------------------


def default_data_dir() -> Path:
    """Where generated photo sets are cached unless a folder is given: the user's cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinytriage" / "lesson"


def photo_set(root: Path, seed: int, per_class: int, cfg: LessonConfig, emit: ProgressFn) -> Path:
    """``root/seed{S}-{lo}x{hi}px``: at least ``per_class`` generated photos per class.

    Photo i of a class depends only on (seed, class, i), so a set of N photos per class is
    the first N of any larger set with the same seed: one pool serves every size."""
    from tinytriage.data.synth import CLASSES, generate_dataset

    lo, hi = cfg.photo_size
    folder = root / f"seed{seed}-{lo}x{hi}px"
    manifest = folder / "lesson.json"
    want = {"seed": seed, "photo_size": [lo, hi], "classes": list(CLASSES)}
    try:
        have = json.loads(manifest.read_text())
    except (OSError, ValueError):
        have = {}
    if {k: have.get(k) for k in want} == want and have.get("per_class", 0) >= per_class:
        return folder
    emit(Generate(folder=str(folder), per_class=per_class, classes=len(CLASSES)))
    report = generate_dataset(folder, per_class, seed, classes=CLASSES, size_range=(lo, hi), workers=cfg.workers)
    manifest.write_text(json.dumps({**want, "per_class": per_class, "tinytriage_version": __version__}))
    emit(Generated(n_photos=report.n_photos, seconds=report.seconds))
    return folder


def first_n(pool: Path, per_class: int, out: Path) -> Path:
    """``out/<class>/``: hard links to the first ``per_class`` photos of each class of ``pool``
    (copies where the file system has no hard links)."""
    if out.exists():
        shutil.rmtree(out)
    for class_dir in sorted(p for p in pool.iterdir() if p.is_dir()):
        photos = sorted(class_dir.glob("*.jpg"))[:per_class]
        if len(photos) < per_class:
            raise DatasetError(f"{class_dir}: {len(photos)} photos, expected {per_class}; delete {pool} to regenerate")
        (out / class_dir.name).mkdir(parents=True)
        for p in photos:
            try:
                os.link(p, out / class_dir.name / p.name)
            except OSError:
                shutil.copy2(p, out / class_dir.name / p.name)
    return out


def load_test_arrays(folder: Path, input_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The test photos as model inputs, preprocessed exactly as ``train`` and ``predict`` do."""
    from tinytriage.data.datasets import cache_resized, scan_folder
    from tinytriage.data.preprocess import Preprocess, normalize
    from tinytriage.training.loop import DEFAULT_MEAN, DEFAULT_STD

    ds = scan_folder(folder)
    pcfg = Preprocess(input_size=input_size, mean=DEFAULT_MEAN, std=DEFAULT_STD, resize_mode="letterbox")
    cache = cache_resized(ds, pcfg, size=input_size, workers=2)
    return normalize(cache.images, pcfg), cache.labels, list(ds.classes)


# -- the sweep ------------------------------------------------------------------------


def _n_train(data_dir: Path, seed: int, val_fraction: float) -> int:
    """How many photos ``train`` will keep for training (the same split it makes)."""
    from tinytriage.data.datasets import scan_folder, stratified_split

    return len(stratified_split(scan_folder(data_dir, check=False), val_fraction=val_fraction, seed=seed)[0])


def run_lesson(cfg: LessonConfig, progress: ProgressFn | None = None) -> LessonResult:
    """Train every lesson model on every size with the same budget; test all on one test set;
    then the translation test on the CNN and the plain ViT trained on the largest set.

    Each model keeps its own optimizer and learning rate (the architecture table's ``train_defaults``: SGD for
    the CNN, AdamW for the ViT); all warm up over the first 5% of their steps and use the
    same batch size, augmentation and validation split. With ``save`` the finished runs are
    listed in ``runs.json`` as they end, and the same lesson run again skips them."""
    from tinytriage.engines import load_engine
    from tinytriage.models.file import build_numpy_model, read_model
    from tinytriage.training.loop import TrainConfig, evaluate_arrays, train

    emit = progress or (lambda event: None)
    sizes = sorted(set(cfg.sizes))
    if not sizes or sizes[0] < 2:
        raise TinyTriageError("--sizes: give training-set sizes of at least 2 photos per class, e.g. 25,100,400")
    if cfg.epochs is None and cfg.steps < 1:
        raise TinyTriageError("--steps must be at least 1")
    names = _check_models(cfg.models)
    root = Path(cfg.data_dir)
    pool = photo_set(root / "train", cfg.seed, sizes[-1], cfg, emit)
    test_pool = photo_set(root / "test", TEST_SEED_OFFSET + cfg.seed, cfg.test_per_class, cfg, emit)

    work = Path(cfg.save) if cfg.save else Path(tempfile.mkdtemp(prefix="tinytriage-lesson-"))
    done = _finished_runs(work, cfg) if cfg.save else {}
    if done:
        emit(Resumed(folder=str(work), runs=len(done)))
    runs: list[LessonRun] = []
    last_models: dict[str, Any] = {}
    try:
        test_dir = first_n(test_pool, cfg.test_per_class, work / "data" / "test")
        X_test, y_test, classes = load_test_arrays(test_dir, cfg.input_size)
        total = len(sizes) * len(names)
        for i_size, n in enumerate(sizes):
            data = first_n(pool, n, work / "data" / f"n{n}")
            n_train = _n_train(data, cfg.seed, TrainConfig.val_fraction)
            steps_per_epoch = max(1, n_train // cfg.batch_size)  # as train() counts them
            epochs = cfg.epochs if cfg.epochs is not None else max(1, round(cfg.steps / steps_per_epoch))
            for i_model, name in enumerate(names):
                spec = MODELS[name]
                out = work / "runs" / f"{name}-n{n}"
                run = done.get((name, n))
                if run is None:
                    emit(RunStart(index=i_size * len(names) + i_model + 1, total=total, model=name, per_class=n,
                                  epochs=epochs, steps=epochs * steps_per_epoch))  # fmt: skip
                    base = cfg.cnn_config if spec.arch == "cnn" else cfg.vit_config
                    teacher = (
                        None
                        if spec.teacher is None
                        else str(work / "runs" / f"{spec.teacher}-n{n}" / "model.safetensors")
                    )
                    tcfg = TrainConfig(
                        data_dir=str(data), out=str(out), exist_ok=True, arch=spec.arch, backend=cfg.backend,
                        device=cfg.device, epochs=epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                        input_size=cfg.input_size, warmup_epochs=WARMUP_FRACTION * epochs,
                        model_config={**base, **spec.config}, teacher=teacher,
                    )  # fmt: skip
                    result = train(tcfg, _quiet(emit))
                    if result.interrupted:
                        raise KeyboardInterrupt
                    mf = read_model(result.model_path)
                    if mf.classes != classes:
                        raise DatasetError(f"test classes {classes} differ from training classes {mf.classes}")
                    engine = load_engine(cfg.backend, mf, device=cfg.device)
                    _, test_acc, _ = evaluate_arrays(engine, X_test, y_test)
                    model = build_numpy_model(spec.arch, mf.config)
                    run = LessonRun(
                        model=name, arch=spec.arch, per_class=n, n_train=n_train, epochs=epochs,
                        steps=epochs * steps_per_epoch, params=model.num_parameters(),
                        macs=count_macs(spec.arch, mf.config), train_seconds=result.train_seconds,
                        val_acc=result.best_val_acc, test_acc=test_acc, model_path=str(result.model_path),
                    )  # fmt: skip
                    if cfg.save:
                        done[(name, n)] = run
                        _write_finished_runs(work, cfg, done)
                    emit(RunDone(run=run))
                if n == sizes[-1] and name in ARCHS:
                    last_models[name] = run.model_path
                runs.append(run)

        translation = None
        if set(ARCHS) <= set(last_models):
            emit(TranslationStart())
            x = _per_class_photos(X_test, y_test, cfg.translation_photos)
            loaded = {}
            for arch in ARCHS:
                mf = read_model(last_models[arch])
                loaded[arch] = build_numpy_model(arch, mf.config)
                loaded[arch].load_state_dict(mf.tensors)
            translation = translation_test(
                loaded["cnn"], loaded["vit"], x, cfg.shifts,
                labels={a: last_models[a] if cfg.save else f"trained on {sizes[-1]}/class" for a in ARCHS},
            )  # fmt: skip
    finally:
        if not cfg.save:
            shutil.rmtree(work, ignore_errors=True)
    if not cfg.save:
        runs = [replace(r, model_path="") for r in runs]

    result = LessonResult(cfg, "epochs" if cfg.epochs is not None else "steps", len(y_test), runs, translation)
    if cfg.save:
        from tinytriage.files import atomic_write_bytes
        from tinytriage.plots import accuracy_vs_size_png

        series = {MODELS[name].label: result.accuracy(name) for name in names}
        png = accuracy_vs_size_png(sizes, series, chance=1 / len(classes))
        result.plot_path = str(atomic_write_bytes(work / "accuracy_vs_size.png", png))
        result.report_path = str(work / "lesson.json")
        atomic_write_bytes(work / "lesson.json", json.dumps(_finite(result.to_json()), indent=2).encode())
    return result


def _check_models(models: Sequence[str]) -> list[str]:
    """``--variants`` in training order, each teacher before its student."""
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise TinyTriageError(f"--variants: choose from {', '.join(MODELS)}, got {', '.join(models) or 'none'}")
    names = [m for m in MODELS if m in models]
    for name in names:
        teacher = MODELS[name].teacher
        if teacher is not None and teacher not in names:
            raise TinyTriageError(f"--variants: {name} learns from {teacher}'s runs: add {teacher}")
    return names


RUNS_FILE = "runs.json"  # in a lesson's --save folder: its settings and its finished runs


def _settings(cfg: LessonConfig) -> dict[str, Any]:
    """What decides a run's result: a finished run is reused only under the same settings."""
    fixed = asdict(cfg)
    for key in ("data_dir", "save", "workers", "shifts", "translation_photos", "models"):
        fixed.pop(key)
    return json.loads(json.dumps(fixed))  # tuples as lists, as read back


def _finished_runs(work: Path, cfg: LessonConfig) -> dict[tuple[str, int], LessonRun]:
    """The runs an earlier lesson with the same settings finished in ``work`` (model file still there)."""
    try:
        ledger = json.loads((work / RUNS_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise TinyTriageError(
            f"{work / RUNS_FILE}: cannot read the finished runs ({err}); delete it to start over"
        ) from None
    if ledger.get("settings") != _settings(cfg):
        raise TinyTriageError(
            f"--save {work} holds a lesson with other settings; use another folder, or delete {work / RUNS_FILE} "
            "to start over there"
        )
    runs = [LessonRun(**r) for r in ledger.get("runs", [])]
    return {(r.model, r.per_class): r for r in runs if Path(r.model_path).exists()}


def _write_finished_runs(work: Path, cfg: LessonConfig, done: dict[tuple[str, int], LessonRun]) -> None:
    from tinytriage.files import atomic_write_bytes

    ledger = {"settings": _settings(cfg), "runs": [asdict(r) for r in done.values()]}
    atomic_write_bytes(work / RUNS_FILE, json.dumps(_finite(ledger), indent=1).encode())


def run_translation(
    cfg: LessonConfig, models: Sequence[str | None] = (None, None), progress: ProgressFn | None = None
) -> TranslationResult:
    """The translation test alone, on a CNN and a ViT model file (None: the bundled one),
    with photos from the lesson's test set (generated on first use)."""
    from tinytriage.models.file import build_numpy_model, read_model_or_bundled

    emit = progress or (lambda event: None)
    loaded = {}
    for arch, path in zip(ARCHS, models, strict=True):
        try:
            mf, where = read_model_or_bundled(path, arch)
        except ModelFileError as err:
            if path:
                raise
            raise ModelFileError(
                f"no bundled {arch} model: pass --models CNN_FILE,VIT_FILE, e.g. from a lesson's --save folder "
                "runs/cnn-n1600/model.safetensors,runs/vit-n1600/model.safetensors"
            ) from err
        model = build_numpy_model(arch, mf.config)
        model.load_state_dict(mf.tensors)
        loaded[arch] = (model, int(mf.preprocess["input_size"]), str(where))
    sizes = {size for _, size, _ in loaded.values()}
    if len(sizes) != 1:
        raise TinyTriageError(f"the two models take different input sizes ({sorted(sizes)}); train both at one size")
    pool = photo_set(Path(cfg.data_dir) / "test", TEST_SEED_OFFSET + cfg.seed, cfg.translation_photos, cfg, emit)
    with tempfile.TemporaryDirectory(prefix="tinytriage-lesson-") as tmp:
        X, y, _ = load_test_arrays(first_n(pool, cfg.translation_photos, Path(tmp) / "test"), sizes.pop())
    labels = {arch: where for arch, (_, _, where) in loaded.items()}
    return translation_test(loaded["cnn"][0], loaded["vit"][0], X, cfg.shifts, labels=labels)


def _quiet(emit: ProgressFn) -> ProgressFn:
    """Pass on only the training events a lesson shows: its steps."""
    return lambda e: emit(e) if isinstance(e, Step) else None


def _per_class_photos(X: np.ndarray, y: np.ndarray, per_class: int) -> np.ndarray:
    keep = [i for c in np.unique(y) for i in np.flatnonzero(y == c)[:per_class]]
    return X[keep]


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def count_macs(arch: str, config: dict) -> int:
    """Multiply-adds of one forward pass for one photo."""
    spec = get_arch(arch)
    return spec.count_macs(spec.from_dict(config))


# -- the translation test ------------------------------------------------------------------


def shift_right(x: np.ndarray, k: int, fill: float = 0.0) -> np.ndarray:
    """(N, C, H, W) moved ``k`` pixels (or cells) to the right; the ``k`` uncovered columns
    on the left get ``fill``, the ``k`` rightmost columns fall off."""
    out = np.full_like(x, fill)
    out[..., k:] = x[..., : x.shape[-1] - k]
    return out


def equivariance_error(shifted: np.ndarray, plain: np.ndarray, d: int, rows: slice, cols: slice) -> float:
    """||F(shift x) - shift_d F(x)|| / ||shift_d F(x)|| over ``rows`` x ``cols`` of the
    (N, C, h, w) maps; ``cols`` index the shifted map, so they must start at ``d`` or later."""
    a = shifted[..., rows, cols]  # F(shift x)
    b = shift_right(plain, d)[..., rows, cols]  # shift F(x)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def cnn_stage_maps(model, x: np.ndarray) -> list[tuple[str, int, tuple[int, int], np.ndarray]]:
    """Each stage's output (after its ReLU, before pooling) of a ``TriageCNN``, in eval mode:
    (name, jump, (lo, hi), maps). Cell j of a map sees input pixels jump*j + lo .. jump*j + hi
    (its receptive field, Araujo et al. 2019)."""
    from tinytriage.models.cnn import feature_layers

    model.eval()
    out = []
    jump, lo, hi = 1, 0, 0
    for layer, (kind, role, args) in zip(model.features, feature_layers(model.cfg), strict=True):
        x = layer(x)
        if kind == "conv":
            k, p = args["kernel_size"], args["padding"]
            lo, hi = lo - p * jump, hi + (k - 1 - p) * jump  # stride 1: the window grows by k - 1 cells
        elif kind == "maxpool":
            k, s = args["kernel_size"], args["stride"]
            hi += (k - 1) * jump  # the new cell j covers old cells s*j .. s*j + k - 1
            jump *= s
        elif kind == "relu":
            out.append((f"stage {role[4:]} (conv{role[4:]})", jump, (lo, hi), x))
    return out


def vit_token_maps(model, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The ViT's patch tokens as (N, D, gh, gw) grids, in eval mode: after the patch
    embedding, after adding the position embedding, after block 1 and after the last
    block. The same steps as ``VisionTransformer.forward_features``, one at a time."""
    model.eval()
    gh, gw = model.patch_embed.grid_size

    def grid(tokens: np.ndarray) -> np.ndarray:
        N, T, D = tokens.shape
        return tokens.transpose(0, 2, 1).reshape(N, D, gh, gw)  # (N, D, gh, gw), row-major patches

    P = model.num_prefix_tokens  # the class token (and a distilled model's distillation token) come first
    tok = model.patch_embed(x)  # (N, T, D)
    maps = [("patch embedding", grid(tok))]
    h = model._pos_embed(tok)  # (N, P + T, D): prefix tokens prepended, position embedding added
    maps.append(("+ position embedding", grid(h[:, P:])))
    depth = len(model.blocks)
    for i, block in enumerate(model.blocks):
        h = block(h)
        if i == 0 or i == depth - 1:
            maps.append((f"block {i + 1}" + (" (last)" if i == depth - 1 and depth > 1 else ""), grid(h[:, P:])))
    return maps


def default_shifts(cnn_stride: int, patch: int, width: int) -> tuple[int, ...]:
    """The CNN's total stride, the ViT's patch, and their least common multiple: one shift
    each model follows exactly, one only the other does, one both do (those narrower
    than the input)."""
    shifts = sorted(k for k in {cnn_stride, patch, math.lcm(cnn_stride, patch)} if k < width)
    return tuple(shifts) or (1,)


def translation_test(
    cnn,
    vit,
    x: np.ndarray,
    shifts: Sequence[int] | None = None,
    *,
    fill: float = 0.0,
    labels: dict[str, str] | None = None,
) -> TranslationResult:
    """Shift ``x`` (N, 3, S, S), normalised, right by each k and measure how far each layer
    of the NumPy ``cnn`` and ``vit`` is from simply shifting its map by k / stride.

    CNN: every stage, on the cells whose receptive field lies inside the photo and clear of
    the k uncovered columns. ViT: its token grid, on the patches that came from the photo
    (no border is left out for attention: every token sees every patch). When k / stride
    is not whole, the better of the two nearest whole shifts is compared."""
    N, C, H, W = x.shape
    cnn_maps = cnn_stage_maps(cnn, x)
    P = vit.patch_embed.patch_size[1]
    shifts = tuple(shifts) if shifts else default_shifts(cnn_maps[-1][1], P, W)
    if any(not 0 < k < W for k in shifts):
        raise TinyTriageError(f"--shifts must be between 1 and {W - 1} pixels (the input is {W} wide), got {shifts}")
    rows: list[ShiftRow] = []
    for k in shifts:
        xs = shift_right(x, k, fill)
        for (name, jump, field_, plain), (*_, moved) in zip(cnn_maps, cnn_stage_maps(cnn, xs), strict=True):
            rows.append(_measure("cnn", name, jump, field_, k, plain, moved, (H, W)))
        for (name, plain), (_, moved) in zip(vit_token_maps(vit, x), vit_token_maps(vit, xs), strict=True):
            # token j is patch j, pixels P*j .. P*j + P - 1: the same bookkeeping as a CNN cell
            rows.append(_measure("vit", name, P, (0, P - 1), k, plain, moved, (H, W)))
    models = labels or {"cnn": "untrained", "vit": "untrained"}
    return TranslationResult(models, N, fill, rows)


def _measure(
    arch: str,
    name: str,
    jump: int,
    field_: tuple[int, int],
    k: int,
    plain: np.ndarray,
    moved: np.ndarray,
    size: tuple[int, int],
) -> ShiftRow:
    """The error of one map for a shift of k pixels, comparing whole-cell shifts d.

    Cell j sees pixels jump*j + lo .. jump*j + hi. It is compared when that window lies
    inside the photo and, in the shifted input, clear of the k uncovered columns; and its
    partner j - d in the plain map lies inside the photo too."""
    lo, hi = field_
    H, W = size
    rows = slice(max(0, math.ceil(-lo / jump)), (H - 1 - hi) // jump + 1)
    first_plain = max(0, math.ceil(-lo / jump))  # first column clear of the left border
    first_shifted = math.ceil((k - lo) / jump)  # first column clear of the uncovered strip
    end = (W - 1 - hi) // jump + 1  # columns clear of the right border
    exact = k % jump == 0
    best = None
    for d in [k // jump] if exact else [k // jump, k // jump + 1]:
        cols = slice(max(d + first_plain, first_shifted), end)
        cells = len(range(plain.shape[-2])[rows]) * len(range(plain.shape[-1])[cols])
        if cells == 0:
            continue
        e = equivariance_error(moved, plain, d, rows, cols)
        if best is None or e < best[1]:
            best = (d, e, cells)
    d, e, cells = best if best else (k // jump, math.nan, 0)  # no cell far enough from every border
    return ShiftRow(arch, name, jump, k, k / jump, d, exact, e, cells)
