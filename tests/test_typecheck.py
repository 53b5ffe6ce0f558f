"""The type check of make test: mypy over every module as installed: the API (the package horizon),
the engine (horizon.core) and the app and CLI (horizon.tui).

mypy reads files, not the editable install's import hook, so it runs over links laid out as the
installed package (tests/source_tree.py). The settings are pyproject.toml's [tool.mypy]. The second
test plants a type error in a small tree of the same layout and sees the same check fail, so a
check that passes cannot be one that never looked; the next two see the engine and the API checked
with mypy --strict's flags (an untyped function fails there, not in the app) and every one of their
modules named by that override; the next sees sessions whose ``ready`` or ``get``
differ from the ``Source`` protocol refused (core/sources/session.py and core/sources/results_session.py
each assign their class to a ``type[Source]`` for this check), and the last a query's result read as
another analysis's refused.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.source_tree import ROOT, installed_layout, modules

# Every module of the distribution: the API (core/api/, the package horizon), the engine and the app.
TARGETS = [argument for name in sorted(modules()) for argument in ("-m", name)]
# mypy --strict's per-module flags (with implicit_reexport off); warn_unused_ignores is on everywhere.
STRICT_FLAGS = ("disallow_any_generics", "disallow_subclassing_any", "disallow_untyped_calls", "disallow_untyped_defs",
                "disallow_incomplete_defs", "check_untyped_defs", "disallow_untyped_decorators", "warn_return_any",
                "strict_equality", "extra_checks")


def mypy(layout: Path, cache: Path, targets: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache),
               "--no-color-output", "--no-error-summary", *targets]
    return subprocess.run(command, cwd=layout, capture_output=True, text=True, timeout=900)


def test_every_module_is_type_clean(tmp_path: Path) -> None:
    result = mypy(installed_layout(tmp_path / "layout"), ROOT / ".mypy_cache", TARGETS)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 0 and not errors, "\n".join(errors) or result.stderr


def test_the_type_check_fails_on_a_planted_error(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for folder in ("core/api", "tui"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "core" / "__init__.py").write_text("")
    (root / "core" / "planted.py").write_text('def depth() -> int:\n    return "thirty"\n')
    result = mypy(installed_layout(tmp_path / "layout", root), tmp_path / "cache", ["-p", "horizon.core"])
    assert result.returncode != 0
    expected = 'horizon/core/planted.py:2: error: Incompatible return value type (got "str", expected "int")'
    assert expected in result.stdout


UNTYPED = "def depth(x):\n    return x\n"


def test_the_engine_and_the_api_are_checked_strictly(tmp_path: Path) -> None:
    """An untyped function, which mypy's default mode lets pass, fails in the engine and the API (the
    strict flags of pyproject.toml's override); the app, outside it, is checked in the default mode."""
    root = tmp_path / "repo"
    for folder in ("core/api", "tui"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "core" / "__init__.py").write_text("")
    for planted in ("core/planted.py", "core/api/_model.py", "tui/planted.py"):
        (root / planted).write_text(UNTYPED)
    targets = ["-m", "horizon.core.planted", "-m", "horizon._model", "-m", "horizon.tui.planted"]
    result = mypy(installed_layout(tmp_path / "layout", root), tmp_path / "cache", targets)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    untyped = "1: error: Function is missing a type annotation  [no-untyped-def]"
    assert sorted(errors) == [f"horizon/_model.py:{untyped}", f"horizon/core/planted.py:{untyped}"]


def test_every_engine_and_api_module_is_under_the_strict_flags() -> None:
    """The strict override names the API's modules one by one (mypy's patterns cannot say "horizon.*
    but not horizon.tui"): a new API module must be added there."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    strict = [override for override in config["overrides"] if override.get("disallow_untyped_defs")]
    assert len(strict) == 1 and all(strict[0][flag] for flag in STRICT_FLAGS) and not strict[0]["implicit_reexport"]
    patterns = strict[0]["module"]

    def covered(name: str) -> bool:
        return name in patterns or any(name.startswith(pattern[:-1]) for pattern in patterns if pattern.endswith(".*"))

    outside = [name for name in modules() if not name.startswith("horizon.tui") and not covered(name)]
    assert not outside
    assert not any(covered(name) for name in modules() if name.startswith("horizon.tui"))


# The live session as it was before results were asked for by typed query: ``ready`` took a tuple key
# (("scan", prompt), "norms", ...) and returned Any, so a pane could read one analysis's key as another's.
TUPLE_KEYED_SOURCE = '''
from typing import Any

from horizon.core.sources.session import Session, Source


class OldSession(Session):
    def ready(self, key: tuple[Any, ...]) -> Any | None:  # type: ignore[override]
        return None


CHECKED: type[Source] = OldSession
'''

# A source whose ``get`` answers every query with a scan, whatever the query's result type.
SCAN_FOR_EVERY_QUERY = '''
from typing import TypeVar

from horizon.core.analyses.scan import ScanResult
from horizon.core.sources.queries import Query
from horizon.core.sources.session import Session, Source

R = TypeVar("R")


class ScanningSession(Session):
    def get(self, query: Query[R]) -> ScanResult:  # type: ignore[override]
        return self.scan()


CHECKED: type[Source] = ScanningSession
'''

# A pane reading the norms' query as a scan: the query's result type reaches the caller.
NORMS_READ_AS_A_SCAN = '''
from horizon.core.analyses.scan import ScanResult
from horizon.core.sources.queries import Query
from horizon.core.sources.session import Source


def curve(source: Source) -> ScanResult | None:
    return source.ready(Query.norms())
'''


@pytest.mark.parametrize(("source", "line", "name"), [(TUPLE_KEYED_SOURCE, 12, "OldSession"),
                                                      (SCAN_FOR_EVERY_QUERY, 16, "ScanningSession")])
def test_a_source_that_differs_from_the_protocol_fails(tmp_path: Path, source: str, line: int, name: str) -> None:
    """The checks in core/sources/session.py and core/sources/results_session.py (a class assigned to ``type[Source]``)
    do compare signatures: the tuple-keyed ``ready`` the sessions once had, and a ``get`` whose result is not the
    query's, are refused."""
    result = mypy(installed_layout(tmp_path / "layout"), ROOT / ".mypy_cache", ["-c", source])
    assert result.returncode != 0
    expected = f'<string>:{line}: error: Incompatible types in assignment (expression has type "type[{name}]", ' \
               'variable has type "type[Source]")'
    assert expected in result.stdout


def test_a_query_read_as_another_analysis_fails(tmp_path: Path) -> None:
    """``ready`` and ``get`` are typed by the query: the norms' result is no ScanResult to the type checker."""
    result = mypy(installed_layout(tmp_path / "layout"), ROOT / ".mypy_cache", ["-c", NORMS_READ_AS_A_SCAN])
    assert result.returncode != 0
    expected = '<string>:8: error: Incompatible return value type (got "NormsReport | None", ' \
               'expected "ScanResult | None")'
    assert expected in result.stdout
