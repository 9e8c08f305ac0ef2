"""The command line as users meet it: exit codes, stdout vs stderr, no tracebacks, no torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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
    assert len(str(paths[0])) > 200 and len(lines) == 4 + len(paths)  # header (3 lines), rows, bottom rule
    for p, line in zip(paths, lines[3:-1], strict=True):
        assert str(p) in line


def test_debug_shows_traceback(tmp_path):
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(b"garbage!" * 4)
    r = run_cli("predict", "x.jpg", "--model", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "m.safetensors" in r.stderr
    r = run_cli("--debug", "predict", "x.jpg", "--model", str(bad))
    assert "Traceback" in r.stderr
