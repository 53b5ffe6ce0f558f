"""The package's modules import one way: no cycle among their module-level imports, and every
module-level import sits above the module's first definition (no import at the bottom of a module
to re-export, which is how cycles were hidden before).

Imports inside functions are deliberately left out: they are how the CLI and the app start without
loading torch, and they run after every module has finished importing.
"""

from __future__ import annotations

import ast
from pathlib import Path

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


# ----------------------------------------------------------------------------- layers as folders

# core/'s folders from the bottom up (docs/ARCHITECTURE.md): a module imports, at module level, only
# from its own folder or a folder below it. "" is core/ itself (errors, options, untrusted,
# checksums: the foundation). The API (the package horizon) and the app (horizon.tui) sit on top.
LAYERS = ["", "model", "capture", "memory", "patching", "analyses", "results", "checks", "run", "sweep", "sources"]
TOP = {"horizon": len(LAYERS), "horizon.tui": len(LAYERS) + 1}

# Imports inside a function (or under TYPE_CHECKING) that reach up a layer, each for a reason; a new
# one fails below until it is either moved down or named here with its reason.
UPWARD_INSIDE_FUNCTIONS = {
    # type names only (TYPE_CHECKING): an analysis's store side reads a Results, its settings a SweepSettings
    ("horizon.core.analyses.base", "horizon.core.results.store"),
    ("horizon.core.analyses.base", "horizon.core.run.runner"),  # an analysis's live hook runs under a Runner
    ("horizon.core.analyses.base", "horizon.core.sweep.sweep_settings"),
    ("horizon.core.analyses.attention.table", "horizon.core.results.store"),
    ("horizon.core.analyses.norms.table", "horizon.core.results.store"),
    ("horizon.core.analyses.scan.table", "horizon.core.results.store"),
    ("horizon.core.analyses.scan.table", "horizon.core.sweep.sweep_settings"),
    ("horizon.core.analyses.scan.cost", "horizon.core.sweep.sweep_settings"),
    ("horizon.core.analyses.truncate.table", "horizon.core.results.store"),
    ("horizon.core.analyses.truncate.table", "horizon.core.sweep.sweep_settings"),
    ("horizon.core.analyses.truncate.cost", "horizon.core.sweep.sweep_settings"),
    # scan's rows run a shard's prompts in the worker's chunks
    ("horizon.core.analyses.scan.table", "horizon.core.sweep.worker"),
    # the position-chunk self-check runs the first time a pass is chunked, from the layer that chunks
    ("horizon.core.capture.capture", "horizon.core.checks.chunking"),
    ("horizon.core.patching.horizon_clean", "horizon.core.checks.chunking"),
    ("horizon.core.memory.device_budget", "horizon.core.checks.chunking"),
    ("horizon.core.checks.chunking", "horizon.core.sweep.sweep_settings"),  # the versions its verdict records
    ("horizon.core.run.payloads", "horizon.core.sweep.sweep_settings"),  # the versions a --json records
    # the planner loops over the registry whose cost models are built from its formulas
    ("horizon.core.memory.cost_model", "horizon.core.analyses"),
    # every load runs the quick checks (or reads their stored verdict)
    ("horizon.core.model.loader", "horizon.core.checks.verify"),
    # --max-memory's one check parses a size the budget's way
    ("horizon.core.options", "horizon.core.memory.budget"),
}


def layer(module: str) -> int:
    if module.startswith("horizon.tui") or module == "horizon.__main__":  # python -m horizon runs the CLI
        return TOP["horizon.tui"]
    if not module.startswith("horizon.core"):
        return TOP["horizon"]
    parts = module.split(".")[2:]
    return LAYERS.index(parts[0]) if parts and parts[0] in LAYERS else 0


def all_imports(tree: ast.Module, known: set[str]) -> set[tuple[str, bool]]:
    """Every import of a package module in ``tree``, with whether it runs when the module is imported."""
    top = {id(node) for node in tree.body}
    found: set[tuple[str, bool]] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        found.update((name, id(node) in top) for name in names if name in known)
    return found


def upward(found: dict[str, Path]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(module-level, inside functions) imports that go up a layer."""
    known = set(found)
    at_import, inside = set(), set()
    for name, path in found.items():
        for target, module_level in all_imports(ast.parse(path.read_text()), known):
            if layer(target) > layer(name):
                (at_import if module_level else inside).add((name, target))
    return at_import, inside


def test_module_level_imports_go_down_the_layers():
    at_import, _ = upward(modules())
    assert not at_import, sorted(at_import)


def test_imports_inside_functions_go_up_only_where_named():
    _, inside = upward(modules())
    assert inside <= UPWARD_INSIDE_FUNCTIONS, sorted(inside - UPWARD_INSIDE_FUNCTIONS)
    # The list is kept exact, so a mended import leaves it too.
    assert UPWARD_INSIDE_FUNCTIONS <= inside, sorted(UPWARD_INSIDE_FUNCTIONS - inside)


def test_the_layer_check_sees_a_planted_upward_import(tmp_path: Path):
    (tmp_path / "core" / "model").mkdir(parents=True)
    (tmp_path / "core" / "sweep").mkdir()
    (tmp_path / "core" / "model" / "loader.py").write_text("from horizon.core.sweep.worker import chunks\n")
    (tmp_path / "core" / "sweep" / "worker.py").write_text("def chunks() -> None:\n"
                                                         "    from horizon.core.model.loader import x\n")
    found = {"horizon.core.model.loader": tmp_path / "core" / "model" / "loader.py",
             "horizon.core.sweep.worker": tmp_path / "core" / "sweep" / "worker.py"}
    at_import, inside = upward(found)
    assert at_import == {("horizon.core.model.loader", "horizon.core.sweep.worker")} and not inside
