"""The distribution users install: the wheel holds every module and data file of core/ and tui/ (and
nothing else), the sdist builds the same wheel, the build prints no warnings, and the package's own
entry points (`horizon --version`, `python -m horizon`) work.

The installed wheel itself runs every command in `make smoke` (tests/smoke/), part of `make test`.
"""

from __future__ import annotations

import email
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.smoke.build import ROOT, build_sdist_then_wheel, build_wheel, expected_files


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    work = tmp_path_factory.mktemp("dist")
    wheel, wheel_log = build_wheel(work)
    sdist, sdist_wheel, sdist_log = build_sdist_then_wheel(work)
    return {"wheel": wheel, "sdist": sdist, "sdist_wheel": sdist_wheel, "log": wheel_log + sdist_log}


def _members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}


def _dist_info(wheel: Path) -> str:
    return next(name.split("/")[0] for name in _members(wheel) if name.split("/")[0].endswith(".dist-info"))


def wheel_versus_tree(wheel: Path, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """(files of the package folders missing from the wheel, files in the wheel that are not in them)."""
    expected = expected_files(root)
    info = _dist_info(wheel)
    shipped = {name for name in _members(wheel) if not name.startswith(info + "/")}
    return sorted(expected[name] for name in set(expected) - shipped), sorted(shipped - set(expected))


def test_the_wheel_holds_every_module_and_data_file(built: dict[str, object]) -> None:
    missing, extra = wheel_versus_tree(built["wheel"])
    assert not missing, f"{len(missing)} files of the repository are not in the wheel: {missing}"
    assert not extra, f"the wheel holds files that are not in core/ or tui/: {extra}"
    names = set(_members(built["wheel"]))
    # what the tool reads at run time, named so a glob that stops matching is seen at once
    for data in ("horizon/core/data/corpus.jsonl", "horizon/tui/app.tcss", "horizon/tui/screens/compare.tcss",
                 "horizon/py.typed", "horizon/__init__.py", "horizon/__main__.py",
                 "horizon/core/analyses/__init__.py"):
        assert data in names
    assert {name.split("/")[0] for name in names} == {"horizon", _dist_info(built["wheel"])}


def test_the_comparison_sees_a_dropped_package(built: dict[str, object], tmp_path: Path) -> None:
    """The check above can fail: a wheel without horizon/core/analyses/ is reported, file by file."""
    with zipfile.ZipFile(built["wheel"]) as source, zipfile.ZipFile(tmp_path / "cut.whl", "w") as cut:
        for item in source.infolist():
            if not item.filename.startswith("horizon/core/analyses/"):
                cut.writestr(item, source.read(item))
    missing, extra = wheel_versus_tree(tmp_path / "cut.whl")
    assert "core/analyses/__init__.py" in missing and "core/analyses/norms/__init__.py" in missing
    assert all(name.startswith("core/analyses/") for name in missing) and not extra


def test_the_sdist_builds_the_same_wheel(built: dict[str, object]) -> None:
    direct, via_sdist = _members(built["wheel"]), _members(built["sdist_wheel"])
    assert sorted(direct) == sorted(via_sdist)
    differ = [name for name in direct if direct[name] != via_sdist[name]]
    assert not differ, f"the wheel built from the sdist differs in {differ}"


def test_the_build_prints_no_warning(built: dict[str, object]) -> None:
    warnings = [line for line in str(built["log"]).splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)


def test_the_metadata_names_the_entry_point_license_and_ranges(built: dict[str, object]) -> None:
    members = _members(built["wheel"])
    info = _dist_info(built["wheel"])
    metadata = email.message_from_bytes(members[f"{info}/METADATA"])
    assert metadata["License-Expression"] == "MIT"
    requires = metadata.get_all("Requires-Dist")
    assert any(line.startswith("transformers") and "<5.24" in line for line in requires)
    assert "horizon = horizon.tui.cli.app:main" in members[f"{info}/entry_points.txt"].decode()
    with tarfile.open(built["sdist"]) as sdist:
        assert any(name.endswith("/setup.py") for name in sdist.getnames())


# ----------------------------------------------------------------------------- the package's own entry points


def test_version_is_the_installed_package_version(run_cli) -> None:
    from importlib.metadata import version

    import horizon

    code, out, err = run_cli("--version")
    assert (code, err) == (0, "")
    assert out == f"horizon {version('horizon-inspector')}\n" == f"horizon {horizon.__version__}\n"


def test_verbose_version_names_the_stack_and_the_device(run_cli) -> None:
    from importlib.metadata import version

    code, out, _ = run_cli("--version", "--verbose")
    lines = out.splitlines()
    assert code == 0
    assert lines[1:4] == [f"torch {version('torch')}", f"transformers {version('transformers')}",
                          f"TransformerLens {version('transformer-lens')}"]
    import torch

    assert lines[-1].startswith("device cuda (" if torch.cuda.is_available() else "device cpu")


@pytest.mark.parametrize("args", [("--verbose",), ("--verbose", "models")])
def test_verbose_alone_is_a_usage_error(run_cli, args: tuple[str, ...]) -> None:
    code, out, err = run_cli(*args)
    assert (code, out) == (2, "") and err.startswith("horizon: error: --verbose goes with --version")


def test_python_dash_m_horizon_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "horizon", "--version"], capture_output=True, text=True,
                          cwd=ROOT / "tests", timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("horizon "), done.stderr
    done = subprocess.run([sys.executable, "-m", "horizon", "models", "--no-such-flag"], capture_output=True,
                          text=True, cwd=ROOT / "tests", timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("horizon: error:"), done.stderr


def test_shell_completion_completes_commands_and_options() -> None:
    """Typer's completion: the script for a shell, and the words it completes (through `python -m horizon`)."""
    import os

    # Typer detects the user's shell (make's is sh, which it has no script for); its test switch takes one.
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    done = subprocess.run([sys.executable, "-m", "horizon", "--show-completion", "bash"], capture_output=True,
                          text=True, env=env, cwd=ROOT / "tests", timeout=120)
    assert done.returncode == 0 and "_HORIZON_COMPLETE=complete_bash" in done.stdout, done.stderr
    env = {**os.environ, "_HORIZON_COMPLETE": "complete_bash", "COMP_WORDS": "horizon no", "COMP_CWORD": "1"}
    done = subprocess.run([sys.executable, "-m", "horizon"], capture_output=True, text=True, env=env,
                          cwd=ROOT / "tests", timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["norms"], (done.stdout, done.stderr)
