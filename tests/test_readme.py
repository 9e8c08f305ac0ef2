"""The README is a user's guide: short, its two commands the real ones, every path it names real."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

FIRST_COMMAND = "pip install . && tinytriage predict samples/screen_damage/screen_damage_00004.jpg"
CI_MARKER = "# --- the README's second command, verbatim ---"


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """Every ``` block of a Markdown text as (language, lines)."""
    return [(m[1].strip(), m[2].splitlines()) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def shell_commands(text: str) -> list[str]:
    """The commands of the shell blocks, in order: no comments, no blank lines."""
    lines = [line for lang, block in fenced_blocks(text) if lang in ("bash", "sh", "shell") for line in block]
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def ci_command() -> str:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return lines[lines.index(CI_MARKER) + 1].strip()


def test_readme_is_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_first_two_commands_install_predict_and_test():
    first, second = shell_commands(README.read_text())[:2]
    assert first == FIRST_COMMAND
    assert (REPO / first.split()[-1]).is_file()  # a bundled sample photo
    assert second == ci_command() == "pip install -e '.[test]' && pytest -q"


def test_readme_shows_what_the_first_command_prints():
    blocks = fenced_blocks(README.read_text())
    first = next(i for i, (_, lines) in enumerate(blocks) if FIRST_COMMAND in lines)
    printed = "\n".join(blocks[first + 1][1])
    # the row the README shows is the row the command prints today (the bundled default model)
    from conftest import run_cli

    r = run_cli("predict", FIRST_COMMAND.split()[-1], cwd=REPO, env={"COLUMNS": "120"})
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "screen_damage_00004" in line)
    assert row in printed and "refurbishment" in row


def package_paths(text: str) -> set[str]:
    """`tinytriage/....py` files and `tinytriage/.../` folders named in a text."""
    found = set()
    for m in re.finditer(r"(?<![\w.-])tinytriage/[\w/.]*", text):
        path = m[0].rstrip(".")
        if path.endswith(".py") or path.endswith("/"):
            found.add(path)
    return found


def test_package_paths_helper():
    text = "see `tinytriage/nn/fast/im2col.py`, tinytriage/data/synth/ and tinytriage/files.py. Not share/tinytriage/x"
    assert package_paths(text) == {"tinytriage/nn/fast/im2col.py", "tinytriage/data/synth/", "tinytriage/files.py"}


def test_package_paths_in_readme_and_docs_exist():
    missing = sorted(
        f"{doc.relative_to(REPO)}: {path}"
        for doc in [README, *DOCS]
        for path in package_paths(doc.read_text())
        if not (REPO / path).exists()
    )
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)


def test_readme_links_to_docs_and_benchmarks_exist():
    text = README.read_text()
    linked = set(re.findall(r"\]\(((?:docs|benchmarks)/[^)#\s]+)", text))
    named = set(re.findall(r"(?<![\w/.-])((?:docs|benchmarks)/[\w./-]+\.\w+)", text))
    assert {"docs/EXPERIMENTS.md", "docs/MODEL_CARD.md", "benchmarks/PROFILE.md"} <= linked
    missing = sorted(p for p in linked | named if not (REPO / p).is_file())
    assert not missing, f"the README names files that do not exist: {missing}"


def test_links_between_docs_exist():
    missing = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s:]+)", doc.read_text()):
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(REPO)}: {target}")
    assert not missing, missing
