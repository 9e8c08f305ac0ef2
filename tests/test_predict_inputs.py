"""How `predict` finds photos: files, folders, globs, stdin (lines or NUL), bad paths."""

from __future__ import annotations

import io
import os

from conftest import run_cli

from tinytriage.inference.predict import PhotoFailure, expand_inputs, load_routes


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return str(p)


def test_files_folders_globs(tmp_path):
    a = _touch(tmp_path / "a.jpg")
    b = _touch(tmp_path / "sub" / "b.PNG")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden.jpg")
    assert list(expand_inputs([str(tmp_path)])) == [a]
    assert list(expand_inputs([str(tmp_path)], recursive=True)) == [a, b]
    assert list(expand_inputs([str(tmp_path / "*.jpg")])) == [a]
    (missing,) = expand_inputs([str(tmp_path / "nope.jpg")])
    assert isinstance(missing, PhotoFailure) and "file not found" in missing.reason
    (nomatch,) = expand_inputs([str(tmp_path / "*.webp")])
    assert isinstance(nomatch, PhotoFailure) and "no file matches" in nomatch.reason


def test_stdin_lines_and_nul(tmp_path):
    weird = tmp_path / "new\nline ünïcode photo.jpg"
    got = list(expand_inputs(["-"], stdin=io.StringIO("one.jpg\n\ntwo words.jpg\r\n")))
    assert got == ["one.jpg", "two words.jpg"]
    stream = io.TextIOWrapper(io.BytesIO(os.fsencode(str(weird)) + b"\0other.jpg\0"))
    assert list(expand_inputs(["-"], null=True, stdin=stream)) == [str(weird), "other.jpg"]


def test_empty_stdin_is_said_not_silent():
    # `find tickets -name '*.jpg' | tinytriage predict -` where find found nothing
    (empty,) = expand_inputs(["-"], stdin=io.StringIO("\n\n"))
    assert isinstance(empty, PhotoFailure) and empty.reason == "no photo paths on stdin"
    (empty,) = expand_inputs(["-"], null=True, stdin=io.StringIO(""))
    assert isinstance(empty, PhotoFailure) and "-0" in empty.reason
    p = run_cli("predict", "-", input="")
    assert p.returncode == 1 and "no photo paths on stdin" in p.stderr and p.stdout == ""


def test_symlink_loop_terminates(tmp_path):
    a = _touch(tmp_path / "d" / "a.jpg")
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")
    assert list(expand_inputs([str(tmp_path / "d")], recursive=True)) == [a]


def test_routes_toml(tmp_path):
    f = tmp_path / "routes.toml"
    f.write_text('[routes]\nscreen_damage = "repairs-emea"\n')
    assert load_routes(f) == {"screen_damage": "repairs-emea"}
