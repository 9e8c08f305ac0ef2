"""The inductive-bias lesson: the translation test's numbers (a CNN's maps shift with the
photo, a ViT's tokens don't), the photo-set cache, and the whole lesson end to end, tiny."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from tinytriage.explain.lesson import Generate, Generated, LessonConfig, photo_set, shift_right, translation_test
from tinytriage.models.cnn import CNNConfig, TriageCNN
from tinytriage.models.file import read_model
from tinytriage.models.vit import ViTConfig, build_vit


def test_shift_right_moves_columns_and_fills_the_gap():
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    np.testing.assert_array_equal(shift_right(x, 1, fill=-1)[0, 0], [[-1, 0, 1, 2], [-1, 4, 5, 6], [-1, 8, 9, 10]])


@pytest.fixture(scope="module")
def shift_rows():
    """A conv stack with two 2x2 poolings (total stride 4) and a ViT with 8-pixel patches,
    both freshly initialised, on random 48x48 inputs shifted by 4, 8 and 6 pixels."""
    rng = np.random.default_rng(0)
    cnn = TriageCNN(CNNConfig(num_classes=3, input_size=48, widths=(4, 8, 8)), rng=rng)
    vit = build_vit(ViTConfig(num_classes=3, img_size=48, patch_size=8, embed_dim=16, depth=2, num_heads=2), rng=rng)
    x = rng.standard_normal((2, 3, 48, 48)).astype(np.float32)
    return translation_test(cnn, vit, x, shifts=(4, 8, 6)).rows


def test_cnn_maps_shift_exactly_with_the_photo(shift_rows):
    cnn = [r for r in shift_rows if r.arch == "cnn" and r.shift_px in (4, 8)]  # multiples of every stride
    assert len(cnn) == 6 and all(r.exact and r.cells > 0 for r in cnn)
    assert max(r.rel_error for r in cnn) < 1e-6  # equivariant up to float rounding


def test_pooling_breaks_shifts_that_are_not_whole_cells(shift_rows):
    stage3 = next(r for r in shift_rows if r.arch == "cnn" and r.shift_px == 6 and r.stride == 4)
    assert not stage3.exact and stage3.rel_error > 1e-2


def test_vit_tokens_do_not_simply_shift(shift_rows):
    vit = {(r.layer, r.shift_px): r.rel_error for r in shift_rows if r.arch == "vit"}
    assert vit[("patch embedding", 8)] < 1e-6  # a stride-8 conv: equivariant to whole patches
    assert vit[("+ position embedding", 8)] > 1e-2  # ... until each token learns where it sits
    assert vit[("block 2 (last)", 8)] > 1e-2
    for k in (4, 6):  # no whole-token shift matches a shift inside a patch
        assert min(e for (_, shift), e in vit.items() if shift == k) > 0.2


def test_photo_sets_are_cached_and_grow(tmp_path):
    cfg = LessonConfig(data_dir=str(tmp_path), photo_size=(48, 96))
    events = []
    first = photo_set(tmp_path, 3, 2, cfg, events.append)
    assert photo_set(tmp_path, 3, 1, cfg, events.append) == first  # fewer: reused
    assert [type(e) for e in events] == [Generate, Generated]
    photo_set(tmp_path, 3, 3, cfg, events.append)  # more: regenerated (photos 0, 1 unchanged)
    assert [type(e) for e in events].count(Generate) == 2
    assert len(list((first / "parcel").glob("*.jpg"))) == 3


def test_lesson_end_to_end_tiny(tmp_path):
    data, save = tmp_path / "data", tmp_path / "out"
    # 48 px: a multiple of the plain ViT's 12-pixel patches and of the early-conv stem's stride 16
    tiny = ["--sizes", "4,8", "--input-size", "48", "--photo-size", "48,96", "--test-per-class", "3",
            "--batch-size", "8", "--shifts", "4,12"]  # fmt: skip
    p = run_cli("lesson", str(data), *tiny, "--steps", "4", "--save", str(save), "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["budget"] == "steps" and r["n_test"] == 15
    runs = {(x["model"], x["per_class"]): x for x in r["runs"]}
    models = ("cnn", "vit", "vit_conv", "vit_distilled")
    assert set(runs) == {(m, n) for m in models for n in (4, 8)}
    for n in (4, 8):
        cnn = runs["cnn", n]
        for m in models:
            run = runs[m, n]
            assert run["steps"] == cnn["steps"] and run["epochs"] == cnn["epochs"]  # the same budget
            assert 0 <= run["test_acc"] <= 1 and run["params"] > 0 and run["macs"] > 0 and run["train_seconds"] > 0
    conv = read_model(runs["vit_conv", 8]["model_path"]).config
    assert conv["conv_stem"] and conv["patch_size"] == 16
    distilled = json.loads((save / "runs" / "vit_distilled-n8" / "metrics.json").read_text())["args"]
    assert distilled["teacher"] == runs["cnn", 8]["model_path"]  # taught by the CNN trained on the same photos
    assert (save / "accuracy_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((save / "lesson.json").read_text())["runs"] == r["runs"]
    assert {row["shift_px"] for row in r["translation"]["rows"]} == {4, 12}

    # the same lesson again: every run is kept, none trained, the same table
    p = run_cli("lesson", str(data), *tiny, "--steps", "4", "--save", str(save), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["runs"] == r["runs"]
    # a lesson stopped before its last run: the finished ones are kept, the last one trained
    ledger = json.loads((save / "runs.json").read_text())
    ledger["runs"] = [x for x in ledger["runs"] if (x["model"], x["per_class"]) != ("vit_distilled", 8)]
    (save / "runs.json").write_text(json.dumps(ledger))
    p = run_cli("lesson", str(data), *tiny, "--steps", "4", "--save", str(save))
    assert p.returncode == 0, p.stderr
    assert "7 run(s) finished before are kept" in p.stdout + p.stderr
    trained = [line.split() for line in p.stderr.splitlines() if line.startswith("[")]
    assert len(trained) == 1 and trained[0][1:6] == ["ViT", "distilled", "on", "8/class:", "test"]
    # ... and with other settings in the same folder: refused, nothing overwritten
    p = run_cli("lesson", str(data), *tiny, "--steps", "5", "--save", str(save))
    assert p.returncode != 0 and "other settings" in p.stderr and "Traceback" not in p.stderr

    # the translation test alone, on the two models the lesson trained
    models = f"{runs['cnn', 8]['model_path']},{runs['vit', 8]['model_path']}"
    p = run_cli(
        "lesson", str(data), "--translation-only", "--models", models, "--shifts", "12", "--photo-size", "48,96"
    )
    assert p.returncode == 0, p.stderr
    assert "translation test" in p.stdout and "position embedding" in p.stdout


def test_variants_are_checked_and_ordered_teacher_first():
    from tinytriage.errors import TinyTriageError
    from tinytriage.explain.lesson import _check_models

    assert _check_models(("vit_distilled", "cnn")) == ["cnn", "vit_distilled"]  # the teacher trains first
    with pytest.raises(TinyTriageError, match="learns from cnn's runs: add cnn"):
        _check_models(("vit", "vit_distilled"))
    with pytest.raises(TinyTriageError, match="choose from cnn, vit, vit_conv, vit_distilled"):
        _check_models(("resnet",))
