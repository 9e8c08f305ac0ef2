"""The command line: parse arguments, call one library function, print its result.

Nothing here computes anything. Heavy modules (NumPy layers, PyTorch, Pillow) are
imported inside the commands that need them, so `tinytriage --help` stays instant and
torch is only ever imported when a torch backend is chosen. Exit codes, one-line errors,
Ctrl-C and a reader that left are ``tinytriage.cli.process``'s.

No ``from __future__ import annotations`` here: Typer reads every command's annotations
at each start, and evaluating them from strings costs a few ms of the 0.25 s a one-photo
``predict`` may take.
"""

import os
import sys
from pathlib import Path

import typer

from tinytriage import __version__
from tinytriage.cli.process import ReaderLeft, ends_cleanly, exit_quickly, show_tracebacks
from tinytriage.errors import TinyTriageError

app = typer.Typer(
    name="tinytriage",
    help="Route support-ticket photos to the right queue with a from-scratch NumPy CNN.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        try:  # a broken pipe ends here, not in click, which makes it exit code 1
            print(f"tinytriage {__version__}", flush=True)
        except BrokenPipeError:
            raise ReaderLeft from None
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool | None = typer.Option(
        None,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    show_tracebacks(debug or bool(os.environ.get("TINYTRIAGE_DEBUG")))


@app.command()
def explain(
    photo: Path | None = typer.Argument(None, help="Photo to explain."),
    demo: bool = typer.Option(False, "--demo", help="The worked example on a 4x4 patch, step by step."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Model file; default: the bundled model."),
    backend: str = typer.Option("numpy", "--backend", "-b", help="Engine: numpy (from scratch) or torch."),
    arch: str | None = typer.Option(
        None, "--arch", help="efficientnet_lite0, cnn or vit: picks the bundled model. Default: efficientnet_lite0."
    ),
    device: str = typer.Option("cpu", "--device", help="torch backend only: cpu or cuda."),
    layer: str | None = typer.Option(
        None,
        "--layer",
        help="Layer to show: relu1 (default), conv2, pool2...; EfficientNet: act1 (default), blocks.1.0, act2...",
    ),
    channel: int | None = typer.Option(None, "--channel", min=0, help="Only this channel (its cell by hand)."),
    at: str | None = typer.Option(None, "--at", metavar="ROW,COL", help="Cell to compute by hand."),
    class_name: str | None = typer.Option(None, "--class", help="Grad-CAM for this class; default: the predicted one."),
    save: Path | None = typer.Option(None, "--save", help="Write the PNGs into this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print every number as JSON."),
) -> None:
    """Show how the network reaches its decision, from the first kernel to the route.

    For a PHOTO: the layer table (shapes, parameters, receptive fields), the feature maps of
    --layer, one cell of that layer's conv block computed by hand (default: its strongest
    activation) and checked against the engine (EfficientNet: one cell of the depthwise and
    one of the pointwise convolution of that layer's block), Grad-CAM (attention rollout for a
    ViT) mapped onto the photo, and the routing decision. --at ROW,COL is a cell of the
    conv's output (EfficientNet: of the depthwise conv's).
    """
    _blas_threads_off()
    if demo:
        from tinytriage.cli.render import print_demo
        from tinytriage.explain.demo import run_demo

        result = run_demo()
        print_demo(result, as_json=as_json)
        return
    if photo is None:
        raise typer.BadParameter("give a PHOTO, or --demo for the worked example")
    cell = None
    if at is not None:
        try:
            row, col = (int(v) for v in at.split(","))
        except ValueError:
            raise typer.BadParameter(f"--at wants ROW,COL (two integers), got {at!r}") from None
        cell = (row, col)
    from tinytriage.cli.render import print_explain
    from tinytriage.explain.photo import explain_photo

    backend, arch = _engine(backend, arch)
    result = explain_photo(
        photo, model=model, backend=backend, arch=arch, device=device, layer=layer, channel=channel, at=cell,
        class_name=class_name, save_dir=save,
    )  # fmt: skip
    print_explain(result, as_json=as_json)


BackendOpt = typer.Option(
    "numpy", "--backend", "-b", help="Engine: numpy (from scratch) or torch; vit = --arch vit --backend numpy."
)
DeviceOpt = typer.Option("cpu", "--device", help="torch backend only: cpu or cuda.")
ModelOpt = typer.Option(None, "--model", "-m", help="Model file (.safetensors); default: the bundled model of --arch.")
SecondLookOpt = typer.Option(
    True, "--second-look/--no-second-look",
    help="Look again, closer, at the devices the model is unsure about (when the model file says how).",
)  # fmt: skip
ArchOpt = typer.Option(
    None,
    "--arch",
    help="Model: efficientnet_lite0, cnn or vit; picks the bundled model (a model file knows its own). "
    "Default: efficientnet_lite0.",
)
RoutesOpt = typer.Option(
    None, "--routes", help='TOML file of class = "queue" lines (a [routes] table); default: the model\'s routes.'
)


def _blas_threads_off() -> None:
    """OpenBLAS without threads of its own, unless the environment sets
    ``OPENBLAS_NUM_THREADS``; only before NumPy loads (OpenBLAS reads it once, at load).
    The NumPy engine multiplies on its own threads (``tinytriage.nn.fast.parallel``), with BLAS
    on one thread inside each, so OpenBLAS's workers only wait; on the 2-core machine their
    waiting took CPU from the rest (a one-photo ``predict``: 292 ms against 249 ms, median
    of 20 runs each, interleaved; README "Speed")."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _engine(backend: str, arch: str | None) -> tuple[str, str | None]:
    """--backend and --arch -> (engine, arch), expanding the vit shorthand; a clash is a usage error."""
    from tinytriage.engines import resolve_backend

    try:
        return resolve_backend(backend, arch)
    except TinyTriageError as err:
        raise typer.BadParameter(str(err)) from None


@app.command()
def predict(
    paths: list[str] = typer.Argument(..., help="Photos, folders, globs, or - to read paths from stdin."),
    model: Path | None = ModelOpt,
    backend: str = BackendOpt,
    arch: str | None = ArchOpt,
    device: str = DeviceOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per photo per line on stdout."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into subfolders."),
    null: bool = typer.Option(False, "-0", "--null", help="Paths on stdin are NUL-separated (find -print0)."),
    threshold: float | None = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Review below this confidence (default: the model's)."
    ),
    routes: Path | None = RoutesOpt,
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    workers: int | None = typer.Option(
        None,
        "--workers",
        "-j",
        min=1,
        help="Worker processes, a batch each (Linux, more than one batch of photos), else decoding threads. "
        "Default: one per core.",
    ),  # fmt: skip
    second_look: bool = SecondLookOpt,
) -> None:
    """Route each photo to a queue: class, confidence, top 3 and route."""
    exit_quickly()  # it writes nothing but stdout and stderr (process.entry)
    _blas_threads_off()
    from tinytriage.inference.predict import Predictor, expand_inputs, load_routes

    backend, arch = _engine(backend, arch)
    predictor = Predictor.load(
        model, backend=backend, arch=arch, device=device, threshold=threshold,
        routes=load_routes(routes) if routes else None, second_look=second_look,
    )  # fmt: skip
    results = predictor.predict_paths(expand_inputs(paths, recursive=recursive, null=null), batch_size, workers)
    if as_json:  # lines for scripts: rich is never imported
        from tinytriage.cli.lines import print_prediction_lines

        _ok, failed = print_prediction_lines(results)
    else:
        from tinytriage.cli.render import print_predictions

        _ok, failed = print_predictions(results, as_json=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def train(
    data_dir: Path = typer.Argument(..., help="Folder with one subfolder of photos per class."),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Run folder (model, checkpoint, metrics, curves). Default: runs/train, or runs/train2, ... "
        "when that holds a run already.",
    ),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="Write into an --out that holds a run already."),
    routes: Path | None = typer.Option(
        None,
        "--routes",
        help='TOML file of class = "queue" lines, stored in the model. Default: the ticket classes\' queues, '
        "any other class the queue of its own name.",
    ),
    backend: str = BackendOpt,
    device: str = DeviceOpt,
    arch: str | None = typer.Option(
        None,
        "--arch",
        help="Architecture: efficientnet_lite0 (fine-tuned from its ImageNet weights), cnn (the textbook CNN, "
        "from random weights) or vit. Default: efficientnet_lite0, or cnn for small photos (train says which).",
    ),
    pretrained: Path | None = typer.Option(
        None,
        "--pretrained",
        help="Fine-tune from this model file's frozen features (a new head for your classes). "
        "Default: the architecture's bundled ImageNet weights, where it has some.",
    ),
    from_scratch: bool = typer.Option(
        False,
        "--from-scratch",
        help="Train every weight from random ones (the epoch loop), even where pretrained weights exist.",
    ),
    epochs: int = typer.Option(12, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=2),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Peak learning rate (warm-up then cosine decay). Default: cnn 0.05, vit and efficientnet_lite0 1e-3.",
    ),
    seed: int = typer.Option(0, "--seed"),
    input_size: int | None = typer.Option(
        None,
        "--input-size",
        min=16,
        help="Photos are letterboxed to this square size. Default: cnn 128, vit 96, efficientnet_lite0 224.",
    ),
    widths: str | None = typer.Option(
        None, "--widths", help="cnn: output channels per conv stage, comma-separated. Default: 16,32,64,128,256."
    ),
    depths: str | None = typer.Option(
        None,
        "--depths",
        help="cnn: conv blocks per stage, comma-separated, one per width (VGG-style). Default: 1 each.",
    ),
    pool: str | None = typer.Option(
        None,
        "--pool",
        help="cnn: the head's global pooling, avg or avgmax (each map's mean and maximum). Default: avg. "
        "With --init from an avg model, avgmax starts as that model (the maxima's weights start at zero).",
    ),
    optimizer: str | None = typer.Option(
        None,
        "--optimizer",
        help="sgd (nesterov momentum) or adamw. Default: cnn sgd, vit and efficientnet_lite0 adamw.",
    ),
    weight_decay: float | None = typer.Option(
        None, "--weight-decay", help="Default: cnn 5e-4, vit 0.05, efficientnet_lite0 0.01."
    ),
    val_fraction: float = typer.Option(0.15, "--val-fraction", min=0.0, max=0.9),
    val_dir: Path | None = typer.Option(
        None,
        "--val-dir",
        help="Validate (and calibrate) on this folder, same classes, instead of holding out --val-fraction; "
        "every photo of DATA_DIR then trains.",
    ),
    augment: bool | None = typer.Option(
        None,
        "--augment/--no-augment",
        help="Random crops, flips, rotations and colour changes while training. Default: yes, except for small photos.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's checkpoint."),
    init: Path | None = typer.Option(
        None,
        "--init",
        help="Start from this model file's weights (fine-tuning): same architecture and classes, "
        "new optimizer and learning-rate schedule. A CNN may change --input-size or --pool.",
    ),
    damage_weight: float = typer.Option(
        0.0,
        "--damage-weight",
        min=0.0,
        help="cnn, numpy engine: also learn where each screen_damage photo's damage box is (its NAME.json "
        "sidecar), a training-only task weighted by this much (e.g. 1); 0 turns it off.",
    ),
    conv_stem: str | None = typer.Option(
        None,
        "--conv-stem",
        help="vit: early convolutions instead of patches (Xiao et al. 2021): output channels of each 3x3 "
        "stride-2 convolution, comma-separated, e.g. 24,48,96,96; the patch size becomes 2 per convolution.",
    ),
    teacher: str | None = typer.Option(
        None,
        "--teacher",
        help="vit: distil from this model file (or a bundled one by architecture, e.g. cnn): a distillation "
        "token learns the teacher's class for each photo beside the class token's true labels (DeiT).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model on a folder of photos, one subfolder per class.

    By default EfficientNet-Lite0's ImageNet features, frozen, under a new head for your
    classes: seconds, and good from 30 photos per class; for small photos (a long side of
    64 px or less, e.g. scans of digits) the CNN from scratch at 32 or 64 px instead, as
    train says. --from-scratch (or --arch cnn) runs the full training loop; under torchrun
    (with --backend torch), data-parallel."""
    from tinytriage.cli.render import TrainProgress, print_train_result
    from tinytriage.engines.distributed import is_main
    from tinytriage.inference.inputs import load_routes
    from tinytriage.training.loop import TrainConfig
    from tinytriage.training.loop import train as run_training
    from tinytriage.training.run import DEFAULT_ARCH, model_config_from_options

    backend, arch = _engine(backend, arch)
    model_config = model_config_from_options(
        arch or DEFAULT_ARCH, widths=widths, depths=depths, pool=pool, conv_stem=conv_stem
    )
    cfg = TrainConfig(
        data_dir=str(data_dir), out=None if out is None else str(out), exist_ok=exist_ok,
        routes=None if routes is None else load_routes(routes), arch=arch, backend=backend,
        device=device, epochs=epochs,
        batch_size=batch_size, lr=lr, seed=seed, input_size=input_size, optimizer=optimizer,
        weight_decay=weight_decay, val_fraction=val_fraction, val_dir=None if val_dir is None else str(val_dir),
        augment=augment, resume=resume,
        init=None if init is None else str(init), model_config=model_config, damage_weight=damage_weight,
        pretrained=None if from_scratch else ("auto" if pretrained is None else str(pretrained)),
        teacher=teacher,
    )  # fmt: skip
    main = is_main()  # under torchrun, rank 0 alone prints
    with TrainProgress(quiet=quiet or not main) as progress:
        result = run_training(cfg, progress)
    if main:
        print_train_result(result, as_json=as_json)
    if result.interrupted:
        raise typer.Exit(130)


@app.command()
def evaluate(
    data_dir: Path = typer.Argument(..., help="Labelled folder: one subfolder per class."),
    model: Path | None = ModelOpt,
    backend: str = BackendOpt,
    arch: str | None = ArchOpt,
    device: str = DeviceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print all metrics as one JSON object."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    explain: bool = typer.Option(
        False, "--explain", help="Also the pointing game: is the heatmap's peak inside each screen_damage box?"
    ),
    second_look: bool = SecondLookOpt,
    routes: Path | None = RoutesOpt,
) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on a labelled folder."""
    _blas_threads_off()
    from tinytriage.cli.render import photo_progress, print_eval
    from tinytriage.inference.evaluate import evaluate as run_evaluation
    from tinytriage.inference.predict import Predictor, load_routes

    backend, arch = _engine(backend, arch)
    predictor = Predictor.load(
        model, backend=backend, arch=arch, device=device, second_look=second_look,
        routes=load_routes(routes) if routes else None,
    )  # fmt: skip
    with photo_progress("evaluating") as progress:
        result = run_evaluation(str(data_dir), predictor, batch_size, progress=progress)
    pointing = None
    if explain:
        from tinytriage.explain.pointing import pointing_game

        pointing = pointing_game(str(data_dir), predictor, batch_size=min(batch_size, 32))
    print_eval(result, as_json=as_json, pointing=pointing)
    if result.failures:  # the rest were evaluated; as predict, a photo that failed makes it 1
        raise typer.Exit(1)


@app.command()
def calibrate(
    data_dir: Path = typer.Argument(..., help="Labelled photos the model was not trained on: one subfolder per class."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the calibrated model file."),
    model: Path | None = ModelOpt,
    target_precision: float = typer.Option(
        0.99, "--target-precision", min=0.0, max=1.0, help="Auto-routed photos must be this often right."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the fitted values as one JSON object."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    workers: int = typer.Option(2, "--workers", min=1, help="Decoding threads."),
) -> None:
    """Fit a CNN's temperature, second look and review threshold on labelled photos; write a new model file."""
    from tinytriage.cli.render import photo_progress, print_calibration
    from tinytriage.inference.tuning import calibrate_folder
    from tinytriage.models.file import save_model

    with photo_progress("calibrating") as progress:
        result = calibrate_folder(
            model, str(data_dir), target_precision=target_precision, batch_size=batch_size, workers=workers,
            progress=progress,
        )  # fmt: skip
    save_model(result.model_file, out)
    print_calibration(result, out, as_json=as_json)
    if result.failures:  # fitted on the others; as predict, a photo that failed makes it 1
        raise typer.Exit(1)


@app.command("close-ups")
def close_ups(
    data_dir: Path = typer.Argument(..., help="Labelled photos: one subfolder per class."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write OUT/<class>/closeup_<name>.jpg into."),
    model: Path | None = ModelOpt,
    link_originals: bool = typer.Option(
        False, "--link-originals", help="Also link every photo of DATA_DIR into OUT (a training folder by itself)."
    ),
    max_side: int = typer.Option(320, "--max-side", min=32, help="Longest side of a close-up, pixels."),
    workers: int = typer.Option(2, "--workers", "-j", min=1, help="Decoding threads."),
) -> None:
    """Write the close-ups a second look would see of every device photo (to fine-tune on)."""
    from tinytriage.cli.render import error_line, photo_progress
    from tinytriage.inference.tuning import write_close_ups

    with photo_progress("close-ups") as progress:
        r = write_close_ups(
            model, str(data_dir), str(out), link_originals=link_originals, max_side=max_side, workers=workers,
            progress=progress,
        )  # fmt: skip
    for path, why in r.skipped:
        error_line(why if path in why else f"{path}: {why}")
    print(f"wrote {r.written} close-ups, linked {r.linked} photos, into {out} in {r.seconds:.1f} s", file=sys.stderr)
    if r.skipped:
        raise typer.Exit(1)


@app.command()
def compare(
    backends: str = typer.Option("numpy,torch", "--backends", help="Two engines, comma-separated."),
    model: Path | None = ModelOpt,
    arch: str | None = ArchOpt,
    data: Path | None = typer.Option(None, "--data", help="Labelled folder: also report each engine's accuracy."),
    batch: int = typer.Option(16, "--batch", min=2, help="Photos per batch for the checks and timings."),
    steps: int = typer.Option(5, "--steps", min=1, help="Optimizer steps in the training check."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed repeats (the median is reported)."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as one JSON object."),
) -> None:
    """Run one model file through two engines: outputs, gradients, training and speed side by side."""
    from tinytriage.cli.render import print_compare
    from tinytriage.explain.compare import compare as run_compare

    names = [b.strip() for b in backends.split(",") if b.strip()]
    arch = _engine("numpy", arch)[1]  # checks the name
    result = run_compare(
        names, str(model) if model else None, str(data) if data else None,
        batch=batch, steps=steps, repeats=repeats, arch=arch,
    )  # fmt: skip
    print_compare(result, as_json=as_json)
    if not result.ok:
        raise typer.Exit(1)


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{option} takes whole numbers separated by commas, got {text!r}") from None


@app.command()
def lesson(
    data_dir: Path | None = typer.Argument(
        None, help="Folder caching the generated photo sets (default: ~/.cache/tinytriage/lesson)."
    ),
    sizes: str = typer.Option(
        "25,100,400,1600", "--sizes", help="Training photos per class: one run per size and model."
    ),
    steps: int = typer.Option(500, "--steps", min=1, help="Budget per run: optimizer steps (whole epochs, rounded)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Budget per run: epochs, instead of --steps."),
    test_per_class: int = typer.Option(100, "--test-per-class", min=1, help="Test photos per class (another seed)."),
    backend: str = typer.Option("numpy", "--backend", "-b", help="Engine for every run: numpy or torch."),
    device: str = DeviceOpt,
    input_size: int = typer.Option(96, "--input-size", min=16, help="Both models see this square size."),
    batch_size: int = typer.Option(64, "--batch-size", min=2),
    photo_size: str = typer.Option("192,384", "--photo-size", help="Long side of generated photos: MIN,MAX pixels."),
    seed: int = typer.Option(0, "--seed", min=0, help="Training photos and weights (the test set: seed + 10000)."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Processes generating photos."),
    shifts: str | None = typer.Option(
        None, "--shifts", help="Translation test shifts, pixels (default: CNN stride, ViT patch, their lcm)."
    ),
    translation_only: bool = typer.Option(
        False, "--translation-only", help="Only the translation test, on --models (default: the bundled ones)."
    ),
    models: str | None = typer.Option(None, "--models", help="With --translation-only: CNN_FILE,VIT_FILE."),
    variants: str = typer.Option(
        "cnn,vit,vit_conv,vit_distilled",
        "--variants",
        help="Models to train: cnn, vit (patches), vit_conv (early convolutions), vit_distilled "
        "(a distillation token taught by the cnn trained on the same photos).",
    ),
    save: Path | None = typer.Option(
        None,
        "--save",
        help="Folder for lesson.json, accuracy_vs_size.png and the trained models. The same lesson run again "
        "with the same --save continues where it stopped.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print everything as one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress."),
) -> None:
    """The inductive-bias lesson: CNN vs ViT test accuracy as the training set grows, same
    budget for all, with the two ways to give a ViT a CNN's biases back (early convolutions,
    distillation from the CNN); then the translation test (a CNN's maps shift with the photo,
    a ViT's don't)."""
    from tinytriage.cli.render import LessonProgress, print_lesson, print_translation
    from tinytriage.explain.lesson import LessonConfig, default_data_dir, run_lesson, run_translation

    engine, arch = _engine(backend, None)
    if arch is not None:
        raise typer.BadParameter("the lesson trains both models; --backend picks the engine: numpy or torch")
    lo_hi = _ints(photo_size, "--photo-size")
    if len(lo_hi) != 2:
        raise typer.BadParameter(f"--photo-size takes MIN,MAX, got {photo_size!r}")
    cfg = LessonConfig(
        data_dir=str(data_dir or default_data_dir()), sizes=_ints(sizes, "--sizes"), test_per_class=test_per_class,
        steps=steps, epochs=epochs, batch_size=batch_size, backend=engine, device=device, input_size=input_size,
        seed=seed, photo_size=(min(lo_hi), max(lo_hi)), workers=workers, save=str(save) if save else None,
        shifts=_ints(shifts, "--shifts") if shifts else None,
        models=tuple(v.strip() for v in variants.split(",") if v.strip()),
    )  # fmt: skip
    with LessonProgress(quiet=quiet or as_json) as progress:
        if translation_only:
            files = [m.strip() or None for m in models.split(",")] if models else [None, None]
            if len(files) != 2:
                raise typer.BadParameter("--models takes CNN_FILE,VIT_FILE")
            result = run_translation(cfg, files, progress)
        else:
            result = run_lesson(cfg, progress)
    (print_translation if translation_only else print_lesson)(result, as_json=as_json)


@app.command()
def samples(
    out_dir: Path = typer.Argument(..., help="Folder to write OUT_DIR/<class>/<class>_00000.jpg into."),
    per_class: int = typer.Option(100, "--per-class", "-n", min=1, help="Photos per class."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same bytes (photo i depends on seed, class, i)."),
    other: bool = typer.Option(True, "--other/--no-other", help="Include the open-set class 'other'."),
    min_size: int = typer.Option(480, "--min-size", min=16, help="Smallest long side of a photo, pixels."),
    max_size: int = typer.Option(1600, "--max-size", min=16, help="Largest long side of a photo, pixels."),
    workers: int | None = typer.Option(
        None, "--workers", "-j", min=1, help="Processes (the output does not depend on it). Default: one per core."
    ),
    twins: float = typer.Option(
        0.0,
        "--twins",
        min=0.0,
        max=1.0,
        help="Share of intact_device photos that are twins: screen_damage photo i with its screen intact.",
    ),
) -> None:
    """Generate synthetic ticket photos: one folder per class, damage boxes in JSON sidecars."""
    from tinytriage.cli.render import files_progress
    from tinytriage.data.synth import CLASSES, generate_dataset
    from tinytriage.nn.fast.parallel import default_num_threads

    classes = [c for c in CLASSES if other or c != "other"]
    with files_progress("generating", out_dir, total=per_class * len(classes)):
        report = generate_dataset(
            out_dir,
            per_class,
            seed,
            classes=classes,
            size_range=(min(min_size, max_size), max_size),
            workers=workers or default_num_threads(),
            twins=twins,
        )
    print(
        f"wrote {report.n_photos} photos ({len(classes)} classes x {per_class}, {report.n_bytes / 1e6:.1f} MB) "
        f"to {out_dir} in {report.seconds:.1f} s ({report.photos_per_s:.0f} photos/s)",
        file=sys.stderr,
    )


# every command: a broken pipe or Ctrl-C inside it comes back to process.main as its own exception
for _command in app.registered_commands:
    _command.callback = ends_cleanly(_command.callback)
