"""The package's layout is its design: dependencies run one way, and ``nn`` stands alone.

Every import in the package is read from the source (including those inside functions,
which the interpreter only meets when they run), and each module is placed in its layer:

    errors, files, plots  ->  nn  ->  models  ->  engines  ->  data
        ->  training  ->  inference  ->  explain  ->  cli

A module may import its own subpackage and the layers before it, never one after it,
and no chain of imports may come back to where it started.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tinytriage"
LAYERS = ["errors", "files", "plots", "nn", "models", "engines", "data", "training", "inference", "explain", "cli"]
LEAVES = {"errors", "files", "plots"}  # the bottom layer: they import nothing of the project
TOP = {"__init__", "__main__"}  # the package itself and ``python -m tinytriage``: may import anything


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


MODULES = _modules()


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in (child, *_runtime_nodes(child)))
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path) -> set[str]:
    """Every module this file imports when it runs, at the top or inside functions: the
    project's (resolved to the module imported, or the package for ``from pkg import name``)
    and others. Imports for type checkers only (``if TYPE_CHECKING:``) never run: skipped."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:  # `from tinytriage.engines import distributed` imports a module
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


GRAPH = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return None if len(parts) == 1 else parts[1]  # tinytriage.<layer>...


def test_every_module_sits_in_a_layer():
    """A new top-level module must be placed in LAYERS (or moved into a subpackage)."""
    unplaced = [m for m in MODULES if m != "tinytriage" and _layer(m) not in LAYERS and _layer(m) not in TOP]
    assert not unplaced, f"modules outside the layers: {unplaced}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downwards(module):
    layer = _layer(module)
    if layer is None or layer in TOP:
        return
    rank = LAYERS.index(layer)
    upward = []
    for dep in GRAPH[module]:
        d = _layer(dep)
        if d is None or d in TOP:  # `tinytriage` itself: its __version__
            if layer not in LEAVES:
                continue
            upward.append(dep)
        elif d in LEAVES and layer in LEAVES and d != layer and dep != "tinytriage.errors":
            upward.append(dep)  # leaves import nothing of the project but errors
        elif LAYERS.index(d) > rank:
            upward.append(dep)
    assert not upward, f"{module} ({layer}) imports a later layer: {sorted(upward)}"


def test_no_import_cycles():
    """Depth-first search for a back edge; the cycle is printed when there is one."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for dep in sorted(GRAPH[m]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(MODULES):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_nn_imports_only_numpy():
    """The textbook needs NumPy and the standard library, and nothing else (the errors it
    raises are the project's own)."""
    allowed = {"numpy", *sys.stdlib_module_names}
    for module, path in MODULES.items():
        if not module.startswith("tinytriage.nn"):
            continue
        for dep in _imports(path):
            if dep.startswith("tinytriage."):
                assert dep.startswith("tinytriage.nn") or dep == "tinytriage.errors", f"{module} imports {dep}"
            else:
                assert dep.split(".")[0] in allowed, f"{module} imports {dep}"


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The walker finds an import placed inside a function (what the cycle test relies on)."""
    f = tmp_path / "m.py"
    f.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import rich\n"
        "def f():\n    from tinytriage.cli import app\n    import threadpoolctl\n"
    )
    assert _imports(f) == {"typing", "tinytriage.cli.app", "threadpoolctl"}


@pytest.mark.parametrize("old", sorted(__import__("tinytriage").MOVED))
def test_old_module_names_still_import(old):
    """0.1's flat module names keep working for users' imports: every public name of the
    module it moved to is reachable through the old name, as the same object."""
    import importlib

    import tinytriage

    new = importlib.import_module(f"tinytriage.{tinytriage.MOVED[old]}")
    public = [n for n in dir(new) if not n.startswith("_") and not isinstance(getattr(new, n), type(sys))]
    assert public
    mod = importlib.import_module(f"tinytriage.{old}")
    for name in public:
        assert getattr(mod, name) is getattr(new, name), f"tinytriage.{old}.{name}"
    with pytest.raises(AttributeError):
        mod.no_such_name  # noqa: B018
