"""Sizes: no source module over 400 lines, no function over 80.

A module that long does several jobs and a function that long several steps; both are
split by job (issue 27).  The only exceptions are declarative tables -- a function or
constant that is mostly one literal table, which reads no better in pieces -- and each is
named in ``TABLES`` with the reason.
"""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGES = ("pipeline", "demo", "stages", "methods", "schemas", "publish")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

#: declarative tables allowed past the limits: "path" (a module) or "path::qualified.name"
#: (a function) -> why it is one table.  Keep this short: a long function is not a table.
TABLES: dict[str, str] = {}

#: over the limits today, in files another change is editing: split them there, then delete the entry
def sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, lines) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node.end_lineno - node.lineno + 1
            yield from functions(node, prefix + node.name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, prefix + node.name + ".")
        else:
            yield from functions(node, prefix)


def oversized() -> dict[str, int]:
    """Every module over MAX_MODULE_LINES and function over MAX_FUNCTION_LINES -> its lines."""
    found = {}
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found[rel] = len(text.splitlines())
        for name, lines in functions(ast.parse(text)):
            if lines > MAX_FUNCTION_LINES:
                found[f"{rel}::{name}"] = lines
    return found


def test_no_module_or_function_over_the_limits():
    over = {k: n for k, n in oversized().items() if k not in TABLES}
    assert over == {}, (f"over {MAX_MODULE_LINES} lines per module or {MAX_FUNCTION_LINES} per function "
                        f"(split it by job; only a declarative table goes into TABLES): {over}")


def test_every_exception_is_still_over():
    """An entry in TABLES that fits the limits now is stale: delete it."""
    over = oversized()
    assert [k for k in TABLES if k not in over] == []


def test_the_counter_sees_nested_functions_and_methods():
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n\n\ndef h():\n    pass\n")
    assert dict(functions(tree)) == {"A.f": 3, "A.f.g": 2, "h": 2}
