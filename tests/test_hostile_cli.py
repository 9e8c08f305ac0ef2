"""Hostile input through the whole CLI: odd paths, rotated photos, NaN-free JSON."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_cli
from PIL import Image


def _photo(path, seed=0, size=(90, 60)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_newline_unicode_space_paths_via_nul(tmp_path, tiny_model_path):
    names = ["new\nline.png", "ünï cödé photo.png", "plain.png"]
    paths = [_photo(tmp_path / n, i) for i, n in enumerate(names)]
    data = b"".join(str(p).encode() + b"\0" for p in paths)
    r = run_cli("predict", "-", "-0", "--json", "--model", str(tiny_model_path), input=data)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 3  # the newline inside a path is escaped, one object per line
    assert [json.loads(line)["path"] for line in lines] == [str(p) for p in paths]


def test_exif_rotated_photo_predicts_like_upright(tmp_path, tiny_model_path):
    upright = Image.fromarray(np.random.default_rng(3).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    upright.save(tmp_path / "upright.png")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a phone stores for orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.png", exif=exif)
    r = run_cli("predict", str(tmp_path / "upright.png"), str(tmp_path / "rotated.png"), "--json",
                "--model", str(tiny_model_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    a, b = (json.loads(line) for line in r.stdout.splitlines())
    assert a["label"] == b["label"]
    for k in a["probabilities"]:
        # orientation is applied after the downscale, so resampling differs by a hair
        assert abs(a["probabilities"][k] - b["probabilities"][k]) < 1e-3


def test_json_never_contains_nan(tmp_path, tiny_model_path):
    # no 'other' photos here, so the open-set rate is undefined: it must come out as null
    for name in ("parcel", "document"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            _photo(tmp_path / "data" / name / f"{i}.png", i)
    r = run_cli("evaluate", str(tmp_path / "data"), "--model", str(tiny_model_path), "--json")
    assert r.returncode == 0, r.stderr
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout
    assert json.loads(r.stdout)["open_set_review_rate"] is None


def test_model_file_errors_are_one_line(tmp_path):
    import pickle

    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps({"a": 1}))
    photo = _photo(tmp_path / "p.png")
    r = run_cli("predict", str(photo), "--model", str(evil))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "never unpickles" in r.stderr and "Traceback" not in r.stderr
