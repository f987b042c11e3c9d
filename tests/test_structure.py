"""The package's walls: the stages depend on each other in one direction only.

An import circle between two packages (training and inference once imported each other: calibration
in the trainer, slab prediction in the training package) means neither can change without the other.
The graph is read from the source (imports inside functions included), so a lazy import cannot hide one.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "thrombus"


def _unit(module: str) -> str:
    """thrombus.<stage> for a module of a stage package, thrombus.<module> for a top-level module."""
    return ".".join(module.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
    """Unit -> the other units of thrombus it imports (anywhere in its files)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("thrombus.") and _unit(name) != _unit(module):
                    graph[_unit(module)].add(_unit(name))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge's circle found by a depth-first walk."""
    state: dict[str, int] = {}
    path: list[str] = []
    found: list[list[str]] = []

    def walk(unit: str) -> None:
        state[unit] = 1
        path.append(unit)
        for other in sorted(graph.get(unit, ())):
            if state.get(other) == 1:
                found.append(path[path.index(other):] + [other])
            elif other not in state:
                walk(other)
        state[unit] = 2
        path.pop()

    for unit in sorted(graph):
        if unit not in state:
            walk(unit)
    return found


def test_no_import_circle_between_the_packages_and_modules_of_thrombus() -> None:
    graph = import_graph()
    assert "thrombus.inference" in graph["thrombus.cli"]  # the walk sees lazy imports
    assert cycles(graph) == []


def test_training_imports_nothing_from_inference() -> None:
    assert "thrombus.inference" not in import_graph()["thrombus.training"]


def test_the_walk_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
