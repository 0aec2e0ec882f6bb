"""Dependencies point one way: no import cycle among the project's modules, and no module
imports a layer above its own.  Every import counts: inside a function, and under ``if
TYPE_CHECKING:`` too -- a type hint naming a module above is a dependency pointing the wrong
way all the same; a lower layer states what it needs as a ``typing.Protocol`` of its own
(``pipeline.core.protocols``, ``pipeline.engine.protocols``).  The project's before-stop
hook applies the same cycle rule.

The layers, bottom to top (docs/architecture.md draws them)::

    0  schemas, methods, pipeline.errors,   pure: data shapes, answer rules, the
       pipeline.environ                     environment of started processes
    1  pipeline.files                       paths, object stores, ownership, locks
    2  pipeline.core                        the stage contract and the graph
    3  pipeline.config                      sections, templates, loading
    4  pipeline.sources, demo               readers; the tiny model and sample data
    5  pipeline.engine                      vLLM
    6  pipeline.run                         running a build
    7  publish                              the dataset folder, exports, reports
    8  stages                               one module per stage
    9  pipeline.cli                         the command line

A stage never imports another stage, and nothing below ``stages`` imports one (the graph
loads stage packages by name).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import ROOT

LAYERS = [
    ("schemas", 0), ("methods", 0), ("pipeline.errors", 0), ("pipeline.environ", 0), ("pipeline", 0),
    ("pipeline.files", 1), ("pipeline.core", 2), ("pipeline.config", 3),
    ("pipeline.sources", 4), ("demo", 4), ("pipeline.engine", 5), ("pipeline.run", 6),
    ("publish", 7), ("stages", 8), ("pipeline.cli", 9), ("pipeline.__main__", 9),
]
PACKAGES = ("pipeline", "stages", "methods", "schemas", "publish", "demo")


def modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    found = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def layer(module: str) -> int:
    return max((n for prefix, n in LAYERS if module == prefix or module.startswith(prefix + ".")),
               default=0) if module != "pipeline" else 0


def imports(path: Path, known: dict[str, Path], root: Path = ROOT) -> list[tuple[str, int]]:
    """(imported project module, line) for every import in ``path``: at the top, inside a
    function, or under ``if TYPE_CHECKING:`` -- a type hint that names a module above, or one
    that imports this one, is a dependency that points the wrong way even if it never runs
    (the before-stop hook counts the same).  ``from a import b`` names ``a`` and, if it is
    a module, ``a.b``; relative imports are resolved against the module's package."""
    tree = ast.parse(path.read_text())
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[tuple[str, int], None] = {}  # ordered, once per module and line

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            r = resolve(t)
            if r:
                found[r, node.lineno] = None
    return list(found)


def graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    known = modules(root, packages)
    return {m: {t for t, _ in imports(p, known, root) if t != m} for m, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_no_module_imports_a_layer_above_its_own():
    known = modules()
    upward = []
    for m, path in known.items():
        for target, line in imports(path, known):
            if layer(target) > layer(m) and not (m.startswith("pipeline.") and target == "pipeline"):
                upward.append(f"{path.relative_to(ROOT)}:{line} ({m}, layer {layer(m)}) imports "
                              f"{target} (layer {layer(target)})")
    assert upward == []


def test_no_stage_imports_another_stage():
    known = modules()
    crossing = [f"{known[m].relative_to(ROOT)} imports {t}" for m in known if m.startswith("stages.")
                for t, _ in imports(known[m], known) if t.startswith("stages.") and t != m]
    assert crossing == []


@pytest.mark.parametrize("edge, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_cycle_finder_finds_cycles(edge, expected):
    assert cycles(edge) == expected


def test_every_import_counts_for_cycles(tmp_path):
    """The cycles this repository had: a type hint under ``if TYPE_CHECKING:`` naming the module
    that imports this one (``pipeline.engine.rounds`` -> ``engine.Engine``), an import inside a
    function (``pipeline.config.sections`` -> ``pipeline.core.graph``), and relative imports."""
    files = {
        "pkg/__init__.py": "",
        "pkg/engine.py": "from pkg.rounds import next_round\n",
        "pkg/rounds.py": ("from typing import TYPE_CHECKING\n"
                          "if TYPE_CHECKING:\n    from pkg.engine import Engine\n"),
        "pkg/sections.py": "def stages():\n    from pkg import graph\n",
        "pkg/graph.py": "from . import sections\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/a.py": "from ..sub.b import X\n",
        "pkg/sub/b.py": "import pkg.sub.a\n",
        "pkg/alone.py": "from pkg import engine\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cycles(graph(tmp_path, ("pkg",))) == [
        ["pkg.engine", "pkg.rounds"], ["pkg.graph", "pkg.sections"], ["pkg.sub.a", "pkg.sub.b"]]


def test_layers_of_known_modules():
    assert [layer(m) for m in ("methods.match", "pipeline.files.storage", "pipeline.run.runner",
                               "stages.write", "pipeline.cli", "pipeline")] == [0, 1, 6, 8, 9, 0]
