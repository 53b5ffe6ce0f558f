"""The type check of make test: mypy over every module as installed: the API (the package horizon),
the engine (horizon.core) and the app and CLI (horizon.tui).

mypy reads files, not the editable install's import hook, so it runs over links laid out as the
installed package (tests/source_tree.py). The settings are pyproject.toml's [tool.mypy]. The second
test plants a type error in a small tree of the same layout and sees the same check fail, so a
check that passes cannot be one that never looked; the third sees a session whose ``scan`` differs
from the ``Source`` protocol refused (core/sources/session.py and core/sources/results_session.py each assign their
class to a ``type[Source]`` for this check).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.source_tree import ROOT, installed_layout, modules

# Every module of the distribution: the API (core/api/, the package horizon), the engine and the app.
TARGETS = [argument for name in sorted(modules()) for argument in ("-m", name)]


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


# The live session as it was before the protocol was typed: ``chunk`` second, where the protocol
# has ``ablation`` (a positional ablation would have been taken as a chunk size).
MISMATCHED_SOURCE = '''
from horizon.core.analyses.scan import ScanResult
from horizon.core.sources.session import Session, Source


class OldSession(Session):
    def scan(self, prompt: int = 0, chunk: int = 8, ablation: str = "zero") -> ScanResult:  # type: ignore[override]
        return super().scan(prompt, ablation, chunk=chunk)


CHECKED: type[Source] = OldSession
'''


def test_a_source_that_differs_from_the_protocol_fails(tmp_path: Path) -> None:
    """The checks in core/sources/session.py and core/sources/results_session.py (a class assigned to ``type[Source]``)
    do compare signatures: the scan signature the live session once had is refused."""
    result = mypy(installed_layout(tmp_path / "layout"), ROOT / ".mypy_cache", ["-c", MISMATCHED_SOURCE])
    assert result.returncode != 0
    expected = '<string>:11: error: Incompatible types in assignment (expression has type "type[OldSession]", ' \
               'variable has type "type[Source]")'
    assert expected in result.stdout
