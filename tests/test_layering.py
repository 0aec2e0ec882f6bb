"""Dependencies point one way: no import cycle among the project's modules, and no module
imports a layer above its own (imports inside functions count; ``if TYPE_CHECKING:`` ones
do not, since they never run).

The layers, bottom to top (docs/architecture.md draws them)::

    0  schemas, methods, pipeline.errors    pure: data shapes, answer rules
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
    ("schemas", 0), ("methods", 0), ("pipeline.errors", 0), ("pipeline", 0),
    ("pipeline.files", 1), ("pipeline.core", 2), ("pipeline.config", 3),
    ("pipeline.sources", 4), ("demo", 4), ("pipeline.engine", 5), ("pipeline.run", 6),
    ("publish", 7), ("stages", 8), ("pipeline.cli", 9), ("pipeline.__main__", 9),
]
PACKAGES = ("pipeline", "stages", "methods", "schemas", "publish", "demo")


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def layer(module: str) -> int:
    return max((n for prefix, n in LAYERS if module == prefix or module.startswith(prefix + ".")),
               default=0) if module != "pipeline" else 0


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported project module, line) for every runtime import in ``path``."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found = []

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names]
        for t in targets:
            r = resolve(t)
            if r:
                found.append((r, node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for t, _ in imports(p, known) if t != m} for m, p in known.items()}


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


def test_layers_of_known_modules():
    assert [layer(m) for m in ("methods.match", "pipeline.files.storage", "pipeline.run.runner",
                               "stages.write", "pipeline.cli", "pipeline")] == [0, 1, 6, 8, 9, 0]
