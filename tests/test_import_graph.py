"""The package's modules import one way: no cycle among their module-level imports, and every
module-level import sits above the module's first definition (no import at the bottom of a module
to re-export, which is how cycles were hidden before).

Imports inside functions are deliberately left out: they are how the CLI and the app start without
loading torch, and they run after every module has finished importing.
"""

from __future__ import annotations

import ast

import pytest

from tests.source_tree import modules


def top_level_imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The modules of the package that importing this one imports (TYPE_CHECKING blocks aside)."""
    targets: set[str] = set()
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        targets.update(name for name in names if name in known)
    return targets


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    graph = {}
    for name, path in found.items():
        targets = top_level_imports(ast.parse(path.read_text()), known)
        # `from horizon.core.analyses import norms` inside the package itself is the package
        # importing its own submodule, not a cycle; a submodule importing its package is one.
        graph[name] = {target for target in targets if target != name}
    return graph


def test_the_cycle_finder_finds_a_cycle():
    # The check below can fail: a planted two-module loop and a self-loop are both reported.
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "horizon.core.analyses.base" in graph["horizon.core.analyses.norms"]
    assert "horizon.core.patching.horizon" in graph["horizon.core.analyses.scan.engine"]


def test_module_level_imports_have_no_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_import_below_a_definition(name: str):
    tree = ast.parse(modules()[name].read_text())
    seen_definition = None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            seen_definition = seen_definition or node.name
        elif isinstance(node, ast.Import | ast.ImportFrom) and seen_definition:
            raise AssertionError(f"{name}:{node.lineno} imports below {seen_definition}()")
