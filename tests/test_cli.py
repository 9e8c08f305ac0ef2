"""The command line as users meet it: exit codes, stdout vs stderr, no tracebacks, no torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli


def test_import_cli_never_imports_torch():
    code = "import sys, tinytriage.cli.app, tinytriage.inference.predict, tinytriage.engines.numpy_engine, tinytriage.explain.demo; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("as_json", [False, True])
def test_predict_imports_neither_torch_nor_numpy_random(tmp_path, tiny_model_path, as_json):
    """The one-photo path: torch costs ~1 s to import, numpy.random about 20 ms; with
    --json, rich (about 30 ms) is not needed either."""
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "p.png")
    extra = ", '--json'" if as_json else ""
    code = (
        f"import sys; from tinytriage.cli import main; sys.argv = ['tinytriage', 'predict', sys.argv[1], '-m', sys.argv[2]{extra}]\n"
        "try: main()\nexcept SystemExit: pass\n"
        "print('LOADED', 'torch' in sys.modules, 'numpy.random' in sys.modules, 'rich' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png"), str(tiny_model_path)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "p.png" in r.stdout, r.stderr
    assert r.stdout.strip().endswith(f"LOADED False False {not as_json}")


@pytest.mark.parametrize("user_value", [None, "2"])
def test_predict_runs_openblas_without_threads_of_its_own_unless_told(tmp_path, tiny_model_path, user_value):
    """The engine multiplies on its own threads, BLAS on one inside each: predict starts
    OpenBLAS with one thread (its idle workers cost a 2-core machine CPU time); a count
    the user set stays."""
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "p.png")
    code = (
        "import sys; from tinytriage.cli import main; sys.argv = ['tinytriage', 'predict', sys.argv[1], '-m', sys.argv[2], '--json']\n"
        "try: main()\nexcept SystemExit: pass\n"
        "from threadpoolctl import threadpool_info\n"
        "print('BLAS', [i['num_threads'] for i in threadpool_info() if i['internal_api'] == 'openblas'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if user_value:
        env["OPENBLAS_NUM_THREADS"] = user_value
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png"), str(tiny_model_path)],
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert r.returncode == 0 and "p.png" in r.stdout, r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"BLAS [{user_value or 1}]"


@pytest.mark.parametrize("command", ["predict", "--version"])
def test_predict_leaves_the_process_at_once_with_its_output_and_exit_code(tmp_path, tiny_model_path, command):
    """predict ends by os._exit once stdout and stderr are flushed (Python's own finalizing
    takes 30-50 ms): no exit handler runs, every line is out, the exit code is kept (1: a
    photo failed). Other commands end as usual: their exit handlers run."""
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 30), (200, 10, 10 * i)).save(tmp_path / f"p{i}.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    args = ["predict", str(tmp_path), "-m", str(tiny_model_path), "--json"] if command == "predict" else [command]
    code = (
        "import atexit, sys; from tinytriage.cli import entry\n"
        "atexit.register(lambda: print('EXIT HANDLER RAN', flush=True))\n"
        f"sys.argv = ['tinytriage', *{args!r}]\nentry()"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if command == "predict":
        assert r.returncode == 1, r.stderr  # bad.jpg failed, the rest carried on
        assert "EXIT HANDLER RAN" not in r.stdout
        assert [json.loads(line)["path"].rsplit("/", 1)[-1] for line in r.stdout.splitlines()] == [
            "p0.png",
            "p1.png",
            "p2.png",
        ]
        assert "bad.jpg" in r.stderr
    else:
        assert r.returncode == 0 and r.stdout.splitlines()[-1] == "EXIT HANDLER RAN", r.stdout


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("tinytriage ")
    r = run_cli("--help")
    assert r.returncode == 0 and "predict" in r.stdout and "train" in r.stdout


def test_usage_error_exit_2_no_traceback():
    r = run_cli("predict")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stdout == ""
    r = run_cli("frobnicate")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_demo_numbers_are_computed():
    r = run_cli("explain", "--demo", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    patch, kernel = np.array(d["patch"]), np.array(d["kernel"])
    # recompute the feature map by hand, independently of the library
    fmap = np.array([[(patch[i : i + 3, j : j + 3] * kernel).sum() for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(d["feature_map"], fmap, atol=1e-12)
    relu = np.maximum(fmap, 0)
    assert d["pooled"] == pytest.approx(relu.max())
    logits = np.array([1.5, -1.2]) * relu.max() + np.array([0.1, -0.3])
    np.testing.assert_allclose(d["logits"], logits)
    np.testing.assert_allclose(d["probs"], np.exp(logits) / np.exp(logits).sum())
    for c in d["cells"]:
        assert len(np.ravel(c["products"])) == 9
        assert c["sum"] == pytest.approx(np.sum(c["products"]))
    assert d["receptive_field"][-1]["receptive_field"] == 5
    assert d["param_counts"]["dense_256_on_224x224x3"] == 224 * 224 * 3 * 256 + 256
    assert d["param_counts"]["conv3x3_256_filters_on_rgb"] == 3 * 3 * 3 * 256 + 256
    assert np.array(d["pool_example"]["output"]).tolist() == [[3.2, 2.4], [2.6, 4.0]]
    # pooling barely moves when the bar shifts, the map does
    assert abs(d["shifted_pooled"] - d["pooled"]) < 0.25 * d["pooled"]
    assert not np.allclose(d["shifted_map"], d["feature_map"])
    if d["torch"] is not None:
        np.testing.assert_allclose(d["torch"]["feature_map"], d["feature_map"], atol=1e-12)
        np.testing.assert_allclose(d["torch"]["probs"], d["probs"], atol=1e-12)


def test_demo_terminal_layout():
    r = run_cli("explain", "--demo")
    assert r.returncode == 0, r.stderr
    for text in ("cell (0,0)", "ReLU", "max pooling", "softmax", "Output size", "Receptive field", "38,535,424"):
        assert text in r.stdout


def test_predict_bad_photos_carry_on(tmp_path, tiny_model_path):
    from PIL import Image

    good = tmp_path / "good photo ü.jpg"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(good)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    r = run_cli("predict", str(good), str(tmp_path / "empty.jpg"), str(tmp_path / "text.jpg"), str(tmp_path / "missing.jpg"),
                "--model", str(tiny_model_path), "--json")  # fmt: skip
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["path"] == str(good)
    for key in ("label", "confidence", "probabilities", "route", "needs_review", "backend", "model"):
        assert key in rec
    assert abs(sum(rec["probabilities"].values()) - 1) < 1e-4
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in r.stderr
    assert any("empty.jpg" in e for e in errors) and any("missing.jpg" in e for e in errors)


def test_predict_stdin_and_head_quiet(tmp_path, tiny_model_path):
    from PIL import Image

    paths = []
    for i in range(40):
        p = tmp_path / f"p{i}.png"
        Image.new("RGB", (40, 30), (i * 5, 100, 200 - i * 4)).save(p)
        paths.append(str(p))
    cmd = f"{sys.executable} -m tinytriage predict - --json --model {tiny_model_path} | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], input="\n".join(paths), capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads(r.stdout)["path"] == paths[0]


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_in_a_command_says_interrupted(tmp_path, tiny_model_path):
    """A real SIGINT to `predict -` waiting for paths on stdin: one line, exit code 130."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytriage", "predict", "-", "--json", "--model", str(tiny_model_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # started, and now idle, blocked reading stdin: its CPU time stops growing
        deadline, last = time.time() + 60, -1.0
        while time.time() < deadline and (used := _cpu_seconds(proc.pid)) != last:
            last = used
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and out == ""
    assert err == "tinytriage: interrupted\n"


@pytest.mark.parametrize("command", ["explain --demo --json", "explain --demo", "--version"])
def test_every_command_ends_quietly_when_its_reader_is_gone(command):
    """`| true` reads nothing and is gone before the command writes: a broken pipe."""
    r = subprocess.run(["bash", "-o", "pipefail", "-c", f"{sys.executable} -m tinytriage {command} | true"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_predict_table_into_a_pipe_keeps_each_photo_on_one_line(tmp_path, tiny_model_path):
    from PIL import Image

    folder = tmp_path / ("a_long_folder_name_" * 8)
    folder.mkdir()
    paths = [folder / f"photo_{i}.png" for i in range(3)]
    for i, p in enumerate(paths):
        Image.new("RGB", (40, 30), (i * 60, 100, 150)).save(p)
    r = run_cli("predict", str(folder), "--model", str(tiny_model_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(str(paths[0])) > 200 and len(lines) == 5 + len(paths)  # header (3 lines), rows, bottom rule, totals
    for p, line in zip(paths, lines[3:-2], strict=True):
        assert str(p) in line
    assert lines[-1].startswith("3 photos: ")


def test_debug_shows_traceback(tmp_path):
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(b"garbage!" * 4)
    r = run_cli("predict", "x.jpg", "--model", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "m.safetensors" in r.stderr
    r = run_cli("--debug", "predict", "x.jpg", "--model", str(bad))
    assert "Traceback" in r.stderr


# -- through Typer's runner: what a person reads, and one exit-code rule ---------------------------


def invoke(*args, **kw):
    from typer.testing import CliRunner

    from tinytriage.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], **kw)


@pytest.fixture
def photos(tmp_path):
    """Three photos in a folder with a long name, and a labelled folder of the same."""
    from PIL import Image

    folder = tmp_path / "photos_from_the_ticket_system_2026" / "week_48"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 60, 100, 150)).save(folder / f"IMG_{i:04d}.png")
    labelled = tmp_path / "labelled"
    for name in ("document", "intact_device", "screen_damage"):
        (labelled / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 30), (i * 90, 60, 150)).save(labelled / name / f"{name}_{i}.png")
    return folder, labelled


def _terminal(monkeypatch, width: int):
    """stdout and stderr as a terminal of ``width`` columns (the runner's streams, at print time)."""
    from tinytriage.cli import consoles, render

    for name in ("out", "err"):
        console = consoles.PipeConsole(
            stderr=name == "err", width=width, force_terminal=True, color_system=None, highlight=False
        )
        monkeypatch.setattr(render, name, console)
        monkeypatch.setattr(consoles, name, console)


def test_predict_table_keeps_paths_readable_at_80_columns(photos, tiny_model_path, monkeypatch):
    """Routes with a review reason, at 80 columns: every line fits, every photo's name is
    there (a long path loses its start), confidence and runner-up have 3 decimals, then totals."""
    folder, _ = photos
    _terminal(monkeypatch, 80)
    r = invoke("predict", folder, "--model", tiny_model_path, "--threshold", "0.99")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    rows = [line for line in lines if "IMG_" in line]
    assert len(rows) == 3 and all(f"IMG_{i:04d}.png" in row for i, row in enumerate(rows))
    assert all("\u2026" in row for row in rows)  # shortened from the left
    figures = re.findall(r"\d\.\d+", r.stdout)
    assert len(figures) == 6 and all(len(f) == 5 for f in figures)  # conf. and runner-up: 0.ddd both
    assert "human_review" in r.stdout
    assert lines[-1].startswith("3 photos: 3 human_review; 3 to review (")


def test_train_into_a_log_keeps_each_epoch_on_one_line(tmp_path):
    """stderr not a terminal (`2> log`): plain lines, none folded at 80 columns, no bar."""
    from test_train import make_toy_dataset

    data = make_toy_dataset(tmp_path / "data")
    r = invoke("train", data, "--out", tmp_path / "run", "--arch", "cnn", "--input-size", "24", "--widths", "4,8",
               "--epochs", "2", "--batch-size", "8", env={"COLUMNS": "80"})  # fmt: skip
    assert r.exit_code == 0, r.stderr
    epochs = [line for line in r.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all(len(line) > 80 and line.rstrip().endswith("s") for line in epochs)
    assert all(re.fullmatch(r"epoch +\d+  train loss .* val loss .* lr .* img/s +[\d.]+s", e) for e in epochs)
    assert "\r" not in r.stderr and "\x1b" not in r.stderr


def test_progress_on_a_terminal_only(photos, tiny_model_path, monkeypatch):
    _, labelled = photos
    quiet = invoke("evaluate", labelled, "--model", tiny_model_path)
    assert quiet.exit_code == 0 and "evaluating" not in quiet.stderr and quiet.stderr == ""
    _terminal(monkeypatch, 100)
    shown = invoke("evaluate", labelled, "--model", tiny_model_path)
    assert shown.exit_code == 0 and "evaluating" in shown.stderr and "6/6" in shown.stderr


def test_samples_uses_every_core_by_default(tmp_path, monkeypatch):
    import tinytriage.data.synth as synth
    from tinytriage.nn.fast.parallel import default_num_threads

    seen = {}

    def fake(out_dir, per_class, seed, **kw):
        seen.update(kw)
        return synth.GenerateReport(Path(out_dir), tuple(kw["classes"]), per_class, seed, 0, 0, 1.0)

    monkeypatch.setattr(synth, "generate_dataset", fake)
    assert invoke("samples", tmp_path / "s", "-n", "1").exit_code == 0
    assert seen["workers"] == default_num_threads()
    assert invoke("samples", tmp_path / "s", "-n", "1", "-j", "1").exit_code == 0 and seen["workers"] == 1


def test_one_exit_code_rule_and_one_wording(photos, tiny_model_path, tmp_path):
    """A photo that fails makes evaluate exit 1 as it does predict (the rest still counted);
    a missing photo reads the same in predict and explain; an option's value that cannot
    work is a usage error (2), whichever command finds it."""
    _, labelled = photos
    (labelled / "document" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    r = invoke("evaluate", labelled, "--model", tiny_model_path)
    assert r.exit_code == 1 and "broken.jpg" in r.stderr and "evaluated 6 photos" in r.stdout
    missing = tmp_path / "missing.jpg"
    for command in ("predict", "explain"):
        r = invoke(command, missing, "--model", tiny_model_path)
        assert r.exit_code == 1 and r.stderr == f"tinytriage: error: {missing}: file not found\n", r.stderr
    photo = next(photos[0].iterdir())
    for args in (
        ["predict", photo, "--threshold", "2"],
        ["explain", photo, "--layer", "conv9"],
        ["explain", photo, "--class", "nope"],
        ["calibrate", labelled, "--out", tmp_path / "c.safetensors", "--target-precision", "1.5"],
        ["train", labelled, "--out", tmp_path / "m.safetensors"],
    ):
        r = invoke(*args, "--model", tiny_model_path) if args[0] != "train" else invoke(*args)
        assert r.exit_code == 2 and "Traceback" not in r.stderr, (args, r.stderr)


def test_confusion_matrix_heads_columns_with_whole_class_names(photos, tiny_model_path, monkeypatch):
    _, labelled = photos
    _terminal(monkeypatch, 160)
    r = invoke("evaluate", labelled, "--model", tiny_model_path)
    table = r.stdout[r.stdout.index("confusion matrix") :]
    header = next(line for line in table.splitlines() if "screen_damage" in line and "intact_device" in line)
    assert "document" in header and "other" in header
    _terminal(monkeypatch, 60)  # too narrow for the names: columns by number, rows say which
    r = invoke("evaluate", labelled, "--model", tiny_model_path)
    assert "0 screen_damage" in r.stdout and "4 other" in r.stdout


def test_demo_clips_negatives_shifts_without_wrapping_and_explains_its_receptive_field():
    from tinytriage.explain.demo import PAPER, PATCH, run_demo

    d = run_demo(with_torch=False)
    assert (d.feature_map < 0).any() and (d.relu[d.feature_map < 0] == 0).all()  # ReLU has work to do
    np.testing.assert_array_equal(d.shifted_patch[0], PAPER)  # paper enters at the top...
    np.testing.assert_array_equal(d.shifted_patch[1:], PATCH[:-1])  # ...nothing wraps round
    assert d.receptive_field[-1]["receptive_field"] == 5 and d.receptive_field_pooled[-1]["receptive_field"] == 8
    text = invoke("explain", "--demo").stdout
    assert "-> 0)" in text and "with a 2x2 max pool (stride 2) between them" in text and "sees 8x8" in text


def test_compare_prints_a_tolerance_beside_every_number(tiny_model_path, monkeypatch):
    pytest.importorskip("torch")
    from tinytriage.cli import render
    from tinytriage.explain.compare import compare

    r = compare(["numpy", "torch"], str(tiny_model_path), batch=4, steps=2, repeats=1, cold_start=False)
    _terminal(monkeypatch, 200)
    with render.out.capture() as captured:
        render.print_compare(r, as_json=False)
    text = captured.get()
    rows = [line for line in text.splitlines() if re.match(r"│ (logits|probabilities|features\.|head\.|\d+ )", line)]
    assert len(rows) > 10 and all("e-0" in row and re.search(r"(rel|abs) 1e-0\d", row) for row in rows)
    assert "tolerance 1e-03" in text and "(tolerance 1e-05)" in text


def test_compare_finds_photos_in_a_regular_install(tmp_path, monkeypatch, tiny_model_file):
    """pyproject ships the samples with the models; without them, compare makes its own."""
    import tomllib

    import tinytriage.data.datasets as datasets
    from tinytriage.explain.compare import sample_batch

    repo = Path(__file__).resolve().parent.parent
    shipped = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    for photo in (repo / "samples").rglob("*.jpg"):
        dest = f"share/tinytriage/samples/{photo.parent.name}"
        assert f"samples/{photo.parent.name}/*" in shipped.get(dest, []), photo
    # a regular install: the package in site-packages, the samples under <prefix>/share
    monkeypatch.setattr(datasets, "__file__", str(tmp_path / "site" / "tinytriage" / "data" / "datasets.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert datasets.bundled_samples() is None
    x, y, paths = sample_batch(tiny_model_file, None, 6)  # nothing shipped: generated for the purpose
    assert x.shape == (6, 3, 32, 32) and len(set(y.tolist())) > 1
    shutil.copytree(repo / "samples", tmp_path / "prefix" / "share" / "tinytriage" / "samples")
    assert datasets.bundled_samples() == tmp_path / "prefix" / "share" / "tinytriage" / "samples"
    x, _, paths = sample_batch(tiny_model_file, None, 6)
    assert x.shape[0] == 6 and all(str(tmp_path / "prefix") in p for p in paths)


def test_calibrate_says_what_its_threshold_reached_and_the_model_keeps_it(photos, tiny_model_path, tmp_path):
    """An untrained model: no threshold reaches 99% precision; calibrate says so (not a
    silent 0.5) and the model file keeps what the threshold reached."""
    from tinytriage.models.file import read_model

    _, labelled = photos
    r = invoke("calibrate", labelled, "--model", tiny_model_path, "--out", tmp_path / "c.safetensors")
    assert r.exit_code == 0, r.stderr
    review = read_model(tmp_path / "c.safetensors").metrics["calibration"]["review"]
    assert review["of"] == 6 and review["target_precision"] == 0.99 and not review["met"]
    assert "calibrated on 6 photos:" in r.stdout and "on photos the temperature was not fitted on" in r.stdout
    assert "no threshold reaches 99% precision on these 6 photos" in r.stdout or "no photo reaches it" in r.stdout
