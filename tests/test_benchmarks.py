"""The benchmark scripts the README quotes still run and say what they measured.

Timings are not checked (the machine is shared and noisy); what is checked is that each
script runs to the end on this install and that its report is consistent with itself."""

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run_json(script: str, *args: str) -> dict:
    r = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_bench_winograd_times_every_3x3_layer_and_agrees_with_fuse_and_im2col():
    report = run_json("bench_winograd.py", "--repeats", "1", "--batch", "4")
    layers = report["layers"]
    assert [r["layer"] for r in layers] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    for r, after in zip(layers, layers[1:], strict=False):
        assert after["input"][0] == r["out_channels"]  # each layer's input is the one before's output
    for r in layers:
        wanted = "winograd" if r["input"][0] >= report["min_channels"] else "im2col"
        assert r["fuse_picks"] == wanted, r
        assert r["largest_difference"] < 1e-4, r  # the two ways give the same map
        assert r["im2col_ms"] > 0 and r["winograd_ms"] > 0
    assert report["machine"] and report["vector_units"]


def test_ab_latency_reports_every_install_given():
    report = run_json("ab_latency.py", sys.executable, sys.executable, "--runs", "1")
    assert [r["python"] for r in report["installs"]] == [sys.executable, sys.executable]
    for r in report["installs"]:
        for key in ("table_median_s", "json_median_s", "table_min_s", "json_min_s"):
            assert math.isfinite(r[key]) and 0 < r[key] < 60, r


def test_bench_depthwise_times_both_engines_and_they_agree():
    report = run_json(
        "bench_depthwise.py", "--batch", "2", "--channels", "8", "--size", "12", "--blocks", "1", "--steps", "1"
    )
    assert [(r["engine"], r["layout"]) for r in report["rows"]] == [
        ("numpy", "channels-last"),
        ("torch", "nchw"),
        ("torch", "channels_last"),
    ]
    assert report["largest_difference"] < 1e-4  # the same layer: NumPy's numbers are PyTorch's
    for r in report["rows"]:
        assert r["forward_ms"] > 0 and math.isfinite(r["backward_ms"]), r
    assert report["machine"] and report["input"] == [2, 8, 12, 12]
