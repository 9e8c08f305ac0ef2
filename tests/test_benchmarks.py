"""The benchmark scripts the README quotes still run and say what they measured.

Timings are not checked (the machine is shared and noisy); what is checked is that each
script runs to the end on this install and that its report is consistent with itself."""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_bench_efficientnet_reports_three_engines_and_its_ratios_are_its_medians():
    report = run_json("bench_efficientnet.py", "--sizes", "32", "--batch", "2", "--repeats", "1")
    engines = ["numpy", "torch_nchw", "torch_channels_last"]
    assert report["machine"]["cpu"] and report["machine"]["vector_units"] and report["machine"]["torch"]
    assert (report["batch"], report["repeats"], report["dtype"]) == (2, 1, "float32")
    [r] = report["sizes"]
    assert r["size"] == 32
    # the same network in all three: same weights, same logits
    assert r["logits_largest_difference"] <= 1e-4 * max(1.0, r["logits_scale"]), r
    for runs, medians, per in (
        (r["forward_runs_s"], r["forward_ms_per_photo"], 1e3 / 2),  # ms per photo of a batch of 2
        (r["train_step_runs_s"], r["train_step_s"], 1.0),
    ):
        assert list(medians) == engines
        for k in engines:
            assert len(runs[k]) == 1 and all(math.isfinite(t) and t > 0 for t in runs[k])
            assert medians[k] == pytest.approx(per * statistics.median(runs[k]), rel=1e-12)
    for k in engines[1:]:  # each ratio is the quotient of the two medians the report prints
        assert r["ratio_forward"][k] == pytest.approx(r["forward_ms_per_photo"]["numpy"] / r["forward_ms_per_photo"][k])
        assert r["ratio_train_step"][k] == pytest.approx(r["train_step_s"]["numpy"] / r["train_step_s"][k])
    for what, limit in (("forward", 1.0), ("train_step", 1.3)):  # the targets, against PyTorch's default
        t = r["targets"][what]
        assert t["at_most"] == limit and t["ratio"] == r[f"ratio_{what}"]["torch_nchw"]
        assert t["met"] == (t["ratio"] <= limit)
    for k in engines:  # each engine's memory, from a process of its own
        m = r["memory"][k]
        assert m["rss_before_mb"] > 0 and m["high_water_reset"] in (True, False)
        assert math.isfinite(m["rss_peak_growth_mb"]) and math.isfinite(m["rss_peak_growth_later_step_mb"])
    assert r["memory"]["numpy"]["traced_peak_mb"] > 0


def test_bench_vit_puts_the_bundled_vit_beside_the_cnn_and_its_ratios_are_its_figures():
    report = run_json("bench_vit.py", "--batch", "2", "--blocks", "1")
    assert report["machine"] and (report["batch"], report["blocks"]) == (2, 1)
    for arch in ("cnn", "vit"):
        r = report[arch]
        assert r["file"].endswith(f"triage_{arch}.safetensors") and r["params"] > 0 and r["macs"] > 0
        assert math.isfinite(r["forward_ms_per_photo"]) and r["forward_ms_per_photo"] > 0
    ratio = report["ratio"]
    assert ratio["forward_time"] == pytest.approx(
        report["vit"]["forward_ms_per_photo"] / report["cnn"]["forward_ms_per_photo"], rel=1e-12
    )
    assert ratio["macs"] == pytest.approx(report["vit"]["macs"] / report["cnn"]["macs"], rel=1e-12)
