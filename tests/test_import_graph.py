"""The import graph between the harness's top-level packages and modules has no cycle.

Every ``harness/**/*.py`` is parsed (not imported) and each import of ``harness.<name>`` is an
edge from the file's top-level package or module to ``<name>``, imports inside functions and
``TYPE_CHECKING`` blocks included: a lazy import is still a dependency. Writing a result
(`harness.evaluate`) must not need the leaderboard that reads results; both rely on the neutral
modules below them (`harness.results`, `harness.signing`, `harness.sanitize`). The numeric
layer of scoring (`harness.metrics`) sits below everything that scores: cohort specs, training,
the sandbox worker, evaluation and the leaderboard.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "harness"


def _node(module: str) -> str | None:
    """The top-level package or module of ``harness.<...>`` (None outside the harness)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "harness" and len(parts) > 1 else None


def _imported(node: ast.AST) -> Iterator[str]:
    """Absolute module names an import statement brings in (``from harness import x`` -> x)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module == "harness":
            yield from (f"harness.{alias.name}" for alias in node.names)
        else:
            yield node.module


def _is_module(name: str) -> bool:
    return (HARNESS / f"{name}.py").is_file() or (HARNESS / name / "__init__.py").is_file()


def import_graph() -> dict[tuple[str, str], set[str]]:
    """(importer, imported) -> the files that make the edge, between top-level harness nodes."""
    edges: dict[tuple[str, str], set[str]] = {}
    for path in sorted(HARNESS.rglob("*.py")):
        rel = path.relative_to(HARNESS)
        source = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for module in _imported(node):
                target = _node(module)
                if target and target != source and source != "__init__" and _is_module(target):
                    edges.setdefault((source, target), set()).add(rel.as_posix())
    return edges


def find_cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` (its nodes, first repeated last), or None."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


@pytest.fixture(scope="module")
def graph() -> dict[tuple[str, str], set[str]]:
    return import_graph()


def test_evaluate_never_imports_the_leaderboard(graph):
    assert ("evaluate", "leaderboard") not in graph, graph.get(("evaluate", "leaderboard"))


@pytest.mark.parametrize("neutral", ["results", "signing", "sanitize"])
def test_the_result_format_sits_below_evaluate_and_leaderboard(graph, neutral):
    upward = {b: files for (a, b), files in graph.items() if a == neutral}
    assert not set(upward) & {"evaluate", "leaderboard", "cli", "demo"}, upward


def test_the_metrics_package_needs_only_the_neutral_modules(graph):
    needs = {b for (a, b) in graph if a == "metrics"}
    assert needs <= {"errors", "registry"}, {b: graph[("metrics", b)] for b in needs}


def test_the_package_graph_has_no_cycle(graph):
    cycle = find_cycle(set(graph))
    assert cycle is None, (
        " -> ".join(cycle or [])
        + ": "
        + "; ".join(
            f"{a}->{b}: {sorted(graph[(a, b)])}"
            for a, b in zip(cycle or [], (cycle or [])[1:], strict=False)
        )
    )


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({("a", "b"), ("b", "c")}) is None
    assert find_cycle({("a", "b"), ("b", "c"), ("c", "a")}) == ["a", "b", "c", "a"]
